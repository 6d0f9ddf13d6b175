"""Responses input -> a chat request: input items (and a previous response's context) become
chat messages, function tools and `tool_choice` become chat's, and the whole is validated by
`ChatCompletionRequest`, whose parameter names in errors are mapped back to Responses' names.

Items are also normalized for the response store (`normalize_items`): every item gets an id and
message content becomes a list of parts, as `GET /v1/responses/{id}/input_items` lists them.
"""

from __future__ import annotations

import re
import uuid
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from flintlm.api.errors import InvalidParam
from flintlm.api.protocol import ChatCompletionRequest

if TYPE_CHECKING:
    from flintlm.api.responses_protocol import ResponsesRequest

TEXT_PART_TYPES = ("input_text", "output_text", "text")
ID_PREFIXES = {"message": "msg", "function_call": "fc", "function_call_output": "fco"}


def normalize_items(input_: str | list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The input as a list of typed items with ids; message content as a list of parts."""
    items: list[dict[str, Any]] = (
        [{"role": "user", "content": input_}] if isinstance(input_, str) else input_)
    normalized = []
    for item in items:
        item = dict(item)
        item.setdefault("type", "message")
        if item["type"] == "message" and isinstance(item.get("content"), str):
            part_type = "output_text" if item.get("role") == "assistant" else "input_text"
            item["content"] = [{"type": part_type, "text": item["content"]}]
        prefix = ID_PREFIXES.get(item["type"])
        if prefix is not None and not item.get("id"):
            item["id"] = f"{prefix}_{uuid.uuid4().hex}"
        normalized.append(item)
    return normalized


def chat_messages(instructions: str | None, context: list[dict[str, Any]],
                  items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Chat messages for instructions, then a previous response's context, then this input.

    Raises:
        InvalidParam: an item this server cannot read, naming it (`input[2].content[0].type`).
    """
    messages: list[dict[str, Any]] = []
    if instructions:
        messages.append({"role": "system", "content": instructions})
    for i, item in enumerate(context + items):
        where = f"input[{i - len(context)}]" if i >= len(context) else "previous_response_id"
        _add_item(messages, item, where)
    return messages


def _add_item(messages: list[dict[str, Any]], item: dict[str, Any], where: str) -> None:
    kind = item.get("type", "message")
    if kind == "message":
        role = item.get("role")
        messages.append({"role": role, "content": _text(item.get("content"), where)})
    elif kind == "function_call":
        call = {"id": _required(item, "call_id", where), "type": "function",
                "function": {"name": _required(item, "name", where),
                             "arguments": _required(item, "arguments", where)}}
        previous = messages[-1] if messages else None
        if previous is not None and previous["role"] == "assistant":  # one turn, several calls
            previous.setdefault("tool_calls", []).append(call)
        else:
            messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
    elif kind == "function_call_output":
        output = item.get("output")
        text = output if isinstance(output, str) else _text(output, f"{where}.output")
        messages.append({"role": "tool", "tool_call_id": _required(item, "call_id", where),
                         "content": text})
    elif kind != "reasoning":  # NOTE: this model writes no reasoning; a client may echo some
        raise InvalidParam(f"input item type {kind!r} is not supported; send message, "
                           "function_call or function_call_output items", param=f"{where}.type")


def _text(content: Any, where: str) -> str:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise InvalidParam("content must be a string or a list of parts",
                           param=f"{where}.content")
    texts = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "refusal":
            texts.append(str(part.get("refusal", "")))
        elif kind in TEXT_PART_TYPES and isinstance(part.get("text"), str):
            texts.append(part["text"])
        else:
            raise InvalidParam(f"content part type {kind!r} is not supported; this model reads "
                               "text only (input_text)", param=f"{where}.content[{j}].type")
    return "".join(texts)


def _required(item: dict[str, Any], name: str, where: str) -> Any:
    value = item.get(name)
    if value is None:
        raise InvalidParam(f"missing required parameter: '{where}.{name}'",
                           param=f"{where}.{name}")
    return value


def chat_tools(tools: list[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
    """Responses' flat function tools as chat's nested ones; any other tool type is a 400."""
    if tools is None:
        return None
    converted = []
    for i, tool in enumerate(tools):
        if tool.get("type") != "function":
            raise InvalidParam(f"tool type {tool.get('type')!r} is not supported; this server "
                               "offers 'function' tools only", param=f"tools[{i}].type")
        function = {k: v for k, v in tool.items() if k != "type"}
        converted.append({"type": "function", "function": function})
    return converted


def chat_tool_choice(choice: str | dict[str, Any] | None) -> str | dict[str, Any] | None:
    if not isinstance(choice, dict):
        return choice
    if choice.get("type") != "function" or not isinstance(choice.get("name"), str):
        raise InvalidParam(f"tool_choice of type {choice.get('type')!r} is not supported; use "
                           "'auto', 'none', 'required' or {'type': 'function', 'name': ...}",
                           param="tool_choice")
    return {"type": "function", "function": {"name": choice["name"]}}


def chat_request(body: ResponsesRequest, context: list[dict[str, Any]],
                 items: list[dict[str, Any]]) -> ChatCompletionRequest:
    """The chat request that generates this response, validated as chat validates.

    Raises:
        InvalidParam: anything chat refuses, named as the Responses client wrote it.
    """
    fields = body.to_chat_fields()
    fields["messages"] = chat_messages(body.instructions, context, items)
    fields["tools"] = chat_tools(body.tools)
    # NOTE: "auto" without tools is "no tools" (OpenAI accepts it; chat's rule refuses it).
    is_empty_auto = body.tool_choice == "auto" and not body.tools
    fields["tool_choice"] = None if is_empty_auto else chat_tool_choice(body.tool_choice)
    try:
        return ChatCompletionRequest.model_validate({k: v for k, v in fields.items()
                                                     if v is not None})
    except ValidationError as exc:
        raise _invalid_param(exc) from None


_CHAT_TO_RESPONSES = [
    (re.compile(r"^messages(\[\d+\])?.*"), "input"),
    (re.compile(r"^max_(completion_)?tokens"), "max_output_tokens"),
    (re.compile(r"^response_format(\.json_schema)?"), "text.format"),
    (re.compile(r"^tools\[(\d+)\]\.function"), r"tools[\1]"),
]


def responses_param(param: str) -> str:
    """A chat parameter's name as the Responses client wrote it (`max_tokens` ->
    `max_output_tokens`, `response_format...` -> `text.format...`)."""
    for pattern, replacement in _CHAT_TO_RESPONSES:
        param = pattern.sub(replacement, param)
    return param


def _invalid_param(exc: ValidationError) -> InvalidParam:
    first = exc.errors()[0]
    ctx = first.get("ctx") or {}
    param = responses_param(ctx.get("param") or ".".join(
        f"[{p}]" if isinstance(p, int) else str(p) for p in first.get("loc", ())
    ).replace(".[", "["))
    message = str(first.get("msg", "invalid request"))
    if first.get("type") != "invalid_param":
        message = f"invalid value for {param!r}: {message}"
    return InvalidParam(message, param=param or None)

