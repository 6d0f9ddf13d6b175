"""Moderation backends on the labelled set: precision/recall per judged category and for
`flagged`, and latency of one `classify` call of one text (p50/p99), as in docs/safety.md.

    .venv/bin/python bench/moderation.py                               # the bundled classifier
    .venv/bin/python bench/moderation.py --guard-model /path/Llama-Guard-3-1B.Q4_0.gguf
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from pathlib import Path

from flintlm.config import CacheConfig, FlintConfig, ModelConfig, ModerationConfig
from flintlm.safety.evaluation import load_labelled, score
from flintlm.safety.moderation import Moderator, build_moderator

LABELLED = Path(__file__).resolve().parent.parent / "tests" / "safety" / "data" / "labelled.tsv"


async def latencies_ms(moderator: Moderator, texts: list[str], rounds: int) -> list[float]:
    timings = []
    for _ in range(rounds):
        for text in texts:
            start = time.perf_counter()
            await moderator.classify([text])
            timings.append((time.perf_counter() - start) * 1000)
    return timings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--guard-model", help="a Llama Guard-format model: the guard backend")
    parser.add_argument("--rounds", type=int, default=5, help="passes over the set for timing")
    args = parser.parse_args()
    moderation = (ModerationConfig("guard", args.guard_model) if args.guard_model
                  else ModerationConfig())
    config = FlintConfig(model=ModelConfig(device="cpu"), cache=CacheConfig(
        kv_cache_memory=256 << 20), moderation=moderation)
    moderator = build_moderator(config)
    rows = load_labelled(LABELLED)
    results = asyncio.run(moderator.classify([row.text for row in rows]))
    print(f"{moderator.model_name}: {len(rows)} texts, "
          f"{sum(not row.labels for row in rows)} benign")
    print("| category | precision | recall | TP | FP | FN |\n|---|---|---|---|---|---|")
    for name, figures in score(rows, results).items():
        print(f"| {name} | {figures.precision:.2f} | {figures.recall:.2f} | "
              f"{figures.num_true_positives} | {figures.num_false_positives} | "
              f"{figures.num_false_negatives} |")
    timings = asyncio.run(latencies_ms(moderator, [row.text for row in rows], args.rounds))
    p99 = statistics.quantiles(timings, n=100)[98]
    print(f"latency per call of one text: p50 {statistics.median(timings):.2f} ms, "
          f"p99 {p99:.2f} ms over {len(timings)} calls")
    moderator.close()


if __name__ == "__main__":
    main()
