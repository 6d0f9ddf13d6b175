"""OpenAI's wire format as pydantic models: requests, responses, stream chunks, errors.

Request models validate shapes and cross-field rules at parse time and turn into engine
`SamplingParams` with `sampling_params()`. Every field is one of three kinds: honoured (declared
below), known to OpenAI but not honoured (listed in `UNSUPPORTED_*`, a 400 naming it unless it
carries its no-op value), or unknown to both (accepted, ignored and logged). Range checks live in
`SamplingParams.validate` so the API and the offline `LLM` share them.
"""

from __future__ import annotations

import logging
import time
from typing import Any, ClassVar, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    model_serializer,
    model_validator,
)
from pydantic_core import PydanticCustomError

from flintlm.engine.request import SamplingParams, Usage

logger = logging.getLogger("flintlm.api")


def invalid(param: str, message: str) -> PydanticCustomError:
    """A validation error that the error handler reports as a 400 naming `param`."""
    return PydanticCustomError("invalid_param", message, {"param": param})  # type: ignore[arg-type]


# OpenAI fields we do not honour yet -> the values that mean "not used" (accepted as no-ops).
UNSUPPORTED_COMMON: dict[str, tuple[Any, ...]] = {
    "service_tier": (None, "auto", "default"),
    "store": (None, False),
    "metadata": (None, {}),
    "prompt_cache_key": (None,),
}
UNSUPPORTED_CHAT: dict[str, tuple[Any, ...]] = {
    **UNSUPPORTED_COMMON,
    "audio": (None,),
    "modalities": (None, ["text"]),
    "prediction": (None,),
    "functions": (None, []),
    "function_call": (None, "none"),
    "web_search_options": (None,),
    "reasoning_effort": (None,),
    "verbosity": (None,),
}
UNSUPPORTED_COMPLETION: dict[str, tuple[Any, ...]] = {**UNSUPPORTED_COMMON, "suffix": (None, "")}


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    include_usage: bool = False


class _GenerationRequest(BaseModel):
    """Fields shared by chat and completions: OpenAI's sampling knobs plus our extensions."""

    model_config = ConfigDict(extra="allow")
    unsupported: ClassVar[dict[str, tuple[Any, ...]]] = UNSUPPORTED_COMMON

    model: str | None = None
    n: int = 1
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: dict[str, float] | None = None
    user: str | None = None
    safety_identifier: str | None = None
    # Extensions (vLLM's names).
    top_k: int = 0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    min_tokens: int = 0
    ignore_eos: bool = False
    stop_token_ids: list[int] | None = None
    include_stop_str_in_output: bool = False
    skip_special_tokens: bool = True
    priority: int = 0
    cache_salt: str | None = None

    @model_validator(mode="after")
    def _check_fields(self) -> _GenerationRequest:
        for name, value in (self.model_extra or {}).items():
            if name in self.unsupported and value not in self.unsupported[name]:
                raise invalid(name, f"{name!r} is not supported by this server")
        ignored = sorted(set(self.model_extra or {}) - set(self.unsupported))
        if ignored:
            logger.info("ignoring unknown request fields: %s", ", ".join(ignored))
        for token_id in self.logit_bias or {}:
            if not token_id.lstrip("-").isdigit():
                raise invalid("logit_bias", f"logit_bias keys must be token ids, got {token_id!r}")
        if self.stream_options is not None and not self.stream:
            raise invalid("stream_options", "stream_options is only allowed when stream is true")
        return self

    @property
    def include_usage(self) -> bool:
        return bool(self.stream and self.stream_options and self.stream_options.include_usage)

    @property
    def end_user(self) -> str | None:
        """Who the caller says the end user is; logged with the request for abuse tracing."""
        return self.safety_identifier or self.user

    def _logit_bias(self) -> dict[int, float] | None:
        if self.logit_bias is None:
            return None
        return {int(token_id): bias for token_id, bias in self.logit_bias.items()}

    def _common_params(self, max_tokens: int | None) -> SamplingParams:
        stop = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        return SamplingParams(
            n=self.n,
            max_tokens=max_tokens,
            min_tokens=self.min_tokens,
            temperature=1.0 if self.temperature is None else self.temperature,
            top_p=1.0 if self.top_p is None else self.top_p,
            top_k=self.top_k,
            min_p=self.min_p,
            repetition_penalty=self.repetition_penalty,
            presence_penalty=self.presence_penalty,
            frequency_penalty=self.frequency_penalty,
            logit_bias=self._logit_bias(),
            seed=self.seed,
            stop=stop,
            stop_token_ids=list(self.stop_token_ids or []),
            include_stop_str_in_output=self.include_stop_str_in_output,
            ignore_eos=self.ignore_eos,
            skip_special_tokens=self.skip_special_tokens,
        )


# --- chat ----------------------------------------------------------------------------------


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: str
    text: str | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(part.text or "" for part in self.content)
        return self.content or ""


