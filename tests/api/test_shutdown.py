"""SIGTERM drains: the port stays open, /health and new requests get 503 with Retry-After,
in-flight requests (a stream mid-decode, a body still arriving) finish, the ledger is flushed,
the process exits 0. One server per drain: each test ends its own process."""

from __future__ import annotations

import json
import signal
import socket
import sqlite3
import threading
from pathlib import Path

import httpx

from tests.conftest import HANG_TIMEOUT_S, LiveServer, database_path, start_server

NUM_STREAMED = 48  # the stream in flight at SIGTERM: long enough to still be decoding


def _stream_completion(server: LiveServer, result: dict[str, object],
                       first_chunk: threading.Event) -> None:
    """A streamed completion of NUM_STREAMED tokens; `result` gets its id, finish and usage."""
    chunks = server.openai().completions.create(
        model="default", prompt="Count:", max_tokens=NUM_STREAMED, temperature=0, stream=True,
        stream_options={"include_usage": True}, extra_body={"ignore_eos": True},
        extra_headers={"x-request-id": "in-flight-stream"})
    for chunk in chunks:
        first_chunk.set()
        result["id"] = chunk.id
        if chunk.choices and chunk.choices[0].finish_reason:
            result["finish_reason"] = chunk.choices[0].finish_reason
        if chunk.usage:
            result["completion_tokens"] = chunk.usage.completion_tokens


def _start_slow_upload(server: LiveServer, body: bytes, request_id: str) -> socket.socket:
    """A completion request whose body is still arriving: in flight until the test sends the
    rest, so the drain cannot end without it, however fast the machine."""
    connection = socket.create_connection(("127.0.0.1", server.port), timeout=HANG_TIMEOUT_S)
    head = (f"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Authorization: Bearer {server.api_key}\r\nContent-Type: application/json\r\n"
            f"x-request-id: {request_id}\r\nContent-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n")
    connection.sendall(head.encode() + body[:10])
    return connection


def _finish_upload(connection: socket.socket, body: bytes) -> tuple[str, dict[str, str], dict]:
    connection.sendall(body[10:])
    received = b""
    while chunk := connection.recv(65536):
        received += chunk
    connection.close()
    head, _, payload = received.partition(b"\r\n\r\n")
    status, *header_lines = head.decode().split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in header_lines)}
    return status, headers, json.loads(payload)


def test_draining_keeps_the_port_answering_503_until_in_flight_requests_finish(
    tmp_path: Path
) -> None:
    """SIGTERM with a stream mid-decode and a body still arriving: both finish in full."""
    # The server exits as soon as both are done, so a drain this long costs nothing on a fast
    # machine and leaves a slow one all the time the stream's tokens take.
    server = start_server(tmp_path, "--drain-timeout-s", str(HANG_TIMEOUT_S / 2))
    body = json.dumps({"model": "default", "prompt": "Count:", "max_tokens": 8,
                       "temperature": 0, "ignore_eos": True}).encode()
    streamed: dict[str, object] = {}
    first_chunk = threading.Event()
    stream = threading.Thread(target=_stream_completion, args=(server, streamed, first_chunk))
    try:
        upload = _start_slow_upload(server, body, "in-flight-upload")
        with server.http() as client:
            # Answered only after the server read the upload's head (same loop, earlier bytes).
            assert client.get("/health").status_code == 200
            stream.start()
            assert first_chunk.wait(HANG_TIMEOUT_S)  # the stream is decoding: SIGTERM now
            server.process.send_signal(signal.SIGTERM)
            refused = client.post("/v1/completions", json={"prompt": "x", "max_tokens": 1},
                                  headers={"x-request-id": "after-sigterm"})
            health = client.get("/health")
            live = client.get("/health/live")
        status, headers, completion = _finish_upload(upload, body)
        stream.join(HANG_TIMEOUT_S)
        exit_code = server.stop()
    finally:
        server.stop(signal.SIGKILL)
    log = server.log()
    for response in (refused, health):
        assert response.status_code == 503, log
        assert response.json()["error"]["code"] == "server_draining"
        assert int(response.headers["Retry-After"]) >= 1
    assert refused.headers["x-request-id"] == "after-sigterm"
    assert live.status_code == 200 and live.json() == {"status": "alive"}
    assert status == "HTTP/1.1 200 OK", (status, completion, log)
    assert headers["x-request-id"] == "in-flight-upload"
    assert completion["usage"]["completion_tokens"] == 8
    assert (streamed.get("finish_reason"), streamed.get("completion_tokens")) == (
        "length", NUM_STREAMED), log
    assert exit_code == 0, log
    try:
        after_exit = httpx.get(f"{server.url}/health", timeout=2).status_code
    except httpx.ConnectError:
        after_exit = None
    assert after_exit is None
    with sqlite3.connect(database_path(server)) as db:  # flushed before the exit: both rows
        rows = db.execute("SELECT request_id, http_request_id, status, completion_tokens "
                          "FROM usage_events").fetchall()
    assert sorted(rows) == sorted([(completion["id"], "in-flight-upload", "finished", 8),
                                   (streamed["id"], "in-flight-stream", "finished",
                                    NUM_STREAMED)])


def test_a_drain_that_times_out_ends_the_requests_left_and_exits_0(tmp_path: Path) -> None:
    server = start_server(tmp_path, "--drain-timeout-s", "1")
    body = json.dumps({"prompt": "Count:", "max_tokens": 8}).encode()
    try:
        upload = _start_slow_upload(server, body, "never-finished")  # the body never ends
        with server.http() as client:
            assert client.get("/health").status_code == 200
        server.process.send_signal(signal.SIGTERM)
        exit_code = server.process.wait(HANG_TIMEOUT_S)
        upload.close()
    finally:
        server.stop(signal.SIGKILL)
    assert exit_code == 0, server.log()
    assert "drain timeout: aborting 1 requests in flight" in server.log()
    with sqlite3.connect(database_path(server)) as db:  # it never reached admission: no row
        assert db.execute("SELECT count(*) FROM usage_events").fetchone() == (0,)
