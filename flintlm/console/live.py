"""GET /console/api/live: the console's live view as one small JSON object: running and waiting
requests, KV-cache use, throughput over the last seconds, and TTFT, time-per-output-token and
end-to-end percentiles over the last minute, all from the server's own metrics.

A call costs one `EngineStats` read (plain counters, as a /metrics scrape reads them, without
waiting on the engine thread) and a walk over a few dozen histogram buckets; no database, no
Prometheus text. Percentiles come from bucket counts the way PromQL's `histogram_quantile` does.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated

from fastapi import APIRouter, Depends, Request
from prometheus_client.metrics import MetricWrapperBase
from pydantic import BaseModel

from flintlm.api.deps import Credentials, Serving
from flintlm.api.routes.admin import require_admin

if TYPE_CHECKING:
    from flintlm.engine.engine import EngineStats
    from flintlm.observability.metrics import Metrics

router = APIRouter(prefix="/console/api")

LATENCY_WINDOW_S = 60.0  # percentiles cover the requests that finished in the last minute
RATE_WINDOW_S = 10.0  # throughput: short enough to follow a burst, long enough to be smooth
_SAMPLE_EVERY_S = 1.0  # at most one kept sample a second, however many pollers there are
QUANTILES = (0.5, 0.9, 0.99)

Buckets = tuple[tuple[float, float], ...]  # (upper bound, cumulative count), +inf last


@dataclass(frozen=True)
class _Sample:
    at_s: float  # time.monotonic()
    computed_tokens: int
    generated_tokens: float
    num_requests: float
    ttft: Buckets
    tpot: Buckets
    e2e: Buckets


class LatencySummary(BaseModel):
    count: int  # observations in the window
    p50: float | None
    p90: float | None
    p99: float | None


class LiveSnapshot(BaseModel):
    object: str = "console.live"
    model: str
    num_running: int
    num_waiting: int
    kv_blocks_used: int
    kv_blocks_total: int
    kv_cache_usage: float  # fraction of the pool in use
    prefix_cache_hit_rate: float  # since start
    num_preemptions: int  # since start
    rate_window_s: float  # what the rates below were measured over (shorter just after start)
    computed_tokens_per_s: float  # prompt + generated tokens run through the model, per second
    generated_tokens_per_s: float  # by requests that finished in the window
    requests_per_s: float  # finished
    latency_window_s: float
    ttft_s: LatencySummary
    tpot_s: LatencySummary
    e2e_s: LatencySummary


def quantile(q: float, buckets: Buckets) -> float | None:
    """The q-quantile of a cumulative histogram, interpolated linearly inside its bucket; the
    last finite bound when it falls in the +inf bucket; None without observations."""
    total = buckets[-1][1] if buckets else 0.0
    if total <= 0:
        return None
    rank = q * total
    lower_bound, lower_count = 0.0, 0.0
    for upper_bound, count in buckets:
        if count >= rank:
            if upper_bound == float("inf"):
                return lower_bound
            share = (rank - lower_count) / (count - lower_count) if count > lower_count else 1.0
            return lower_bound + (upper_bound - lower_bound) * share
        lower_bound, lower_count = upper_bound, count
    return lower_bound


def _buckets(histogram: MetricWrapperBase) -> Buckets:
    """Cumulative counts per upper bound, summed over the histogram's label sets."""
    counts: dict[float, float] = {}
    for family in histogram.collect():
        for sample in family.samples:
            if sample.name.endswith("_bucket"):
                bound = float(sample.labels["le"])
                counts[bound] = counts.get(bound, 0.0) + sample.value
    return tuple(sorted(counts.items()))


def _total(counter: MetricWrapperBase) -> float:
    return sum(sample.value for family in counter.collect() for sample in family.samples
               if sample.name.endswith("_total"))


def _minus(now: Buckets, then: Buckets) -> Buckets:
    earlier = dict(then)
    return tuple((bound, count - earlier.get(bound, 0.0)) for bound, count in now)


