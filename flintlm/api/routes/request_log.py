"""The request log: ledger rows one by one, newest first, with filters and cursor pages.

`GET /admin/requests` lists everyone's (admin); `GET /v1/usage/requests` the calling key's own,
beside `/v1/usage` and outside OpenAI's names (a future `/v1/requests` of theirs cannot collide).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from flintlm.api.deps import AuthedKey, Serving
from flintlm.api.errors import InvalidParam
from flintlm.api.platform_protocol import RequestLog, parse_time
from flintlm.api.routes.admin import Admin
from flintlm.platform.ledger import EventFilter, UnknownEvent, UsageStatus

router = APIRouter()

Limit = Annotated[int, Query(ge=1, le=500)]


@router.get("/admin/requests", dependencies=[Admin])
async def all_requests(serving: Serving, key_id: str | None = None, model: str | None = None,
                       status: str | None = None, start: str | None = None,
                       end: str | None = None, limit: Limit = 50, before: str | None = None
                       ) -> RequestLog:
    """Every key's requests in `[start, end)` (ISO 8601 or epoch seconds, UTC), newest first."""
    selection = _selection(key_id, model, status, start, end)
    return await _page(serving, selection, limit, before)


@router.get("/v1/usage/requests")
async def own_requests(serving: Serving, key: AuthedKey, model: str | None = None,
                       status: str | None = None, start: str | None = None,
                       end: str | None = None, limit: Limit = 50, before: str | None = None
                       ) -> RequestLog:
    """The calling key's requests, as `/admin/requests` lists them."""
    selection = _selection(key.id, model, status, start, end)
    return await _page(serving, selection, limit, before)


def _selection(key_id: str | None, model: str | None, status: str | None, start: str | None,
               end: str | None) -> EventFilter:
    try:
        wanted = None if not status else UsageStatus(status)
    except ValueError:
        names = ", ".join(member.value for member in UsageStatus)
        raise InvalidParam(f"status={status!r} must be one of {names}", param="status") from None
    return EventFilter(key_id=key_id or None, model=model or None, status=wanted,
                       start=parse_time(start, "start"), end=parse_time(end, "end"))


async def _page(serving: Serving, selection: EventFilter, limit: int, before: str | None
                ) -> RequestLog:
    try:
        page = await serving.admission.run(serving.platform.ledger.events, selection,
                                           limit=limit, before=before or None)
    except UnknownEvent:
        raise InvalidParam(f"no request {before!r} in this listing", param="before") from None
    return RequestLog.of(page)
