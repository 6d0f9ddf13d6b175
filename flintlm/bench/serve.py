"""Load generator for any OpenAI-compatible server: streamed completions or chat, timed per chunk.

Sends requests at a fixed concurrency and/or a Poisson request rate, records each stream's
chunk arrival times, and aggregates them with `metrics.summarize`. It never starts servers
(see `peers.LlamaServer`) and never imports the engine.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import random
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace
from typing import Any, Literal

import httpx

from flintlm.bench.metrics import RequestTiming, ServeSummary, summarize, timing_from_chunk_times
from flintlm.bench.workload import Prompt

Endpoint = Literal["completions", "chat"]


@dataclass(frozen=True, slots=True)
class ServeConfig:
    """One load level against one server."""

    base_url: str  # "http://127.0.0.1:8000" or ".../v1"
    model: str  # the `model` field sent with each request
    endpoint: Endpoint = "completions"
    concurrency: int = 1  # most requests in flight at once
    request_rate: float = math.inf  # mean requests/s of Poisson arrivals; inf sends at once
    ignore_eos: bool = True  # send `ignore_eos` so every request generates max_tokens
    timeout_s: float = 600.0  # per request
    api_key: str | None = None
    seed: int = 0  # seeds the arrival times

    def __post_init__(self) -> None:
        if self.concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {self.concurrency}")
        if self.request_rate <= 0:
            raise ValueError(
                f"request_rate must be > 0 (inf for no pacing), got {self.request_rate}"
            )

    @property
    def url(self) -> str:
        root = self.base_url.rstrip("/").removesuffix("/v1")
        path = "chat/completions" if self.endpoint == "chat" else "completions"
        return f"{root}/v1/{path}"


@dataclass(frozen=True, slots=True)
class ServeRun:
    """One timed run: its configuration, the aggregate, and every request's timing."""

    config: ServeConfig
    summary: ServeSummary
    timings: list[RequestTiming]


