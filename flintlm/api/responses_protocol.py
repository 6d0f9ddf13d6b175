"""OpenAI's Responses wire format (POST /v1/responses) as pydantic models: the request, the
response object, its output items and usage.

A Responses request is a chat request in another envelope: `to_chat_fields()` maps it onto the
fields of `ChatCompletionRequest`, so that sampling, structured output, tools and chat's
extensions (`stop`, `top_k`, ...) are validated and honoured by the one chat path. Input items
become chat messages in `api/responses_input.py`. Fields OpenAI defines that this server does not
honour are a 400 naming them unless they carry their no-op value, as on chat.
"""

from __future__ import annotations

import logging
import time
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from flintlm.api.protocol import invalid

logger = logging.getLogger("flintlm.api")

# OpenAI's Responses fields we do not honour -> the values that mean "not used".
UNSUPPORTED_RESPONSES: dict[str, tuple[Any, ...]] = {
    "background": (None, False),
    "conversation": (None,),
    "prompt": (None,),
    "max_tool_calls": (None,),
    "top_logprobs": (None, 0),
    "service_tier": (None, "auto", "default"),
    "stream_options": (None, {}),
    "context_management": (None, []),
    "prompt_cache_retention": (None, "in_memory"),
    "prompt_cache_options": (None,),
    "moderation": (None,),
    "background_options": (None,),
}
# `include` values that ask for reasoning items: honoured as none (this model writes no reasoning).
REASONING_INCLUDES = ("reasoning.encrypted_content",)
# Chat's extensions, honoured here as on /v1/chat/completions (vLLM's names).
CHAT_EXTENSIONS = (
    "stop", "seed", "presence_penalty", "frequency_penalty", "logit_bias", "top_k", "min_p",
    "repetition_penalty", "min_tokens", "ignore_eos", "stop_token_ids",
    "include_stop_str_in_output", "skip_special_tokens", "priority", "cache_salt",
    "guided_json", "guided_regex", "guided_grammar", "guided_choice", "structured_outputs",
)
# Chat Completions fields a client may carry over by mistake -> what Responses calls them.
CHAT_ONLY = {
    "messages": "input", "max_tokens": "max_output_tokens",
    "max_completion_tokens": "max_output_tokens", "response_format": "text.format",
    "functions": "tools", "function_call": "tool_choice", "n": None, "logprobs": None,
}


class TextFormat(BaseModel):
    """`text.format`: plain text, any JSON object, or JSON matching `schema`."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    type: Literal["text", "json_object", "json_schema"]
    name: str | None = None
    description: str | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None  # NOTE: constrained decoding enforces the schema either way

    @model_validator(mode="after")
    def _check_schema(self) -> TextFormat:
        if self.type == "json_schema" and (self.schema_ is None or not self.name):
            raise invalid("text.format", "text.format of type 'json_schema' needs 'name' and "
                          "'schema'")
        return self

    def response_format(self) -> dict[str, Any]:
        """As chat's `response_format`."""
        if self.type != "json_schema":
            return {"type": self.type}
        spec = {"name": self.name, "schema": self.schema_, "description": self.description,
                "strict": self.strict}
        return {"type": "json_schema",
                "json_schema": {k: v for k, v in spec.items() if v is not None}}


class TextConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    format: TextFormat | None = None
    verbosity: None = None  # a reasoning model's knob; no value but the default is honoured


class Reasoning(BaseModel):
    """A reasoning model's settings. This model does not reason: no effort but none is honoured,
    and a summary of its (absent) reasoning is always empty, so any `summary` is."""

    model_config = ConfigDict(extra="forbid")
    effort: Literal["none"] | None = None
    summary: Literal["auto", "concise", "detailed"] | None = None
    generate_summary: Literal["auto", "concise", "detailed"] | None = None  # the older name


