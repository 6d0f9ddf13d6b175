"""Prometheus metrics: request latencies and token counts observed by the API once per finished
engine request, and engine gauges (batch, queue, KV blocks, prefix cache) read from
`AsyncEngine.stats()` at scrape time so they are never stale.

Each app owns its own registry, so several servers (or tests) in one process do not collide.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from flintlm.engine.async_engine import EngineStats

_LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                      120.0)
_TOKEN_LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3,
                            0.5, 1.0, 2.5)


class _EngineCollector(Collector):
    def __init__(self, stats: Callable[[], EngineStats], model_name: str):
        self._stats = stats
        self._model_name = model_name

    def collect(self) -> Iterator[Metric]:
        stats = self._stats()
        labels = ["model"], [self._model_name]

        def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
            family = GaugeMetricFamily(name, doc, labels=labels[0])
            family.add_metric(labels[1], value)
            return family

        def counter(name: str, doc: str, value: float) -> CounterMetricFamily:
            family = CounterMetricFamily(name, doc, labels=labels[0])
            family.add_metric(labels[1], value)
            return family

        yield gauge("flintlm_num_requests_running", "Requests in the running batch.",
                    stats.num_running)
        yield gauge("flintlm_num_requests_waiting", "Requests queued for admission.",
                    stats.num_waiting)
        yield gauge("flintlm_kv_blocks_used", "KV-cache blocks held by requests.",
                    stats.num_kv_blocks_used)
        yield gauge("flintlm_kv_blocks_total", "KV-cache blocks in the pool.",
                    stats.num_kv_blocks_total)
        yield gauge("flintlm_kv_cache_usage_ratio", "Fraction of KV-cache blocks in use.",
                    stats.num_kv_blocks_used / max(stats.num_kv_blocks_total, 1))
        yield counter("flintlm_prefix_cache_queries", "Prompt tokens looked up in the prefix "
                      "cache.", stats.prefix_cache_queries)
        yield counter("flintlm_prefix_cache_hits", "Prompt tokens found in the prefix cache.",
                      stats.prefix_cache_hits)
        yield gauge("flintlm_prefix_cache_hit_rate", "Prefix-cache hits / queries since start.",
                    stats.prefix_cache_hits / max(stats.prefix_cache_queries, 1))
        yield counter("flintlm_num_preemptions", "Requests preempted to free KV blocks.",
                      stats.num_preemptions)


class Metrics:
    """The server's metrics; `observe_request` is called once per finished engine request."""

    def __init__(self, stats: Callable[[], EngineStats] | None, model_name: str):
        self.registry = CollectorRegistry()
        label = ["model"]
        self.model_name = model_name

        def histogram(name: str, doc: str, buckets: tuple[float, ...]) -> Histogram:
            return Histogram(name, doc, label, buckets=buckets, registry=self.registry)

        self.ttft = histogram("flintlm_time_to_first_token_seconds",
                              "Time from arrival to the first output token.", _LATENCY_BUCKETS_S)
        self.tpot = histogram("flintlm_time_per_output_token_seconds",
                              "Mean time between output tokens after the first.",
                              _TOKEN_LATENCY_BUCKETS_S)
        self.e2e = histogram("flintlm_e2e_request_latency_seconds",
                             "Time from arrival to the last output.", _LATENCY_BUCKETS_S)
        self.queue = histogram("flintlm_request_queue_time_seconds",
                               "Time a request waited before its first schedule.",
                               _LATENCY_BUCKETS_S)
        self.prompt_tokens = Counter("flintlm_prompt_tokens", "Prompt tokens processed.", label,
                                     registry=self.registry)
        self.generation_tokens = Counter("flintlm_generation_tokens", "Tokens generated.", label,
                                         registry=self.registry)
        self.requests = Counter("flintlm_requests", "Finished engine requests by finish reason.",
                                ["model", "finish_reason"], registry=self.registry)
        if stats is not None:
            self.registry.register(_EngineCollector(stats, model_name))

    def observe_request(
        self,
        *,
        finish_reason: str,
        prompt_tokens: int,
        completion_tokens: int,
        e2e_s: float,
        ttft_s: float | None,
        queue_time_s: float | None,
    ) -> None:
        model = self.model_name
        self.requests.labels(model, finish_reason).inc()
        self.prompt_tokens.labels(model).inc(prompt_tokens)
        self.generation_tokens.labels(model).inc(completion_tokens)
        self.e2e.labels(model).observe(e2e_s)
        if ttft_s is not None:
            self.ttft.labels(model).observe(ttft_s)
            if completion_tokens > 1:
                self.tpot.labels(model).observe((e2e_s - ttft_s) / (completion_tokens - 1))
        if queue_time_s is not None:
            self.queue.labels(model).observe(queue_time_s)

    def render(self) -> tuple[bytes, str]:
        """The exposition text and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST

