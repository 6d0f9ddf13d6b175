"""The admin API: issue, list and revoke keys (`/admin/keys`) and read everyone's usage
(`/admin/usage`), behind the server's admin key (`--admin-key` / FLINTLM_ADMIN_KEY).

Off (403 `admin_disabled`) when no admin key is set. Secrets leave the server only in the answer
to `POST /admin/keys`; the store keeps their hashes.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends

from flintlm.api.deps import Credentials, Serving
from flintlm.api.errors import (
    AuthenticationFailed,
    InvalidParam,
    NotAdmin,
    NotFound,
    PermissionDenied,
)
from flintlm.api.platform_protocol import (
    CreatedKey,
    CreateKeyRequest,
    KeyInfo,
    KeyList,
    UpdateKeyRequest,
    UsageReport,
    parse_group_by,
    usage_report,
    usage_window,
)
from flintlm.platform.capture import CaptureMode
from flintlm.platform.keys import ANONYMOUS_KEY_ID

router = APIRouter(prefix="/admin")


async def require_admin(serving: Serving, secret: Credentials) -> None:
    """The admin key passes; any other valid key is 403 (known, not allowed); the rest 401."""
    platform = serving.platform
    if not platform.has_admin_key:
        raise PermissionDenied("The admin API is off: start the server with --admin-key or "
                               "FLINTLM_ADMIN_KEY.", code="admin_disabled")
    if secret is not None and platform.is_admin(secret):
        return
    if secret is not None and await _is_valid_key(serving, secret):
        raise NotAdmin("This key may not use the admin API; send the admin key.")
    raise AuthenticationFailed("Incorrect admin key provided.", code="invalid_admin_key")


async def _is_valid_key(serving: Serving, secret: str) -> bool:
    try:
        key = await serving.admission.authenticate(secret)
    except AuthenticationFailed:
        return False
    return key.id != ANONYMOUS_KEY_ID  # dev mode lets anyone in: that is no key


Admin = Depends(require_admin)


@router.post("/keys", status_code=201, dependencies=[Admin])
async def create_key(body: CreateKeyRequest, serving: Serving) -> CreatedKey:
    keys = serving.platform.keys
    _check_guardrail(serving, body.guardrail)
    try:
        new_key = await serving.admission.run(
            keys.create, body.name, tenant_id=body.tenant_id, limits=body.limits(),
            allowed_models=body.models, expires_at=body.expiry(), guardrail=body.guardrail,
            capture=None if body.capture is None else CaptureMode(body.capture))
    except ValueError as exc:  # e.g. a reserved tenant id
        raise InvalidParam(str(exc), param="tenant_id") from None
    return CreatedKey.of_new(new_key, keys.now())


@router.get("/keys", dependencies=[Admin])
async def list_keys(serving: Serving, include_revoked: bool = True) -> KeyList:
    keys = serving.platform.keys
    records = await serving.admission.run(keys.list, include_revoked=include_revoked)
    now = keys.now()
    return KeyList(data=[KeyInfo.of(record, now) for record in records])


@router.get("/keys/{key_id}", dependencies=[Admin])
async def get_key(key_id: str, serving: Serving) -> KeyInfo:
    keys = serving.platform.keys
    record = await serving.admission.run(keys.get, key_id)
    if record is None:
        raise NotFound(f"no key {key_id!r}", param="key_id", code="key_not_found")
    return KeyInfo.of(record, keys.now())


@router.post("/keys/{key_id}", dependencies=[Admin])
async def update_key(key_id: str, body: UpdateKeyRequest, serving: Serving) -> KeyInfo:
    """Change a key's guardrail policy; its next request runs under the new one."""
    _check_guardrail(serving, body.guardrail)
    keys = serving.platform.keys
    if await serving.admission.run(keys.set_guardrail, key_id, body.guardrail) is None:
        raise NotFound(f"no key {key_id!r}", param="key_id", code="key_not_found")
    return await get_key(key_id, serving)


def _check_guardrail(serving: Serving, name: str | None) -> None:
    try:
        serving.guardrails.policies.check_name(name)
    except ValueError as exc:
        raise InvalidParam(str(exc), param="guardrail", code="unknown_guardrail") from None


@router.delete("/keys/{key_id}", dependencies=[Admin])
async def revoke_key(key_id: str, serving: Serving) -> KeyInfo:
    """Revoke a key for good (again: no-op); its requests get 401 from now on."""
    keys = serving.platform.keys
    await serving.admission.run(keys.revoke, key_id)
    return await get_key(key_id, serving)


@router.get("/usage", dependencies=[Admin])
async def all_usage(serving: Serving, start: str | None = None, end: str | None = None,
                    group_by: str = "key,model,day", key_id: str | None = None) -> UsageReport:
    """Everyone's usage over `[start, end)`, by any of key, model and day; optionally one key."""
    window = usage_window(start, end)
    dimensions = parse_group_by(group_by, ("key", "model", "day"))
    rows = await serving.admission.run(serving.platform.ledger.usage, *window, key_id=key_id,
                                       group_by=dimensions)
    return usage_report(window, dimensions, rows)
