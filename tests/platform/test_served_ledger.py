"""The ledger through a real server, on SQLite and PostgreSQL: one row per request, whatever
ends it, and token sums equal to the `usage` clients were sent; SIGTERM loses no row.

Streams are counted in tokens, not chunks: completions streams carry `logprobs`, one entry per
token, so a client that walks away mid-stream knows exactly how many tokens it was sent.

One server per store for the module; the tests run in file order and the last one (SIGTERM)
stops it.
"""

from __future__ import annotations

import asyncio
import signal
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import openai
import pytest

from tests.conftest import HANG_TIMEOUT_S
from tests.platform.served import IssuedKey, PlatformServer, platform_servers

NUM_PER_KEY = 100
MAX_TOKENS = 1  # the cheapest request that still has a usage to settle
ABORT_MAX_TOKENS = 64  # long enough to be cut off after the first chunk
LIMITED_RPM = 20
SHORT_TOKENS, LONG_TOKENS = 16, 1500  # the SIGTERM test's requests: finished, and cut off
# Its drain, in units of one chat's time on this machine (`chat_seconds`): once all 8 have their
# first token, the short ones need about 8 such units to finish and the long ones over 1,000
# (measured), so the drain keeps a margin of 6 on one side and 20 on the other at any speed.
DRAIN_CHATS = 50
# A day: no request refills while the requests of a test run, however slow the machine.
WINDOW_S = 86_400


