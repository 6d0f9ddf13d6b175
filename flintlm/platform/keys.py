"""API keys: issue, list, verify, limit and revoke them.

Owns the secret format and its hashing. A secret (`flint-sk-` + 43 url-safe characters, 256
random bits) is returned once by `create` and never stored: the table keeps its SHA-256 and a
short display prefix. Everything here is synchronous DB I/O; call it off the event loop.

Public API:
    QuotaPeriod, KeyLimits, KeyRecord (.is_active(now), .is_model_allowed(model),
        .cache_salt(client_salt)), NewKey, builtin_key(key_id), STATIC_KEY_ID, ANONYMOUS_KEY_ID
    KeyStore(db, clock): create (capture mode too), get, list, has_keys, update_limits,
        set_guardrail, revoke,
        find(secret) -> KeyRecord | None (any state), verify(secret) -> KeyRecord | None (active)
"""

from __future__ import annotations

import enum
import fnmatch
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import TYPE_CHECKING

import sqlalchemy as sa

from flintlm.platform.capture import CaptureMode
from flintlm.platform.pricing import nanos_to_usd, usd_to_nanos
from flintlm.platform.tables import ApiKeyRow, db_time

if TYPE_CHECKING:
    from flintlm.platform.db import Database

SECRET_PREFIX = "flint-sk-"
_SECRET_BYTES = 32
_SECRET_LENGTH = len(SECRET_PREFIX) + 43  # token_urlsafe(32) is 43 characters
_DISPLAY_LENGTH = len(SECRET_PREFIX) + 6
# Keys without a row: the server's one shared `--api-key`, and everyone when no key is configured.
STATIC_KEY_ID = "static"
ANONYMOUS_KEY_ID = "anonymous"
_BUILTIN_TENANT_PREFIX = "flintlm:"


class QuotaPeriod(enum.StrEnum):
    """Calendar period (UTC) over which a key's token quota and USD budget are counted."""

    DAY = "day"
    MONTH = "month"


@dataclass(frozen=True)
class KeyLimits:
    """A key's limits; None means unlimited. Quota and budget both reset each `quota_period`."""

    rpm: int | None = None
    tpm: int | None = None
    token_quota: int | None = None
    budget_usd: Decimal | None = None
    quota_period: QuotaPeriod = QuotaPeriod.MONTH
    max_tokens: int | None = None  # ceiling on one request's max_tokens (and its default)
    max_concurrent: int | None = None  # requests in flight at once, per server

    def __post_init__(self) -> None:
        for name in ("rpm", "tpm", "token_quota", "max_tokens", "max_concurrent"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name}={value} must be a positive count, or None for no limit")
        if self.budget_usd is not None and self.budget_usd <= 0:
            raise ValueError(f"budget_usd={self.budget_usd} must be positive, or None for none")
        object.__setattr__(self, "quota_period", QuotaPeriod(self.quota_period))


@dataclass(frozen=True)
class KeyRecord:
    """A key as the server sees it: never the secret. `tenant_id` salts the prefix cache."""

    id: str
    name: str
    tenant_id: str
    prefix: str
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    limits: KeyLimits = field(default_factory=KeyLimits)
    allowed_models: tuple[str, ...] | None = None
    capture: CaptureMode | None = None  # None: the server's `--capture`
    guardrail: str | None = None  # the guardrail policy's name; None: the server's default

    def is_active(self, now: datetime) -> bool:
        """Not revoked and not expired at `now` (naive UTC)."""
        return self.revoked_at is None and (self.expires_at is None or now < self.expires_at)

    def is_model_allowed(self, model: str) -> bool:
        """True when the key is unscoped or `model` matches one of its names or glob patterns."""
        if self.allowed_models is None:
            return True
        return any(fnmatch.fnmatchcase(model, allowed) for allowed in self.allowed_models)

    def cache_salt(self, client_salt: str | None) -> str:
        """The prefix-cache salt of this key's requests: its tenant's, narrowed by `client_salt`.

        Cached KV blocks are shared only between requests with equal salts, so a request can hit
        (or time) blocks of its own tenant only; a client salt splits the tenant's cache further
        but, hashed together with the tenant, can never name another tenant's.
        """
        payload = json.dumps([self.tenant_id, client_salt])  # unambiguous, unlike concatenation
        return hashlib.sha256(payload.encode()).hexdigest()


def builtin_key(key_id: str) -> KeyRecord:
    """A key without a row or limits: `STATIC_KEY_ID` or `ANONYMOUS_KEY_ID`, its own tenant."""
    return KeyRecord(id=key_id, name=key_id, tenant_id=_BUILTIN_TENANT_PREFIX + key_id,
                     prefix="", created_at=datetime(1970, 1, 1), expires_at=None, revoked_at=None)


@dataclass(frozen=True)
class NewKey:
    """A freshly issued key. `secret` is shown to the caller once and cannot be recovered."""

    record: KeyRecord
    secret: str = field(repr=False)


