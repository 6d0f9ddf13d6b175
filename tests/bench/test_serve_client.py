"""The load generator's request path against an in-process fake OpenAI stream (no sockets)."""

from __future__ import annotations

import json

import httpx
import pytest

from flintlm.bench.serve import ServeConfig, send_request
from flintlm.bench.workload import Prompt


def _sse(events: list[dict | str]) -> bytes:
    frames = [f"data: {e if isinstance(e, str) else json.dumps(e)}\n\n" for e in events]
    return "".join(frames).encode()


def _fake_server(events: list[dict | str], status: int = 200) -> httpx.MockTransport:
    def handler(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        assert body["stream"] is True and body["ignore_eos"] is True
        assert body["stream_options"] == {"include_usage": True}
        return httpx.Response(status, content=_sse(events))

    return httpx.MockTransport(handler)


async def _send(events: list[dict | str], endpoint: str = "completions", status: int = 200):
    config = ServeConfig(base_url="http://fake/v1", model="m", endpoint=endpoint)  # type: ignore[arg-type]
    prompt = Prompt(token_ids=[1, 2, 3], text="a b c", num_output_tokens=3)
    async with httpx.AsyncClient(transport=_fake_server(events, status)) as client:
        return await send_request(client, prompt, config)


async def test_completion_stream_counts_usage_and_skips_empty_chunks() -> None:
    events = [
        {"choices": [{"text": "Hel"}]},
        {"choices": [{"text": "lo"}]},
        {"choices": [{"text": "!", "finish_reason": None}]},
        {"choices": [{"text": "", "finish_reason": "length"}]},
        {"choices": [], "usage": {"prompt_tokens": 4, "completion_tokens": 3}},
        "[DONE]",
    ]
    timing = await _send(events)
    assert timing.is_success, timing.error
    assert (timing.num_prompt_tokens, timing.num_output_tokens) == (4, 3)
    assert len(timing.itl_s) == 2  # three chunks with text -> two gaps


async def test_chat_stream_without_usage_falls_back_to_chunk_count() -> None:
    events = [
        {"choices": [{"delta": {"role": "assistant", "content": ""}}]},
        {"choices": [{"delta": {"content": "Hi"}}]},
        {"choices": [{"delta": {"content": " there"}}]},
        "[DONE]",
    ]
    timing = await _send(events, endpoint="chat")
    assert timing.is_success
    assert timing.num_output_tokens == 2
    assert timing.num_prompt_tokens == 3  # words sent, as no usage came back


async def test_http_error_and_stream_error_are_failures() -> None:
    assert "HTTP 400" in (await _send([{"error": "bad"}], status=400)).error
    failed = await _send([{"choices": [{"text": "x"}]}, {"error": {"message": "boom"}}])
    assert not failed.is_success and "boom" in failed.error


def test_config_validates_and_normalises_url() -> None:
    assert ServeConfig("http://h:1/v1/", "m").url == "http://h:1/v1/completions"
    assert ServeConfig("http://h:1", "m", endpoint="chat").url == "http://h:1/v1/chat/completions"
    with pytest.raises(ValueError):
        ServeConfig("http://h:1", "m", concurrency=0)
