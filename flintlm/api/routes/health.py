"""GET /health (200 while serving, 503 while draining) and GET /metrics (Prometheus text)."""

from __future__ import annotations

from fastapi import APIRouter, Response

from flintlm.api.deps import Serving
from flintlm.api.errors import ServiceUnavailable

router = APIRouter()


@router.get("/health")
async def health(serving: Serving) -> dict[str, str]:
    if serving.is_draining:
        raise ServiceUnavailable("the server is shutting down", code="server_draining")
    if not serving.engine.is_alive:
        raise ServiceUnavailable("the engine stopped after an internal error", code="engine_dead")
    return {"status": "ok"}


@router.get("/metrics")
async def metrics(serving: Serving) -> Response:
    body, content_type = serving.metrics.render()
    return Response(body, media_type=content_type)
