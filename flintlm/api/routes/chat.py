"""POST /v1/chat/completions: messages -> chat template -> engine, as one JSON body or SSE."""

from __future__ import annotations

import time
import uuid
from typing import TYPE_CHECKING

from fastapi import APIRouter, Request, Response

from flintlm.api.deps import AdmissionDep, AuthedKey, EngineDep, Serving, check_model
from flintlm.api.generation import ChoiceResult, Generation
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
    TopLogprob,
    usage_info,
)
from flintlm.api.streaming import respond
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
    key: AuthedKey,
    admission: AdmissionDep,
) -> Response:
    check_model(body.model, engine)
    prompt_ids = render_chat(engine.tokenizer, body.messages, tools=body.tools)
    params = body.sampling_params()
    request_id = f"chatcmpl-{uuid.uuid4().hex}"
    ticket = await admission.admit(key, request_id, [prompt_ids], params, body.end_user,
                                   cache_salt=body.cache_salt)
    generation = await Generation.start(
        engine, serving.metrics, ticket, request.receive, [prompt_ids], params,
        priority=body.priority, cache_salt=ticket.cache_salt,
    )
    encoder = ChatEncoder(request_id, engine.model_name, engine.tokenizer, body)
    return await respond(generation, encoder, stream=body.stream,
                         include_usage=body.include_usage)


class ChatEncoder:
    """Builds chat responses and stream chunks for one request."""

    def __init__(self, request_id: str, model: str, tokenizer: Tokenizer,
                 body: ChatCompletionRequest):
        self.request_id = request_id
        self.model = model
        self.tokenizer = tokenizer
        self.num_choices = body.n
        self.num_top_logprobs = (body.top_logprobs or 0) if body.logprobs else None
        self.created = int(time.time())

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
        if output.new_text or (logprobs and logprobs.content):
            delta = ChatDelta(content=output.new_text)
            chunks.append(self._chunk([ChatChunkChoice(index=index, delta=delta,
                                                       logprobs=logprobs)]))
        if output.finish_reason is not None:
            reason = output.finish_reason.value
            chunks.append(self._chunk([ChatChunkChoice(index=index, delta=ChatDelta(),
                                                       finish_reason=reason)]))
        return chunks

    def usage_chunk(self, usage: Usage) -> ChatCompletionChunk:
        return self._chunk([], usage)

    def response(self, results: list[ChoiceResult], usage: Usage) -> ChatCompletionResponse:
        choices = [
            ChatChoice(index=r.index, message=ChatResponseMessage(content=r.text),
                       logprobs=self._logprobs(r.logprobs), finish_reason=r.finish_reason)
            for r in results
        ]
        return ChatCompletionResponse(id=self.request_id, created=self.created, model=self.model,
                                      choices=choices, usage=usage_info(usage))

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