def build_payload(prompt: Prompt, config: ServeConfig) -> dict[str, Any]:
    """The JSON body for one streamed, greedy request of `prompt`.

    Raises:
        ValueError: for a chat request whose prompt has token ids but no text.
    """
    payload: dict[str, Any] = {
        "model": config.model,
        "max_tokens": prompt.num_output_tokens,
        "temperature": 0.0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if config.ignore_eos:
        payload["ignore_eos"] = True
    if config.endpoint == "chat":
        if prompt.text is None:
            raise ValueError("chat requests need text prompts; use --prompt-format text")
        payload["messages"] = [{"role": "user", "content": prompt.text}]
    else:
        payload["prompt"] = prompt.engine_input
    return payload


async def iter_sse_data(response: httpx.Response) -> AsyncIterator[str]:
    """Yield the `data` of each server-sent event, joined across multi-line events."""
    data_lines: list[str] = []
    async for line in response.aiter_lines():
        if not line:
            if data_lines:
                yield "\n".join(data_lines)
                data_lines = []
            continue
        if line.startswith("data:"):
            data_lines.append(line[5:].removeprefix(" "))
        # Other fields (event:, id:, retry:) and comments (":") carry nothing we time.
    if data_lines:
        yield "\n".join(data_lines)


def chunk_output(chunk: dict[str, Any], endpoint: Endpoint) -> str:
    """The generated text a stream chunk carries ("" for role-only, usage and final chunks)."""
    choices = chunk.get("choices") or []
    if not choices:
        return ""
    if endpoint == "chat":
        delta = choices[0].get("delta") or {}
        return (delta.get("content") or "") + (delta.get("reasoning_content") or "")
    return choices[0].get("text") or ""


async def send_request(
    client: httpx.AsyncClient, prompt: Prompt, config: ServeConfig
) -> RequestTiming:
    """Send one streamed request and time its output chunks; failures come back as timings."""
    payload = build_payload(prompt, config)
    fallback_prompt_len = (
        len(prompt.token_ids) if prompt.token_ids is not None else len((prompt.text or "").split())
    )
    chunk_times: list[float] = []
    usage: dict[str, Any] = {}
    start = time.perf_counter()
    try:
        async with client.stream("POST", config.url, json=payload) as response:
            if response.status_code != 200:
                body = (await response.aread()).decode(errors="replace")
                return _failure(start, f"HTTP {response.status_code}: {body[:300]}")
            async for data in iter_sse_data(response):
                if data.strip() == "[DONE]":
                    break
                chunk = json.loads(data)
                if "error" in chunk:
                    return _failure(start, f"stream error: {json.dumps(chunk['error'])[:300]}")
                if chunk_output(chunk, config.endpoint):
                    chunk_times.append(time.perf_counter())
                usage = chunk.get("usage") or usage
    except (httpx.HTTPError, json.JSONDecodeError) as exc:
        return _failure(start, f"{type(exc).__name__}: {exc}")
    return timing_from_chunk_times(
        start_s=start,
        chunk_times_s=chunk_times,
        end_s=time.perf_counter(),
        num_prompt_tokens=int(usage.get("prompt_tokens", fallback_prompt_len)),
        num_output_tokens=usage.get("completion_tokens"),
    )


def _failure(start: float, error: str) -> RequestTiming:
    return RequestTiming(is_success=False, latency_s=time.perf_counter() - start, error=error)


def _client(config: ServeConfig) -> httpx.AsyncClient:
    headers = {"Authorization": f"Bearer {config.api_key}"} if config.api_key else {}
    return httpx.AsyncClient(
        headers=headers,
        timeout=httpx.Timeout(config.timeout_s, connect=30.0),
        limits=httpx.Limits(
            max_connections=config.concurrency, max_keepalive_connections=config.concurrency
        ),
    )


async def run_load(
    config: ServeConfig, prompts: list[Prompt], warmup_prompts: list[Prompt] | None = None
) -> ServeRun:
    """Send every prompt once under `config`'s concurrency and arrival rate; time the run.

    `warmup_prompts` are sent one by one first and not timed. NOTE: they should differ from
    `prompts`, or a server's prefix cache turns part of the timed prefill into cache hits.
    """
    if not prompts:
        raise ValueError("no prompts to send")
    rng = random.Random(config.seed)
    in_flight = asyncio.Semaphore(config.concurrency)
    async with _client(config) as client:
        for prompt in warmup_prompts or []:
            warmup = await send_request(client, prompt, config)
            if not warmup.is_success:
                raise RuntimeError(f"warm-up request to {config.url} failed: {warmup.error}")

        async def limited(prompt: Prompt) -> RequestTiming:
            async with in_flight:
                return await send_request(client, prompt, config)

        start = time.perf_counter()
        tasks: list[asyncio.Task[RequestTiming]] = []
        for prompt in prompts:
            tasks.append(asyncio.create_task(limited(prompt)))
            if math.isfinite(config.request_rate):
                await asyncio.sleep(rng.expovariate(config.request_rate))
        timings = list(await asyncio.gather(*tasks))
        duration = time.perf_counter() - start
    return ServeRun(config=config, summary=summarize(timings, duration), timings=timings)


def run_sweep(
    config: ServeConfig,
    make_prompts: Callable[[int, int], list[Prompt]],
    concurrencies: list[int],
    num_runs: int,
) -> list[ServeRun]:
    """`num_runs` runs at each concurrency, in order, each with prompts never sent before.

    Args:
        config: the load level template; `concurrency` and `seed` are set per run.
        make_prompts: (concurrency, seed) -> prompts. Seed 0 gives the warm-up prompt; timed
            runs get seeds 1, 2, ... across the whole sweep, so no timed prompt repeats one
            sent earlier and a server's prefix cache cannot turn its prefill into a hit.
        concurrencies: in-flight limits to sweep.
        num_runs: timed runs per concurrency.
    """
    runs = []
    seeds = itertools.count(1)
    for concurrency in concurrencies:
        for run in range(num_runs):
            level = replace(config, concurrency=concurrency, seed=config.seed + run)
            prompts = make_prompts(concurrency, next(seeds))
            warmup = make_prompts(concurrency, 0)[:1]
            runs.append(asyncio.run(run_load(level, prompts, warmup_prompts=warmup)))
    return runs


def wait_until_ready(
    base_url: str, timeout_s: float = 120.0, is_alive: Callable[[], bool] | None = None
) -> None:
    """Poll `/health` (then `/v1/models`) until one answers 200.

    Args:
        base_url: server root, with or without `/v1`.
        timeout_s: give up after this long.
        is_alive: optional callable; when it returns False (the server process died) stop early.

    Raises:
        TimeoutError: if the server did not become ready in time.
        RuntimeError: if `is_alive` reports the server gone.
    """
    root = base_url.rstrip("/").removesuffix("/v1")
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if is_alive is not None and not is_alive():
            raise RuntimeError(f"server at {root} exited before it became ready")
        for path in ("/health", "/v1/models"):
            try:
                if httpx.get(root + path, timeout=5.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
        time.sleep(0.5)
    raise TimeoutError(f"server at {root} not ready after {timeout_s:.0f}s")
