"""Markdown table of one bench/tiers.sh run (one tier, one model): flintlm against llama.cpp.

    .venv/bin/python bench/tiers_report.py bench/results/tiers-2026-12-03 avx2-default

Medians of the runs; llama.cpp's batched output tok/s is its generated tokens over the whole
batch's wall time (prefill included), as flintlm's offline figure is.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path


def _jsonl(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.startswith("{")]


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def _span(values: list[float]) -> str:
    return f"{min(values):.1f}-{max(values):.1f}" if values else ""


def _result(path: Path, system: str) -> dict | None:
    if not path.exists():
        return None
    for result in json.loads(path.read_text())["results"]:
        if result["system"].startswith(system) and not result.get("error"):
            return result
    return None


def _ratio(ours: float | None, theirs: float | None) -> str:
    return f"**{ours / theirs:.2f}x**" if ours and theirs else "n/a"


def rows(folder: Path, tag: str) -> list[str]:
    offline = folder / f"{tag}-offline.json"
    batch = _result(offline, "flintlm/auto")
    single = next((r for r in json.loads(offline.read_text())["results"]
                   if r["system"].endswith("single-stream") and not r.get("error")), None) \
        if offline.exists() else None
    bench = _jsonl(folder / f"{tag}-llama-bench.jsonl")
    tg = [b["avg_ts"] for b in bench if b["n_gen"] > 0 and b["n_prompt"] == 0]
    pp = [b["avg_ts"] for b in bench if b["n_prompt"] > 0 and b["n_gen"] == 0]
    batched = [b["pl"] * b["tg"] / b["t"] for b in _jsonl(folder / f"{tag}-llama-batched.jsonl")]
    lines = []
    if batch:
        ours = [r["output_throughput"] for r in batch["runs"]]
        p = batch["params"]
        workload = f"{p['num_prompts']} x {p['input_len']}/{p['output_len']}"
        lines.append(f"| offline {workload}, output tok/s | {_median(ours):.1f} ({_span(ours)}) "
                     f"| {_median(batched) or 0:.1f} ({_span(batched)}) (`llama-batched-bench`) "
                     f"| {_ratio(_median(ours), _median(batched))} |")
    if single:
        decode = [r.get("decode_tokens_per_s") for r in single["runs"]]
        decode = [d for d in decode if d]
        lines.append(f"| single-stream decode tok/s | {_median(decode) or 0:.1f} ({_span(decode)}) "
                     f"| {_median(tg) or 0:.1f} ({_span(tg)}) (`llama-bench` tg) "
                     f"| {_ratio(_median(decode), _median(tg))} |")
        prefill = [r.get("prefill_tokens_per_s") for r in single["runs"]]
        prefill = [x for x in prefill if x]
        lines.append(f"| single-stream prefill tok/s | {_median(prefill) or 0:.1f} "
                     f"| {_median(pp) or 0:.1f} (`llama-bench` pp512) "
                     f"| {_ratio(_median(prefill), _median(pp))} |")
    serve = folder / f"{tag}-serve.json"
    if serve.exists():
        results = json.loads(serve.read_text())["results"]
        ours = next((r for r in results if r["system"].startswith("flintlm")), None)
        theirs = next((r for r in results if r["system"].startswith("llama-server")), None)
        if ours and theirs:
            concurrency = ours["params"].get("concurrency")
            o, t = ours["median"], theirs["median"]
            lines.append(f"| serving, {concurrency} streams, output tok/s | "
                         f"{o['output_throughput']:.1f} | {t['output_throughput']:.1f} "
                         f"(`llama-server --parallel {concurrency}`) | "
                         f"{_ratio(o['output_throughput'], t['output_throughput'])} |")
            lines.append(f"| ... TTFT p50 ms | {o['ttft_p50_ms']:.0f} | {t['ttft_p50_ms']:.0f} "
                         f"| {t['ttft_p50_ms'] / o['ttft_p50_ms']:.1f}x lower |")
    return lines


def main() -> None:
    folder, tag = Path(sys.argv[1]), sys.argv[2]
    print("| workload | flintlm (median, min-max) | llama.cpp | ratio |")
    print("|---|---|---|---|")
    print("\n".join(rows(folder, tag)))


if __name__ == "__main__":
    main()
