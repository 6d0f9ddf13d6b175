"""Chat messages and tool definitions as callers send them; chat and tokenize both read them, so
`_check_message` (the per-message rules) lives here with them.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from flintlm.api.protocol.common import invalid


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
