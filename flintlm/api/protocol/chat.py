"""POST /v1/chat/completions on the wire: the request (messages, tools, logprobs) and the
response, stream chunk and delta shapes it is answered with.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import (
    BaseModel,
    Field,
    SerializerFunctionWrapHandler,
    model_serializer,
    model_validator,
)

from flintlm.api import constraints
from flintlm.api.protocol.common import UsageInfo, _Response, invalid
from flintlm.api.protocol.generation_request import UNSUPPORTED_COMMON, _GenerationRequest
from flintlm.api.protocol.messages import (
    ChatMessage,
    NamedToolChoice,
    ToolCall,
    ToolDefinition,
    _check_message,
)
from flintlm.engine.request import InvalidRequestError, SamplingParams

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


class ChatCompletionResponse(_Response):
    object: Literal["chat.completion"] = "chat.completion"
    choices: list[ChatChoice]
    usage: UsageInfo


class ChatCompletionChunk(_Response):
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    choices: list[ChatChunkChoice]
    usage: UsageInfo | None = None
