"""SIGTERM drains: in-flight requests finish, new ones are refused, the process exits 0."""

from __future__ import annotations

import signal
import threading
from pathlib import Path

import httpx

from tests.conftest import HANG_TIMEOUT_S, start_server


def test_sigterm_drains_an_in_flight_request(tmp_path: Path) -> None:
    # The server exits as soon as the request is done, so a drain this long costs nothing on a
    # fast machine and leaves a slow one all the time its 48 tokens take.
    server = start_server(tmp_path, "--drain-timeout-s", str(HANG_TIMEOUT_S / 2))
    result: dict[str, object] = {}
    first_chunk = threading.Event()

    def stream() -> None:
        client = server.openai()
        chunks = client.completions.create(model="default", prompt="Count:", max_tokens=48,
                                           temperature=0, stream=True,
                                           stream_options={"include_usage": True},
                                           extra_body={"ignore_eos": True})
        for chunk in chunks:
            first_chunk.set()
            if chunk.choices and chunk.choices[0].finish_reason:
                result["finish_reason"] = chunk.choices[0].finish_reason
            if chunk.usage:
                result["completion_tokens"] = chunk.usage.completion_tokens

    thread = threading.Thread(target=stream)
    thread.start()
    try:
        assert first_chunk.wait(HANG_TIMEOUT_S)  # the request is in flight: SIGTERM now
        server.process.send_signal(signal.SIGTERM)
        thread.join(HANG_TIMEOUT_S)
        exit_code = server.stop()
    finally:
        server.stop(signal.SIGKILL)
    assert result == {"finish_reason": "length", "completion_tokens": 48}, server.log()
    assert exit_code == 0, server.log()
    try:
        refused = httpx.get(f"{server.url}/health", timeout=2).status_code
    except httpx.ConnectError:
        refused = None
    assert refused is None
