"""POST /v1/moderations: texts -> the server's `Moderator` -> OpenAI's moderation response.

Same platform path as generation: key auth, admission with the inputs' token counts (served
model's tokenizer, nothing to complete) and one ledger row per request, settled in a `finally`.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import TYPE_CHECKING, Annotated

from fastapi import APIRouter, Depends, Request

from flintlm.api.deps import AdmissionDep, AuthedKey, EngineDep
from flintlm.api.errors import ModelNotFound
from flintlm.api.moderation_protocol import (
    ModerationRequest,
    ModerationResponse,
    ModerationResultBody,
)
from flintlm.engine.request import SamplingParams, Usage
from flintlm.platform.ledger import UsageStatus
from flintlm.platform.service import Timings
from flintlm.safety.moderation import ModerationResult, Moderator

if TYPE_CHECKING:
    from flintlm.loading.tokenizer import Tokenizer

router = APIRouter()

OPENAI_MODEL_ALIASES = frozenset({"omni-moderation-latest", "omni-moderation-2024-09-26",
                                  "text-moderation-latest", "text-moderation-stable"})
"""OpenAI's moderation model names; clients hard-code them, so they select this server's
backend, whose own name the response reports."""


def get_moderator(request: Request) -> Moderator:
    return request.app.state.moderator


ModeratorDep = Annotated[Moderator, Depends(get_moderator)]


@router.post("/v1/moderations")
async def create_moderation(body: ModerationRequest, engine: EngineDep, key: AuthedKey,
                            admission: AdmissionDep, moderator: ModeratorDep
                            ) -> ModerationResponse:
    if body.model not in (None, moderator.model_name) and body.model not in OPENAI_MODEL_ALIASES:
        raise ModelNotFound(f"the moderation model {body.model!r} does not exist; this server "
                            f"serves {moderator.model_name!r}", param="model")
    texts = body.texts()
    prompts = await asyncio.to_thread(_tokenize, engine.tokenizer, texts)
    request_id = f"modr-{uuid.uuid4().hex}"
    ticket = await admission.admit(key, request_id, prompts, SamplingParams(max_tokens=0),
                                   prompt_param="input")
    usage, status = Usage(sum(map(len, prompts)), 0), UsageStatus.FAILED
    try:
        results = await moderator.classify(texts)
        status = UsageStatus.FINISHED
    except asyncio.CancelledError:  # the client went away; the inputs were still read
        status = UsageStatus.ABORTED
        raise
    finally:
        timings = Timings(total_time_s=time.monotonic() - ticket.created_s)
        await ticket.settle(usage, status=status, timings=timings,
                            error_code="moderation_failed" if status is UsageStatus.FAILED
                            else None)
    return ModerationResponse(id=request_id, model=moderator.model_name,
                              results=[_result_body(result) for result in results])


def _tokenize(tokenizer: Tokenizer, texts: list[str]) -> list[list[int]]:
    return [tokenizer.encode(text, add_special_tokens=False) for text in texts]


def _result_body(result: ModerationResult) -> ModerationResultBody:
    applied = {name: ["text"] if name in result.judged_categories else []
               for name in result.category_scores}
    return ModerationResultBody(flagged=result.flagged, categories=result.categories,
                                category_scores=result.category_scores,
                                category_applied_input_types=applied)
