"""The HTTP layer against `FakeEngine`: what reaches the engine, error shapes, SSE framing,
fan-out and disconnects. Fast; the real model is exercised in test_openai_client.py."""

from __future__ import annotations

import json
import time

import httpx
import pytest

from tests.conftest import HANG_TIMEOUT_S

from .conftest import FakeServer
from .fakes import REPLY, SECRET


def _error(response: httpx.Response, status: int, param: str | None = None) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] is None or isinstance(error["code"], str)
    if param is not None:
        assert error["param"] == param, error
    return error


def _sse(response: httpx.Response) -> list[dict | str]:
    events: list[dict | str] = []
    for line in response.text.split("\n\n"):
        if line.startswith("data: "):
            payload = line[len("data: "):]
            events.append(payload if payload == "[DONE]" else json.loads(payload))
    return events


def test_every_honoured_chat_param_reaches_the_engine(fake_server: FakeServer) -> None:
    body = {
        "model": "fake",
        "messages": [{"role": "developer", "content": "be brief"},
                     {"role": "user", "content": [{"type": "text", "text": "hi"}]}],
        "max_completion_tokens": 7, "temperature": 0.5, "top_p": 0.9, "presence_penalty": 0.1,
        "frequency_penalty": 0.2, "logit_bias": {"65": 3.0}, "seed": 11, "stop": ["zz", "yy"],
        "logprobs": True, "top_logprobs": 3, "top_k": 5, "min_p": 0.05,
        "repetition_penalty": 1.1, "min_tokens": 1, "ignore_eos": True, "stop_token_ids": [1],
        "priority": 2, "cache_salt": "salt", "user": "u1",
    }
    with fake_server.client() as client:
        assert client.post("/v1/chat/completions", json=body).status_code == 200
    sub = fake_server.engine.submitted[-1]
    p = sub.params
    assert (p.max_tokens, p.temperature, p.top_p, p.presence_penalty, p.frequency_penalty) == (
        7, 0.5, 0.9, 0.1, 0.2)
    assert (p.logit_bias, p.seed, p.stop, p.logprobs, p.top_k, p.min_p) == (
        {65: 3.0}, 11, ["zz", "yy"], 3, 5, 0.05)
    assert (p.repetition_penalty, p.min_tokens, p.ignore_eos, p.stop_token_ids, p.n) == (
        1.1, 1, True, [1], 1)
    assert sub.priority == 2 and sub.cache_salt not in (None, "salt")  # the tenant's, narrowed
    prompt = bytes(sub.prompt_token_ids).decode()
    assert prompt == "<system>be brief\n<user>hi\n<assistant>"


def test_the_engine_gets_the_tenant_salt_narrowed_by_the_client_salt(
    fake_server: FakeServer
) -> None:
    salts = []
    with fake_server.client() as client:
        for client_salt in (None, None, "a", "a", "b"):
            body = {"prompt": "x", "max_tokens": 1, "cache_salt": client_salt}
            assert client.post("/v1/completions", json=body).status_code == 200
            salts.append(fake_server.engine.submitted[-1].cache_salt)
    assert None not in salts and "a" not in salts and "b" not in salts
    assert salts[0] == salts[1] and salts[2] == salts[3]
    assert len({salts[0], salts[2], salts[4]}) == 3


def test_every_honoured_completion_param_reaches_the_engine(fake_server: FakeServer) -> None:
    body = {"prompt": "abc", "max_tokens": 3, "echo": True, "logprobs": 2, "stop": "q",
            "best_of": 1, "temperature": 0, "include_stop_str_in_output": True,
            "skip_special_tokens": False}
    with fake_server.client() as client:
        assert client.post("/v1/completions", json=body).status_code == 200
    p = fake_server.engine.submitted[-1].params
    assert (p.max_tokens, p.logprobs, p.prompt_logprobs, p.stop, p.temperature) == (
        3, 2, 2, ["q"], 0.0)
    assert p.include_stop_str_in_output and not p.skip_special_tokens


def test_chat_without_max_tokens_gets_the_default_capped_by_the_context(
    fake_server: FakeServer
) -> None:
    """The server default (4096) is more than the fake's 256-token context: the rest of it."""
    with fake_server.client() as client:
        client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "x"}]})
    submitted = fake_server.engine.submitted[-1]
    assert submitted.params.max_tokens == (fake_server.engine.max_model_len
                                           - len(submitted.prompt_token_ids))


