"""OpenAI's wire format as pydantic models: requests, responses, stream chunks, errors.

Request models validate shapes and cross-field rules at parse time and turn into engine
`SamplingParams` with `sampling_params()`. Every field is one of three kinds: honoured (declared
below), known to OpenAI but not honoured (listed in `UNSUPPORTED_*`, a 400 naming it unless it
carries its no-op value), or unknown to both (accepted, ignored and logged). Range checks live in
`SamplingParams.validate` so the API and the offline `LLM` share them; `api/bounds.py` runs them,
with the server's caps, once per request. Structured-output specs are compiled to check them in
`sampling_params()`, not at parse time, so that the edge can run it off the event loop.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any, ClassVar, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    SerializerFunctionWrapHandler,
    model_serializer,
    model_validator,
)
from pydantic_core import PydanticCustomError

from flintlm.api import constraints
from flintlm.engine.request import InvalidRequestError, SamplingParams, Usage

logger = logging.getLogger("flintlm.api")


def invalid(param: str, message: str) -> PydanticCustomError:
    """A validation error that the error handler reports as a 400 naming `param`."""
    return PydanticCustomError("invalid_param", message, {"param": param})


# OpenAI fields we do not honour yet -> the values that mean "not used" (accepted as no-ops).
UNSUPPORTED_COMMON: dict[str, tuple[Any, ...]] = {
    "service_tier": (None, "auto", "default"),
    "store": (None, False),
    "metadata": (None, {}),
    "prompt_cache_key": (None,),
}
# Chat honours `store` and `metadata` (stored completions, api/capture.py).
UNSUPPORTED_CHAT: dict[str, tuple[Any, ...]] = {
    **{name: values for name, values in UNSUPPORTED_COMMON.items()
       if name not in ("store", "metadata")},
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


class JsonSchemaSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    name: str
    description: str | None = None
    schema_: dict[str, Any] = Field(alias="schema")
    strict: bool | None = None  # NOTE: constrained decoding enforces the schema either way


class ResponseFormat(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaSpec | None = None


class StructuredOutputs(BaseModel):
    """vLLM's `structured_outputs` object: exactly one of its fields."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    json_: str | dict[str, Any] | None = Field(default=None, alias="json")
    regex: str | None = None
    grammar: str | None = None
    choice: list[str] | None = None
    json_object: bool | None = None
    structural_tag: str | dict[str, Any] | None = None


class _GenerationRequest(BaseModel):
    """Fields shared by chat and completions: OpenAI's sampling knobs plus our extensions."""

    model_config = ConfigDict(extra="allow")
    unsupported: ClassVar[dict[str, tuple[Any, ...]]] = UNSUPPORTED_COMMON

    model: str | None = None
    n: int = 1
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    # NOTE: OpenAI's range, a signed 64-bit integer; torch's generators take no more.
    seed: int | None = Field(default=None, ge=-(2**63), le=2**63 - 1)
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
    # Structured output: OpenAI's field, then vLLM's (older guided_* and newer object).
    response_format: ResponseFormat | None = None
    guided_json: str | dict[str, Any] | None = None
    guided_regex: str | None = None
    guided_grammar: str | None = None
    guided_choice: list[str] | None = None
    structured_outputs: StructuredOutputs | None = None
    _constraint: constraints.Constraint | None = PrivateAttr(default=None)

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
        if self.cache_salt is not None and not self.cache_salt:
            raise invalid("cache_salt", "cache_salt must not be empty; leave it out instead")
        return self

    @property
    def has_constraint(self) -> bool:
        """Whether the request asks for structured output (its check compiles a grammar)."""
        return bool(self.response_format is not None or self.structured_outputs is not None
                    or any(getattr(self, name) is not None for name in constraints.GUIDED_FIELDS)
                    or self._has_tools())

    def _has_tools(self) -> bool:
        return False

    @property
    def num_prompts(self) -> int:
        return 1

    def _checked_constraint(self) -> constraints.Constraint | None:
        """The one structured-output constraint, checked (xgrammar compiles it: call this off
        the event loop when `has_constraint`); InvalidRequestError names the param."""
        if self._constraint is not None or not self.has_constraint:
            return self._constraint
        guided = {name: getattr(self, name) for name in constraints.GUIDED_FIELDS
                  if getattr(self, name) is not None}
        try:
            constraint = constraints.from_request(self.response_format, guided,
                                                  self.structured_outputs)
        except InvalidRequestError as exc:
            raise InvalidRequestError(exc.message, exc.param or "response_format") from exc
        tool_constraint = self._tool_constraint()
        if constraint is not None and tool_constraint is not None:
            raise InvalidRequestError(f"{constraint.param} cannot be combined with tools unless "
                                      "tool_choice is 'none'", constraint.param)
        self._constraint = constraint or tool_constraint
        return self._constraint

    def _tool_constraint(self) -> constraints.Constraint | None:
        """Chat: the constraint its tools put on the output (completions have none)."""
        return None

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
        constraint = self._checked_constraint()
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
            **(constraint.fields if constraint is not None else {}),
        )


# --- chat ----------------------------------------------------------------------------------


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: str
    text: str | None = None


class FunctionCall(BaseModel):
    name: str
    arguments: str  # JSON text


class ToolCall(BaseModel):
    """A call in an assistant message: in the input history and in responses."""

    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(part.text or "" for part in self.content)
        return self.content or ""