def _summary(now: Buckets, then: Buckets) -> LatencySummary:
    window = _minus(now, then)
    p50, p90, p99 = (quantile(q, window) for q in QUANTILES)
    return LatencySummary(count=int(window[-1][1]) if window else 0, p50=p50, p90=p90, p99=p99)


class LiveWindow:
    """Recent samples of the metrics, so rates and percentiles cover a recent window rather
    than all time. One per app; called from the event loop only."""

    def __init__(self, metrics: Metrics, stats: Callable[[], EngineStats],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._metrics = metrics
        self._stats = stats
        self._clock = clock
        self._samples: deque[_Sample] = deque()

    def snapshot(self) -> LiveSnapshot:
        stats = self._stats()
        now = self._sample(stats)
        rate_base = self._baseline(now.at_s - RATE_WINDOW_S, now)
        latency_base = self._baseline(now.at_s - LATENCY_WINDOW_S, now)
        self._keep(now)
        rate_window_s = now.at_s - rate_base.at_s

        def per_second(value: float) -> float:
            return value / rate_window_s if rate_window_s > 0 else 0.0

        return LiveSnapshot(
            model=self._metrics.model_name, num_running=stats.num_running,
            num_waiting=stats.num_waiting, kv_blocks_used=stats.num_kv_blocks_used,
            kv_blocks_total=stats.num_kv_blocks_total,
            kv_cache_usage=stats.num_kv_blocks_used / max(stats.num_kv_blocks_total, 1),
            prefix_cache_hit_rate=stats.prefix_cache_hits / max(stats.prefix_cache_queries, 1),
            num_preemptions=stats.num_preemptions, rate_window_s=rate_window_s,
            computed_tokens_per_s=per_second(now.computed_tokens - rate_base.computed_tokens),
            generated_tokens_per_s=per_second(now.generated_tokens - rate_base.generated_tokens),
            requests_per_s=per_second(now.num_requests - rate_base.num_requests),
            latency_window_s=now.at_s - latency_base.at_s,
            ttft_s=_summary(now.ttft, latency_base.ttft),
            tpot_s=_summary(now.tpot, latency_base.tpot),
            e2e_s=_summary(now.e2e, latency_base.e2e))

    def _sample(self, stats: EngineStats) -> _Sample:
        metrics = self._metrics
        return _Sample(at_s=self._clock(), computed_tokens=stats.num_computed_tokens,
                       generated_tokens=_total(metrics.generation_tokens),
                       num_requests=_total(metrics.requests), ttft=_buckets(metrics.ttft),
                       tpot=_buckets(metrics.tpot), e2e=_buckets(metrics.e2e))

    def _baseline(self, since_s: float, now: _Sample) -> _Sample:
        """The oldest kept sample taken at or after `since_s`; `now` when there is none, so
        the first call reports all time so far as a zero-length window."""
        return next((sample for sample in self._samples if sample.at_s >= since_s), now)

    def _keep(self, now: _Sample) -> None:
        if self._samples and now.at_s - self._samples[-1].at_s < _SAMPLE_EVERY_S:
            return
        self._samples.append(now)
        while self._samples and self._samples[0].at_s < now.at_s - LATENCY_WINDOW_S:
            self._samples.popleft()


async def require_operator(serving: Serving, secret: Credentials) -> None:
    """The admin key passes, and anyone on a server that needs no key (a dev server, whose
    user is its operator); the rest get the admin API's 401/403. The numbers are server-wide
    (every key's load), so a key sees its own usage in the console, not this."""
    if secret is not None and serving.platform.is_admin(secret):
        return
    if not await serving.admission.is_key_required():
        return
    await require_admin(serving, secret)


def live_window(request: Request, serving: Serving) -> LiveWindow:
    """The app's window, made on first use (no await in between: one per app)."""
    window: LiveWindow | None = getattr(request.app.state, "console_live", None)
    if window is None:
        window = LiveWindow(serving.metrics, serving.engine.stats)
        request.app.state.console_live = window
    return window


@router.get("/live", dependencies=[Depends(require_operator)])
async def live(window: Annotated[LiveWindow, Depends(live_window)]) -> LiveSnapshot:
    return window.snapshot()
