"""POST /v1/completions on the wire: the legacy text-completion request and its response, with
the logprobs shape lm-eval-harness reads.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import BaseModel, model_validator

from flintlm.api.protocol.common import UsageInfo, _Response, invalid
from flintlm.api.protocol.generation_request import UNSUPPORTED_COMMON, _GenerationRequest
from flintlm.engine.request import SamplingParams

UNSUPPORTED_COMPLETION: dict[str, tuple[Any, ...]] = {**UNSUPPORTED_COMMON, "suffix": (None, "")}


class CompletionRequest(_GenerationRequest):
    unsupported: ClassVar[dict[str, tuple[Any, ...]]] = UNSUPPORTED_COMPLETION

    prompt: str | list[str] | list[int] | list[list[int]]
    max_tokens: int | None = 16
    echo: bool = False
    logprobs: int | None = None
    best_of: int | None = None

    @model_validator(mode="after")
    def _check_completion(self) -> CompletionRequest:
        if isinstance(self.prompt, list) and (
            not self.prompt or any(isinstance(p, list) and not p for p in self.prompt)
        ):
            raise invalid("prompt", "prompt must not be an empty list")
        if self.best_of is not None and self.best_of != self.n:
            raise invalid("best_of", "best_of other than n is not supported")
        return self

    @property
    def num_prompts(self) -> int:
        """Prompts in the batch: one text or token list, or a list of them."""
        is_batch = isinstance(self.prompt, list) and self.prompt and not isinstance(
            self.prompt[0], int)
        return len(self.prompt) if is_batch else 1

    def sampling_params(self) -> SamplingParams:
        params = self._common_params(self.max_tokens)
        params.logprobs = self.logprobs
        if self.echo and self.logprobs is not None:
            params.prompt_logprobs = self.logprobs
        return params


class CompletionLogprobs(BaseModel):
    """The legacy shape lm-eval-harness reads: parallel lists, one entry per token."""

    tokens: list[str] = []
    token_logprobs: list[float | None] = []
    top_logprobs: list[dict[str, float] | None] = []
    text_offset: list[int] = []


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: CompletionLogprobs | None = None
    finish_reason: str | None = None


class CompletionResponse(_Response):
    object: Literal["text_completion"] = "text_completion"
    choices: list[CompletionChoice]
    usage: UsageInfo | None = None
