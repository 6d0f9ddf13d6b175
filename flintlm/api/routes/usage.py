"""GET /v1/usage: the calling key's own usage from the ledger, by model and/or day.

There is no way to name another key here: the key is the caller's (the admin reads everyone's
through /admin/usage).
"""

from __future__ import annotations

from fastapi import APIRouter

from flintlm.api.deps import AuthedKey, Serving
from flintlm.api.platform_protocol import UsageReport, parse_group_by, usage_report, usage_window

router = APIRouter()


@router.get("/v1/usage")
async def own_usage(serving: Serving, key: AuthedKey, start: str | None = None,
                    end: str | None = None, group_by: str = "model") -> UsageReport:
    """Sums over `[start, end)` (ISO 8601 or epoch seconds, UTC); default: this month so far."""
    window = usage_window(start, end)
    dimensions = parse_group_by(group_by, ("model", "day"))
    rows = await serving.admission.run(serving.platform.ledger.usage, *window, key_id=key.id,
                                       group_by=dimensions)
    return usage_report(window, dimensions, rows)
