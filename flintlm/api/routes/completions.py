"""POST /v1/completions: raw prompts (text or token ids) -> engine, with `echo` and the legacy
`logprobs` shape that lm-eval-harness reads for loglikelihood (echo + max_tokens=0 + logprobs).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import TYPE_CHECKING

from fastapi import APIRouter, Request, Response

from flintlm.api.bounds import checked_params
from flintlm.api.deps import AdmissionDep, Credentials, EngineDep, Serving, check_model
from flintlm.api.generation import ChoiceResult, Generation
from flintlm.api.guarding import guard_completion
from flintlm.api.prompts import completion_prompts, prompt_text
from flintlm.api.protocol import (
    CompletionChoice,
    CompletionLogprobs,
    CompletionRequest,
    CompletionResponse,
    usage_info,
)
from flintlm.api.routes.chat import MIN_LOGPROB
from flintlm.api.streaming import respond
from flintlm.engine.request import RequestOutput, TokenLogprobs, Usage

if TYPE_CHECKING:
    from flintlm.loading.tokenizer import Tokenizer

router = APIRouter()


@router.post("/v1/completions", response_model=None)
async def create_completion(
    body: CompletionRequest,
    request: Request,
    serving: Serving,
    engine: EngineDep,
    secret: Credentials,
    admission: AdmissionDep,
) -> Response:
    # The edge in order, as in chat.py: validate -> authenticate -> guardrails -> tokenize ->
    # admit -> engine.
    params = await checked_params(body, serving.config.limits, engine.tokenizer.vocab_size)
    key = await serving.admission.authenticate(secret)
    check_model(body.model, engine)
    request_id = f"cmpl-{uuid.uuid4().hex}"
    body, guard = await guard_completion(serving, key, request_id, body, engine.tokenizer)
    prompts = await asyncio.to_thread(completion_prompts, engine.tokenizer, body.prompt)
    ticket = await admission.admit(key, request_id, prompts, params, body.end_user,
                                   cache_salt=body.cache_salt, prompt_param="prompt",
                                   guard=guard)
    generation = await Generation.start(
        engine, serving.metrics, ticket, request.receive, prompts, ticket.admitted_params,
        priority=body.priority, cache_salt=ticket.cache_salt, guard=guard,
    )
    encoder = CompletionEncoder(request_id, engine.model_name, engine.tokenizer, body, prompts)
    return await respond(generation, encoder, stream=body.stream,
                         include_usage=body.include_usage)


class CompletionEncoder:
    """Builds completion responses and stream chunks; echo prepends each prompt to its choice."""

    def __init__(self, request_id: str, model: str, tokenizer: Tokenizer,
                 body: CompletionRequest, prompts: list[list[int]]):
        self.request_id = request_id
        self.model = model
        self.tokenizer = tokenizer
        self.n = body.n
        self.prompts = prompts
        self.prompt_texts = [prompt_text(tokenizer, body.prompt, i, ids)
                             for i, ids in enumerate(prompts)] if body.echo else None
        self.has_logprobs = body.logprobs is not None
        self.text_offsets = [0] * (body.n * len(prompts))  # streamed logprobs continue here
        self.is_echoed = [False] * (body.n * len(prompts))
        self.created = int(time.time())

    def _response(self, choices: list[CompletionChoice], usage: Usage | None = None
                  ) -> CompletionResponse:
        return CompletionResponse(id=self.request_id, created=self.created, model=self.model,
                                  choices=choices,
                                  usage=None if usage is None else usage_info(usage))

    def opening(self) -> list[CompletionResponse]:
        return []

    def chunks(self, index: int, output: RequestOutput) -> list[CompletionResponse]:
        text, token_ids = output.new_text, list(output.new_token_ids)
        entries: list[TokenLogprobs | None] = list(output.new_logprobs or [])
        if self.prompt_texts is not None and not self.is_echoed[index]:
            self.is_echoed[index] = True
            text = self.prompt_texts[index // self.n] + text
            token_ids = self.prompts[index // self.n] + token_ids
            entries = self._prompt_entries(index, output.prompt_logprobs) + entries
        logprobs = None
        if self.has_logprobs:
            logprobs = legacy_logprobs(self.tokenizer, token_ids, entries,
                                       self.text_offsets[index])
        self.text_offsets[index] += len(text)
        reason = None if output.finish_reason is None else output.finish_reason.value
        if not text and reason is None and not (logprobs and logprobs.tokens):
            return []  # e.g. a token that ends mid-character: its text comes with the next one
        return [self._response([CompletionChoice(index=index, text=text, logprobs=logprobs,
                                                 finish_reason=reason)])]

    def usage_chunk(self, usage: Usage) -> CompletionResponse:
        return self._response([], usage)

    def response(self, results: list[ChoiceResult], usage: Usage) -> CompletionResponse:
        choices = []
        for r in results:
            text, token_ids = r.text, r.token_ids
            entries: list[TokenLogprobs | None] = list(r.logprobs)
            if self.prompt_texts is not None:
                text = self.prompt_texts[r.prompt_index] + text
                token_ids = self.prompts[r.prompt_index] + token_ids
                entries = self._prompt_entries(r.index, r.prompt_logprobs) + entries
            logprobs = (legacy_logprobs(self.tokenizer, token_ids, entries, 0)
                        if self.has_logprobs else None)
            choices.append(CompletionChoice(index=r.index, text=text, logprobs=logprobs,
                                            finish_reason=r.finish_reason))
        return self._response(choices, usage)

    def _prompt_entries(self, index: int, prompt_logprobs: list[TokenLogprobs | None] | None
                        ) -> list[TokenLogprobs | None]:
        if prompt_logprobs is not None:
            return list(prompt_logprobs)
        return [None] * len(self.prompts[index // self.n])


def legacy_logprobs(tokenizer: Tokenizer, token_ids: list[int],
                    entries: list[TokenLogprobs | None], text_offset: int) -> CompletionLogprobs:
    """OpenAI's legacy parallel lists; `top_logprobs` always holds the chosen token too."""
    result = CompletionLogprobs()
    for token_id, entry in zip(token_ids, entries, strict=True):
        token = entry.chosen.token if entry is not None else tokenizer.decode(
            [token_id], skip_special_tokens=False)
        result.tokens.append(token)
        result.text_offset.append(text_offset)
        text_offset += len(token)
        if entry is None:
            result.token_logprobs.append(None)
            result.top_logprobs.append(None)
            continue
        chosen = max(entry.chosen.logprob, MIN_LOGPROB)
        top = {alt.token: max(alt.logprob, MIN_LOGPROB) for alt in entry.top}
        top.setdefault(entry.chosen.token, chosen)
        result.token_logprobs.append(chosen)
        result.top_logprobs.append(top)
    return result
