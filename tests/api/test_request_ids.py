"""Request ids on a real server: a sane client `x-request-id` is kept, anything else replaced,
and the id comes back on every response, is on every log record of the request and in its
ledger row."""

from __future__ import annotations

import re
import sqlite3
import time

import httpx
import pytest

from tests.conftest import HANG_TIMEOUT_S, LiveServer, database_path

GENERATED = re.compile(r"req_[0-9a-f]{32}")


def _chat(**extra: object) -> dict[str, object]:
    return {"model": "default", "messages": [{"role": "user", "content": "Hi"}],
            "max_tokens": 2, **extra}


def test_a_sane_client_id_comes_back_on_every_kind_of_response(server: LiveServer) -> None:
    requests: list[tuple[str, str, dict[str, object] | None, int, str | None]] = [
        ("POST", "/v1/chat/completions", _chat(), 200, None),
        ("POST", "/v1/chat/completions", _chat(temperature=7), 400, None),
        ("POST", "/v1/chat/completions", _chat(), 401, "wrong-key"),
        ("GET", "/v1/no-such-route", None, 404, None),
        ("PUT", "/v1/chat/completions", None, 405, None),
        ("GET", "/health", None, 200, None),
        ("GET", "/metrics", None, 200, None),
    ]
    with server.http() as client:
        for number, (method, path, body, status, key) in enumerate(requests):
            request_id = f"client-id:{number}/{path}"
            headers = {"x-request-id": request_id}
            if key:
                headers["Authorization"] = f"Bearer {key}"
            response = client.request(method, path, json=body, headers=headers)
            assert response.status_code == status, (path, response.text)
            assert response.headers["x-request-id"] == request_id, path
        with client.stream("POST", "/v1/completions", headers={"x-request-id": "sse-1"},
                           json={"prompt": "Hi", "max_tokens": 2, "stream": True}) as stream:
            assert stream.headers["content-type"].startswith("text/event-stream")
            assert stream.headers["x-request-id"] == "sse-1"
            assert "[DONE]" in stream.read().decode()
        invalid_json = client.post("/v1/completions", content=b"{not json",
                                   headers={"x-request-id": "bad-json",
                                            "content-type": "application/json"})
        assert invalid_json.status_code == 400 and invalid_json.headers["x-request-id"] == (
            "bad-json")


@pytest.mark.parametrize("client_id", [
    b"x" * 129, b"has space", b"tab\there", b"caf\xc3\xa9", b"",
], ids=["too-long", "space", "tab", "non-ascii", "empty"])
def test_an_insane_client_id_is_replaced_by_a_fresh_one(server: LiveServer,
                                                         client_id: bytes) -> None:
    with server.http() as client:
        response = client.get("/health", headers={"x-request-id": client_id})
    assert response.status_code == 200
    assert GENERATED.fullmatch(response.headers["x-request-id"])


def test_without_a_client_id_every_response_gets_its_own(server: LiveServer) -> None:
    with server.http() as client:
        ids = [client.post("/v1/chat/completions", json=_chat()).headers["x-request-id"],
               client.get("/v1/models").headers["x-request-id"],
               client.get("/nowhere").headers["x-request-id"]]
    assert all(GENERATED.fullmatch(request_id) for request_id in ids)
    assert len(set(ids)) == 3


def test_the_id_is_on_every_log_record_of_the_request_and_in_its_ledger_row(
    server: LiveServer
) -> None:
    with server.http() as client:
        response = client.post("/v1/chat/completions", json=_chat(user="alice"),
                               headers={"x-request-id": "support-ticket-42"})
    assert response.status_code == 200
    completion_id = response.json()["id"]
    deadline = time.monotonic() + HANG_TIMEOUT_S
    row = None
    while row is None and time.monotonic() < deadline:  # the ledger writes every second
        with sqlite3.connect(database_path(server)) as db:
            row = db.execute("SELECT http_request_id, status FROM usage_events "
                             "WHERE request_id = ?", (completion_id,)).fetchone()
        time.sleep(0.1)
    assert row == ("support-ticket-42", "finished")
    records = [line for line in server.log().splitlines() if completion_id in line]
    assert any(" settled " in line for line in records), records  # logged on a platform thread
    assert any(" finished " in line for line in records), records
    assert all("[support-ticket-42]" in line for line in records), records
    access = [line for line in server.log().splitlines() if "uvicorn.access" in line
              and "[support-ticket-42]" in line]
    assert len(access) == 1 and "POST /v1/chat/completions" in access[0]


def test_a_replaced_id_never_reaches_the_log(server: LiveServer) -> None:
    # NOTE: ids with C0 controls or DEL never get here: the HTTP parser refuses them with a 400.
    with httpx.Client(base_url=server.url, timeout=HANG_TIMEOUT_S) as client:
        response = client.get("/health", headers={"x-request-id": b"evil\xe2\x80\xa8id"})
    assert GENERATED.fullmatch(response.headers["x-request-id"])
    assert "evil" not in server.log()
