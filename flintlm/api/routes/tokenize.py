"""POST /tokenize and /detokenize: the served model's tokenizer over HTTP (vLLM's shapes), so
clients can count tokens exactly as the server bills them.
"""

from __future__ import annotations

import asyncio

from fastapi import APIRouter

from flintlm.api.deps import AuthedKey, EngineDep, check_model
from flintlm.api.errors import InvalidParam
from flintlm.api.prompts import render_chat
from flintlm.api.protocol import (
    DetokenizeRequest,
    DetokenizeResponse,
    TokenizeRequest,
    TokenizeResponse,
)

router = APIRouter()


@router.post("/tokenize")
async def tokenize(body: TokenizeRequest, engine: EngineDep, _: AuthedKey) -> TokenizeResponse:
    check_model(body.model, engine)
    # NOTE: off the event loop, as every route renders and tokenizes: a long text must not
    # stall the streams of other requests.
    if body.messages is not None:
        token_ids = await asyncio.to_thread(
            render_chat, engine.tokenizer, body.messages, tools=body.tools,
            add_generation_prompt=body.add_generation_prompt)
    else:
        token_ids = await asyncio.to_thread(engine.tokenizer.encode, body.prompt or "",
                                            add_special_tokens=body.add_special_tokens)
    return TokenizeResponse(tokens=token_ids, count=len(token_ids),
                            max_model_len=engine.max_model_len)


@router.post("/detokenize")
async def detokenize(body: DetokenizeRequest, engine: EngineDep, _: AuthedKey
                     ) -> DetokenizeResponse:
    check_model(body.model, engine)
    vocab_size = engine.tokenizer.vocab_size
    bad = [t for t in body.tokens if not 0 <= t < vocab_size]
    if bad:
        raise InvalidParam(f"token id {bad[0]} is outside the vocabulary [0, {vocab_size})",
                           param="tokens")
    # off the event loop, as /tokenize encodes: a long id list would stall every stream
    text = await asyncio.to_thread(engine.tokenizer.decode, body.tokens)
    return DetokenizeResponse(prompt=text)
