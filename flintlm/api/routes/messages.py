"""POST /v1/messages and /v1/messages/count_tokens: Anthropic's Messages API over the same path as
chat (chat template, admission, engine, ledger), answered as one message or Anthropic's SSE events.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Request, Response
from pydantic import BaseModel

from flintlm.api.anthropic_errors import AnthropicRoute, error_event
from flintlm.api.anthropic_protocol import (
    CountTokensRequest,
    CountTokensResponse,
    MessageResponse,
    MessagesRequest,
    ResponseBlock,
    ResponseTextBlock,
    ResponseToolUseBlock,
    StopReason,
    messages_usage,
)
from flintlm.api.bounds import check_count, checked_sampling
from flintlm.api.deps import (
    AdmissionDep,
    AuthedKey,
    Credentials,
    EngineDep,
    Serving,
    check_model,
)
from flintlm.api.errors import ClientDisconnected, NotFound, PermissionDenied
from flintlm.api.generation import Generation, raise_if_failed
from flintlm.api.guarding import guard_messages
from flintlm.api.prompts import render_chat
from flintlm.api.streaming import SSEResponse
from flintlm.api.tool_calls import ToolCallParser, finish_reason
from flintlm.engine.request import FinishReason, RequestOutput, Usage

if TYPE_CHECKING:
    from flintlm.api.protocol import ChatMessage
    from flintlm.loading.tokenizer import Tokenizer

router = APIRouter(route_class=AnthropicRoute)

# The API's finish reasons (tool_calls.finish_reason) as Anthropic's stop reasons.
STOP_REASONS: dict[str, StopReason] = {"stop": "end_turn", "length": "max_tokens",
                                       "tool_calls": "tool_use", "content_filter": "refusal"}


@router.post("/v1/messages", response_model=None)
async def create_message(
    body: MessagesRequest,
    request: Request,
    serving: Serving,
    engine: EngineDep,
    secret: Credentials,
    admission: AdmissionDep,
) -> Response:
    # The edge as on chat: validate -> authenticate -> render off the event loop -> admit.
    limits = serving.config.limits
    check_count("messages", len(body.messages), limits.max_messages)
    check_count("tools", len(body.tools or []), limits.max_tools)
    params = checked_sampling(await asyncio.to_thread(body.sampling_params), limits,
                              engine.tokenizer.vocab_size)
    key = await serving.admission.authenticate(secret)
    check_model(body.model, engine)
    request_id = f"msg_{uuid.uuid4().hex}"
    # NOTE: the answer is built from outputs as they come, streamed or not: during_call checks.
    messages, guard = await guard_messages(serving, key, request_id, body.chat_messages(),
                                           stream=True, param="messages")
    prompt_ids = await asyncio.to_thread(render_prompt, engine.tokenizer, body, messages)
    # NOTE: clients ask for max_tokens whatever the model (Claude Code: 32,000). As Anthropic's
    # API does, a request whose max_tokens passes the context window runs up to the window and
    # ends with stop_reason "model_context_window_exceeded"; a prompt that fills it is a 400.
    room = engine.max_model_len - len(prompt_ids)
    is_window_bound = 0 < room < body.max_tokens
    if is_window_bound:
        params.max_tokens = room
    ticket = await admission.admit(key, request_id, [prompt_ids], params, body.end_user,
                                   prompt_param="messages", guard=guard)
    generation = await Generation.start(
        engine, serving.metrics, ticket, request.receive, [prompt_ids], ticket.admitted_params,
        cache_salt=ticket.cache_salt, guard=guard,
    )
    encoder = MessageEncoder(request_id, engine.model_name, bool(body.active_tools),
                             is_window_bound=is_window_bound)
    if body.stream:
        return SSEResponse(generation, message_events(generation, encoder))
    return await message_response(generation, encoder)


@router.post("/v1/messages/count_tokens")
async def count_tokens(body: CountTokensRequest, engine: EngineDep, key: AuthedKey
                       ) -> CountTokensResponse:
    """The prompt's token count, exactly as `/v1/messages` renders and bills it; no ledger row."""
    check_model(body.model, engine)
    if not key.is_model_allowed(engine.model_name):
        raise PermissionDenied(f"The key {key.id} may not use the model {engine.model_name!r}.")
    prompt_ids = await asyncio.to_thread(render_prompt, engine.tokenizer, body)
    return CountTokensResponse(input_tokens=len(prompt_ids))


@router.api_route("/v1/messages/{path:path}", methods=["GET", "POST", "DELETE"],
                  include_in_schema=False)
async def unknown_messages_route(path: str) -> Response:
    """Message batches and the like: not served, said in Anthropic's shape."""
    raise NotFound(f"/v1/messages/{path} is not served by this server")


def render_prompt(tokenizer: Tokenizer, body: MessagesRequest,
                  messages: list[ChatMessage] | None = None) -> list[int]:
    """The prompt's token ids: the conversation (`messages`, as guardrails left them; default
    `body.chat_messages()`) through the chat template, then the text of a final assistant
    message (prefill), which the answer continues."""
    if messages is None:
        messages = body.chat_messages()
    prompt_ids = render_chat(tokenizer, messages, tools=body.active_tools)
    if body.prefill:
        prompt_ids += tokenizer.encode(body.prefill, add_special_tokens=False)
    return prompt_ids


