"""OpenAI's stored chat completions: list (GET /v1/chat/completions), retrieve, update metadata
(POST), delete, and list a completion's messages; each scoped to the caller's tenant, so another
tenant's id is as absent (404) as an unknown one. Completions are kept by api/capture.py.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request

from flintlm.api.capture import completion_store
from flintlm.api.deps import AuthedKey, Serving
from flintlm.api.errors import InvalidParam, NotFound
from flintlm.api.stored_protocol import (
    DeletedCompletion,
    StoredCompletionList,
    StoredMessageList,
    UpdateStoredCompletion,
    completion_view,
    message_views,
)
from flintlm.platform.completion_store import StoredCompletion, UnknownCursor
from flintlm.platform.keys import KeyRecord

router = APIRouter(prefix="/v1/chat/completions")

_METADATA_QUERY = re.compile(r"metadata\[(.+)\]")
Limit = Annotated[int, Query(ge=1, le=100)]


def _missing(completion_id: str) -> NotFound:
    return NotFound(f"no stored chat completion with id {completion_id!r} (completions are "
                    "kept with store: true, for a limited time, for the key's tenant)")


async def _stored(serving: Serving, key: KeyRecord, completion_id: str) -> StoredCompletion:
    stored = await serving.admission.run(completion_store(serving).get, key.tenant_id,
                                         completion_id)
    if stored is None:
        raise _missing(completion_id)
    return stored


@router.get("")
async def list_completions(request: Request, serving: Serving, key: AuthedKey,
                           model: str | None = None, after: str | None = None,
                           limit: Limit = 20, order: Literal["asc", "desc"] = "asc"
                           ) -> StoredCompletionList:
    """The tenant's stored completions, oldest first unless `order=desc`; `metadata[k]=v`
    keeps those whose metadata has every such pair."""
    metadata = {match.group(1): value for name, value in request.query_params.items()
                if (match := _METADATA_QUERY.fullmatch(name))}
    try:
        page = await serving.admission.run(
            completion_store(serving).list, key.tenant_id, metadata=metadata, model=model,
            after=after, limit=limit, order=order)
    except UnknownCursor:
        raise InvalidParam(f"no stored chat completion with id {after!r}", param="after"
                           ) from None
    ids = [item.id for item in page.items]
    return StoredCompletionList(data=[completion_view(item) for item in page.items],
                                first_id=ids[0] if ids else None,
                                last_id=ids[-1] if ids else None, has_more=page.has_more)


@router.get("/{completion_id}")
async def get_completion(completion_id: str, serving: Serving, key: AuthedKey
                         ) -> dict[str, object]:
    return completion_view(await _stored(serving, key, completion_id))


@router.post("/{completion_id}")
async def update_completion(completion_id: str, body: UpdateStoredCompletion, serving: Serving,
                            key: AuthedKey) -> dict[str, object]:
    """Replace the completion's metadata (`null` clears it); `rating` and `comment` are
    feedback that `flintlm data export` reads."""
    try:
        stored = await serving.admission.run(completion_store(serving).update_metadata,
                                             key.tenant_id, completion_id, body.metadata or {})
    except ValueError as exc:
        raise InvalidParam(str(exc), param="metadata") from None
    if stored is None:
        raise _missing(completion_id)
    return completion_view(stored)


@router.delete("/{completion_id}")
async def delete_completion(completion_id: str, serving: Serving, key: AuthedKey
                            ) -> DeletedCompletion:
    if not await serving.admission.run(completion_store(serving).delete, key.tenant_id,
                                       completion_id):
        raise _missing(completion_id)
    return DeletedCompletion(id=completion_id)


@router.get("/{completion_id}/messages")
async def list_messages(completion_id: str, serving: Serving, key: AuthedKey,
                        after: str | None = None, limit: Limit = 20,
                        order: Literal["asc", "desc"] = "asc") -> StoredMessageList:
    """The messages the completion was asked with, `limit` at a time after the one `after`."""
    messages = message_views(await _stored(serving, key, completion_id))
    if order == "desc":
        messages = messages[::-1]
    if after is not None:
        ids = [message["id"] for message in messages]
        if after not in ids:
            raise InvalidParam(f"no message with id {after!r} in this completion", param="after")
        messages = messages[ids.index(after) + 1:]
    page = messages[:limit]
    return StoredMessageList(data=page, first_id=page[0]["id"] if page else None,
                             last_id=page[-1]["id"] if page else None,
                             has_more=len(messages) > limit)
