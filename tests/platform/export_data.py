"""Stored completions as the server keeps them, for the export tests, and JSON schemas of
OpenAI's fine-tuning formats (chat and preference), written from OpenAI's documentation."""

from __future__ import annotations

from typing import Any

from flintlm.platform.completion_store import CompletionStore

_TOOL_CALL = {
    "type": "object", "required": ["id", "type", "function"], "additionalProperties": False,
    "properties": {
        "id": {"type": "string", "minLength": 1}, "type": {"const": "function"},
        "function": {"type": "object", "required": ["name", "arguments"],
                     "additionalProperties": False,
                     "properties": {"name": {"type": "string"}, "arguments": {"type": "string"}}},
    },
}
_MESSAGE = {
    "type": "object", "required": ["role"], "additionalProperties": False,
    "properties": {
        "role": {"enum": ["system", "user", "assistant", "tool"]},
        "content": {"type": "string"}, "name": {"type": "string"},
        "tool_calls": {"type": "array", "minItems": 1, "items": _TOOL_CALL},
        "tool_call_id": {"type": "string"},
    },
    "allOf": [
        {"if": {"properties": {"role": {"const": "tool"}}},
         "then": {"required": ["content", "tool_call_id"]}},
        {"if": {"properties": {"role": {"enum": ["system", "user"]}}},
         "then": {"required": ["content"], "not": {"required": ["tool_calls"]}}},
        {"if": {"properties": {"role": {"const": "assistant"}}},
         "then": {"anyOf": [{"required": ["content"]}, {"required": ["tool_calls"]}]}},
    ],
}
_ASSISTANT = {"allOf": [_MESSAGE, {"properties": {"role": {"const": "assistant"}}}]}
_TOOLS = {"type": "array", "items": {
    "type": "object", "required": ["type", "function"],
    "properties": {"type": {"const": "function"},
                   "function": {"type": "object", "required": ["name"]}}}}
_INPUT = {"messages": {"type": "array", "minItems": 1, "items": _MESSAGE}, "tools": _TOOLS,
          "parallel_tool_calls": {"type": "boolean"}}

# Supervised fine-tuning: the conversation ends with the assistant's answer.
CHAT_SCHEMA = {
    "type": "object", "required": ["messages"], "additionalProperties": False,
    "properties": {**_INPUT, "messages": {"type": "array", "minItems": 2, "items": _MESSAGE}},
}
# Direct preference optimization: one input, one preferred and one non-preferred answer.
PREFERENCE_SCHEMA = {
    "type": "object", "additionalProperties": False,
    "required": ["input", "preferred_output", "non_preferred_output"],
    "properties": {
        "input": {"type": "object", "required": ["messages"], "additionalProperties": False,
                  "properties": _INPUT},
        "preferred_output": {"type": "array", "minItems": 1, "maxItems": 1,
                             "items": _ASSISTANT},
        "non_preferred_output": {"type": "array", "minItems": 1, "maxItems": 1,
                                 "items": _ASSISTANT},
    },
}

WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "parameters": {"type": "object",
                                          "properties": {"city": {"type": "string"}}}}}
WEATHER_CALL = {"id": "call_1", "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}


def answer(text: str | None, finish_reason: str = "stop",
           tool_calls: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {"index": 0, "logprobs": None, "finish_reason": finish_reason,
            "message": {"role": "assistant", "content": text, "tool_calls": tool_calls}}


def save(store: CompletionStore, completion_id: str, messages: list[dict[str, Any]],
         choices: list[dict[str, Any]], *, key: str = "key-a", model: str = "default",
         tools: list[dict[str, Any]] | None = None, **metadata: str) -> None:
    request: dict[str, Any] = {"model": model, "messages": messages, "store": True}
    if tools:
        request["tools"] = tools
    completion = {"id": completion_id, "object": "chat.completion", "created": 1, "model": model,
                  "choices": choices, "usage": {"prompt_tokens": 5, "completion_tokens": 3,
                                                "total_tokens": 8}}
    store.save(completion_id=completion_id, tenant_id="tenant-" + key, key_id=key, model=model,
               request=request, completion=completion, metadata=metadata)