class MessageEncoder:
    """One Messages request's content blocks, built from engine outputs as they come: the same
    state makes the stream's events and the non-streamed message, so both always agree.

    With tools, text goes through `ToolCallParser`; each complete call becomes a `tool_use` block
    (a call cut off by max_tokens is dropped and the message still ends in `tool_use`).
    """

    def __init__(self, message_id: str, model: str, parses_tool_calls: bool, *,
                 is_window_bound: bool = False):
        self.message_id = message_id
        self.model = model
        self.is_window_bound = is_window_bound  # max_tokens was cut to the context window
        self.parser = ToolCallParser() if parses_tool_calls else None
        self.blocks: list[ResponseBlock] = []
        self.is_text_open = False  # whether the last block is a text block still growing
        self.stop_reason: StopReason | None = None
        self.stop_sequence: str | None = None

    def feed(self, output: RequestOutput) -> list[dict[str, Any]]:
        """The stream events of one engine output (its blocks are kept for `message`)."""
        events: list[dict[str, Any]] = []
        if self.parser is None:
            self._text(events, output.new_text)
        else:
            for parsed in [self.parser.feed(output.new_text)] + (
                    [self.parser.finish()] if output.finished else []):
                self._text(events, parsed.content)
                for call in parsed.calls:
                    self._tool_use(events, call.id or "", call.name or "", call.arguments)
        if output.finish_reason is not None:
            self._close_text(events)
            self._set_stop_reason(output)
        return events

    def _text(self, events: list[dict[str, Any]], text: str) -> None:
        if not text:
            return
        if not self.is_text_open:
            self.blocks.append(ResponseTextBlock(text=""))
            self.is_text_open = True
            events.append({"type": "content_block_start", "index": len(self.blocks) - 1,
                           "content_block": {"type": "text", "text": ""}})
        block = self.blocks[-1]
        if isinstance(block, ResponseTextBlock):
            block.text += text
        events.append({"type": "content_block_delta", "index": len(self.blocks) - 1,
                       "delta": {"type": "text_delta", "text": text}})

    def _close_text(self, events: list[dict[str, Any]]) -> None:
        if self.is_text_open:
            self.is_text_open = False
            events.append({"type": "content_block_stop", "index": len(self.blocks) - 1})

    def _tool_use(self, events: list[dict[str, Any]], call_id: str, name: str,
                  arguments: str) -> None:
        self._close_text(events)
        tool_use_id = call_id.replace("call_", "toolu_", 1)
        self.blocks.append(ResponseToolUseBlock(id=tool_use_id, name=name,
                                                input=json.loads(arguments)))
        index = len(self.blocks) - 1
        events += [
            {"type": "content_block_start", "index": index, "content_block": {
                "type": "tool_use", "id": tool_use_id, "name": name, "input": {}}},
            {"type": "content_block_delta", "index": index,
             "delta": {"type": "input_json_delta", "partial_json": arguments}},
            {"type": "content_block_stop", "index": index},
        ]

    def _set_stop_reason(self, output: RequestOutput) -> None:
        has_calls = any(isinstance(b, ResponseToolUseBlock) for b in self.blocks)
        reason = finish_reason(output.finish_reason.value if output.finish_reason else None,
                               has_calls)
        if reason == FinishReason.STOP.value and isinstance(output.stop_reason, str):
            self.stop_reason, self.stop_sequence = "stop_sequence", output.stop_reason
        elif reason == FinishReason.LENGTH.value and self.is_window_bound:
            self.stop_reason = "model_context_window_exceeded"
        else:
            self.stop_reason = STOP_REASONS.get(reason or "")

    def opening(self, usage: Usage) -> dict[str, Any]:
        start = self.message(usage).model_dump()
        start["usage"]["output_tokens"] = 0
        return {"type": "message_start", "message": start}

    def closing(self, usage: Usage) -> list[dict[str, Any]]:
        return [{"type": "message_delta",
                 "delta": {"stop_reason": self.stop_reason, "stop_sequence": self.stop_sequence},
                 "usage": messages_usage(usage).model_dump()},
                {"type": "message_stop"}]

    def message(self, usage: Usage) -> MessageResponse:
        return MessageResponse(id=self.message_id, model=self.model, content=list(self.blocks),
                               stop_reason=self.stop_reason, stop_sequence=self.stop_sequence,
                               usage=messages_usage(usage))


def sse_event(payload: dict[str, Any] | BaseModel) -> str:
    data = payload if isinstance(payload, dict) else payload.model_dump()
    return f"event: {data['type']}\ndata: {json.dumps(data)}\n\n"


async def message_response(generation: Generation, encoder: MessageEncoder) -> Response:
    """The whole message as one JSON body, built by the same encoder as the stream."""
    try:
        async for _, output in generation.outputs():
            raise_if_failed(output, generation.is_disconnected)
            encoder.feed(output)
    finally:
        await generation.close()
    return Response(encoder.message(generation.usage).model_dump_json(),
                    media_type="application/json")


async def message_events(generation: Generation, encoder: MessageEncoder) -> AsyncIterator[str]:
    """Anthropic's event sequence: message_start, ping, content blocks, message_delta,
    message_stop; a failure after the first byte is an `error` event, and the stream ends."""
    try:
        yield sse_event(encoder.opening(generation.usage))
        yield sse_event({"type": "ping"})
        async for _, output in generation.outputs():
            raise_if_failed(output, generation.is_disconnected)
            for event in encoder.feed(output):
                yield sse_event(event)
        for event in encoder.closing(generation.usage):
            yield sse_event(event)
    except ClientDisconnected:
        return  # nobody to tell
    except Exception as exc:  # noqa: BLE001 - told to the client in-band
        yield error_event(exc)