class ResponseFormat(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: Literal["text", "json_object", "json_schema"]
    json_schema: dict[str, Any] | None = None


class ChatCompletionRequest(_GenerationRequest):
    unsupported: ClassVar[dict[str, tuple[Any, ...]]] = UNSUPPORTED_CHAT

    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    # Structured output and tools: accepted only in their no-op form until structured output
    # lands; prompts.render_chat already takes `tools` so the template can show them.
    response_format: ResponseFormat | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None

    @model_validator(mode="after")
    def _check_chat(self) -> ChatCompletionRequest:
        for i, message in enumerate(self.messages):
            _check_message(i, message)
        if self.top_logprobs is not None and not self.logprobs:
            raise invalid("top_logprobs", "top_logprobs requires logprobs to be true")
        if self.response_format is not None and self.response_format.type != "text":
            raise invalid("response_format",
                          f"response_format {self.response_format.type!r} is not supported yet")
        if self.tools:
            raise invalid("tools", "tools are not supported yet")
        if self.tool_choice not in (None, "none"):
            raise invalid("tool_choice", "tool_choice must be 'none' while tools are unsupported")
        if self.parallel_tool_calls is not None:
            raise invalid("parallel_tool_calls", "parallel_tool_calls needs tools (unsupported)")
        return self

    def sampling_params(self) -> SamplingParams:
        """Chat: no max_tokens means up to the context length."""
        limit = self.max_completion_tokens if self.max_completion_tokens is not None else (
            self.max_tokens)
        params = self._common_params(limit)
        if self.logprobs:
            params.logprobs = self.top_logprobs or 0
        return params


def _check_message(index: int, message: ChatMessage) -> None:
    where = f"messages[{index}]"
    if message.role in ("tool", "function") or message.tool_calls:
        raise invalid(where, "tool messages and tool calls are not supported yet")
    for part in message.content if isinstance(message.content, list) else []:
        if part.type != "text" or part.text is None:
            raise invalid(f"{where}.content",
                          f"content part type {part.type!r} is not supported; send text")
    if message.content is None and message.role != "assistant":
        raise invalid(f"{where}.content", f"{message.role} messages need content")


class ChatDelta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None

    @model_serializer(mode="wrap")
    def _omit_unset(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # OpenAI sends only the keys a delta changes: {"content": "..."} or {}.
        return {k: v for k, v in handler(self).items() if v is not None}


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None = None


class ChatTokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob] = []


class ChatLogprobs(BaseModel):
    content: list[ChatTokenLogprob] | None = None
    refusal: list[ChatTokenLogprob] | None = None


class ChatResponseMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None = None
    refusal: str | None = None


class ChatChoice(BaseModel):
    index: int
    message: ChatResponseMessage
    logprobs: ChatLogprobs | None = None
    finish_reason: str | None = None


class ChatChunkChoice(BaseModel):
    index: int
    delta: ChatDelta
    logprobs: ChatLogprobs | None = None
    finish_reason: str | None = None


# --- completions ---------------------------------------------------------------------------


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


# --- shared responses ----------------------------------------------------------------------


class PromptTokensDetails(BaseModel):
    cached_tokens: int = 0


class UsageInfo(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails = PromptTokensDetails()


class _Response(BaseModel):
    id: str
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    system_fingerprint: str | None = None


class ChatCompletionResponse(_Response):
    object: Literal["chat.completion"] = "chat.completion"
    choices: list[ChatChoice]
    usage: UsageInfo


class ChatCompletionChunk(_Response):
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    choices: list[ChatChunkChoice]
    usage: UsageInfo | None = None


class CompletionResponse(_Response):
    object: Literal["text_completion"] = "text_completion"
    choices: list[CompletionChoice]
    usage: UsageInfo | None = None


# --- models, tokenizer, errors -------------------------------------------------------------


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "flintlm"
    max_model_len: int


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class TokenizeRequest(BaseModel):
    """Either `prompt` (raw text) or `messages` (rendered with the chat template)."""

    model_config = ConfigDict(extra="forbid")
    model: str | None = None
    prompt: str | None = None
    messages: list[ChatMessage] | None = None
    add_special_tokens: bool = True
    add_generation_prompt: bool = True

    @model_validator(mode="after")
    def _one_input(self) -> TokenizeRequest:
        if (self.prompt is None) == (self.messages is None):
            raise invalid("prompt", "give exactly one of prompt or messages")
        for i, message in enumerate(self.messages or []):
            _check_message(i, message)
        return self


class TokenizeResponse(BaseModel):
    tokens: list[int]
    count: int
    max_model_len: int


class DetokenizeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str | None = None
    tokens: list[int]


class DetokenizeResponse(BaseModel):
    prompt: str


class ErrorInfo(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorInfo


def usage_info(usage: Usage) -> UsageInfo:
    return UsageInfo(
        prompt_tokens=usage.prompt_tokens,
        completion_tokens=usage.completion_tokens,
        total_tokens=usage.total_tokens,
        prompt_tokens_details=PromptTokensDetails(cached_tokens=usage.cached_tokens),
    )
