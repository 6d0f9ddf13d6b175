"""Anthropic's Messages wire format as pydantic models: the request of `POST /v1/messages` (and
of `count_tokens`), the message it returns, and the events of its stream.

A request maps onto what chat already runs: `chat_messages()` gives OpenAI-style chat messages
and tool definitions for `prompts.render_chat`, `sampling_params()` the engine's parameters with
the tool-call grammar of `tool_choice` (api/constraints.py). Fields Anthropic defines that this
server does not honour are a 400 naming them unless they carry their no-op value; unknown fields
are accepted, ignored and logged, as on chat.
"""

from __future__ import annotations

import json
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, model_validator

from flintlm.api import constraints
from flintlm.api.protocol import (
    ChatMessage,
    FunctionCall,
    FunctionDefinition,
    ToolCall,
    ToolDefinition,
    check_extra_fields,
    invalid,
)
from flintlm.engine.request import InvalidRequestError, SamplingParams, Usage

TOOL_NAME_PATTERN = r"^[a-zA-Z0-9_-]{1,64}$"
# Anthropic fields not honoured here -> the values that mean "not used" (accepted as no-ops).
UNSUPPORTED_MESSAGES: dict[str, tuple[Any, ...]] = {
    "service_tier": (None, "auto", "standard_only"),
    "container": (None,),
    "mcp_servers": (None, []),
    "speed": (None, "standard"),
}
# Block types a request may carry; the others ("image", "document", "thinking", ...) get a 400.
INPUT_BLOCK_TYPES = ("text", "tool_use", "tool_result")


class TextBlock(BaseModel):
    model_config = ConfigDict(extra="allow")  # cache_control, citations: see ContentBlock
    type: Literal["text"]
    text: str


class ContentBlock(BaseModel):
    """One block of a message's content; which fields it needs depends on `type` (checked by the
    request, so an unsupported type gets a 400 naming where it is).

    NOTE: `cache_control` is accepted on any block: the prefix cache reuses every shared prefix
    without being asked, which is what the marker asks for.
    """

    model_config = ConfigDict(extra="allow")
    type: str
    text: str | None = None
    id: str | None = None  # tool_use
    name: str | None = None  # tool_use
    input: dict[str, Any] | None = None  # tool_use
    tool_use_id: str | None = None  # tool_result
    content: str | list[ContentBlock] | None = None  # tool_result: text blocks
    is_error: bool | None = None  # tool_result

    def result_text(self) -> str:
        if isinstance(self.content, list):
            return "".join(block.text or "" for block in self.content)
        return self.content or ""


class InputMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")
    # NOTE: "system" mid-conversation is a beta Claude Code uses (mid-conversation-system).
    role: Literal["user", "assistant", "system"]
    content: str | list[ContentBlock]

    def blocks(self) -> list[ContentBlock]:
        if isinstance(self.content, str):
            return [ContentBlock(type="text", text=self.content)]
        return self.content


class Tool(BaseModel):
    model_config = ConfigDict(extra="allow")  # cache_control
    type: Literal["custom"] | None = None  # server tools (web_search_..., bash_...) are refused
    name: str = Field(pattern=TOOL_NAME_PATTERN)
    description: str | None = None
    input_schema: dict[str, Any]


