"""CPU-only factories for engine tests: requests, schedulers, fake runner outputs. No weights."""

from __future__ import annotations

import itertools

from flintlm.config import SchedulerConfig
from flintlm.engine.kv_blocks import BlockManager
from flintlm.engine.outputs import RunnerOutput, SchedulerOutput
from flintlm.engine.request import Request, SamplingParams
from flintlm.engine.scheduler import Scheduler

_ids = itertools.count()


def make_request(prompt_len: int = 10, max_tokens: int = 8, *, prompt: list[int] | None = None,
                 priority: int = 0, salt: str | None = None, arrival: float | None = None,
                 request_id: str | None = None) -> Request:
    tokens = prompt if prompt is not None else [(7 * i + 3) % 1000 for i in range(prompt_len)]
    return Request(request_id or f"req-{next(_ids)}", list(tokens),
                   SamplingParams(max_tokens=max_tokens, temperature=0.0),
                   max_output_tokens=max_tokens, priority=priority, cache_salt=salt,
                   arrival_time=arrival)


def make_scheduler(num_blocks: int = 64, block_size: int = 4, max_num_seqs: int = 16,
                   max_num_batched_tokens: int = 32, prefix_caching: bool = True) -> Scheduler:
    blocks = BlockManager(num_blocks, block_size, prefix_caching)
    return Scheduler(SchedulerConfig(max_num_seqs=max_num_seqs,
                                     max_num_batched_tokens=max_num_batched_tokens), blocks)


def runner_output(scheduler_output: SchedulerOutput, token_id: int = 5) -> RunnerOutput:
    """A runner output that samples `token_id` for every request whose chunk ends its tokens."""
    out = RunnerOutput()
    for scheduled in scheduler_output.scheduled:
        if scheduled.is_sampling:
            out.sampled_token_ids[scheduled.request.request_id] = token_id
    return out


def fake_step(scheduler: Scheduler, token_id: int = 5) -> SchedulerOutput:
    """schedule -> (pretend to run) -> update, appending sampled tokens and finishing at max."""
    from flintlm.engine.request import FinishReason

    output = scheduler.schedule()
    sampled = runner_output(output, token_id)
    scheduler.update(output)
    for scheduled in output.scheduled:
        request = scheduled.request
        if request.request_id in sampled.sampled_token_ids:
            request.output_token_ids.append(sampled.sampled_token_ids[request.request_id])
            if len(request.output_token_ids) >= request.max_output_tokens:
                scheduler.finish_request(request, FinishReason.LENGTH)
    scheduler.blocks.check_integrity()
    return output
