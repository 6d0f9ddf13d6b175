"""The live snapshot's arithmetic: percentiles from histogram buckets, and rates and latencies
over recent windows only, driven through real `Metrics` and a clock the test moves."""

from __future__ import annotations

import math

import pytest

from flintlm.console.live import LATENCY_WINDOW_S, LiveWindow, quantile
from flintlm.engine.engine import EngineStats
from flintlm.observability.metrics import Metrics

INF = math.inf


def test_quantile_interpolates_inside_its_bucket() -> None:
    buckets = ((1.0, 10.0), (2.0, 30.0), (4.0, 40.0), (INF, 40.0))
    assert quantile(0.25, buckets) == pytest.approx(1.0)  # rank 10: the top of the first
    assert quantile(0.5, buckets) == pytest.approx(1.5)  # rank 20: halfway through (1, 2]
    assert quantile(0.9, buckets) == pytest.approx(3.2)  # rank 36: 6/10 through (2, 4]


def test_quantile_in_the_open_bucket_is_the_last_bound_and_none_without_data() -> None:
    assert quantile(0.99, ((1.0, 5.0), (INF, 10.0))) == 1.0
    assert quantile(0.5, ((1.0, 0.0), (INF, 0.0))) is None
    assert quantile(0.5, ()) is None


class Clock:
    def __init__(self) -> None:
        self.now_s = 1000.0

    def __call__(self) -> float:
        return self.now_s


class Engine:
    """What `EngineStats` the window reads; the test sets the counters."""

    def __init__(self) -> None:
        self.num_computed_tokens = 0
        self.num_running = 0

    def stats(self) -> EngineStats:
        return EngineStats(num_running=self.num_running, num_waiting=1, num_kv_blocks_total=64,
                           num_kv_blocks_used=16, prefix_cache_queries=10,
                           prefix_cache_hits=4, num_preemptions=2,
                           num_computed_tokens=self.num_computed_tokens)


def finish(metrics: Metrics, ttft_s: float, num_tokens: int = 5) -> None:
    metrics.observe_request(finish_reason="stop", prompt_tokens=3, completion_tokens=num_tokens,
                            e2e_s=ttft_s + 0.1 * (num_tokens - 1), ttft_s=ttft_s,
                            queue_time_s=0.0)


def test_a_snapshot_reads_the_engine_and_the_window_of_finished_requests() -> None:
    metrics, engine, clock = Metrics(None, "tiny"), Engine(), Clock()
    window = LiveWindow(metrics, engine.stats, clock)
    first = window.snapshot()
    assert (first.num_waiting, first.kv_blocks_used, first.kv_blocks_total) == (1, 16, 64)
    assert first.kv_cache_usage == 0.25 and first.prefix_cache_hit_rate == 0.4
    assert first.ttft_s.count == 0 and first.ttft_s.p50 is None

    for ttft_s in (0.2, 0.3, 0.4, 0.7):  # buckets (0.1, 0.25], (0.25, 0.5] x2, (0.5, 1]
        finish(metrics, ttft_s)
    engine.num_computed_tokens, engine.num_running = 500, 3
    clock.now_s += 5.0
    later = window.snapshot()
    assert later.num_running == 3
    assert later.rate_window_s == 5.0
    assert later.computed_tokens_per_s == pytest.approx(100.0)
    assert later.generated_tokens_per_s == pytest.approx(4.0)  # 4 requests x 5 tokens / 5 s
    assert later.requests_per_s == pytest.approx(0.8)
    assert later.ttft_s.count == 4 and later.e2e_s.count == 4
    assert 0.25 < later.ttft_s.p50 <= 0.5  # type: ignore[operator]
    assert 0.5 < later.ttft_s.p99 <= 1.0  # type: ignore[operator]
    assert later.tpot_s.p50 == pytest.approx(0.1, rel=0.3)  # 0.1 s a token, in (0.075, 0.15]


def test_old_requests_leave_the_window() -> None:
    metrics, engine, clock = Metrics(None, "tiny"), Engine(), Clock()
    window = LiveWindow(metrics, engine.stats, clock)
    window.snapshot()
    finish(metrics, 0.2)
    for _ in range(int(LATENCY_WINDOW_S) + 5):  # a poll a second, a minute and more
        clock.now_s += 1.0
        window.snapshot()
    finish(metrics, 3.0)
    clock.now_s += 1.0
    recent = window.snapshot()
    assert recent.ttft_s.count == 1
    assert recent.ttft_s.p50 is not None and recent.ttft_s.p50 > 2.5
    assert recent.latency_window_s <= LATENCY_WINDOW_S
    assert recent.requests_per_s == pytest.approx(1 / recent.rate_window_s)
