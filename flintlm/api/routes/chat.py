"""POST /v1/chat/completions: messages -> chat template -> engine, as one JSON body or SSE."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import TYPE_CHECKING

from fastapi import APIRouter, Request, Response

from flintlm.api.bounds import checked_params
from flintlm.api.capture import ChatCapture
from flintlm.api.deps import AdmissionDep, Credentials, EngineDep, Serving, check_model
from flintlm.api.generation import ChoiceResult, Generation
from flintlm.api.guarding import guard_chat
from flintlm.api.prompts import render_chat
from flintlm.api.protocol import (
    ChatChoice,
    ChatChunkChoice,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatDelta,
    ChatLogprobs,
    ChatResponseMessage,
    ChatTokenLogprob,
    FunctionCall,
    FunctionDelta,
    ToolCall,
    ToolCallDelta,
    TopLogprob,
    usage_info,
)
from flintlm.api.streaming import respond
from flintlm.api.tool_calls import CallDelta, ToolCallParser, finish_reason, parse_all
from flintlm.engine.request import Logprob, RequestOutput, TokenLogprobs, Usage

if TYPE_CHECKING:
    from flintlm.loading.tokenizer import Tokenizer

router = APIRouter()

MIN_LOGPROB = -9999.0  # what OpenAI sends for a token with probability zero


@router.post("/v1/chat/completions", response_model=None)
async def create_chat_completion(
    body: ChatCompletionRequest,
    request: Request,
    serving: Serving,
    engine: EngineDep,
    secret: Credentials,
    admission: AdmissionDep,
) -> Response:
    # The edge, in order: parse (above) -> validate -> authenticate -> guardrails (pre_call) ->
    # render off the event loop -> admit -> engine (output guardrails in Generation). Nothing is
    # spent on a request that fails an earlier step.
    params = await checked_params(body, serving.config.limits, engine.tokenizer.vocab_size)
    key = await serving.admission.authenticate(secret)
    check_model(body.model, engine)
    request_id = f"chatcmpl-{uuid.uuid4().hex}"
    body, guard = await guard_chat(serving, key, request_id, body)
    capture = ChatCapture.for_request(serving, key, body)  # stored completions; None: not kept
    prompt_ids = await asyncio.to_thread(render_chat, engine.tokenizer, body.messages,
                                         tools=body.active_tools)
    ticket = await admission.admit(key, request_id, [prompt_ids], params, body.end_user,
                                   cache_salt=body.cache_salt, prompt_param="messages",
                                   guard=guard)
    generation = await Generation.start(
        engine, serving.metrics, ticket, request.receive, [prompt_ids], ticket.admitted_params,
        priority=body.priority, cache_salt=ticket.cache_salt, guard=guard,
    )
    encoder = ChatEncoder(request_id, engine.model_name, engine.tokenizer, body)
    response = await respond(generation, encoder, stream=body.stream,
                             include_usage=body.include_usage)
    return response if capture is None else await capture.keep(response)


class ChatEncoder:
    """Builds chat responses and stream chunks for one request; with tools, splits each choice's
    text into content and tool calls (api/tool_calls.py)."""

    def __init__(self, request_id: str, model: str, tokenizer: Tokenizer,
                 body: ChatCompletionRequest):
        self.request_id = request_id
        self.model = model
        self.tokenizer = tokenizer
        self.num_choices = body.n
        self.num_top_logprobs = (body.top_logprobs or 0) if body.logprobs else None
        self.created = int(time.time())
        self.parses_tool_calls = bool(body.active_tools)
        self.parsers = [ToolCallParser() for _ in range(body.n)] if self.parses_tool_calls else []

    def _chunk(self, choices: list[ChatChunkChoice], usage: Usage | None = None
               ) -> ChatCompletionChunk:
        return ChatCompletionChunk(id=self.request_id, created=self.created, model=self.model,
                                   choices=choices,
                                   usage=None if usage is None else usage_info(usage))

    def opening(self) -> list[ChatCompletionChunk]:
        role = ChatDelta(role="assistant", content="")
        return [self._chunk([ChatChunkChoice(index=i, delta=role)])
                for i in range(self.num_choices)]

    def chunks(self, index: int, output: RequestOutput) -> list[ChatCompletionChunk]:
        chunks = []
        logprobs = self._logprobs(output.new_logprobs or [])
        delta = self._delta(index, output)
        if delta.content or delta.tool_calls or (logprobs and logprobs.content):
            chunks.append(self._chunk([ChatChunkChoice(index=index, delta=delta,
                                                       logprobs=logprobs)]))
        if output.finish_reason is not None:
            reason = self._finish_reason(output.finish_reason.value,
                                         bool(self.parsers and self.parsers[index].calls))
            chunks.append(self._chunk([ChatChunkChoice(index=index, delta=ChatDelta(),
                                                       finish_reason=reason)]))
        return chunks

    def _delta(self, index: int, output: RequestOutput) -> ChatDelta:
        if not self.parses_tool_calls:
            return ChatDelta(content=output.new_text)
        parser = self.parsers[index]
        parsed = parser.feed(output.new_text)
        content = parsed.content
        if output.finish_reason is not None:
            content += parser.finish().content
        return ChatDelta(content=content or None,
                         tool_calls=_call_deltas(parsed.calls) or None)

    def usage_chunk(self, usage: Usage) -> ChatCompletionChunk:
        return self._chunk([], usage)

    def response(self, results: list[ChoiceResult], usage: Usage) -> ChatCompletionResponse:
        choices = []
        for r in results:
            message = self._message(r.text)
            reason = self._finish_reason(r.finish_reason, bool(message.tool_calls))
            choices.append(ChatChoice(index=r.index, message=message,
                                      logprobs=self._logprobs(r.logprobs), finish_reason=reason))
        return ChatCompletionResponse(id=self.request_id, created=self.created, model=self.model,
                                      choices=choices, usage=usage_info(usage))

    def _message(self, text: str) -> ChatResponseMessage:
        if not self.parses_tool_calls:
            return ChatResponseMessage(content=text)
        content, calls = parse_all(text)
        tool_calls = [ToolCall(id=c.id, function=FunctionCall(name=c.name, arguments=c.arguments))
                      for c in calls]
        return ChatResponseMessage(content=content or None, tool_calls=tool_calls or None)

    @staticmethod
    def _finish_reason(reason: str | None, has_calls: bool) -> str | None:
        return finish_reason(reason, has_calls)

    def _logprobs(self, entries: list[TokenLogprobs]) -> ChatLogprobs | None:
        if self.num_top_logprobs is None:
            return None
        return ChatLogprobs(content=[self._token_logprob(e) for e in entries])

    def _token_logprob(self, entry: TokenLogprobs) -> ChatTokenLogprob:
        def top(logprob: Logprob) -> TopLogprob:
            return TopLogprob(token=logprob.token, logprob=max(logprob.logprob, MIN_LOGPROB),
                              bytes=list(self.tokenizer.token_bytes(logprob.token_id)))

        chosen = top(entry.chosen)
        alternatives = [top(alt) for alt in entry.top[: self.num_top_logprobs]]
        return ChatTokenLogprob(**chosen.model_dump(), top_logprobs=alternatives)


def _call_deltas(deltas: list[CallDelta]) -> list[ToolCallDelta]:
    """OpenAI's delta.tool_calls: one entry per call this piece of text touched; the first one
    of a call carries its id, type and name."""
    merged: list[ToolCallDelta] = []
    for delta in deltas:
        if merged and merged[-1].index == delta.index and merged[-1].function is not None:
            merged[-1].function.arguments = (merged[-1].function.arguments or "") + delta.arguments
        elif delta.id is not None:
            merged.append(ToolCallDelta(index=delta.index, id=delta.id, type="function",
                                        function=FunctionDelta(name=delta.name,
                                                               arguments=delta.arguments)))
        else:
            merged.append(ToolCallDelta(index=delta.index,
                                        function=FunctionDelta(arguments=delta.arguments)))
    return merged
