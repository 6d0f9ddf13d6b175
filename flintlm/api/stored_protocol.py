"""Wire models of OpenAI's stored chat completions (listChatCompletions, getChatCompletion,
updateChatCompletion, deleteChatCompletion, getChatCompletionMessages), and how a stored
completion reads on the wire.

A stored completion goes out as the completion it was, plus its `metadata` and the request
settings OpenAI echoes (`seed`, `temperature`, `top_p`, `tools`, ...).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel

if TYPE_CHECKING:
    from flintlm.platform.completion_store import StoredCompletion

# Request settings echoed in a stored completion, as OpenAI does; `input_user` is `user`.
_ECHOED = ("seed", "temperature", "top_p", "presence_penalty", "frequency_penalty", "tools",
           "tool_choice", "response_format", "service_tier")


class UpdateStoredCompletion(BaseModel):
    metadata: dict[str, Any] | None


class StoredCompletionList(BaseModel):
    object: Literal["list"] = "list"
    data: list[dict[str, Any]]
    first_id: str | None
    last_id: str | None
    has_more: bool


class StoredMessageList(BaseModel):
    object: Literal["list"] = "list"
    data: list[dict[str, Any]]
    first_id: str | None
    last_id: str | None
    has_more: bool


class DeletedCompletion(BaseModel):
    object: Literal["chat.completion.deleted"] = "chat.completion.deleted"
    id: str
    deleted: bool = True


def completion_view(stored: StoredCompletion) -> dict[str, Any]:
    """The stored completion as getChatCompletion answers it."""
    echoed = {name: stored.request.get(name) for name in _ECHOED}
    return {**stored.completion, **echoed, "input_user": stored.request.get("user"),
            "metadata": stored.metadata}


def message_views(stored: StoredCompletion) -> list[dict[str, Any]]:
    """The request's messages as getChatCompletionMessages lists them: ids `<completion>-<i>`,
    text content as a string, content parts kept in `content_parts`."""
    views = []
    for index, message in enumerate(stored.request.get("messages") or []):
        content = message.get("content")
        parts = content if isinstance(content, list) else None
        text = "".join(part.get("text") or "" for part in parts) if parts else content
        views.append({"id": f"{stored.id}-{index}", "role": message["role"], "content": text,
                      "name": message.get("name"), "content_parts": parts,
                      "tool_calls": message.get("tool_calls"),
                      "tool_call_id": message.get("tool_call_id")})
    return views
