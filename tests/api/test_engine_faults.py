"""Engine faults through a real server (FLINTLM_FAULT_INJECT), the openai client and raw SSE:
a runner that raises fails only the requests of that step (500, or an in-band error then
`[DONE]` once the stream has started) and the next request is served; an engine loop that dies
turns /health and every request into a fast 503 `engine_dead`. Each request gets one ledger row.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.platform.served import CHAT, NUM_COMPLETION, IssuedKey, PlatformServer, platform_servers

# A request that cannot end before the fault: it runs alone until a second one joins its batch.
LONG_STREAM: dict[str, Any] = {
    "model": "default", "messages": [{"role": "user", "content": "Count to a thousand."}],
    "max_tokens": 1500, "temperature": 0, "ignore_eos": True, "stream": True, "logprobs": True}
# A request to a dead engine has nothing to wait for; a hang would show as this timeout.
FAIL_FAST_TIMEOUT_S = 60.0


def sqlite_url(directory: Path) -> str:
    return f"sqlite+pysqlite:///{directory / 'flintlm.db'}"


@pytest.fixture
def faulty(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[PlatformServer]:
    """A platform server whose engine fails as `request.param` (a FLINTLM_FAULT_INJECT value)
    says."""
    with platform_servers(tmp_path, sqlite_url(tmp_path),
                          env={"FLINTLM_FAULT_INJECT": request.param}) as [server]:
        yield server


def sse_payloads(lines: Iterator[str]) -> Iterator[str]:
    for line in lines:
        if line.startswith("data: "):
            yield line.removeprefix("data: ")


def num_tokens(chunk: dict[str, Any]) -> int:
    logprobs = chunk["choices"][0].get("logprobs") if chunk["choices"] else None
    return len(logprobs["content"]) if logprobs else 0


def error_of(response: httpx.Response) -> dict[str, Any]:
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return error  # type: ignore[no-any-return]


@pytest.mark.parametrize("faulty", ["runner_batch=2"], indirect=True)
def test_runner_fault_fails_its_step_only_and_the_next_request_is_served(
        faulty: PlatformServer) -> None:
    key = faulty.create_key("faults")
    client = faulty.openai(key)
    with faulty.http(key) as http, http.stream("POST", "/v1/chat/completions",
                                               json=LONG_STREAM) as streamed:
        assert streamed.status_code == 200
        payloads = sse_payloads(streamed.iter_lines())
        first = json.loads(next(payloads))
        streamed_tokens = num_tokens(first)
        while streamed_tokens == 0:  # the role chunk, then the first token
            streamed_tokens += num_tokens(json.loads(next(payloads)))
        # the first step with two requests raises: this one fails before its first byte...
        with pytest.raises(openai.InternalServerError) as failed:
            client.chat.completions.create(**CHAT)
        assert failed.value.status_code == 500
        assert error_of(failed.value.response)["type"] == "server_error"
        # ...and the stream that was already running ends with an in-band error, then [DONE]
        rest = list(payloads)
    assert rest[-1] == "[DONE]"
    error = json.loads(rest[-2])["error"]
    assert error["type"] == "server_error" and error["message"]
    chunks = [json.loads(p) for p in rest[:-2]]
    assert all("error" not in c and c["choices"][0]["finish_reason"] is None for c in chunks)
    streamed_tokens += sum(num_tokens(c) for c in chunks)

    # the engine serves on
    after = client.chat.completions.create(**CHAT)
    assert after.choices[0].finish_reason == "length"
    assert after.usage is not None and after.usage.completion_tokens == NUM_COMPLETION
    assert httpx.get(f"{faulty.url}/health").status_code == 200

    rows = faulty.wait_for_ledger(key.id, 3)
    num_prompt = after.usage.prompt_tokens
    assert sorted((r["status"], r["completion_tokens"]) for r in rows) == sorted(
        [("failed", 0), ("finished", NUM_COMPLETION), ("failed", streamed_tokens)])
    assert all((r["error_code"] is None) == (r["status"] == "finished") for r in rows)
    chat_rows = [r for r in rows if r["status"] == "finished" or r["completion_tokens"] == 0]
    assert [r["prompt_tokens"] for r in chat_rows] == [num_prompt, num_prompt]


@pytest.mark.parametrize("faulty", ["loop_step=3"], indirect=True)
def test_dead_engine_loop_turns_health_and_requests_into_fast_503(
        faulty: PlatformServer) -> None:
    key: IssuedKey = faulty.create_key("dead")
    with faulty.http(key) as http:
        with http.stream("POST", "/v1/chat/completions", json=LONG_STREAM) as streamed:
            assert streamed.status_code == 200
            payloads = list(sse_payloads(streamed.iter_lines()))
        # two steps ran (two tokens went out), then the loop died: in-band 503, then [DONE]
        assert payloads[-1] == "[DONE]"
        assert json.loads(payloads[-2])["error"]["code"] == "engine_dead"
        streamed_tokens = sum(num_tokens(json.loads(p)) for p in payloads[:-2])
        assert streamed_tokens == 2

        health = httpx.get(f"{faulty.url}/health")
        assert health.status_code == 503 and error_of(health)["code"] == "engine_dead"
        live = httpx.get(f"{faulty.url}/health/live")  # only a restart brings the engine back
        assert live.status_code == 503 and error_of(live)["code"] == "engine_dead"
        for body in ({**CHAT, "stream": False}, {**CHAT, "stream": True}):
            body = {k: v for k, v in body.items() if k != "extra_body"}
            refused = http.post("/v1/chat/completions", json=body, timeout=FAIL_FAST_TIMEOUT_S)
            assert refused.status_code == 503, refused.text
            assert error_of(refused)["code"] == "engine_dead"
            assert refused.headers["retry-after"]

    rows = sorted(faulty.wait_for_ledger(key.id, 3), key=lambda r: r["completion_tokens"])
    assert [(r["status"], r["error_code"], r["completion_tokens"]) for r in rows] == [
        ("rejected", "engine_dead", 0), ("rejected", "engine_dead", 0),
        ("failed", "engine_dead", 2)]
