"""Per-request timings and their aggregation, with the metric definitions of `vllm bench serve`.

Pure arithmetic on plain floats: no I/O, no clocks, no numpy, so it is tested on synthetic
timestamps. Times are seconds in `RequestTiming`; summaries report milliseconds, as vLLM does.
"""

from __future__ import annotations

import itertools
import math
import statistics
from dataclasses import asdict, dataclass, field

DEFAULT_PERCENTILES: tuple[float, ...] = (50.0, 90.0, 99.0)


@dataclass(slots=True)
class RequestTiming:
    """What one streamed request measured.

    `ttft_s` is the gap between sending the request and the first chunk that carried output;
    `itl_s` holds every later gap between output chunks (one entry per chunk, not per token, as
    vLLM records it); `latency_s` runs from sending to the end of the stream.
    """

    is_success: bool
    num_prompt_tokens: int = 0
    num_output_tokens: int = 0
    ttft_s: float = 0.0
    latency_s: float = 0.0
    itl_s: list[float] = field(default_factory=list)
    error: str = ""

    @property
    def tpot_s(self) -> float | None:
        """Time per output token after the first; None for requests with fewer than 2 tokens."""
        if self.num_output_tokens < 2:
            return None
        return (self.latency_s - self.ttft_s) / (self.num_output_tokens - 1)


def percentile(values: list[float], pct: float) -> float:
    """The `pct`-th percentile with linear interpolation between closest ranks.

    Same convention as numpy's default (`method="linear"`), which vLLM's benchmark uses.

    Raises:
        ValueError: if `values` is empty or `pct` is outside [0, 100].
    """
    if not values:
        raise ValueError("percentile of an empty list; pass at least one value")
    if not 0.0 <= pct <= 100.0:
        raise ValueError(f"percentile {pct} is outside [0, 100]")
    ordered = sorted(values)
    rank = pct / 100.0 * (len(ordered) - 1)
    lower = math.floor(rank)
    upper = min(lower + 1, len(ordered) - 1)
    weight = rank - lower
    return ordered[lower] + (ordered[upper] - ordered[lower]) * weight


@dataclass(frozen=True, slots=True)
class Distribution:
    """Mean, standard deviation and percentiles of one latency metric, in milliseconds."""

    mean_ms: float
    std_ms: float
    percentiles_ms: dict[str, float]  # "p50" -> value

    @classmethod
    def of_seconds(
        cls, values_s: list[float], percentiles: tuple[float, ...] = DEFAULT_PERCENTILES
    ) -> Distribution:
        """Summarize `values_s` (seconds); an empty list gives zeros, as vLLM reports it."""
        if not values_s:
            return cls(0.0, 0.0, {_pct_key(p): 0.0 for p in percentiles})
        values_ms = [v * 1000.0 for v in values_s]
        return cls(
            mean_ms=statistics.fmean(values_ms),
            std_ms=statistics.pstdev(values_ms),
            percentiles_ms={_pct_key(p): percentile(values_ms, p) for p in percentiles},
        )


def _pct_key(pct: float) -> str:
    return f"p{pct:g}"


@dataclass(frozen=True, slots=True)
class ServeSummary:
    """One benchmark run at one load level, aggregated over its successful requests."""

    num_completed: int
    num_failed: int
    duration_s: float
    total_prompt_tokens: int
    total_output_tokens: int
    request_throughput: float  # completed requests / duration
    output_throughput: float  # output tokens / duration
    total_token_throughput: float  # (prompt + output tokens) / duration
    ttft: Distribution
    tpot: Distribution
    itl: Distribution
    e2el: Distribution

    def to_flat_dict(self) -> dict[str, float]:
        """Scalars only, keyed like `ttft_p99_ms`, for JSON files, tables and medians."""
        flat: dict[str, float] = {}
        for name, value in asdict(self).items():
            if isinstance(value, dict):
                flat[f"{name}_mean_ms"] = value["mean_ms"]
                flat[f"{name}_std_ms"] = value["std_ms"]
                for key, pct_value in value["percentiles_ms"].items():
                    flat[f"{name}_{key}_ms"] = pct_value
            else:
                flat[name] = value
        return flat


def summarize(
    timings: list[RequestTiming],
    duration_s: float,
    percentiles: tuple[float, ...] = DEFAULT_PERCENTILES,
) -> ServeSummary:
    """Aggregate one run: throughputs over `duration_s`, latency distributions over successes.

    Args:
        timings: every request sent in the run, failed ones included (they count only in
            `num_failed`).
        duration_s: wall time from the first request sent to the last one finished.
        percentiles: which percentiles each distribution reports.

    Raises:
        ValueError: if `duration_s` is not positive.
    """
    if duration_s <= 0:
        raise ValueError(f"duration_s must be positive, got {duration_s}")
    done = [t for t in timings if t.is_success]
    total_prompt = sum(t.num_prompt_tokens for t in done)
    total_output = sum(t.num_output_tokens for t in done)
    tpots = [tpot for t in done if (tpot := t.tpot_s) is not None]
    return ServeSummary(
        num_completed=len(done),
        num_failed=len(timings) - len(done),
        duration_s=duration_s,
        total_prompt_tokens=total_prompt,
        total_output_tokens=total_output,
        request_throughput=len(done) / duration_s,
        output_throughput=total_output / duration_s,
        total_token_throughput=(total_prompt + total_output) / duration_s,
        ttft=Distribution.of_seconds([t.ttft_s for t in done], percentiles),
        tpot=Distribution.of_seconds(tpots, percentiles),
        itl=Distribution.of_seconds([gap for t in done for gap in t.itl_s], percentiles),
        e2el=Distribution.of_seconds([t.latency_s for t in done], percentiles),
    )


def timing_from_chunk_times(
    start_s: float,
    chunk_times_s: list[float],
    end_s: float,
    num_prompt_tokens: int,
    num_output_tokens: int | None = None,
) -> RequestTiming:
    """Build a `RequestTiming` from the arrival times of a stream's output chunks.

    Args:
        start_s: when the request was sent.
        chunk_times_s: arrival time of each chunk that carried output, in order.
        end_s: when the stream ended.
        num_prompt_tokens: prompt length (from the usage chunk, or as sent).
        num_output_tokens: the server's count from the usage chunk; None falls back to the
            number of chunks, which undercounts when a server packs several tokens per chunk.
    """
    if not chunk_times_s:
        return RequestTiming(
            is_success=False,
            num_prompt_tokens=num_prompt_tokens,
            latency_s=end_s - start_s,
            error="stream ended without output",
        )
    gaps = [later - earlier for earlier, later in itertools.pairwise(chunk_times_s)]
    return RequestTiming(
        is_success=True,
        num_prompt_tokens=num_prompt_tokens,
        num_output_tokens=num_output_tokens
        if num_output_tokens is not None
        else len(chunk_times_s),
        ttft_s=chunk_times_s[0] - start_s,
        latency_s=end_s - start_s,
        itl_s=gaps,
    )