class ResponsesRequest(BaseModel):
    model_config = ConfigDict(extra="allow")
    unsupported: ClassVar[dict[str, tuple[Any, ...]]] = UNSUPPORTED_RESPONSES

    model: str | None = None
    input: str | list[dict[str, Any]]
    instructions: str | None = None
    previous_response_id: str | None = None
    max_output_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    tools: list[dict[str, Any]] | None = None  # checked one by one (responses_input.chat_tools)
    tool_choice: Literal["none", "auto", "required"] | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    text: TextConfig | None = None
    metadata: dict[str, str] | None = None  # kept on the response, as OpenAI does
    user: str | None = None
    safety_identifier: str | None = None
    store: bool = True  # OpenAI's default
    stream: bool = False
    include: list[str] | None = None
    reasoning: Reasoning | None = None
    truncation: Literal["disabled"] | None = None
    # NOTE: a routing hint; prefix caching needs none here (same prefix, same key: reused).
    prompt_cache_key: str | None = None

    @model_validator(mode="after")
    def _check_fields(self) -> ResponsesRequest:
        extra = self.model_extra or {}
        for name, value in extra.items():
            if name in self.unsupported and value not in self.unsupported[name]:
                raise invalid(name, f"{name!r} is not supported by this server")
            if name in CHAT_ONLY:
                other = CHAT_ONLY[name]
                hint = f"; use {other!r}" if other else ""
                raise invalid(name, f"{name!r} is a Chat Completions parameter, not a Responses "
                              f"one{hint}")
        ignored = sorted(set(extra) - set(self.unsupported) - set(CHAT_EXTENSIONS))
        if ignored:
            logger.info("ignoring unknown request fields: %s", ", ".join(ignored))
        for value in self.include or []:
            if value not in REASONING_INCLUDES:
                raise invalid("include", f"include {value!r} is not supported by this server")
        if isinstance(self.input, list) and not self.input and not self.previous_response_id:
            raise invalid("input", "input must not be empty")
        if self.metadata is not None and len(self.metadata) > 16:
            raise invalid("metadata", "metadata holds at most 16 pairs")
        return self

    @property
    def end_user(self) -> str | None:
        return self.safety_identifier or self.user

    def to_chat_fields(self) -> dict[str, Any]:
        """Everything but messages and tools, as `ChatCompletionRequest` fields."""
        fields: dict[str, Any] = {
            "model": self.model, "stream": self.stream,
            "max_completion_tokens": self.max_output_tokens,
            "temperature": self.temperature, "top_p": self.top_p,
            "parallel_tool_calls": self.parallel_tool_calls,
            "user": self.user, "safety_identifier": self.safety_identifier,
        }
        if self.text is not None and self.text.format is not None:
            fields["response_format"] = self.text.format.response_format()
        extra = self.model_extra or {}
        fields.update({name: extra[name] for name in CHAT_EXTENSIONS if name in extra})
        return {k: v for k, v in fields.items() if v is not None}


# --- the response object ---------------------------------------------------------------------


class OutputText(BaseModel):
    type: Literal["output_text"] = "output_text"
    text: str
    annotations: list[Any] = []
    logprobs: list[Any] = []


class OutputMessage(BaseModel):
    type: Literal["message"] = "message"
    id: str
    status: Literal["in_progress", "completed", "incomplete"]
    role: Literal["assistant"] = "assistant"
    content: list[OutputText]


class FunctionCallItem(BaseModel):
    type: Literal["function_call"] = "function_call"
    id: str
    call_id: str
    name: str
    arguments: str  # JSON text, as generated
    status: Literal["in_progress", "completed", "incomplete"]


OutputItem = OutputMessage | FunctionCallItem


class InputTokensDetails(BaseModel):
    cached_tokens: int = 0


class OutputTokensDetails(BaseModel):
    reasoning_tokens: int = 0


class ResponseUsage(BaseModel):
    input_tokens: int
    input_tokens_details: InputTokensDetails
    output_tokens: int
    output_tokens_details: OutputTokensDetails = OutputTokensDetails()
    total_tokens: int


class IncompleteDetails(BaseModel):
    reason: Literal["max_output_tokens", "content_filter"]


class ResponseError(BaseModel):
    code: str
    message: str


class ResponseObject(BaseModel):
    """The response as `POST /v1/responses` returns it, stream events carry it and the store
    keeps it."""

    id: str
    object: Literal["response"] = "response"
    created_at: int = Field(default_factory=lambda: int(time.time()))
    status: Literal["in_progress", "completed", "incomplete", "failed"]
    error: ResponseError | None = None
    incomplete_details: IncompleteDetails | None = None
    model: str
    instructions: str | None = None
    output: list[OutputItem] = []
    parallel_tool_calls: bool = True
    previous_response_id: str | None = None
    max_output_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    tool_choice: str | dict[str, Any] = "auto"
    tools: list[dict[str, Any]] = []
    text: dict[str, Any] = {"format": {"type": "text"}}
    truncation: Literal["disabled"] = "disabled"
    metadata: dict[str, str] = {}
    store: bool = True
    user: str | None = None
    usage: ResponseUsage | None = None


class DeletedResponse(BaseModel):
    id: str
    object: Literal["response.deleted"] = "response.deleted"
    deleted: bool = True


class InputItemList(BaseModel):
    object: Literal["list"] = "list"
    data: list[dict[str, Any]]
    first_id: str | None = None
    last_id: str | None = None
    has_more: bool = False
