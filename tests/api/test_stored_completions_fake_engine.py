"""Stored completions' edge cases against `FakeEngine`: a stream is kept only once it finished
(a failed one is not), every choice of `n` is assembled, and what a stream keeps equals what the
same request keeps without streaming."""

from __future__ import annotations

from typing import Any

import httpx

from flintlm.api.tool_calls import format_call
from tests.api.conftest import FakeServer
from tests.api.fakes import FAIL_LATER, REPLY


def _stored(client: httpx.Client, run: str) -> list[dict[str, Any]]:
    response = client.get("/v1/chat/completions", params={"metadata[run]": run})
    assert response.status_code == 200, response.text
    return response.json()["data"]  # type: ignore[no-any-return]


def test_a_stream_that_fails_is_not_stored(fake_server: FakeServer) -> None:
    body = {"messages": [{"role": "user", "content": FAIL_LATER.decode()}], "stream": True,
            "store": True, "metadata": {"run": "fails"}}
    with fake_server.client() as client:
        with client.stream("POST", "/v1/chat/completions", json=body) as response:
            frames = list(response.iter_lines())
        assert any('"error"' in frame for frame in frames)
        assert _stored(client, "fails") == []


def test_every_choice_of_a_stream_is_assembled_as_without_streaming(
        fake_server: FakeServer) -> None:
    body = {"messages": [{"role": "user", "content": "hi"}], "n": 2, "store": True,
            "stream_options": {"include_usage": True}}
    with fake_server.client() as client:
        plain = client.post("/v1/chat/completions", json={**body, "stream_options": None,
                                                          "metadata": {"run": "plain"}})
        assert plain.status_code == 200, plain.text
        with client.stream("POST", "/v1/chat/completions",
                           json={**body, "stream": True, "metadata": {"run": "sse"}}) as sse:
            assert sse.status_code == 200
            sse.read()
        [kept_plain] = _stored(client, "plain")
        [kept_sse] = _stored(client, "sse")
    assert kept_plain["choices"] == plain.json()["choices"]
    assert [c["message"]["content"] for c in kept_sse["choices"]] == [REPLY, REPLY]
    for field in ("choices", "usage", "model", "object"):
        assert kept_sse[field] == kept_plain[field], field
    assert kept_sse["metadata"] == {"run": "sse"}


def test_a_streamed_tool_call_is_stored_as_the_plain_one(fake_server: FakeServer) -> None:
    fake_server.engine.reply = ("Checking.\n" + format_call("get_weather", '{"city": "Oslo"}'))
    # room for the tool definitions (bytes are tokens); admission checks the context first
    fake_server.engine.max_model_len = fake_server.admission.max_model_len = 8192
    tools = [{"type": "function", "function": {
        "name": "get_weather", "parameters": {"type": "object",
                                              "properties": {"city": {"type": "string"}}}}}]
    body = {"messages": [{"role": "user", "content": "weather?"}], "tools": tools,
            "tool_choice": "required", "store": True}
    try:
        with fake_server.client() as client:
            plain = client.post("/v1/chat/completions", json={**body, "metadata": {"run": "t1"}})
            assert plain.status_code == 200, plain.text
            with client.stream("POST", "/v1/chat/completions", json={
                    **body, "stream": True, "metadata": {"run": "t2"}}) as sse:
                sse.read()
            [kept_plain] = _stored(client, "t1")
            [kept_sse] = _stored(client, "t2")
    finally:
        fake_server.engine.reply = type(fake_server.engine).reply
        fake_server.engine.max_model_len = type(fake_server.engine).max_model_len
        fake_server.admission.max_model_len = fake_server.engine.max_model_len

    def without_ids(choices: list[dict[str, Any]]) -> list[dict[str, Any]]:
        for choice in choices:
            for call in choice["message"]["tool_calls"]:
                assert call.pop("id").startswith("call_")
        return choices

    assert kept_sse["choices"][0]["finish_reason"] == "tool_calls"
    assert without_ids(kept_sse["choices"]) == without_ids(kept_plain["choices"])
    assert kept_sse["tools"] == tools
