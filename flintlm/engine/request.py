"""A request's parameters and state inside the engine, and what the engine hands back to callers.

`RequestOutput` is the only thing that crosses engine -> API. User-facing parameter errors raise
`InvalidRequestError` (a ValueError) naming the parameter, never `assert`.
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from flintlm.engine.detokenizer import IncrementalDetokenizer
    from flintlm.engine.structured import GrammarState


class InvalidRequestError(ValueError):
    """A request the engine refuses; `param` names the offending parameter (OpenAI's `param`)."""

    def __init__(self, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code


class EngineOverloadedError(RuntimeError):
    """The waiting queue is full; the server answers 503 with Retry-After."""


class EngineDeadError(RuntimeError):
    """The engine loop stopped after an internal error; nothing more will run (503)."""


class FinishReason(enum.StrEnum):
    STOP = "stop"  # EOS, a stop token id or a stop string
    LENGTH = "length"  # max_tokens or the context length
    ABORT = "abort"  # aborted by the caller (client disconnect, shutdown)
    ERROR = "error"  # the engine failed on this request
    CONTENT_FILTER = "content_filter"  # set by the API's guardrails, never by the engine


class RequestStatus(enum.Enum):
    WAITING = enum.auto()
    RUNNING = enum.auto()
    PREEMPTED = enum.auto()
    FINISHED = enum.auto()


@dataclass
class SamplingParams:
    """Sampling parameters in vLLM's convention; `validate()` raises InvalidRequestError."""

    n: int = 1
    max_tokens: int | None = 16
    min_tokens: int = 0
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0 or -1: off
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: dict[int, float] | None = None
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)
    include_stop_str_in_output: bool = False
    ignore_eos: bool = False
    logprobs: int | None = None  # number of top alternatives per sampled token; 0 = sampled only
    prompt_logprobs: int | None = None  # same for prompt tokens (for `echo`)
    skip_special_tokens: bool = True
    # Structured output: at most one of these (see engine/structured.py).
    json_schema: str | dict[str, Any] | None = None
    json_object: bool = False
    regex: str | None = None
    grammar: str | None = None
    structural_tag: str | dict[str, Any] | None = None  # xgrammar's format; tool calls use it

    @property
    def is_greedy(self) -> bool:
        return self.temperature == 0.0 or self.top_k == 1

    @property
    def has_penalties(self) -> bool:
        return (
            self.repetition_penalty != 1.0
            or self.presence_penalty != 0.0
            or self.frequency_penalty != 0.0
        )

    @property
    def has_structured_output(self) -> bool:
        return bool(self.json_schema is not None or self.json_object or self.regex or self.grammar
                    or self.structural_tag is not None)

    def validate(self, vocab_size: int) -> None:
        def bad(message: str, param: str) -> InvalidRequestError:
            return InvalidRequestError(message, param=param)

        if self.n < 1 or self.n > 128:
            raise bad(f"n must be between 1 and 128, got {self.n}", "n")
        if self.max_tokens is not None and self.max_tokens < 0:
            raise bad(f"max_tokens must be >= 0, got {self.max_tokens}", "max_tokens")
        if self.min_tokens < 0:
            raise bad(f"min_tokens must be >= 0, got {self.min_tokens}", "min_tokens")
        if not 0.0 <= self.temperature <= 2.0:
            raise bad(f"temperature must be in [0, 2], got {self.temperature}", "temperature")
        if not 0.0 < self.top_p <= 1.0:
            raise bad(f"top_p must be in (0, 1], got {self.top_p}", "top_p")
        if self.top_k < -1:
            raise bad(f"top_k must be -1, 0 (off) or positive, got {self.top_k}", "top_k")
        if not 0.0 <= self.min_p <= 1.0:
            raise bad(f"min_p must be in [0, 1], got {self.min_p}", "min_p")
        if self.repetition_penalty <= 0.0:
            raise bad(f"repetition_penalty must be > 0, got {self.repetition_penalty}",
                      "repetition_penalty")
        if not -2.0 <= self.presence_penalty <= 2.0:
            raise bad(f"presence_penalty must be in [-2, 2], got {self.presence_penalty}",
                      "presence_penalty")
        if not -2.0 <= self.frequency_penalty <= 2.0:
            raise bad(f"frequency_penalty must be in [-2, 2], got {self.frequency_penalty}",
                      "frequency_penalty")
        for token_id, bias in (self.logit_bias or {}).items():
            if not 0 <= int(token_id) < vocab_size:
                raise bad(f"logit_bias names token id {token_id}, outside the vocabulary "
                          f"[0, {vocab_size})", "logit_bias")
            if not -100.0 <= bias <= 100.0:
                raise bad(f"logit_bias values must be in [-100, 100], got {bias}", "logit_bias")
        for token_id in self.stop_token_ids:
            if not 0 <= token_id < vocab_size:
                raise bad(f"stop token id {token_id} is outside the vocabulary", "stop_token_ids")
        if any(not s for s in self.stop):
            raise bad("stop strings must not be empty", "stop")
        for name in ("logprobs", "prompt_logprobs"):
            value = getattr(self, name)
            if value is not None and not 0 <= value <= 20:
                raise bad(f"{name} must be between 0 and 20, got {value}", name)
        chosen = [self.json_schema is not None, self.json_object, bool(self.regex),
                  bool(self.grammar), self.structural_tag is not None]
        if sum(chosen) > 1:
            raise bad("give at most one of json_schema, json_object, regex, grammar, "
                      "structural_tag", "response_format")


@dataclass(frozen=True)
class Logprob:
    token_id: int
    logprob: float
    token: str = ""


@dataclass(frozen=True)
class TokenLogprobs:
    """The chosen token's logprob and the top alternatives (best first) at one position."""

    chosen: Logprob
    top: tuple[Logprob, ...] = ()


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass
class RequestOutput:
    """One update of one request, as streamed to the caller.

    `new_token_ids`/`new_text` are the delta since the previous output of this request;
    `finish_reason` is set on the last one. `usage` is always the running total.
    """

    request_id: str
    new_token_ids: list[int]
    new_text: str
    finish_reason: FinishReason | None
    usage: Usage
    new_logprobs: list[TokenLogprobs] | None = None
    prompt_logprobs: list[TokenLogprobs | None] | None = None  # first output only
    stop_reason: str | int | None = None  # the stop string or token id that ended it
    error: str | None = None
    first_token_time: float | None = None
    queue_time_s: float | None = None

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None


class Request:
    """Engine-side state of one sequence.

    Invariant (the one request-state rule): the scheduler gives a request
    `min(num_tokens - num_computed_tokens, budget)` tokens per step; prefill, chunked prefill,
    prefix-cache hits and recompute after preemption are all that rule.
    """

    __slots__ = (
        "request_id", "prompt_token_ids", "output_token_ids", "params", "priority", "arrival_time",
        "cache_salt", "eos_token_ids", "max_output_tokens", "status", "num_computed_tokens",
        "num_cached_tokens", "block_ids", "finish_reason", "stop_reason", "detokenizer",
        "grammar", "generator", "output_logprobs", "prompt_logprobs", "first_token_time",
        "scheduled_time", "num_preemptions", "error",
    )

    def __init__(
        self,
        request_id: str,
        prompt_token_ids: list[int],
        params: SamplingParams,
        *,
        eos_token_ids: frozenset[int] = frozenset(),
        max_output_tokens: int,
        priority: int = 0,
        cache_salt: str | None = None,
        arrival_time: float | None = None,
    ):
        self.request_id = request_id
        self.prompt_token_ids = prompt_token_ids
        self.output_token_ids: list[int] = []
        self.params = params
        self.priority = priority
        self.arrival_time = time.monotonic() if arrival_time is None else arrival_time
        self.cache_salt = cache_salt
        self.eos_token_ids = eos_token_ids
        self.max_output_tokens = max_output_tokens
        self.status = RequestStatus.WAITING
        self.num_computed_tokens = 0
        self.num_cached_tokens = 0  # prompt tokens served from the prefix cache (first admission)
        self.block_ids: list[int] = []
        self.finish_reason: FinishReason | None = None
        self.stop_reason: str | int | None = None
        self.detokenizer: IncrementalDetokenizer | None = None
        self.grammar: GrammarState | None = None
        self.generator: Any = None  # torch.Generator for seeded sampling, made by the sampler
        self.output_logprobs: list[TokenLogprobs] = []
        self.prompt_logprobs: list[TokenLogprobs | None] | None = None
        self.first_token_time: float | None = None
        self.scheduled_time: float | None = None
        self.num_preemptions = 0
        self.error: str | None = None

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_token_ids) + len(self.output_token_ids)

    @property
    def all_token_ids(self) -> list[int]:
        return self.prompt_token_ids + self.output_token_ids

    @property
    def is_finished(self) -> bool:
        return self.status is RequestStatus.FINISHED

    def usage(self) -> Usage:
        return Usage(self.num_prompt_tokens, len(self.output_token_ids), self.num_cached_tokens)

    def __repr__(self) -> str:
        return (f"Request({self.request_id!r}, tokens={self.num_tokens}, "
                f"computed={self.num_computed_tokens}, status={self.status.name})")
