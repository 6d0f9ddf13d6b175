"""Continuous batching: which requests run this step and how many tokens each computes.

Tensor-free. Every step gives each request `min(num_tokens - num_computed_tokens, budget)` tokens
(vLLM v1's single rule), so prefill, chunked prefill, prefix hits and recompute after preemption
need no special cases. Running requests go first (oldest first); waiting ones are admitted by
(priority, arrival) while the token budget, the sequence limit and the KV blocks allow.
"""

from __future__ import annotations

import bisect
import itertools
import time
from typing import TYPE_CHECKING

from flintlm.engine.outputs import ScheduledRequest, SchedulerOutput
from flintlm.engine.request import FinishReason, RequestStatus

if TYPE_CHECKING:
    from flintlm.config import SchedulerConfig
    from flintlm.engine.kv_blocks import BlockManager
    from flintlm.engine.request import Request


class Scheduler:
    def __init__(self, config: SchedulerConfig, block_manager: BlockManager):
        self.config = config
        self.blocks = block_manager
        self.running: list[Request] = []
        self._waiting: list[tuple[int, float, int, Request]] = []  # sorted by priority, arrival
        self._arrival_counter = itertools.count()
        self.num_preemptions = 0
        self.prefix_query_tokens = 0
        self.prefix_hit_tokens = 0
        self.num_computed_tokens_total = 0  # every token the model has run, for metrics and tests

    # -- queue -----------------------------------------------------------------------------------

    @property
    def num_waiting(self) -> int:
        return len(self._waiting)

    @property
    def num_running(self) -> int:
        return len(self.running)

    @property
    def has_unfinished(self) -> bool:
        return bool(self.running or self._waiting)

    def add_request(self, request: Request) -> None:
        request.status = RequestStatus.WAITING
        entry = (request.priority, request.arrival_time, next(self._arrival_counter), request)
        bisect.insort(self._waiting, entry)

    def finish_request(self, request: Request, reason: FinishReason) -> None:
        """Remove `request` wherever it is and free its blocks at once."""
        if request.status is RequestStatus.RUNNING:
            self.running.remove(request)
        elif request.status in (RequestStatus.WAITING, RequestStatus.PREEMPTED):
            self._waiting = [e for e in self._waiting if e[3] is not request]
        self.blocks.free(request)
        request.status = RequestStatus.FINISHED
        request.finish_reason = reason

    # -- the step --------------------------------------------------------------------------------

    def schedule(self) -> SchedulerOutput:
        output = SchedulerOutput()
        budget = self._schedule_running(output, self.config.max_num_batched_tokens)
        if not output.preempted_request_ids:  # admitting now would only be preempted again
            self._schedule_waiting(output, budget)
        return output

    def update(self, output: SchedulerOutput) -> None:
        """Record that the runner computed what `output` scheduled."""
        self.blocks.commit()
        for scheduled in output.scheduled:
            scheduled.request.num_computed_tokens += scheduled.num_scheduled_tokens
            self.num_computed_tokens_total += scheduled.num_scheduled_tokens

    def rollback(self) -> None:
        """The runner failed on the step just scheduled: no block it was filling may stay in the
        prefix cache. The caller fails the requests that step scheduled."""
        self.blocks.rollback()

    # -- policies --------------------------------------------------------------------------------

    def _schedule_running(self, output: SchedulerOutput, budget: int) -> int:
        index = 0
        while index < len(self.running) and budget > 0:
            request = self.running[index]
            num_new = min(request.num_tokens - request.num_computed_tokens, budget)
            while not self.blocks.can_allocate(request, num_new):
                victim = self._pick_victim(index)
                self._preempt(victim)
                output.preempted_request_ids.append(victim.request_id)
                if victim is request:
                    break
            else:
                self.blocks.allocate(request, num_new)
                output.scheduled.append(
                    ScheduledRequest(request, request.num_computed_tokens, num_new))
                budget -= num_new
                index += 1
        return budget

    def _schedule_waiting(self, output: SchedulerOutput, budget: int) -> None:
        while self._waiting and budget > 0 and len(self.running) < self.config.max_num_seqs:
            request = self._waiting[0][3]
            cached_block_ids = self.blocks.find_cached_prefix(request)
            num_cached_tokens = len(cached_block_ids) * self.blocks.block_size
            num_new = min(request.num_tokens - num_cached_tokens, budget)
            if not self.blocks.can_allocate(request, num_new, cached_block_ids):
                break
            self._waiting.pop(0)
            self.blocks.allocate(request, num_new, cached_block_ids)
            request.num_computed_tokens = num_cached_tokens
            if request.num_preemptions == 0:  # billing sees the first admission's hits only
                request.num_cached_tokens = num_cached_tokens
                request.scheduled_time = time.monotonic()
                self.prefix_query_tokens += request.num_tokens
                self.prefix_hit_tokens += num_cached_tokens
            request.status = RequestStatus.RUNNING
            self.running.append(request)
            output.scheduled.append(ScheduledRequest(request, num_cached_tokens, num_new))
            budget -= num_new

    def _pick_victim(self, first_unscheduled: int) -> Request:
        """The lowest-priority, latest-arrived request not yet scheduled in this step."""
        candidates = self.running[first_unscheduled:]
        return max(candidates, key=lambda r: (r.priority, r.arrival_time))

    def _preempt(self, request: Request) -> None:
        """Preempt by recompute: drop its KV; it re-enters the queue at its original place."""
        self.running.remove(request)
        self.blocks.free(request)
        request.num_computed_tokens = 0
        request.num_preemptions += 1
        self.num_preemptions += 1
        self.add_request(request)
        request.status = RequestStatus.PREEMPTED
