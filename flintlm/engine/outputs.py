"""The scheduler <-> runner contract: what to compute this step, and what came out of it.

These two dataclasses are the only things that cross between `scheduler.py` and
`model_runner.py`. The runner reads the referenced requests but never mutates them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from flintlm.engine.request import Request, TokenLogprobs


@dataclass(slots=True)
class ScheduledRequest:
    request: Request
    num_computed_tokens: int  # tokens whose KV is already in the cache before this step
    num_scheduled_tokens: int  # tokens to compute this step

    @property
    def is_sampling(self) -> bool:
        """True when this step's chunk reaches the end of the known tokens, so one is sampled."""
        return self.num_computed_tokens + self.num_scheduled_tokens == self.request.num_tokens


@dataclass(slots=True)
class SchedulerOutput:
    scheduled: list[ScheduledRequest] = field(default_factory=list)
    preempted_request_ids: list[str] = field(default_factory=list)

    @property
    def num_batched_tokens(self) -> int:
        return sum(s.num_scheduled_tokens for s in self.scheduled)

    @property
    def is_empty(self) -> bool:
        return not self.scheduled


@dataclass(slots=True)
class RunnerOutput:
    """Per request id: the sampled token, its logprobs, and prompt logprobs of this chunk."""

    sampled_token_ids: dict[str, int] = field(default_factory=dict)
    logprobs: dict[str, TokenLogprobs] = field(default_factory=dict)
    prompt_logprobs: dict[str, list[TokenLogprobs]] = field(default_factory=dict)
