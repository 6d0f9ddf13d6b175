"""What guardrails add to one request: the pipeline's own time, measured in-process on a typical
policy (docs/safety.md's example: blocklist, PII on every entity, moderation on the input), for
each mode and per request (p50/p99), with and without the moderation rule.

    .venv/bin/python bench/guardrails.py [--requests 300]

A request here is a ~1,000-character chat input (pre_call), then a ~900-character answer either
whole (post_call) or streamed as 200 pieces of ~4.5 characters, one per token (during_call).
No model runs: these are the milliseconds the checks add on top of generation.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from flintlm.safety.classifier import ProfanityModerator
from flintlm.safety.pipeline import Guardrails, RequestGuard
from flintlm.safety.policy import load_policies

POLICY = """
default = "typical"
[policies.typical]
max_prompt_chars = 20000
[[policies.typical.rules]]
name = "banned"
kind = "blocklist"
phrases = ["project zeus", "internal only", "do not distribute"]
[[policies.typical.rules]]
name = "pii"
kind = "pii"
[policies.typical.rules.entities]
email = "mask"
phone = "mask"
credit_card = "block"
iban = "block"
ip_address = "mask"
api_key = "block"
secret = "block"
"""
MODERATION = """
[[policies.typical.rules]]
name = "abuse"
kind = "moderation"
thresholds = { harassment = 0.8 }
modes = ["pre_call"]
"""
WORDS = (
    "the", "sea", "is", "wide", "and", "calm", "today", "while", "ships", "sail", "past",
    "the", "old", "harbour", "near", "town", "people", "walk", "along", "the", "shore", "and",
    "talk", "about", "weather", "fish", "boats", "and", "summer", "plans"
)


def prose(num_chars: int, rng: random.Random) -> str:
    words: list[str] = []
    while sum(len(w) + 1 for w in words) < num_chars:
        words.append(rng.choice(WORDS))
    return " ".join(words)


def percentiles(timings_ms: list[float]) -> str:
    ordered = sorted(timings_ms)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return f"p50 {statistics.median(ordered):.2f} ms, p99 {p99:.2f} ms"


async def timed(count: int, run: Callable[[RequestGuard], Awaitable[None]],
                guardrails: Guardrails, stream: bool) -> list[float]:
    timings = []
    for _ in range(count):
        guard = guardrails.guard(None, stream=stream)
        assert guard is not None
        start = time.perf_counter()
        await run(guard)
        timings.append((time.perf_counter() - start) * 1000)
    return timings


async def measure(guardrails: Guardrails, count: int, rng: random.Random) -> dict[str, str]:
    prompt = prose(1000, rng) + " mail me at ann@example.com"
    answer = prose(900, rng)
    pieces = [answer[i:i + 5] for i in range(0, len(answer), 5)][:200]

    async def pre(guard: RequestGuard) -> None:
        await guard.screen_input([prompt])

    async def post(guard: RequestGuard) -> None:
        await guard.screen_output(answer)

    async def during(guard: RequestGuard) -> None:
        screen = guard.stream()
        for i, piece in enumerate(pieces):
            await screen.feed(piece, is_final=i == len(pieces) - 1)

    await timed(10, pre, guardrails, False)  # warm-up: regex caches, the classifier's thread
    return {"pre_call": percentiles(await timed(count, pre, guardrails, False)),
            "post_call": percentiles(await timed(count, post, guardrails, False)),
            "during_call (200 pieces)": percentiles(await timed(count, during, guardrails, True))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=300)
    args = parser.parse_args()
    moderator = ProfanityModerator()
    with tempfile.TemporaryDirectory() as folder:
        for label, text in (("without moderation", POLICY),
                            ("with moderation", POLICY + MODERATION)):
            path = Path(folder) / "policy.toml"
            path.write_text(text)
            guardrails = Guardrails(load_policies(path), moderator)
            results = asyncio.run(measure(guardrails, args.requests, random.Random(0)))
            for mode, figures in results.items():
                print(f"{label:20s} {mode:26s} {figures}")
    moderator.close()


if __name__ == "__main__":
    main()
