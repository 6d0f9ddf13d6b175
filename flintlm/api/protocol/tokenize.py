"""POST /tokenize and /detokenize on the wire (vLLM's shapes): text or chat messages to token
ids and back.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, model_validator

from flintlm.api.protocol.common import invalid
from flintlm.api.protocol.messages import ChatMessage, ToolDefinition, _check_message


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