@pytest.fixture(scope="module")
def served(store_url: str, chat_seconds: float, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[PlatformServer]:
    drain_s = DRAIN_CHATS * chat_seconds
    with platform_servers(tmp_path_factory.mktemp("served"), store_url,
                          "--rate-window-s", str(WINDOW_S),
                          "--drain-timeout-s", f"{drain_s:.3f}") as [server]:
        yield server


@dataclass
class Outcome:
    """What one client saw: a usage, tokens of a stream it left, or a refusal."""

    kind: str  # finished | left | refused
    request_id: str | None = None
    prompt_tokens: int = 0
    cached_tokens: int = 0
    completion_tokens: int = 0  # for `left`: tokens received before leaving
    code: str | None = None


def _finished(request_id: str, usage: Any) -> Outcome:
    details = usage.prompt_tokens_details
    return Outcome("finished", request_id, usage.prompt_tokens,
                   details.cached_tokens if details else 0, usage.completion_tokens)


async def _chat(client: openai.AsyncOpenAI, i: int) -> Outcome:
    reply = await client.chat.completions.create(
        model="default", messages=[{"role": "user", "content": f"Request {i}: say a word."}],
        max_tokens=MAX_TOKENS, temperature=0)
    return _finished(reply.id, reply.usage)


async def _completion(client: openai.AsyncOpenAI, i: int) -> Outcome:
    reply = await client.completions.create(model="default", prompt=f"Word {i}:",
                                            max_tokens=MAX_TOKENS, temperature=0)
    return _finished(reply.id, reply.usage)


async def _chat_streamed(client: openai.AsyncOpenAI, i: int) -> Outcome:
    stream = await client.chat.completions.create(
        model="default", messages=[{"role": "user", "content": f"Stream {i}: say a word."}],
        max_tokens=MAX_TOKENS, temperature=0.8, seed=i, stream=True,
        stream_options={"include_usage": True})
    outcome = None
    async for chunk in stream:
        if chunk.usage is not None:
            outcome = _finished(chunk.id, chunk.usage)
    assert outcome is not None
    return outcome


async def _completion_left_mid_stream(client: openai.AsyncOpenAI, i: int) -> Outcome:
    """Streams and, on even `i`, walks away after the first tokens."""
    leaves = i % 2 == 0
    stream = await client.completions.create(
        model="default", prompt=f"Story {i}: once upon a time",
        max_tokens=ABORT_MAX_TOKENS if leaves else MAX_TOKENS, temperature=0, logprobs=0,
        stream=True, stream_options={"include_usage": True}, extra_body={"ignore_eos": True})
    received = 0
    async for chunk in stream:
        if chunk.usage is not None:
            return _finished(chunk.id, chunk.usage)
        received += sum(len(c.logprobs.tokens) for c in chunk.choices if c.logprobs)
        if leaves and received:
            await stream.close()
            return Outcome("left", chunk.id, completion_tokens=received)
    raise AssertionError("the stream ended without usage")


async def _completion_n2(client: openai.AsyncOpenAI, i: int) -> Outcome:
    prompts = [f"Fact {i}:", f"Rule {i}:"] if i % 4 == 0 else f"Fact {i}:"
    reply = await client.completions.create(
        model="default", prompt=prompts, n=2, max_tokens=MAX_TOKENS, temperature=0.7, seed=i)
    return _finished(reply.id, reply.usage)


async def _refused_or(call: Any, client: openai.AsyncOpenAI, i: int) -> Outcome:
    try:
        return await call(client, i)
    except openai.APIStatusError as exc:
        assert exc.status_code in (400, 429), exc
        return Outcome("refused", code=exc.code)


async def _context_too_long(client: openai.AsyncOpenAI, i: int) -> Outcome:
    """Admitted by the key's limits, then refused by the engine (a 400)."""
    try:
        await client.completions.create(model="default", prompt=f"Too long {i}",
                                        max_tokens=100_000)
    except openai.BadRequestError as exc:
        return Outcome("refused", code=exc.code)
    raise AssertionError("a completion beyond the context length was accepted")


async def _run_all(served: PlatformServer, plan: dict[IssuedKey, list[Any]]
                   ) -> dict[IssuedKey, list[Outcome]]:
    clients = {key: served.async_openai(key) for key in plan}
    tasks = {key: [asyncio.ensure_future(_refused_or(call, clients[key], i))
                   for i, call in enumerate(calls)] for key, calls in plan.items()}
    results = {key: list(await asyncio.gather(*futures)) for key, futures in tasks.items()}
    for client in clients.values():
        await client.close()
    return results


def _assert_rows_match(rows: list[dict[str, Any]], outcomes: list[Outcome]) -> None:
    assert len(rows) == len(outcomes) == len({row["request_id"] for row in rows})
    by_id = {row["request_id"]: row for row in rows}
    finished = [o for o in outcomes if o.kind == "finished"]
    for outcome in finished:
        row = by_id[outcome.request_id]
        assert row["status"] == "finished"
        assert (row["prompt_tokens"], row["cached_tokens"], row["completion_tokens"]) == (
            outcome.prompt_tokens, outcome.cached_tokens, outcome.completion_tokens)
    # The sums the issue asks for, over every request a client got a usage for.
    finished_rows = [row for row in rows if row["status"] == "finished"]
    assert len(finished_rows) == len(finished)
    for field in ("prompt_tokens", "cached_tokens", "completion_tokens"):
        assert sum(row[field] for row in finished_rows) == sum(getattr(o, field)
                                                              for o in finished)
    for outcome in (o for o in outcomes if o.kind == "left"):
        row = by_id[outcome.request_id]
        assert row["status"] == "aborted" and row["error_code"] == "client_disconnected"
        # Billed for what the server generated: at least what the client read, at most max.
        assert outcome.completion_tokens <= row["completion_tokens"] <= ABORT_MAX_TOKENS
        assert row["prompt_tokens"] > 0 and row["cost_nano_usd"] > 0
    refused = Counter(o.code for o in outcomes if o.kind == "refused")
    rejected_rows = [row for row in rows if row["status"] == "rejected"]
    assert Counter(row["error_code"] for row in rejected_rows) == refused
    assert all(row["prompt_tokens"] == row["completion_tokens"] == row["cost_nano_usd"] == 0
               for row in rejected_rows)


async def test_the_ledger_is_exact_over_500_concurrent_requests(served: PlatformServer) -> None:
    plain = served.create_key("plain")
    streamed = served.create_key("streamed")
    leaving = served.create_key("leaving")
    limited = served.create_key("limited", rpm=LIMITED_RPM)
    fanned_out = served.create_key("fanned-out")
    n = NUM_PER_KEY
    plan = {
        plain: [_completion] * (n - 5) + [_context_too_long] * 5,
        streamed: [_chat_streamed] * n,
        leaving: [_completion_left_mid_stream] * n,
        limited: [_chat, _chat_streamed] * (n // 2),
        fanned_out: [_completion_n2] * n,
    }
    results = await _run_all(served, plan)

    kinds = {key.id: Counter(o.kind for o in outcomes) for key, outcomes in results.items()}
    assert kinds[plain.id] == {"finished": n - 5, "refused": 5}
    assert kinds[streamed.id] == kinds[fanned_out.id] == {"finished": n}
    assert kinds[leaving.id] == {"finished": n // 2, "left": n // 2}
    assert kinds[limited.id] == {"finished": LIMITED_RPM, "refused": n - LIMITED_RPM}
    assert {o.code for o in results[limited] if o.kind == "refused"} == {"rate_limit_exceeded"}
    for key, outcomes in results.items():
        _assert_rows_match(served.wait_for_ledger(key.id, n), outcomes)


def _stream_until_cut(server: PlatformServer, key: IssuedKey, max_tokens: int,
                      first_token: threading.Event, seen: list[Outcome]) -> None:
    """A streamed completion; records its usage, or the tokens it got before the server quit."""
    received, request_id = 0, None
    try:
        for chunk in server.openai(key).completions.create(
                model="default", prompt="Count to a thousand:", max_tokens=max_tokens,
                temperature=0, logprobs=0, stream=True, stream_options={"include_usage": True},
                extra_body={"ignore_eos": True}):
            request_id = chunk.id
            if chunk.usage is not None:
                seen.append(_finished(chunk.id, chunk.usage))
                return
            received += sum(len(c.logprobs.tokens) for c in chunk.choices if c.logprobs)
            if received:
                first_token.set()
    except (openai.APIError, openai.APIConnectionError):
        pass
    seen.append(Outcome("left", request_id, completion_tokens=received))


def test_sigterm_with_requests_in_flight_leaves_a_complete_ledger(
        served: PlatformServer) -> None:
    """Short requests finish within the drain; long ones are cut off when it times out."""
    keys = [served.create_key("sigterm-a"), served.create_key("sigterm-b")]
    seen: dict[str, list[Outcome]] = {key.id: [] for key in keys}
    started = []
    threads = []
    for i in range(8):
        key = keys[i % 2]
        event = threading.Event()
        tokens = SHORT_TOKENS if i < 4 else LONG_TOKENS
        threads.append(threading.Thread(target=_stream_until_cut,
                                        args=(served, key, tokens, event, seen[key.id])))
        started.append(event)
        threads[-1].start()
    # Every request is in the engine and streaming: the drain starts with all 8 in flight.
    assert all(event.wait(HANG_TIMEOUT_S) for event in started)
    served.live.process.send_signal(signal.SIGTERM)
    exit_code = served.live.process.wait(HANG_TIMEOUT_S)
    for thread in threads:
        thread.join(HANG_TIMEOUT_S)
    assert exit_code == 0, served.live.log()
    for key in keys:
        outcomes = seen[key.id]
        assert Counter(o.kind for o in outcomes) == {"finished": 2, "left": 2}
        rows = {row["request_id"]: row for row in served.ledger(key.id)}
        assert len(rows) == 4  # flushed before the process exited
        for outcome in outcomes:
            row = rows[outcome.request_id]
            if outcome.kind == "finished":
                assert row["status"] == "finished"
                assert row["completion_tokens"] == outcome.completion_tokens == SHORT_TOKENS
            else:
                assert row["status"] == "aborted" and row["error_code"] == "server_draining"
                assert outcome.completion_tokens <= row["completion_tokens"] < LONG_TOKENS
