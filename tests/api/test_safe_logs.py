"""Log injection (CWE-117) on a real server: client values with CR, LF, ESC or a Unicode line
separator, logged as an unknown field's name and as the settled request's `user`, never start a
line of the server's log; text logs show them escaped, JSON logs as JSON strings."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import pytest

from tests.conftest import HANG_TIMEOUT_S, LiveServer

FIELD = "foo\r\nFORGED from a field name"
USER = "u\r\nFORGED from user\x1b[2J\u2028FORGED again\x85FORGED at last"
ESCAPED_FIELD = r"foo\r\nFORGED from a field name"
ESCAPED_USER = r"u\r\nFORGED from user\x1b[2J\u2028FORGED again\x85FORGED at last"


def _send_hostile_request(server: LiveServer, request_id: str) -> None:
    body = {"model": "default", "messages": [{"role": "user", "content": "Hi"}],
            "max_tokens": 2, "user": USER, FIELD: 1}
    with server.http() as client:
        response = client.post("/v1/chat/completions", json=body,
                               headers={"x-request-id": request_id})
    assert response.status_code == 200, response.text
    deadline = time.monotonic() + HANG_TIMEOUT_S
    while "settled" not in _records_of(server, request_id) and time.monotonic() < deadline:
        time.sleep(0.1)  # settling is logged off the request path, just after the response


def _records_of(server: LiveServer, request_id: str) -> str:
    return "\n".join(line for line in server.log().split("\n") if request_id in line)


def _assert_no_forged_line(log: str) -> None:
    # splitlines() breaks at every character a log viewer might take for a line end.
    forged = [line for line in log.splitlines() if line.lstrip().startswith("FORGED")]
    assert forged == [], log


@pytest.fixture(scope="module")
def json_server(short_json_server: LiveServer) -> LiveServer:
    return short_json_server


def test_text_logs_escape_client_values(server: LiveServer) -> None:
    _send_hostile_request(server, "hostile-text")
    log = server.log()
    _assert_no_forged_line(log)
    records = _records_of(server, "hostile-text")
    assert f"ignoring unknown request fields: {ESCAPED_FIELD}" in records, records
    assert f"user={ESCAPED_USER} status=finished" in records, records


def test_json_logs_are_one_object_per_line(json_server: LiveServer) -> None:
    _send_hostile_request(json_server, "hostile-json")
    log = json_server.log()
    _assert_no_forged_line(log)
    assert "\u2028" not in log and "\x85" not in log and "\x1b" not in log
    records = [json.loads(line) for line in log.split("\n") if line]  # every line is JSON
    assert all(set(r) >= {"time", "level", "logger", "request_id", "message"} for r in records)
    mine = [r["message"] for r in records if r["request_id"] == "hostile-json"]
    assert f"ignoring unknown request fields: {FIELD}" in mine, mine
    assert any(f"user={USER} status=finished" in message for message in mine), mine


def test_a_log_format_that_does_not_exist_is_refused(tmp_path: Path) -> None:
    from tests.conftest import launch_server

    server = launch_server(tmp_path, "--log-format", "xml")
    try:
        assert server.process.wait(HANG_TIMEOUT_S) == 2
    finally:
        server.stop(signal.SIGKILL)
    assert "log_format='xml' is not one of text, json" in server.log()
