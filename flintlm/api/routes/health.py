"""GET /health (readiness: 200 while serving, 503 while draining), GET /health/live (liveness:
200 while the process can serve, 503 once the engine loop died; the front door answers it while
loading and draining too) and
GET /metrics (Prometheus text)."""

from __future__ import annotations

from fastapi import APIRouter, Response

from flintlm.api.deps import Serving
from flintlm.api.errors import ServiceUnavailable
from flintlm.api.lifecycle import LIVENESS_PATH

router = APIRouter()


@router.get("/health")
async def health(serving: Serving) -> dict[str, str]:
    if serving.is_draining:
        raise ServiceUnavailable("the server is shutting down", code="server_draining")
    if not serving.engine.is_alive:
        raise ServiceUnavailable("the engine stopped after an internal error", code="engine_dead")
    return {"status": "ok"}


@router.get(LIVENESS_PATH)
async def liveness(serving: Serving) -> dict[str, str]:
    # NOTE: a dead engine loop never recovers in this process: only a restart brings it back.
    if not serving.engine.is_alive:
        raise ServiceUnavailable("the engine stopped after an internal error", code="engine_dead")
    return {"status": "alive"}


@router.get("/metrics")
async def metrics(serving: Serving) -> Response:
    body, content_type = serving.metrics.render()
    return Response(body, media_type=content_type)