class KeyStore:
    """The `api_keys` table behind a small API; records out, secrets only from `create`."""

    def __init__(self, db: Database, clock: Callable[[], float] = time.time) -> None:
        self._db = db
        self._clock = clock

    def create(
        self,
        name: str,
        *,
        tenant_id: str | None = None,
        limits: KeyLimits | None = None,
        allowed_models: Sequence[str] | None = None,
        expires_at: datetime | None = None,
        capture: CaptureMode | None = None,
        guardrail: str | None = None,
    ) -> NewKey:
        """Issue a key. `tenant_id` defaults to the key's id; `expires_at` is naive UTC;
        `capture` None follows the server's capture mode; `guardrail` names its guardrail
        policy (checked by the caller, who knows the file)."""
        is_reserved = tenant_id is not None and tenant_id.startswith(_BUILTIN_TENANT_PREFIX)
        if tenant_id == "" or is_reserved:
            raise ValueError(f"tenant_id={tenant_id!r} must be non-empty and not start with "
                             f"{_BUILTIN_TENANT_PREFIX!r} (reserved for the server's own keys)")
        limits = limits or KeyLimits()
        key_id = "key_" + secrets.token_hex(12)
        secret = SECRET_PREFIX + secrets.token_urlsafe(_SECRET_BYTES)
        row = ApiKeyRow(
            id=key_id,
            name=name,
            tenant_id=tenant_id or key_id,
            prefix=secret[:_DISPLAY_LENGTH],
            secret_hash=_hash_secret(secret),
            created_at=db_time(self._clock()),
            expires_at=expires_at,
            revoked_at=None,
            allowed_models=list(allowed_models) if allowed_models is not None else None,
            capture=CaptureMode(capture).value if capture is not None else None,
            guardrail=guardrail,
        )
        _write_limits(row, limits)
        with self._db.session() as session:
            session.add(row)
        return NewKey(record=_to_record(row), secret=secret)

    def get(self, key_id: str) -> KeyRecord | None:
        with self._db.session() as session:
            row = session.get(ApiKeyRow, key_id)
            return _to_record(row) if row else None

    def list(self, *, include_revoked: bool = True) -> list[KeyRecord]:
        """All keys, oldest first."""
        query = sa.select(ApiKeyRow).order_by(ApiKeyRow.created_at, ApiKeyRow.id)
        if not include_revoked:
            query = query.where(ApiKeyRow.revoked_at.is_(None))
        with self._db.session() as session:
            return [_to_record(row) for row in session.scalars(query)]

    def has_keys(self) -> bool:
        """Whether any key was ever issued (revoked and expired ones count)."""
        with self._db.session() as session:
            return session.scalar(sa.select(ApiKeyRow.id).limit(1)) is not None

    def update_limits(self, key_id: str, limits: KeyLimits) -> KeyRecord | None:
        """Replace a key's limits; returns None for an unknown key."""
        with self._db.session() as session:
            row = session.get(ApiKeyRow, key_id)
            if row is None:
                return None
            _write_limits(row, limits)
            return _to_record(row)

    def set_guardrail(self, key_id: str, guardrail: str | None) -> KeyRecord | None:
        """Assign a guardrail policy (None: the server's default); None for an unknown key."""
        with self._db.session() as session:
            row = session.get(ApiKeyRow, key_id)
            if row is None:
                return None
            row.guardrail = guardrail
            return _to_record(row)

    def revoke(self, key_id: str) -> bool:
        """Revoke a key for good; False if it does not exist or was already revoked."""
        query = (
            sa.update(ApiKeyRow)
            .where(ApiKeyRow.id == key_id, ApiKeyRow.revoked_at.is_(None))
            .values(revoked_at=db_time(self._clock()))
        )
        with self._db.session() as session:
            return session.execute(query).rowcount == 1  # type: ignore[attr-defined]

    def verify(self, secret: str) -> KeyRecord | None:
        """The active key whose secret this is, or None (unknown, malformed, revoked, expired)."""
        record = self.find(secret)
        return record if record is not None and record.is_active(self.now()) else None

    def now(self) -> datetime:
        """This store's clock as the naive UTC time `KeyRecord.is_active` takes."""
        return db_time(self._clock())

    def find(self, secret: str) -> KeyRecord | None:
        """The key whose secret this is, revoked or expired ones too; None if unknown."""
        if not secret.startswith(SECRET_PREFIX) or len(secret) != _SECRET_LENGTH:
            return None
        secret_hash = _hash_secret(secret)
        with self._db.session() as session:
            row = session.scalars(
                sa.select(ApiKeyRow).where(ApiKeyRow.secret_hash == secret_hash)
            ).one_or_none()
            # NOTE: the lookup is by digest, so response timing says nothing about the secret;
            # compare_digest keeps the final check constant-time all the same.
            if row is None or not hmac.compare_digest(row.secret_hash, secret_hash):
                return None
            return _to_record(row)


def _hash_secret(secret: str) -> str:
    # A fast hash is right here: the secret has 256 random bits, so no dictionary or brute-force
    # attack applies (slow KDFs protect low-entropy passwords), and verify runs on every request.
    return hashlib.sha256(secret.encode()).hexdigest()


def _write_limits(row: ApiKeyRow, limits: KeyLimits) -> None:
    row.rpm = limits.rpm
    row.tpm = limits.tpm
    row.token_quota = limits.token_quota
    row.quota_period = limits.quota_period.value
    row.budget_nano_usd = usd_to_nanos(limits.budget_usd) if limits.budget_usd else None
    row.max_tokens = limits.max_tokens
    row.max_concurrent = limits.max_concurrent


def _to_record(row: ApiKeyRow) -> KeyRecord:
    budget = row.budget_nano_usd
    return KeyRecord(
        id=row.id,
        name=row.name,
        tenant_id=row.tenant_id,
        prefix=row.prefix,
        created_at=row.created_at,
        expires_at=row.expires_at,
        revoked_at=row.revoked_at,
        limits=KeyLimits(
            rpm=row.rpm,
            tpm=row.tpm,
            token_quota=row.token_quota,
            budget_usd=nanos_to_usd(budget) if budget is not None else None,
            quota_period=QuotaPeriod(row.quota_period),
            max_tokens=row.max_tokens,
            max_concurrent=row.max_concurrent,
        ),
        allowed_models=tuple(row.allowed_models) if row.allowed_models is not None else None,
        capture=CaptureMode(row.capture) if row.capture is not None else None,
        guardrail=row.guardrail,
    )