@pytest.mark.parametrize(("field", "value"), [
    ("audio", {"voice": "alloy", "format": "wav"}), ("modalities", ["text", "audio"]),
    ("prediction", {"type": "content", "content": "x"}),
    ("reasoning_effort", "low"), ("functions", [{"name": "f"}]),
    ("function_call", {"name": "f"}),
])
def test_known_unsupported_chat_field_is_rejected(fake_server: FakeServer, field: str,
                                                  value: object) -> None:
    body = {"messages": [{"role": "user", "content": "x"}], field: value}
    with fake_server.client() as client:
        error = _error(client.post("/v1/chat/completions", json=body), 400, field)
    assert error["type"] == "invalid_request_error"


@pytest.mark.parametrize(("field", "value"), [("suffix", "end"), ("best_of", 3)])
def test_known_unsupported_completion_field_is_rejected(fake_server: FakeServer, field: str,
                                                        value: object) -> None:
    with fake_server.client() as client:
        _error(client.post("/v1/completions", json={"prompt": "x", field: value}), 400, field)


def test_no_op_values_of_unsupported_fields_are_accepted(fake_server: FakeServer) -> None:
    body = {"messages": [{"role": "user", "content": "x"}], "response_format": {"type": "text"},
            "tool_choice": "none", "modalities": ["text"], "store": False,
            "some_future_field": {"a": 1}}
    with fake_server.client() as client:
        assert client.post("/v1/chat/completions", json=body).status_code == 200


@pytest.mark.parametrize(("body", "param"), [
    ({"messages": [{"role": "user", "content": "x"}], "temperature": 3}, "temperature"),
    ({"messages": [{"role": "user", "content": "x"}], "temperature": "hot"}, "temperature"),
    ({"messages": [{"role": "user", "content": "x"}], "n": 0}, "n"),
    ({"messages": [{"role": "user", "content": "x"}], "top_logprobs": 2}, "top_logprobs"),
    ({"messages": [{"role": "user", "content": "x"}], "logprobs": True, "top_logprobs": 21},
     "top_logprobs"),
    ({"messages": [{"role": "user", "content": "x"}], "logit_bias": {"x": 1}}, "logit_bias"),
    ({"messages": [{"role": "user", "content": "x"}], "stop": 5}, "stop"),  # no union member
    ({"messages": [{"role": "user", "content": "x"}], "stream_options": {"include_usage": True}},
     "stream_options"),
    ({"messages": []}, "messages"),
    ({}, "messages"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]},
     "messages[0].content"),
    ({"messages": [{"role": "user", "content": "x"}], "max_tokens": 1000},
     "max_tokens"),  # context_length_exceeded, by max_tokens
    ({"messages": [{"role": "user", "content": "x" * 300}]},
     "messages"),  # context_length_exceeded, by the prompt
    ({"messages": [{"role": "user", "content": "x"}], "cache_salt": ""}, "cache_salt"),
])
def test_invalid_chat_params_name_the_param(fake_server: FakeServer, body: dict,
                                            param: str) -> None:
    with fake_server.client() as client:
        _error(client.post("/v1/chat/completions", json=body), 400, param)


def test_context_length_error_has_its_code(fake_server: FakeServer) -> None:
    body = {"messages": [{"role": "user", "content": "x"}], "max_tokens": 1000, "stream": True}
    with fake_server.client() as client:
        error = _error(client.post("/v1/chat/completions", json=body), 400)
    assert error["code"] == "context_length_exceeded"


def test_malformed_json_is_a_400_not_a_422(fake_server: FakeServer) -> None:
    with fake_server.client() as client:
        response = client.post("/v1/chat/completions", content=b"{not json",
                               headers={"Content-Type": "application/json"})
    assert _error(response, 400)["type"] == "invalid_request_error"


def test_auth_model_and_route_errors(fake_server: FakeServer) -> None:
    body = {"messages": [{"role": "user", "content": "x"}]}
    with httpx.Client(base_url=fake_server.base_url) as anonymous:
        assert _error(anonymous.post("/v1/chat/completions", json=body), 401)["code"] == (
            "invalid_api_key")
        bad = anonymous.post("/v1/chat/completions", json=body,
                             headers={"Authorization": "Bearer nope"})
        _error(bad, 401)
        assert anonymous.get("/health").status_code == 200
    with fake_server.client() as client:
        assert _error(client.post("/v1/chat/completions", json={**body, "model": "gpt-9"}),
                      404, "model")["code"] == "model_not_found"
        _error(client.get("/v1/models/gpt-9"), 404, "model")
        _error(client.get("/v1/nope"), 404)
        assert client.get("/v1/models").json()["data"][0]["id"] == "fake"


