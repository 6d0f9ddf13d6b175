"""GET /v1/prices: what the served model costs, per 1M tokens of each kind, from the server's
pricing (`platform/pricing.py`), so a client (the console's playground) can price its answers
as the ledger will."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter
from pydantic import BaseModel

from flintlm.api.deps import AuthedKey, Serving

router = APIRouter()


class ModelPriceInfo(BaseModel):
    object: Literal["model_price"] = "model_price"
    model: str
    # USD per 1M tokens, as exact decimal strings
    input: str
    cached_input: str
    output: str


class PriceList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelPriceInfo]


@router.get("/v1/prices")
async def prices(serving: Serving, _: AuthedKey) -> PriceList:
    model = serving.engine.model_name
    price = serving.platform.pricing.price(model)
    return PriceList(data=[ModelPriceInfo(
        model=model, input=f"{price.input:f}", cached_input=f"{price.cached_input:f}",
        output=f"{price.output:f}")])
