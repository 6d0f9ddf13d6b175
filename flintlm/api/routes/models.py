"""GET /v1/models and /v1/models/{id}: the one model this server serves."""

from __future__ import annotations

from fastapi import APIRouter

from flintlm.api.deps import AuthedKey, EngineDep, Serving, check_model
from flintlm.api.protocol import ModelCard, ModelList

router = APIRouter()


def _card(serving: Serving, engine: EngineDep) -> ModelCard:
    return ModelCard(id=engine.model_name, created=serving.created,
                     max_model_len=engine.max_model_len)


@router.get("/v1/models")
async def list_models(serving: Serving, engine: EngineDep, _: AuthedKey) -> ModelList:
    return ModelList(data=[_card(serving, engine)])


@router.get("/v1/models/{model_id:path}")
async def retrieve_model(model_id: str, serving: Serving, engine: EngineDep, _: AuthedKey
                         ) -> ModelCard:
    check_model(model_id, engine)
    return _card(serving, engine)
