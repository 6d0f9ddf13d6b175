"""The request edge against `FakeEngine`: the body-size limit, the per-request caps of
`LimitsConfig` (server defaults), statuses and params of refusals, and the order of the edge
(nothing reaches admission, or costs a rate-limit token, before the request is valid)."""

from __future__ import annotations

import json
import select
import socket
import time
from urllib.parse import urlsplit

import httpx
import pytest

from flintlm.config import LimitsConfig
from tests.conftest import HANG_TIMEOUT_S

from .conftest import FAKE_KEY, FakeServer

LIMITS = LimitsConfig()  # the fake server runs on the defaults
USER = [{"role": "user", "content": "x"}]


def _error(response: httpx.Response, status: int, param: str | None = None) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    if param is not None:
        assert error["param"] == param, error
    return error


def _raw_request(base_url: str, head: str, chunks: int, chunk: bytes) -> tuple[bytes, int]:
    """Send `head` then up to `chunks` chunks of a chunked body, stopping as soon as the server
    answers; returns the answer's first bytes and how many body bytes went out."""
    address = urlsplit(base_url)
    with socket.create_connection((address.hostname, address.port),
                                  timeout=HANG_TIMEOUT_S) as sock:
        sock.sendall(head.encode())
        num_sent = 0
        frame = f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n"
        for _ in range(chunks):
            readable, _, _ = select.select([sock], [], [], 0)
            if readable:
                break
            try:
                sock.sendall(frame)
            except (BrokenPipeError, ConnectionResetError):
                break
            num_sent += len(chunk)
        sock.settimeout(HANG_TIMEOUT_S)
        return sock.recv(65536), num_sent


def _head(path: str, *, length: int | None = None) -> str:
    framing = f"Content-Length: {length}" if length is not None else "Transfer-Encoding: chunked"
    return (f"POST {path} HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer {FAKE_KEY}\r\n"
            f"Content-Type: application/json\r\n{framing}\r\n\r\n")


def test_a_declared_length_over_the_limit_is_a_413_before_any_body(
    fake_server: FakeServer
) -> None:
    """1 GiB announced, nothing sent: the answer comes from the header alone."""
    answer, _ = _raw_request(fake_server.base_url,
                             _head("/v1/chat/completions", length=1 << 30), 0, b"")
    status_line, _, rest = answer.partition(b"\r\n")
    assert b" 413 " in status_line, answer[:200]
    error = json.loads(rest.partition(b"\r\n\r\n")[2])["error"]
    assert (error["type"], error["code"]) == ("invalid_request_error", "request_too_large")


def test_a_chunked_body_is_counted_while_it_is_read(fake_server: FakeServer) -> None:
    """A chunked body of up to 1 GiB with no length: refused once the limit is passed, long
    before the client could send it all (so the server never held more than the limit)."""
    chunk = b" " * (1 << 20)
    answer, num_sent = _raw_request(fake_server.base_url, _head("/v1/completions"), 1024, chunk)
    assert b" 413 " in answer.partition(b"\r\n")[0], answer[:200]
    assert b"request_too_large" in answer
    # What went out before the answer: the limit, plus what the sockets' buffers took in.
    assert num_sent < LIMITS.max_body_bytes + (64 << 20)


def test_a_body_just_under_the_limit_is_read(fake_server: FakeServer) -> None:
    padding = " " * (LIMITS.max_body_bytes - 200)
    body = f'{{"prompt": "x", "max_tokens": 1, "padding": "{padding}"}}'
    with fake_server.client() as client:
        response = client.post("/v1/completions", content=body,
                               headers={"Content-Type": "application/json"})
        over = client.post("/v1/completions", content=body + " " * 400,
                           headers={"Content-Type": "application/json"})
    assert response.status_code == 200, response.text
    assert _error(over, 413)["code"] == "request_too_large"


@pytest.mark.parametrize(("path", "body", "param"), [
    ("/v1/completions", {"prompt": ["x"] * (LIMITS.max_prompts + 1)}, "prompt"),
    ("/v1/completions", {"prompt": [[1, 2]] * (LIMITS.max_prompts + 1)}, "prompt"),
    ("/v1/completions", {"prompt": "x", "n": LIMITS.max_n + 1}, "n"),
    ("/v1/completions", {"prompt": "x", "stop": ["s"] * 1000}, "stop"),
    ("/v1/completions", {"prompt": "x", "stop": "s" * 100_000}, "stop"),
    ("/v1/chat/completions", {"messages": USER, "stop": ["s"] * (LIMITS.max_stop_strings + 1)},
     "stop"),
    ("/v1/chat/completions", {"messages": USER, "stop": ["s" * (LIMITS.max_stop_string_chars + 1)]},
     "stop"),
    ("/v1/chat/completions", {"messages": USER * (LIMITS.max_messages + 1)}, "messages"),
    ("/v1/chat/completions", {"messages": USER, "tools": [
        {"type": "function", "function": {"name": f"f{i}"}} for i in range(LIMITS.max_tools + 1)]},
     "tools"),
    ("/v1/chat/completions", {"messages": USER, "cache_salt": ""}, "cache_salt"),
    ("/v1/completions", {"prompt": "x", "cache_salt": ""}, "cache_salt"),
])
def test_caps_are_a_400_naming_the_param_before_anything_is_spent(
    fake_server: FakeServer, path: str, body: dict, param: str
) -> None:
    engine, admission = fake_server.engine, fake_server.admission
    num_submitted, num_settled = len(engine.submitted), len(admission.settled)
    with fake_server.client() as client:
        _error(client.post(path, json=body), 400, param)
    assert len(engine.submitted) == num_submitted  # no model work
    assert len(admission.settled) == num_settled  # not admitted: no row, no rate-limit token


