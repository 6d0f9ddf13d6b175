"""SIGTERM drains: in-flight requests finish, new ones are refused, the process exits 0."""

from __future__ import annotations

import signal
import threading
from pathlib import Path

import httpx

from tests.conftest import start_server


def test_sigterm_drains_an_in_flight_request(tmp_path: Path) -> None:
    server = start_server(tmp_path, "--drain-timeout-s", "60")
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
        assert first_chunk.wait(60)
        server.process.send_signal(signal.SIGTERM)
        thread.join(60)
        exit_code = server.stop(timeout_s=60)
    finally:
        server.stop(signal.SIGKILL)
    assert result == {"finish_reason": "length", "completion_tokens": 48}, server.log()
    assert exit_code == 0, server.log()
    try:
        refused = httpx.get(f"{server.url}/health", timeout=2).status_code
    except httpx.ConnectError:
        refused = None
    assert refused is None
