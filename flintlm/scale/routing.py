"""flintlm's prefix-aware request router on Ray Serve's request-router interface.

It remembers which replicas each prefix block hash (`RoutedRequest.prefix_blocks`, salted per
tenant as the engine hashes them) was sent to, and sends a request to the replica(s) that hold
the longest leading run of its blocks; a prefix seen nowhere goes to the replica(s) holding the
fewest blocks, so tenants' prefixes spread. Either choice yields to power of two choices (Ray's
default router, the baseline) when that replica is busier than the least loaded one by more
than `imbalanced_threshold` requests, and when it does not accept the request (full). The table
is a bounded LRU and only approximates each replica's cache (a replica evicts blocks on its
own); a miss costs a prefill, never a wrong answer.
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from typing import TYPE_CHECKING, Any

from ray.serve._private.request_router.pow_2_router import PowerOfTwoChoicesRequestRouter
from ray.serve.request_router import (
    FIFOMixin,
    LocalityMixin,
    MultiplexMixin,
    PendingRequest,
    ReplicaID,
    RequestRouter,
    RunningReplica,
)

from flintlm.scale.protocol import RoutedRequest

if TYPE_CHECKING:
    from ray.serve.request_router import ReplicaResult

# NOTE: ray-prefix names the class that Ray's public `ray.serve.llm.request_router.
# PrefixCacheAffinityRouter` subclasses without change: the public module refuses to import
# without vLLM or SGLang installed, this one needs neither (checked on the pinned Ray 2.60.0).
ROUTER_CLASSES = {
    "prefix": "flintlm.scale.routing.PrefixAffinityRouter",
    "ray-prefix": ("ray.llm._internal.serve.routing_policies.prefix_aware.prefix_aware_router."
                   "PrefixCacheAffinityRouter"),
    "pow2": "ray.serve._private.request_router.pow_2_router.PowerOfTwoChoicesRequestRouter",
}


def routed_request(pending_request: PendingRequest | None) -> RoutedRequest | None:
    """The flintlm request a pending Serve call carries, if it carries one."""
    if pending_request is None:
        return None
    for arg in pending_request.args:
        if isinstance(arg, RoutedRequest):
            return arg
    return None


class PrefixAffinityRouter(FIFOMixin, LocalityMixin, MultiplexMixin, RequestRouter):
    # A replica that misses the queue-length probe's deadline is passed over for that request,
    # and with it the prefix it holds. Ray's 0.1 s (doubling to 1 s on retries) is missed by
    # CPU replicas on a busy or CPU-quota-throttled host (measured: a tenant's requests went to
    # the replica without its prefix on a 2-core VM capped at one CPU); a cache miss costs a
    # whole prefill, far more than waiting a second for the replica that holds it.
    queue_len_response_deadline_s = 1.0
    max_queue_len_response_deadline_s = 4.0

    def initialize_state(self, imbalanced_threshold: int = 4,
                         max_tracked_blocks: int = 200_000, **_: Any) -> None:
        self._imbalanced_threshold = imbalanced_threshold
        self._max_tracked_blocks = max_tracked_blocks
        self._owners: OrderedDict[str, set[ReplicaID]] = OrderedDict()  # LRU: oldest first
        self._num_blocks_held: Counter[ReplicaID] = Counter()

    async def choose_replicas(self, candidate_replicas: list[RunningReplica],
                              pending_request: PendingRequest | None = None,
                              ) -> list[list[RunningReplica]]:
        fallback = await PowerOfTwoChoicesRequestRouter.choose_replicas(
            self, candidate_replicas, pending_request)  # type: ignore[arg-type]
        request = routed_request(pending_request)
        if request is None or not request.prefix_blocks:
            return fallback
        preferred = (self._longest_holders(request.prefix_blocks, candidate_replicas)
                     or self._least_holding(candidate_replicas))
        if self._is_overloaded(preferred, candidate_replicas):
            return fallback
        # The preferred first; if none of them accepts (full), the pow2 pair.
        return [preferred, *fallback]

    def on_request_routed(self, pending_request: PendingRequest, replica_id: ReplicaID,
                          result: ReplicaResult) -> None:
        request = routed_request(pending_request)
        if request is None:
            return
        for block_hash in request.prefix_blocks:
            owners = self._owners.get(block_hash)
            if owners is None:
                owners = self._owners[block_hash] = set()
            else:
                self._owners.move_to_end(block_hash)
            if replica_id not in owners:
                owners.add(replica_id)
                self._num_blocks_held[replica_id] += 1
        while len(self._owners) > self._max_tracked_blocks:
            _, evicted_owners = self._owners.popitem(last=False)
            self._num_blocks_held.subtract(evicted_owners)

    def on_replica_actor_died(self, replica_id: ReplicaID) -> None:
        super().on_replica_actor_died(replica_id)
        for owners in self._owners.values():
            owners.discard(replica_id)
        self._num_blocks_held.pop(replica_id, None)

    def _longest_holders(self, prefix_blocks: list[str], candidates: list[RunningReplica]
                         ) -> list[RunningReplica]:
        """The candidates that hold the longest leading run of `prefix_blocks`."""
        holders = list(candidates)
        best: list[RunningReplica] = []
        for block_hash in prefix_blocks:
            owners = self._owners.get(block_hash)
            holders = [r for r in holders if owners is not None and r.replica_id in owners]
            if not holders:
                break
            best = holders
        return best

    def _least_holding(self, candidates: list[RunningReplica]) -> list[RunningReplica]:
        """The candidates whose tracked prefixes hold the fewest blocks."""
        fewest = min(self._num_blocks_held[r.replica_id] for r in candidates)
        return [r for r in candidates if self._num_blocks_held[r.replica_id] == fewest]

    def _is_overloaded(self, holders: list[RunningReplica],
                       candidates: list[RunningReplica]) -> bool:
        def queue_len(replica: RunningReplica) -> int:
            return self._replica_queue_len_cache.get(replica.replica_id) or 0

        least = min(queue_len(r) for r in candidates)
        return min(queue_len(r) for r in holders) - least > self._imbalanced_threshold