def test_too_many_completion_tokens_in_one_request_is_a_400_with_a_rejected_row(
    fake_server: FakeServer
) -> None:
    """max_tokens x n x prompts over the cap, each prompt fitting the (fake's 256) context: the
    check needs the prompts, so it runs at admission, which records the refusal."""
    engine, admission = fake_server.engine, fake_server.admission
    num_submitted, before = len(engine.submitted), len(admission.settled)
    body = {"prompt": ["x"] * LIMITS.max_prompts, "n": LIMITS.max_n, "max_tokens": 200}
    assert 200 * LIMITS.max_n * LIMITS.max_prompts > LIMITS.max_request_completion_tokens
    with fake_server.client() as client:
        error = _error(client.post("/v1/completions", json=body), 400, "max_tokens")
    assert error["code"] == "request_completion_tokens_exceeded"
    assert len(engine.submitted) == num_submitted
    assert [s.value for _, _, s in admission.settled[before:]] == ["rejected"]


def test_caps_at_their_limit_are_served(fake_server: FakeServer) -> None:
    bodies = [
        ("/v1/completions", {"prompt": ["x"] * LIMITS.max_prompts, "max_tokens": 1}),
        ("/v1/completions", {"prompt": "x", "n": LIMITS.max_n, "max_tokens": 2,
                             "stop": ["s" * LIMITS.max_stop_string_chars]
                             * LIMITS.max_stop_strings}),
    ]
    with fake_server.client() as client:
        for path, body in bodies:
            response = client.post(path, json=body)
            assert response.status_code == 200, response.text


def test_context_length_exceeded_names_what_went_over(fake_server: FakeServer) -> None:
    """`prompt` on completions, `messages` on chat, `max_tokens` when only it goes over."""
    long_text = "x" * (fake_server.engine.max_model_len + 10)
    cases = [
        ("/v1/completions", {"prompt": long_text}, "prompt"),
        ("/v1/completions", {"prompt": "x", "max_tokens": 300}, "max_tokens"),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": long_text}]},
         "messages"),
        ("/v1/chat/completions", {"messages": USER, "max_tokens": 300}, "max_tokens"),
    ]
    with fake_server.client() as client:
        for path, body, param in cases:
            error = _error(client.post(path, json=body), 400, param)
            assert error["code"] == "context_length_exceeded"


def test_a_bad_parameter_with_a_bad_key_is_a_400_not_a_401(fake_server: FakeServer) -> None:
    with httpx.Client(base_url=fake_server.base_url, timeout=HANG_TIMEOUT_S,
                      headers={"Authorization": "Bearer nope"}) as client:
        _error(client.post("/v1/chat/completions", json={"messages": USER, "temperature": 9}),
               400, "temperature")
        _error(client.post("/v1/chat/completions", json={"messages": USER}), 401)


def test_a_405_names_the_allowed_methods(fake_server: FakeServer) -> None:
    with fake_server.client() as client:
        response = client.put("/v1/chat/completions")  # GET lists stored completions
        delete = client.delete("/v1/completions")
    assert _error(response, 405)["type"] == "invalid_request_error"
    assert response.headers["Allow"] == "GET, POST"
    assert delete.status_code == 405 and delete.headers["Allow"] == "POST"


def test_a_full_queue_is_a_503_with_retry_after_and_a_rejected_row(
    fake_server: FakeServer
) -> None:
    """`n` counts as n engine requests: n=3 does not fit where 2 would."""
    engine, admission = fake_server.engine, fake_server.admission
    engine.max_in_flight = 2
    try:
        before = len(admission.settled)
        num_submitted = len(engine.submitted)
        with fake_server.client() as client:
            started = time.monotonic()
            refused = client.post("/v1/completions", json={"prompt": "x", "n": 3})
            elapsed_s = time.monotonic() - started
            served = client.post("/v1/completions", json={"prompt": "x", "n": 2,
                                                          "max_tokens": 1})
    finally:
        engine.max_in_flight = type(engine).max_in_flight
    assert _error(refused, 503)["code"] == "engine_overloaded"
    assert refused.headers["Retry-After"] == "1"
    assert elapsed_s < HANG_TIMEOUT_S
    assert served.status_code == 200, served.text
    assert len(engine.submitted) == num_submitted + 2  # the refused one never reached it
    assert [(u.prompt_tokens + u.completion_tokens, s.value)
            for _, u, s in admission.settled[before:before + 1]] == [(0, "rejected")]


def test_rendering_and_tokenizing_run_off_the_event_loop(fake_server: FakeServer) -> None:
    """A huge prompt must not stall every other stream: the template and the tokenizer run on
    worker threads, for chat, completions, /tokenize and /detokenize alike."""
    tokenizer = fake_server.engine.tokenizer
    before = tokenizer.num_calls_on_event_loop
    with fake_server.client() as client:
        for path, body in [("/v1/chat/completions", {"messages": USER, "max_tokens": 1}),
                           ("/v1/completions", {"prompt": ["x", "y"], "max_tokens": 1}),
                           ("/tokenize", {"messages": USER}), ("/tokenize", {"prompt": "x"}),
                           ("/detokenize", {"tokens": [104, 105]})]:
            assert client.post(path, json=body).status_code == 200
    assert tokenizer.num_calls_on_event_loop == before
