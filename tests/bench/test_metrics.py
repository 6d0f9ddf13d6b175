"""Metric math of the benchmark harness, on synthetic timestamps (vLLM `bench serve`
definitions)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from flintlm.bench.metrics import (
    Distribution,
    RequestTiming,
    percentile,
    summarize,
    timing_from_chunk_times,
)


@pytest.mark.parametrize("pct", [0, 1, 25, 50, 90, 99, 100])
@pytest.mark.parametrize("values", [[3.0], [5.0, 1.0], [1.0, 2.0, 3.0, 10.0], list(range(37))])
def test_percentile_matches_numpy_linear(values: list[float], pct: float) -> None:
    assert percentile(values, pct) == pytest.approx(np.percentile(values, pct))


def test_percentile_rejects_empty_and_out_of_range() -> None:
    with pytest.raises(ValueError):
        percentile([], 50)
    with pytest.raises(ValueError):
        percentile([1.0], 101)


def test_timing_from_chunks_gives_ttft_itl_and_tpot() -> None:
    # Sent at t=10; chunks at 10.5, 10.6, 10.8, 11.1; stream closed at 11.2.
    timing = timing_from_chunk_times(10.0, [10.5, 10.6, 10.8, 11.1], 11.2, num_prompt_tokens=7)
    assert timing.is_success
    assert timing.ttft_s == pytest.approx(0.5)
    assert timing.itl_s == pytest.approx([0.1, 0.2, 0.3])
    assert timing.latency_s == pytest.approx(1.2)
    assert timing.num_output_tokens == 4  # chunk count, no usage given
    assert timing.tpot_s == pytest.approx((1.2 - 0.5) / 3)


def test_usage_count_overrides_chunk_count_in_tpot() -> None:
    # Two chunks that carried 9 tokens in all: TPOT divides by tokens, ITL stays per chunk.
    timing = timing_from_chunk_times(0.0, [1.0, 2.0], 2.0, num_prompt_tokens=3, num_output_tokens=9)
    assert timing.num_output_tokens == 9
    assert timing.tpot_s == pytest.approx(1.0 / 8)
    assert timing.itl_s == pytest.approx([1.0])


def test_stream_without_output_is_a_failure_and_single_token_has_no_tpot() -> None:
    assert not timing_from_chunk_times(0.0, [], 1.0, num_prompt_tokens=3).is_success
    assert timing_from_chunk_times(0.0, [0.4], 0.5, num_prompt_tokens=3).tpot_s is None


def test_summarize_throughputs_and_distributions() -> None:
    timings = [
        RequestTiming(True, 10, 5, ttft_s=0.1, latency_s=0.5, itl_s=[0.1] * 4),
        RequestTiming(True, 20, 3, ttft_s=0.3, latency_s=0.7, itl_s=[0.2, 0.2]),
        RequestTiming(True, 5, 1, ttft_s=0.2, latency_s=0.2),  # no TPOT, no ITL
        RequestTiming(False, error="HTTP 500"),
    ]
    summary = summarize(timings, duration_s=2.0)
    assert summary.num_completed == 3 and summary.num_failed == 1
    assert summary.total_prompt_tokens == 35 and summary.total_output_tokens == 9
    assert summary.request_throughput == pytest.approx(1.5)
    assert summary.output_throughput == pytest.approx(4.5)
    assert summary.total_token_throughput == pytest.approx(22.0)
    assert summary.ttft.mean_ms == pytest.approx(200.0)
    assert summary.ttft.percentiles_ms["p50"] == pytest.approx(200.0)
    # TPOTs: (0.5-0.1)/4 = 0.1 and (0.7-0.3)/2 = 0.2; the 1-token request is left out.
    assert summary.tpot.mean_ms == pytest.approx(150.0)
    assert summary.itl.mean_ms == pytest.approx(np.mean([100.0] * 4 + [200.0] * 2))
    assert summary.itl.percentiles_ms["p99"] == pytest.approx(
        np.percentile([100] * 4 + [200] * 2, 99)
    )
    assert summary.e2el.std_ms == pytest.approx(np.std([500.0, 700.0, 200.0]))
    flat = summary.to_flat_dict()
    assert flat["tpot_p50_ms"] == pytest.approx(150.0)
    assert all(isinstance(v, float | int) for v in flat.values())


def test_summarize_of_all_failures_reports_zeros() -> None:
    summary = summarize([RequestTiming(False)], duration_s=1.0)
    assert summary.num_completed == 0 and summary.output_throughput == 0.0
    assert summary.ttft == Distribution(0.0, 0.0, {"p50": 0.0, "p90": 0.0, "p99": 0.0})


def test_summarize_rejects_nonpositive_duration() -> None:
    with pytest.raises(ValueError):
        summarize([], duration_s=0.0)
    assert math.isfinite(summarize([], duration_s=1.0).request_throughput)
