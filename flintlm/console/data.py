"""GET /console/api/data/export: the caller's tenant's stored completions as fine-tuning JSONL,
the lines `flintlm data export` writes (`platform/export.py`), for the console's Data page.

Listing, reading and rating go through OpenAI's stored-completions routes
(`api/routes/stored_completions.py`); only the export has no API of OpenAI's to follow.
"""

from __future__ import annotations

import json
from typing import Annotated

from fastapi import APIRouter, Query, Response

from flintlm.api.capture import completion_store
from flintlm.api.deps import AuthedKey, Serving
from flintlm.api.errors import InvalidParam
from flintlm.platform.completion_store import CompletionFilter
from flintlm.platform.export import ExportFormat, ExportOptions, export_lines

router = APIRouter(prefix="/console/api/data")

JSONL_MEDIA_TYPE = "application/jsonl"


@router.get("/export")
async def export(serving: Serving, key: AuthedKey,
                 format: Annotated[str, Query()] = ExportFormat.OPENAI_CHAT.value,
                 min_rating: int | None = None, model: str | None = None) -> Response:
    """One JSON object a line; `format` is openai-chat or preference, as the CLI's."""
    try:
        export_format = ExportFormat(format)
    except ValueError:
        names = ", ".join(member.value for member in ExportFormat)
        raise InvalidParam(f"format={format!r} must be one of {names}", param="format") from None
    options = ExportOptions(export_format, min_rating,
                            CompletionFilter(model=model or None, tenant_id=key.tenant_id))
    store = completion_store(serving)

    def render() -> str:
        # NOTE: built whole off the event loop; the retention (capture_ttl_days) bounds it.
        return "".join(json.dumps(line, ensure_ascii=False) + "\n"
                       for line in export_lines(store, options))

    body = await serving.admission.run(render)
    filename = f"flintlm-{export_format.value}.jsonl"
    return Response(body, media_type=JSONL_MEDIA_TYPE,
                    headers={"content-disposition": f'attachment; filename="{filename}"'})
