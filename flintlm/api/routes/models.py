"""GET /v1/models and /v1/models/{id}: the one model this server serves, if the key may use it."""

from __future__ import annotations

from fastapi import APIRouter

from flintlm.api.deps import AuthedKey, EngineDep, Serving, check_model
from flintlm.api.errors import PermissionDenied
from flintlm.api.protocol import ModelCard, ModelList

router = APIRouter()


def _card(serving: Serving, engine: EngineDep) -> ModelCard:
    return ModelCard(id=engine.model_name, created=serving.created,
                     max_model_len=engine.max_model_len)


@router.get("/v1/models")
async def list_models(serving: Serving, engine: EngineDep, key: AuthedKey) -> ModelList:
    allowed = key.is_model_allowed(engine.model_name)
    return ModelList(data=[_card(serving, engine)] if allowed else [])


@router.get("/v1/models/{model_id:path}")
async def retrieve_model(model_id: str, serving: Serving, engine: EngineDep, key: AuthedKey
                         ) -> ModelCard:
    check_model(model_id, engine)
    if not key.is_model_allowed(model_id):
        raise PermissionDenied(f"The key {key.id} may not use the model {model_id!r}.",
                               param="model")
    return _card(serving, engine)