class ToolChoice(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["auto", "any", "tool", "none"]
    name: str | None = None
    disable_parallel_tool_use: bool | None = None


class Metadata(BaseModel):
    model_config = ConfigDict(extra="forbid")
    user_id: str | None = None


class ThinkingConfig(BaseModel):
    """Extended thinking: this model has none. "adaptive" lets the model decide whether to
    think, so it is honoured by not thinking; "enabled" asks for thinking and is a 400."""

    model_config = ConfigDict(extra="allow")
    type: Literal["enabled", "disabled", "adaptive"]
    budget_tokens: int | None = None


class OutputFormat(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    type: Literal["json_schema"]
    schema_: dict[str, Any] = Field(alias="schema")


class OutputConfig(BaseModel):
    """`effort` tunes how much a model thinks; with no thinking there is nothing to tune, so every
    level answers alike. `format` is honoured: the output is constrained to the JSON schema."""

    model_config = ConfigDict(extra="forbid")
    effort: Literal["low", "medium", "high", "xhigh", "max"] | None = None
    format: OutputFormat | None = None


class ContextManagement(BaseModel):
    """Server-side context edits. Only clearing thinking blocks is accepted: there are none."""

    model_config = ConfigDict(extra="allow")
    edits: list[dict[str, Any]] = []


class MessagesRequest(BaseModel):
    """`POST /v1/messages`; `count_tokens` takes the same fields less the sampling ones."""

    model_config = ConfigDict(extra="allow")
    unsupported: ClassVar[dict[str, tuple[Any, ...]]] = UNSUPPORTED_MESSAGES

    model: str
    messages: list[InputMessage] = Field(min_length=1)
    system: str | list[TextBlock] | None = None
    max_tokens: int = Field(ge=1)
    temperature: float | None = Field(default=None, ge=0.0, le=1.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    top_k: int | None = Field(default=None, ge=0)
    stop_sequences: list[str] | None = None
    stream: bool = False
    tools: list[Tool] | None = None
    tool_choice: ToolChoice | None = None
    metadata: Metadata | None = None
    thinking: ThinkingConfig | None = None
    output_config: OutputConfig | None = None
    context_management: ContextManagement | None = None
    _constraint: constraints.Constraint | None = PrivateAttr(default=None)

    @model_validator(mode="before")
    @classmethod
    def _refuse_server_tools(cls, data: Any) -> Any:
        # NOTE: before parsing, so a tool without input_schema is named by its type, not as a
        # missing field of a custom tool.
        tools = data.get("tools") if isinstance(data, dict) else None
        # Anything but a list is left to the field's own check (a 400 naming `tools`).
        for i, tool in enumerate(tools if isinstance(tools, list) else []):
            if isinstance(tool, dict) and tool.get("type") not in (None, "custom"):
                raise invalid(f"tools[{i}].type", f"tool type {tool['type']!r} is not supported "
                              "by this server; only custom tools with an input_schema")
        return data

    @model_validator(mode="after")
    def _check_fields(self) -> MessagesRequest:
        check_extra_fields(self.model_extra, self.unsupported)
        for i, message in enumerate(self.messages):
            _check_blocks(i, message)
        last = len(self.messages) - 1
        if self.messages[last].role == "assistant":
            blocks = self.messages[last].blocks()
            if any(block.type != "text" for block in blocks):
                raise invalid(f"messages[{last}].content", "a final assistant message (prefill) "
                              "carries text only")
            if self.prefill != self.prefill.rstrip():
                raise invalid(f"messages[{last}].content", "final assistant content cannot end "
                              "with trailing whitespace")
        if any(not s for s in self.stop_sequences or []):
            raise invalid("stop_sequences", "stop sequences must not be empty")
        if self.thinking is not None and self.thinking.type == "enabled":
            raise invalid("thinking", "extended thinking is not supported by this model; send "
                          "thinking {'type': 'disabled'} or {'type': 'adaptive'}")
        edits = self.context_management.edits if self.context_management else []
        unsupported = [e.get("type") for e in edits
                       if not str(e.get("type", "")).startswith("clear_thinking")]
        if unsupported:
            raise invalid("context_management.edits",
                          f"context edit {unsupported[0]!r} is not supported by this server")
        try:
            tool_constraint = self._tool_constraint()
            format_constraint = self._format_constraint()
        except InvalidRequestError as exc:
            raise invalid(exc.param or "tools", exc.message) from exc
        if tool_constraint is not None and format_constraint is not None:
            raise invalid("output_config.format", "output_config.format cannot be combined "
                          "with tools unless tool_choice is 'none'")
        self._constraint = tool_constraint or format_constraint
        return self

    def _format_constraint(self) -> constraints.Constraint | None:
        output_format = self.output_config.format if self.output_config else None
        if output_format is None:
            return None
        return constraints.checked(constraints.Constraint(
            "output_config.format.schema", {"json_schema": output_format.schema_}))

    @property
    def tool_choice_name(self) -> str:
        """As chat names it: "none", "auto", "required" or the tool's name."""
        choice = self.tool_choice
        if not self.tools or (choice is not None and choice.type == "none"):
            return "none"
        if choice is None or choice.type == "auto":
            return "auto"
        if choice.type == "any":
            return "required"
        return choice.name or ""

    @property
    def active_tools(self) -> list[ToolDefinition]:
        """The tools the model is shown and may call (none with tool_choice "none")."""
        if self.tool_choice_name == "none":
            return []
        return [ToolDefinition(type="function", function=FunctionDefinition(
            name=t.name, description=t.description, parameters=t.input_schema))
            for t in self.tools or []]

    def _tool_constraint(self) -> constraints.Constraint | None:
        choice = self.tool_choice
        if not self.tools:
            if choice is not None and choice.type != "none":
                raise InvalidRequestError("tool_choice needs tools", param="tool_choice")
            return None
        names = [tool.name for tool in self.tools]
        duplicate = next((n for i, n in enumerate(names) if n in names[:i]), None)
        if duplicate is not None:
            raise InvalidRequestError(f"tools name {duplicate!r} more than once", param="tools")
        if choice is not None and choice.type == "tool" and choice.name not in names:
            raise InvalidRequestError(f"tool_choice names {choice.name!r}, which is not in tools",
                                      param="tool_choice.name")
        is_parallel = not (choice is not None and choice.disable_parallel_tool_use)
        return constraints.for_tools(self.active_tools, self.tool_choice_name, is_parallel,
                                     schema_param="tools[{}].input_schema")

    @property
    def end_user(self) -> str | None:
        return self.metadata.user_id if self.metadata is not None else None

    @property
    def prefill(self) -> str:
        """The text of a final assistant message: the answer continues it."""
        last = self.messages[-1]
        if last.role != "assistant":
            return ""
        return "".join(block.text or "" for block in last.blocks())

    def chat_messages(self) -> list[ChatMessage]:
        """The conversation as chat messages, less a final assistant message (`prefill`):
        `system` first, tool_result blocks as tool messages, tool_use blocks as the assistant's
        tool calls."""
        messages: list[ChatMessage] = []
        system = _text_of(self.system)
        if system:
            messages.append(ChatMessage(role="system", content=system))
        history = self.messages[:-1] if self.messages[-1].role == "assistant" else self.messages
        for message in history:
            messages += _chat_messages(message)
        return messages

    def sampling_params(self) -> SamplingParams:
        return SamplingParams(
            max_tokens=self.max_tokens,
            temperature=1.0 if self.temperature is None else self.temperature,
            top_p=1.0 if self.top_p is None else self.top_p,
            top_k=self.top_k or 0,
            stop=list(self.stop_sequences or []),
            **(self._constraint.fields if self._constraint is not None else {}),
        )


class CountTokensRequest(MessagesRequest):
    """`count_tokens`: the prompt of a Messages request; `max_tokens` is not needed."""

    max_tokens: int = Field(default=1, ge=1)


def _check_blocks(index: int, message: InputMessage) -> None:
    for j, block in enumerate(message.blocks()):
        where = f"messages[{index}].content[{j}]"
        if block.type not in INPUT_BLOCK_TYPES:
            reason = ("this model has no vision" if block.type == "image"
                      else "send text, tool_use or tool_result blocks")
            raise invalid(f"{where}.type",
                          f"content block type {block.type!r} is not supported: {reason}")
        if block.type == "text" and block.text is None:
            raise invalid(f"{where}.text", "text blocks need text")
        if message.role == "system" and block.type != "text":
            raise invalid(f"{where}.type", "system messages carry text blocks only")
        if block.type == "tool_use":
            if message.role != "assistant":
                raise invalid(f"{where}.type", "only assistant messages carry tool_use blocks")
            if not block.id or not block.name or block.input is None:
                raise invalid(where, "tool_use blocks need id, name and input")
        if block.type == "tool_result":
            if message.role != "user":
                raise invalid(f"{where}.type", "only user messages carry tool_result blocks")
            if not block.tool_use_id:
                raise invalid(f"{where}.tool_use_id", "tool_result blocks need tool_use_id")
            for k, part in enumerate(block.content if isinstance(block.content, list) else []):
                if part.type != "text" or part.text is None:
                    raise invalid(f"{where}.content[{k}].type", f"tool_result content block "
                                  f"type {part.type!r} is not supported: send text")


def _text_of(system: str | list[TextBlock] | None) -> str:
    if isinstance(system, list):
        return "".join(block.text for block in system)
    return system or ""


def _chat_messages(message: InputMessage) -> list[ChatMessage]:
    blocks = message.blocks()
    text = "".join(block.text or "" for block in blocks if block.type == "text")
    if message.role == "system":
        return [ChatMessage(role="system", content=text)]
    if message.role == "assistant":
        calls = [ToolCall(id=block.id or "", function=FunctionCall(
            name=block.name or "", arguments=json.dumps(block.input)))
            for block in blocks if block.type == "tool_use"]
        return [ChatMessage(role="assistant", content=text, tool_calls=calls or None)]
    results = [ChatMessage(role="tool", tool_call_id=block.tool_use_id,
                           content=_result_text(block))
               for block in blocks if block.type == "tool_result"]
    return results + ([ChatMessage(role="user", content=text)] if text or not results else [])


def _result_text(block: ContentBlock) -> str:
    text = block.result_text()
    return f"Error: {text}" if block.is_error else text


# --- responses and stream events -----------------------------------------------------------


class ResponseTextBlock(BaseModel):
    type: Literal["text"] = "text"
    text: str


class ResponseToolUseBlock(BaseModel):
    type: Literal["tool_use"] = "tool_use"
    id: str
    name: str
    input: dict[str, Any]


ResponseBlock = ResponseTextBlock | ResponseToolUseBlock


class MessagesUsage(BaseModel):
    input_tokens: int
    output_tokens: int
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int = 0


def messages_usage(usage: Usage) -> MessagesUsage:
    """Anthropic counts cached prompt tokens apart: `input_tokens` are the uncached ones."""
    return MessagesUsage(input_tokens=usage.prompt_tokens - usage.cached_tokens,
                         output_tokens=usage.completion_tokens,
                         cache_read_input_tokens=usage.cached_tokens)


StopReason = Literal["end_turn", "max_tokens", "stop_sequence", "tool_use",
                     "model_context_window_exceeded", "refusal"]


class MessageResponse(BaseModel):
    id: str
    type: Literal["message"] = "message"
    role: Literal["assistant"] = "assistant"
    model: str
    content: list[ResponseBlock]
    stop_reason: StopReason | None = None
    stop_sequence: str | None = None
    usage: MessagesUsage


class CountTokensResponse(BaseModel):
    input_tokens: int
