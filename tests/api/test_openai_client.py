"""The real server (embedded model, float32 CPU) driven by the official `openai` client."""

from __future__ import annotations

import asyncio
import re
import time

import httpx
import openai
import pytest

from tests.conftest import HANG_TIMEOUT_S, LiveServer

MESSAGES = [{"role": "user", "content": "Name three colours."}]


def _prompt_tokens(server: LiveServer, **body: object) -> int:
    with server.http() as http:
        return int(http.post("/tokenize", json=body).json()["count"])


def _kv_blocks_used(server: LiveServer) -> float:
    text = httpx.get(f"{server.url}/metrics").text
    match = re.search(r"^flintlm_kv_blocks_used\{[^}]*\} (\S+)$", text, re.MULTILINE)
    assert match, text
    return float(match.group(1))


def _num_finished(server: LiveServer, finish_reason: str) -> float:
    """Engine requests ended for `finish_reason` so far (the server is shared: compare counts)."""
    text = httpx.get(f"{server.url}/metrics").text
    pattern = rf'^flintlm_requests_total\{{[^}}]*finish_reason="{finish_reason}"[^}}]*\}} (\S+)$'
    match = re.search(pattern, text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def test_models_lists_the_served_model(server: LiveServer) -> None:
    client = server.openai()
    assert [m.id for m in client.models.list().data] == ["default"]
    assert client.models.retrieve("default").id == "default"


def test_chat_streamed_equals_non_streamed_under_greedy(server: LiveServer) -> None:
    client = server.openai()
    kwargs = {"model": "default", "messages": MESSAGES, "temperature": 0, "max_tokens": 12}
    full = client.chat.completions.create(**kwargs)
    choice = full.choices[0]
    assert choice.message.role == "assistant" and choice.message.content
    assert choice.finish_reason in ("stop", "length")
    assert full.usage.prompt_tokens == _prompt_tokens(server, messages=MESSAGES)
    assert full.usage.total_tokens == full.usage.prompt_tokens + full.usage.completion_tokens

    chunks = list(client.chat.completions.create(**kwargs, stream=True,
                                                 stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == choice.message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == choice.finish_reason
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == (
        full.usage.completion_tokens)


def test_completion_streamed_equals_non_streamed(server: LiveServer) -> None:
    client = server.openai()
    kwargs = {"model": "default", "prompt": "Once upon a time", "temperature": 0,
              "max_tokens": 10}
    full = client.completions.create(**kwargs)
    streamed = "".join(c.choices[0].text for c in client.completions.create(**kwargs, stream=True)
                       if c.choices)
    assert streamed == full.choices[0].text != ""
    assert full.usage.prompt_tokens == _prompt_tokens(server, prompt="Once upon a time")


def test_token_id_prompts_and_usage(server: LiveServer) -> None:
    client = server.openai()
    ids = [[504, 3458, 314], [504, 3458, 314, 260]]
    result = client.completions.create(model="default", prompt=ids, max_tokens=4, temperature=0,
                                       extra_body={"ignore_eos": True})
    assert [c.index for c in result.choices] == [0, 1]
    assert all(c.finish_reason == "length" for c in result.choices)
    assert result.usage.prompt_tokens == 7 and result.usage.completion_tokens == 8


@pytest.mark.parametrize("bad_id", [-5, 2**51 - 1, -(2**40), 10**8])
def test_token_ids_outside_the_vocabulary_are_a_400_naming_the_id(server: LiveServer,
                                                                  bad_id: int) -> None:
    """Also ids no 32-bit integer holds (the tokenizer overflowed on them: a 500, found by
    schemathesis), alone or among good ones."""
    for prompt in ([504, bad_id], [[504, 3458], [bad_id]]):
        with pytest.raises(openai.BadRequestError) as raised:
            server.openai().completions.create(model="default", prompt=prompt, max_tokens=1)
        assert raised.value.status_code == 400 and raised.value.param == "prompt"
        assert str(bad_id) in raised.value.message


def test_n_choices_and_seed_reproducibility(server: LiveServer) -> None:
    client = server.openai()
    kwargs = {"model": "default", "messages": MESSAGES, "max_tokens": 8, "n": 3,
              "temperature": 1.0, "seed": 7}
    first = client.chat.completions.create(**kwargs)
    second = client.chat.completions.create(**kwargs)
    assert [c.index for c in first.choices] == [0, 1, 2]
    assert [c.message.content for c in first.choices] == [c.message.content
                                                          for c in second.choices]
    assert first.usage.prompt_tokens == _prompt_tokens(server, messages=MESSAGES)
    greedy = client.chat.completions.create(model="default", messages=MESSAGES, max_tokens=8,
                                            n=2, temperature=0)
    assert greedy.choices[0].message.content == greedy.choices[1].message.content


def test_stop_string_ends_the_text(server: LiveServer) -> None:
    client = server.openai()
    kwargs = {"model": "default", "prompt": "1, 2, 3, 4,", "temperature": 0, "max_tokens": 12}
    text = client.completions.create(**kwargs).choices[0].text
    stop = text.strip()[2:4] or text[:2]
    assert stop in text
    stopped = client.completions.create(**kwargs, stop=[stop, "never-seen-1", "never-seen-2",
                                                           "never-seen-3", "never-seen-4"])
    assert stopped.choices[0].text == text[: text.index(stop)]
    assert stopped.choices[0].finish_reason == "stop"


def test_chat_logprobs_and_top_logprobs(server: LiveServer) -> None:
    result = server.openai().chat.completions.create(
        model="default", messages=MESSAGES, temperature=0, max_tokens=5, logprobs=True,
        top_logprobs=3)
    content = result.choices[0].logprobs.content
    assert len(content) == result.usage.completion_tokens
    assert "".join(t.token for t in content) == result.choices[0].message.content
    for token in content:
        assert token.logprob <= 0 and len(token.top_logprobs) == 3
        assert token.token == token.top_logprobs[0].token  # greedy picks the most likely
        assert bytes(token.bytes).decode(errors="replace") == token.token


def test_echo_logprobs_for_prompt_tokens(server: LiveServer) -> None:
    """lm-eval-harness loglikelihood: token-id prompt, echo, max_tokens=0, logprobs."""
    ids = [504, 3458, 314, 260, 1345]
    result = server.openai().completions.create(model="default", prompt=ids, max_tokens=0,
                                                echo=True, logprobs=1, temperature=0)
    logprobs = result.choices[0].logprobs
    assert len(logprobs.tokens) == len(ids) == result.usage.prompt_tokens
    assert logprobs.token_logprobs[0] is None and logprobs.top_logprobs[0] is None
    assert all(lp is not None and lp <= 0 for lp in logprobs.token_logprobs[1:])
    for token, lp, top in zip(logprobs.tokens[1:], logprobs.token_logprobs[1:],
                              logprobs.top_logprobs[1:], strict=True):
        assert top[token] == lp and len(top) <= 2
    assert result.choices[0].text == "".join(logprobs.tokens)
    assert result.usage.completion_tokens == 0


def test_errors_through_the_sdk(server: LiveServer) -> None:
    client = server.openai()
    with pytest.raises(openai.AuthenticationError):
        server.openai(api_key="wrong").models.list()
    with pytest.raises(openai.NotFoundError) as not_found:
        client.chat.completions.create(model="gpt-9", messages=MESSAGES)
    assert not_found.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError) as too_long:
        client.completions.create(model="default", prompt="hi", max_tokens=100_000)
    assert (too_long.value.code, too_long.value.param) == ("context_length_exceeded",
                                                           "max_tokens")
    with pytest.raises(openai.BadRequestError) as long_prompt:
        client.completions.create(model="default", prompt="hi " * 3000, max_tokens=1)
    assert (long_prompt.value.code, long_prompt.value.param) == ("context_length_exceeded",
                                                                 "prompt")
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(model="default", messages=MESSAGES, temperature=5)
    assert bad.value.param == "temperature"
    with pytest.raises(openai.BadRequestError) as unsupported:
        client.chat.completions.create(model="default", messages=MESSAGES,
                                       extra_body={"prediction": {"type": "content",
                                                                  "content": "x"}})
    assert unsupported.value.param == "prediction"
    accepted = client.chat.completions.create(model="default", messages=MESSAGES, max_tokens=2,
                                              extra_body={"my_custom_field": 1})
    assert accepted.choices[0].message.content is not None


def test_raw_error_bodies(server: LiveServer) -> None:
    with server.http() as http:
        bad_json = http.post("/v1/completions", content=b'{"prompt": ',
                             headers={"Content-Type": "application/json"})
        streamed_bad = http.post("/v1/completions", json={"prompt": "x", "stream": True,
                                                          "max_tokens": -1})
    with httpx.Client(base_url=server.url) as anonymous:
        missing_key = anonymous.post("/v1/completions", json={"prompt": "x"})
    for response, status in ((bad_json, 400), (streamed_bad, 400), (missing_key, 401)):
        assert response.status_code == status
        assert set(response.json()["error"]) == {"message", "type", "param", "code"}
    assert streamed_bad.json()["error"]["param"] == "max_tokens"


async def test_32_concurrent_streams(server: LiveServer) -> None:
    client = openai.AsyncOpenAI(base_url=f"{server.url}/v1", api_key=server.api_key,
                                max_retries=0, timeout=HANG_TIMEOUT_S)

    async def one(i: int) -> tuple[str, int]:
        stream = await client.completions.create(
            model="default", prompt=f"Fact number {i}:", max_tokens=6, temperature=0,
            stream=True, stream_options={"include_usage": True}, extra_body={"ignore_eos": True})
        text, usage = "", None
        async for chunk in stream:
            text += "".join(c.text for c in chunk.choices)
            usage = chunk.usage or usage
        return text, usage.completion_tokens

    results = await asyncio.gather(*(one(i) for i in range(32)))
    await client.close()
    assert all(tokens == 6 for _, tokens in results)


def test_disconnect_mid_stream_frees_kv_blocks(server: LiveServer) -> None:
    baseline = _kv_blocks_used(server)
    num_disconnects = _num_finished(server, "disconnect")
    body = {"prompt": "Write a long story.", "max_tokens": 1500, "stream": True,
            "ignore_eos": True}
    with server.http() as http, http.stream("POST", "/v1/completions", json=body) as response:
        seen = 0
        # NOTE: held in a name, so that leaving the loop does not garbage-collect the iterator,
        # which closes the connection (the disconnect would race the /metrics read below).
        lines = response.iter_lines()
        for line in lines:
            seen += line.startswith("data: {")
            if seen == 40:
                break
        held = _kv_blocks_used(server)
    assert held > baseline
    deadline = time.monotonic() + HANG_TIMEOUT_S
    while _kv_blocks_used(server) > baseline and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _kv_blocks_used(server) == baseline
    while _num_finished(server, "disconnect") <= num_disconnects and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _num_finished(server, "disconnect") == num_disconnects + 1


def test_tokenize_roundtrip(server: LiveServer) -> None:
    with server.http() as http:
        tokens = http.post("/tokenize", json={"prompt": "Hello world"}).json()
        assert tokens["count"] == len(tokens["tokens"]) > 0
        assert tokens["max_model_len"] == 2048
        text = http.post("/detokenize", json={"tokens": tokens["tokens"]}).json()["prompt"]
    assert text == "Hello world"
