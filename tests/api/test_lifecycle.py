"""The loading phase, against real `flintlm serve` processes: the port answers from the start
(503 `model_loading` with Retry-After, liveness 200), a signal while loading exits 0 at once,
and a model that fails to load ends the process non-zero naming the cause.

Loading is held open with the FLINTLM_TEST_HOLD_LOADING_UNTIL hook, so no test races the load.
"""

from __future__ import annotations

import signal
import sqlite3
import time
from pathlib import Path

import httpx

from tests.conftest import (
    HANG_TIMEOUT_S,
    READY_TIMEOUT_S,
    LiveServer,
    database_path,
    launch_server,
    wait_until_ready,
)

HOLD_VAR = "FLINTLM_TEST_HOLD_LOADING_UNTIL"


def _wait_until_alive(server: LiveServer) -> None:
    """Return once the port answers (liveness 200), before the model is loaded."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        assert server.process.poll() is None, server.log()
        try:
            if httpx.get(f"{server.url}/health/live", timeout=5).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.1)
    raise AssertionError(f"the port never answered:\n{server.log()}")


def _assert_loading(response: httpx.Response) -> None:
    assert response.status_code == 503, response.text
    assert response.json()["error"]["code"] == "model_loading"
    assert response.json()["error"]["type"] == "server_error"
    assert int(response.headers["Retry-After"]) >= 1
    assert response.headers["x-request-id"]


def test_loading_answers_503_with_retry_after_then_serves(tmp_path: Path) -> None:
    hold = tmp_path / "load-now"
    server = launch_server(tmp_path, env={HOLD_VAR: str(hold)})
    try:
        _wait_until_alive(server)
        with server.http() as client:
            _assert_loading(client.get("/health"))
            _assert_loading(client.get("/v1/models"))
            chat = client.post("/v1/chat/completions", headers={"x-request-id": "while-loading"},
                               json={"messages": [{"role": "user", "content": "Hi"}]})
            _assert_loading(chat)
            assert chat.headers["x-request-id"] == "while-loading"
            _assert_loading(client.get("/no/such/path"))
            assert client.get("/health/live").json() == {"status": "alive"}
            hold.touch()
            wait_until_ready(server)
            assert client.get("/health").json() == {"status": "ok"}
            assert client.get("/health/live").status_code == 200
            reply = server.openai().chat.completions.create(
                model="default", messages=[{"role": "user", "content": "Hi"}], max_tokens=4)
            assert reply.usage and reply.usage.completion_tokens >= 1
        assert server.stop() == 0, server.log()
    finally:
        server.stop(signal.SIGKILL)


def test_sigterm_while_loading_exits_0_at_once(tmp_path: Path) -> None:
    # The hold never lifts: the load is in progress for as long as the test wants.
    server = launch_server(tmp_path, env={HOLD_VAR: str(tmp_path / "never")})
    try:
        _wait_until_alive(server)
        assert server.stop(signal.SIGTERM, timeout_s=HANG_TIMEOUT_S) == 0, server.log()
    finally:
        server.stop(signal.SIGKILL)
    log = server.log()
    assert "Traceback" not in log, log
    assert "stopped while the model was loading" in log
    with sqlite3.connect(database_path(server)) as db:  # the store was opened and closed
        assert db.execute("SELECT count(*) FROM usage_events").fetchone() == (0,)


def test_a_model_that_fails_to_load_ends_the_process_non_zero(tmp_path: Path) -> None:
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"not a gguf file at all" * 64)
    server = launch_server(tmp_path, "--model", str(broken))
    try:
        exit_code = server.process.wait(HANG_TIMEOUT_S)
    finally:
        server.stop(signal.SIGKILL)
    assert exit_code != 0
    assert "broken.gguf: not a GGUF file" in server.log()
