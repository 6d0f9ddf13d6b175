"""One engine replica: a flintlm `AsyncEngine` (its own model and paged KV cache) as a Ray Serve
deployment. Streams `(replica_id, RequestOutput)` for each routed request; a cancelled call
(client gone, ingress abort) ends `AsyncEngine.generate` early, which aborts the request and
frees its KV blocks. Publishes its stats to the replica board for /metrics and tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import ray
from ray import serve

from flintlm.scale.metrics import PUBLISH_INTERVAL_S, ReplicaBoard, ReplicaStats
from flintlm.scale.protocol import ReplicaInfo

if TYPE_CHECKING:
    from flintlm.config import FlintConfig
    from flintlm.engine.request import RequestOutput
    from flintlm.scale.protocol import RoutedRequest

logger = logging.getLogger("flintlm.scale")


def board_name(app_name: str) -> str:
    """The replica board of `app_name` on this Ray cluster: apps of several clusters may share
    one Redis (the replicas' keys are namespaced by the cluster's GCS address)."""
    return f"{app_name}@{ray.get_runtime_context().gcs_address}"


class EngineReplica:
    """A Serve deployment class; `app.py` sets its replicas, router and autoscaling."""

    async def __init__(self, config: FlintConfig,  # type: ignore[misc]  # Serve awaits it
                       app_name: str) -> None:
        import torch

        from flintlm.engine.async_engine import AsyncEngine

        # NOTE: the threads follow Ray's CPU reservation, so replicas sharing a host do not
        # oversubscribe it (two replicas of 2 threads each on 2 cores ran ~3x slower per step).
        torch.set_num_threads(max(1, int(config.scale.replica_num_cpus)))
        self.replica_id = serve.get_replica_context().replica_id.unique_id
        self.engine = AsyncEngine.from_config(config)
        self.engine.start()
        self.block_size = config.cache.block_size
        self.board = ReplicaBoard(config.platform.redis_url or "", board_name(app_name))
        self._publisher = asyncio.create_task(self._publish_forever())
        logger.info("engine replica %s ready (pid %d)", self.replica_id, os.getpid())

    def info(self) -> ReplicaInfo:
        return ReplicaInfo(self.engine.model_name, self.engine.max_model_len, self.block_size,
                           self.engine.max_waiting)

    async def generate(self, request: RoutedRequest) -> AsyncIterator[tuple[str, RequestOutput]]:
        """Stream the request's outputs, each tagged with this replica's id."""
        stream = self.engine.generate(request.request_id, request.prompt_token_ids,
                                      request.params, priority=request.priority,
                                      cache_salt=request.cache_salt)
        try:
            async for output in stream:
                yield self.replica_id, output
        finally:  # cancelled (the caller went away): abort now, not when the GC runs
            await stream.aclose()  # type: ignore[attr-defined]

    def stats(self) -> ReplicaStats:
        return ReplicaStats(self.replica_id, os.getpid(), self.engine.num_in_flight,
                            self.engine.stats())

    async def check_health(self) -> None:
        """Serve's health probe: a dead engine loop fails it, and Serve replaces the replica."""
        if not self.engine.is_alive:
            raise RuntimeError(f"the engine loop died: {self.engine.failure}")

    async def __del__(self) -> None:
        """Serve's shutdown hook: runs after the replica's ongoing requests drained (or Serve's
        graceful timeout passed); what still runs is aborted and settled upstream."""
        self._publisher.cancel()
        await self.engine.shutdown(drain_timeout_s=0)
        with contextlib.suppress(Exception):
            await self.board.withdraw(self.replica_id)
            await self.board.aclose()

    async def _publish_forever(self) -> None:
        while True:
            try:
                await self.board.publish(self.stats())
            except Exception:
                logger.warning("replica %s: cannot publish stats", self.replica_id,
                               exc_info=True)
            await asyncio.sleep(PUBLISH_INTERVAL_S)