class FunctionDefinition(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$")
    description: str | None = None
    parameters: dict[str, Any] | None = None  # a JSON schema; None: no arguments
    strict: bool | None = None  # NOTE: the call is constrained to the schema either way


class ToolDefinition(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["function"]
    function: FunctionDefinition


class NamedFunction(BaseModel):
    name: str


class NamedToolChoice(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["function"]
    function: NamedFunction


class ChatCompletionRequest(_GenerationRequest):
    unsupported: ClassVar[dict[str, tuple[Any, ...]]] = UNSUPPORTED_CHAT

    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    tools: list[ToolDefinition] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    # Stored completions: kept by api/capture.py, which checks the metadata rules.
    store: bool | None = None
    metadata: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _check_chat(self) -> ChatCompletionRequest:
        for i, message in enumerate(self.messages):
            _check_message(i, message)
        if self.top_logprobs is not None and not self.logprobs:
            raise invalid("top_logprobs", "top_logprobs requires logprobs to be true")
        try:
            self._check_tool_choice()
        except InvalidRequestError as exc:
            raise invalid(exc.param or "tools", exc.message) from exc
        return self

    def _has_tools(self) -> bool:
        return bool(self.tools)

    def _check_tool_choice(self) -> None:
        """The rules on tools and tool_choice that need no grammar."""
        names = [tool.function.name for tool in self.tools or []]
        if not names:
            if self.tool_choice not in (None, "none"):
                raise InvalidRequestError("tool_choice needs tools", param="tool_choice")
            if self.parallel_tool_calls is not None:
                raise InvalidRequestError("parallel_tool_calls needs tools",
                                          param="parallel_tool_calls")
            return
        duplicate = next((n for i, n in enumerate(names) if n in names[:i]), None)
        if duplicate is not None:
            raise InvalidRequestError(f"tools name {duplicate!r} more than once", param="tools")
        choice = self.tool_choice_name
        if choice not in ("none", "auto", "required") and choice not in names:
            raise InvalidRequestError(f"tool_choice names {choice!r}, which is not in tools",
                                      param="tool_choice")

    @property
    def tool_choice_name(self) -> str:
        """"none", "auto", "required" or the named function; OpenAI's default is "auto" with
        tools and "none" without."""
        if isinstance(self.tool_choice, NamedToolChoice):
            return self.tool_choice.function.name
        return self.tool_choice or ("auto" if self.tools else "none")

    @property
    def active_tools(self) -> list[ToolDefinition]:
        """The tools the model is shown and may call (none with tool_choice "none")."""
        return list(self.tools or []) if self.tool_choice_name != "none" else []

    def _tool_constraint(self) -> constraints.Constraint | None:
        if not self.tools:
            return None
        is_parallel = self.parallel_tool_calls is not False
        return constraints.for_tools(self.active_tools, self.tool_choice_name, is_parallel)

    def sampling_params(self) -> SamplingParams:
        """Chat: no max_tokens means the server's default (`bounds.fit_max_tokens`)."""
        limit = self.max_completion_tokens if self.max_completion_tokens is not None else (
            self.max_tokens)
        params = self._common_params(limit)
        if self.logprobs:
            params.logprobs = self.top_logprobs or 0
        return params


def _check_message(index: int, message: ChatMessage) -> None:
    where = f"messages[{index}]"
    if message.role == "function":
        raise invalid(f"{where}.role", "role 'function' is deprecated and not supported; send "
                      "tool calls with role 'assistant' and results with role 'tool'")
    if message.tool_calls and message.role != "assistant":
        raise invalid(f"{where}.tool_calls", "only assistant messages carry tool_calls")
    for i, call in enumerate(message.tool_calls or []):
        try:
            json.loads(call.function.arguments)
        except ValueError as exc:
            raise invalid(f"{where}.tool_calls[{i}].function.arguments",
                          f"tool call arguments must be JSON text: {exc}") from exc
    if message.role == "tool" and not message.tool_call_id:
        raise invalid(f"{where}.tool_call_id", "tool messages need the tool_call_id they answer")
    for part in message.content if isinstance(message.content, list) else []:
        if part.type != "text" or part.text is None:
            raise invalid(f"{where}.content",
                          f"content part type {part.type!r} is not supported; send text")
    if message.content is None and message.role != "assistant":
        raise invalid(f"{where}.content", f"{message.role} messages need content")


class _OmitNone(BaseModel):
    @model_serializer(mode="wrap")
    def _omit_unset(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # OpenAI sends only the keys a delta changes: {"content": "..."} or {}.
        return {k: v for k, v in handler(self).items() if v is not None}


class FunctionDelta(_OmitNone):
    name: str | None = None
    arguments: str | None = None


class ToolCallDelta(_OmitNone):
    """Call `index` of a streamed message: id, type and name come first, then arguments."""

    index: int
    id: str | None = None
    type: Literal["function"] | None = None
    function: FunctionDelta | None = None


class ChatDelta(_OmitNone):
    role: Literal["assistant"] | None = None
    content: str | None = None
    tool_calls: list[ToolCallDelta] | None = None


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
    tool_calls: list[ToolCall] | None = None


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
    tools: list[ToolDefinition] | None = None  # rendered with `messages`, as chat renders them
    add_special_tokens: bool = True
    add_generation_prompt: bool = True

    @model_validator(mode="after")
    def _one_input(self) -> TokenizeRequest:
        if (self.prompt is None) == (self.messages is None):
            raise invalid("prompt", "give exactly one of prompt or messages")
        for i, message in enumerate(self.messages or []):
            _check_message(i, message)
        if self.tools and self.messages is None:
            raise invalid("tools", "tools are rendered with messages; send messages")
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