def test_stream_framing(fake_server: FakeServer) -> None:
    body = {"messages": [{"role": "user", "content": "x"}], "stream": True, "max_tokens": 5,
            "stream_options": {"include_usage": True}}
    with fake_server.client() as client:
        response = client.post("/v1/chat/completions", json=body)
    assert response.headers["content-type"].startswith("text/event-stream")
    events = _sse(response)
    assert events[-1] == "[DONE]"
    first, *middle, finish, usage = events[:-1]
    assert first["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert "".join(e["choices"][0]["delta"]["content"] for e in middle) == REPLY[:5]
    assert finish["choices"][0] == {"index": 0, "delta": {}, "logprobs": None,
                                    "finish_reason": "length"}
    assert usage["choices"] == [] and usage["usage"]["completion_tokens"] == 5
    assert all(e["usage"] is None for e in events[:-2])


def test_n_fans_out_with_seed_plus_i(fake_server: FakeServer) -> None:
    body = {"messages": [{"role": "user", "content": "x"}], "n": 3, "seed": 5, "max_tokens": 2}
    with fake_server.client() as client:
        data = client.post("/v1/chat/completions", json=body).json()
    assert [c["index"] for c in data["choices"]] == [0, 1, 2]
    submitted = fake_server.engine.submitted[-3:]
    assert [s.params.seed for s in submitted] == [5, 6, 7]
    assert [s.request_id for s in submitted] == [f"{data['id']}-{i}" for i in range(3)]
    prompt = len(submitted[0].prompt_token_ids)
    assert data["usage"] == {"prompt_tokens": prompt, "completion_tokens": 6,
                             "total_tokens": prompt + 6,
                             "prompt_tokens_details": {"cached_tokens": 0}}


def test_completion_batch_and_echo_logprobs(fake_server: FakeServer) -> None:
    body = {"prompt": ["ab", "cd"], "max_tokens": 0, "echo": True, "logprobs": 1}
    with fake_server.client() as client:
        data = client.post("/v1/completions", json=body).json()
    texts = [c["text"] for c in data["choices"]]
    assert texts == ["ab", "cd"]
    logprobs = data["choices"][1]["logprobs"]
    assert logprobs["tokens"] == ["c", "d"] and logprobs["text_offset"] == [0, 1]
    assert logprobs["token_logprobs"] == [None, -0.5]
    assert logprobs["top_logprobs"] == [None, {"d": -0.5}]
    assert data["usage"]["prompt_tokens"] == 4


def test_disconnect_mid_stream_aborts(fake_server: FakeServer) -> None:
    engine = fake_server.engine
    engine.token_delay_s = 0.05
    body = {"prompt": "x", "max_tokens": 200, "ignore_eos": True, "stream": True}
    try:
        with fake_server.client() as client, client.stream("POST", "/v1/completions",
                                                           json=body) as response:
            for line in response.iter_lines():
                if line.startswith("data: {"):
                    break
        request_id = engine.submitted[-1].request_id
        deadline = time.monotonic() + HANG_TIMEOUT_S
        while request_id in engine.running and time.monotonic() < deadline:
            time.sleep(0.02)
        assert request_id in engine.aborted and request_id not in engine.running
    finally:
        engine.token_delay_s = 0.0


def test_disconnect_while_waiting_aborts_a_non_streamed_request(fake_server: FakeServer) -> None:
    engine = fake_server.engine
    engine.token_delay_s = 0.05
    body = {"prompt": "x", "max_tokens": 200, "ignore_eos": True}
    try:
        with pytest.raises(httpx.ReadTimeout), fake_server.client() as client:
            client.post("/v1/completions", json=body, timeout=0.5)
        request_id = engine.submitted[-1].request_id
        deadline = time.monotonic() + HANG_TIMEOUT_S
        while request_id in engine.running and time.monotonic() < deadline:
            time.sleep(0.02)
        assert request_id in engine.aborted
    finally:
        engine.token_delay_s = 0.0


def test_tokenize_and_detokenize(fake_server: FakeServer) -> None:
    with fake_server.client() as client:
        tokens = client.post("/tokenize", json={"prompt": "hi"}).json()
        assert tokens == {"tokens": [104, 105], "count": 2, "max_model_len": 256}
        assert client.post("/detokenize", json={"tokens": [104, 105]}).json() == {"prompt": "hi"}
        _error(client.post("/detokenize", json={"tokens": [9999]}), 400, "tokens")


def test_metrics_exposes_latency_and_engine_gauges(fake_server: FakeServer) -> None:
    with fake_server.client() as client:
        client.post("/v1/completions", json={"prompt": "x", "max_tokens": 3})
        text = client.get("/metrics").text
    for name in ("flintlm_time_to_first_token_seconds_bucket", "flintlm_e2e_request_latency",
                 "flintlm_time_per_output_token_seconds", "flintlm_request_queue_time_seconds",
                 "flintlm_num_requests_running", "flintlm_num_requests_waiting",
                 "flintlm_kv_blocks_used", "flintlm_prompt_tokens_total",
                 "flintlm_generation_tokens_total", "flintlm_prefix_cache_hit_rate"):
        assert name in text, name


def test_a_failure_before_output_is_a_500_without_details(fake_server: FakeServer) -> None:
    body = {"prompt": "fail-at-once", "stream": True}
    with fake_server.client() as client:
        error = _error(client.post("/v1/completions", json=body), 500)
    assert SECRET not in error["message"] and error["type"] == "server_error"


def test_a_failure_mid_stream_goes_in_band(fake_server: FakeServer) -> None:
    body = {"messages": [{"role": "user", "content": "fail-later"}], "stream": True}
    with fake_server.client() as client:
        response = client.post("/v1/chat/completions", json=body)
    assert response.status_code == 200
    events = _sse(response)
    assert events[-1] == "[DONE]"
    error = events[-2]["error"]  # type: ignore[index]
    assert set(error) == {"message", "type", "param", "code"} and SECRET not in error["message"]


def test_usage_settles_once_per_request(fake_server: FakeServer) -> None:
    admission = fake_server.admission
    before = len(admission.settled)
    with fake_server.client() as client:
        client.post("/v1/completions", json={"prompt": ["ab", "cd"], "max_tokens": 2, "n": 2})
        client.post("/v1/completions", json={"prompt": "x", "max_tokens": 3, "stream": True})
        client.post("/v1/completions", json={"prompt": "fail-at-once"})
    settled = admission.settled[before:]
    assert len(settled) == 3 and len({request_id for request_id, _, _ in settled}) == 3
    assert [(u.prompt_tokens, u.completion_tokens, status.value) for _, u, status in settled] == [
        (4, 8, "finished"), (1, 3, "finished"), (0, 0, "failed")]
    assert all(t.is_settled for t in admission.tickets)


def test_draining_refuses_new_requests_with_retry_after(fake_server: FakeServer) -> None:
    serving = fake_server.serving
    serving.begin_drain(30)
    try:
        with fake_server.client() as client:
            response = client.post("/v1/completions", json={"prompt": "x"})
            health = client.get("/health")
    finally:
        serving.is_draining, serving.drain_deadline_s = False, None
    assert _error(response, 503)["code"] == "server_draining"
    assert response.headers["Retry-After"] and health.status_code == 503


def test_invalid_params_are_a_400_before_authentication_and_admission(
    fake_server: FakeServer
) -> None:
    """Validation comes first: a bad parameter is a 400 even with a wrong key, and it is never
    admitted (no rate-limit token, no ledger row)."""
    admission = fake_server.admission
    before = len(admission.settled)
    bad_key = {"Authorization": "Bearer wrong-key"}
    with fake_server.client() as client:
        for body in ({"prompt": "x", "max_tokens": -1}, {"prompt": "x", "n": 0, "stream": True},
                     {"prompt": "x", "temperature": 3}):
            assert _error(client.post("/v1/completions", json=body), 400)["param"]
            assert _error(client.post("/v1/completions", json=body, headers=bad_key),
                          400)["param"]
        assert _error(client.post("/v1/completions", json={"prompt": "x"}, headers=bad_key),
                      401)["code"] == "invalid_api_key"
    assert admission.settled[before:] == []
