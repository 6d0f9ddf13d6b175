"""Per-replica engine gauges: each engine replica publishes its stats to Redis (a key per replica
that expires when it stops publishing); the ingress reads them all and exports them on its
/metrics under llm-d's inference-gateway names (`vllm:*`) and flintlm's own, one series per
replica. Redis is the store every server of a `--ray` deployment already shares.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from flintlm.engine.engine import EngineStats

# A replica publishes every PUBLISH_INTERVAL_S; its entry outlives a few missed ones, then goes.
PUBLISH_INTERVAL_S = 0.5
_ENTRY_TTL_S = 5


@dataclass(frozen=True)
class ReplicaStats:
    """One engine replica's stats at one moment, as published to the board."""

    replica_id: str
    pid: int
    num_in_flight: int  # requests the replica holds streams for (running, waiting or arriving)
    engine: EngineStats

    @property
    def kv_cache_usage(self) -> float:
        return self.engine.num_kv_blocks_used / max(self.engine.num_kv_blocks_total, 1)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str | bytes) -> ReplicaStats:
        data = json.loads(text)
        return cls(data["replica_id"], data["pid"], data["num_in_flight"],
                   EngineStats(**data["engine"]))


def board_prefix(name: str) -> str:
    """The Redis key prefix of the board `name` (`engine_deployment.board_name`)."""
    return f"flintlm:scale:{name}:replica:"


class ReplicaBoard:
    """The replicas' stats in Redis, under `flintlm:scale:<name>:replica:<replica_id>`."""

    def __init__(self, redis_url: str, name: str) -> None:
        import redis.asyncio as aioredis

        self._redis = aioredis.from_url(redis_url)
        self._prefix = board_prefix(name)

    async def publish(self, stats: ReplicaStats) -> None:
        await self._redis.set(self._prefix + stats.replica_id, stats.to_json(), ex=_ENTRY_TTL_S)

    async def withdraw(self, replica_id: str) -> None:
        await self._redis.delete(self._prefix + replica_id)

    async def read(self) -> dict[str, ReplicaStats]:
        """Every live replica's latest stats, by replica id."""
        keys = [key async for key in self._redis.scan_iter(match=self._prefix + "*", count=100)]
        if not keys:
            return {}
        values = await self._redis.mget(keys)
        entries = (ReplicaStats.from_json(v) for v in values if v is not None)
        return {entry.replica_id: entry for entry in entries}

    async def aclose(self) -> None:
        await self._redis.aclose()


def summed(replicas: dict[str, ReplicaStats]) -> EngineStats:
    """The deployment's engine stats: the replicas' added up (what the flintlm_* gauges show)."""
    total = EngineStats(0, 0, 0, 0, 0, 0, 0, 0)
    for entry in replicas.values():
        total = EngineStats(*(a + b for a, b in zip(dataclasses.astuple(total),
                                                    dataclasses.astuple(entry.engine),
                                                    strict=True)))
    return total


class ReplicaCollector(Collector):
    """Per-replica series from the board's latest read (`snapshot` must not block)."""

    def __init__(self, snapshot: Callable[[], dict[str, ReplicaStats]], model_name: str):
        self._snapshot = snapshot
        self._model_name = model_name

    def collect(self) -> Iterator[Metric]:
        replicas = self._snapshot()
        label_names = ["model_name", "replica"]

        def family(kind: type[GaugeMetricFamily] | type[CounterMetricFamily], name: str,
                   doc: str, value: Callable[[ReplicaStats], float]) -> Metric:
            metric = kind(name, doc, labels=label_names)
            for replica_id, entry in sorted(replicas.items()):
                metric.add_metric([self._model_name, replica_id], value(entry))
            return metric

        # The names llm-d's inference gateway scrapes from vLLM, for orchestrators that route
        # on them; vLLM reports KV use as a fraction in [0, 1] despite the name.
        yield family(GaugeMetricFamily, "vllm:num_requests_running",
                     "Requests in the replica's running batch.", lambda e: e.engine.num_running)
        yield family(GaugeMetricFamily, "vllm:num_requests_waiting",
                     "Requests waiting for the replica's running batch.",
                     lambda e: max(0, e.num_in_flight - e.engine.num_running))
        yield family(GaugeMetricFamily, "vllm:kv_cache_usage_perc",
                     "Fraction of the replica's KV-cache blocks in use (0-1).",
                     lambda e: e.kv_cache_usage)
        yield family(GaugeMetricFamily, "flintlm_replica_kv_blocks_used",
                     "KV-cache blocks held by requests on the replica.",
                     lambda e: e.engine.num_kv_blocks_used)
        yield family(CounterMetricFamily, "flintlm_replica_prefix_cache_hits",
                     "Prompt tokens the replica found in its prefix cache.",
                     lambda e: e.engine.prefix_cache_hits)
        yield family(CounterMetricFamily, "flintlm_replica_prefix_cache_queries",
                     "Prompt tokens the replica looked up in its prefix cache.",
                     lambda e: e.engine.prefix_cache_queries)
