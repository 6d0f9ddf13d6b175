"""ORM tables of the platform store: `api_keys`, `usage_events`, `stored_responses` and
`stored_completions`, and their storage conventions.

Owns column types only; the schema itself is created by the Alembic migrations in
`migrations/versions`, which must stay in step with these classes (a test compares them).
Conventions: timestamps are naive UTC (`db_time`), money is an integer count of nano-USD
(billionths of a dollar) so sums are exact on SQLite and PostgreSQL alike.
"""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# Stable constraint names, so migrations can refer to them (and SQLite batch mode can rebuild).
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def db_time(epoch_s: float) -> datetime:
    """An epoch timestamp as the naive UTC datetime every table column stores."""
    return datetime.fromtimestamp(epoch_s, UTC).replace(tzinfo=None)


def parse_db_time(text: str) -> datetime:
    """A time a person wrote, as naive UTC: an ISO 8601 date or date-time (UTC unless it has an
    offset; a bare date is its midnight), or epoch seconds.

    Raises:
        ValueError: the text is none of these.
    """
    text = text.strip()
    try:
        return db_time(float(text))
    except (ValueError, OverflowError, OSError):
        pass
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"cannot read the time {text!r}; write it like 2025-01-31, "
                         "2025-01-31T12:00:00Z or as epoch seconds") from None
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC).replace(tzinfo=None)
    return moment


class Base(DeclarativeBase):
    metadata = sa.MetaData(naming_convention=NAMING_CONVENTION)


class ApiKeyRow(Base):
    """One API key. The secret itself is never stored: only its SHA-256 and a display prefix."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(sa.String(40), primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(200))
    tenant_id: Mapped[str] = mapped_column(sa.String(200))
    prefix: Mapped[str] = mapped_column(sa.String(32))
    secret_hash: Mapped[str] = mapped_column(sa.String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(sa.DateTime())
    expires_at: Mapped[datetime | None] = mapped_column(sa.DateTime())
    revoked_at: Mapped[datetime | None] = mapped_column(sa.DateTime())
    rpm: Mapped[int | None] = mapped_column(sa.Integer())
    tpm: Mapped[int | None] = mapped_column(sa.Integer())
    token_quota: Mapped[int | None] = mapped_column(sa.BigInteger())
    quota_period: Mapped[str] = mapped_column(sa.String(8))
    budget_nano_usd: Mapped[int | None] = mapped_column(sa.BigInteger())
    allowed_models: Mapped[list[str] | None] = mapped_column(sa.JSON())
    max_tokens: Mapped[int | None] = mapped_column(sa.Integer())
    max_concurrent: Mapped[int | None] = mapped_column(sa.Integer())
    capture: Mapped[str | None] = mapped_column(sa.String(8))  # None: the server's --capture
    guardrail: Mapped[str | None] = mapped_column(sa.String(64))  # policy name; None: default


class UsageEventRow(Base):
    """Exactly one row per request, written by the ledger; `request_id` is the idempotency key.

    NOTE: `key_id` has no foreign key on purpose: usage outlives keys and may come from the
    server's static key or an unauthenticated deployment, which have no `api_keys` row.
    """

    __tablename__ = "usage_events"
    __table_args__ = (sa.Index(None, "key_id", "created_at"), sa.Index(None, "created_at"))

    id: Mapped[int] = mapped_column(
        sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True
    )
    request_id: Mapped[str] = mapped_column(sa.String(128), unique=True)
    key_id: Mapped[str] = mapped_column(sa.String(40))
    model: Mapped[str] = mapped_column(sa.String(200))
    prompt_tokens: Mapped[int] = mapped_column(sa.Integer())
    cached_tokens: Mapped[int] = mapped_column(sa.Integer())
    completion_tokens: Mapped[int] = mapped_column(sa.Integer())
    queue_time_s: Mapped[float | None] = mapped_column(sa.Float())
    ttft_s: Mapped[float | None] = mapped_column(sa.Float())
    total_time_s: Mapped[float | None] = mapped_column(sa.Float())
    status: Mapped[str] = mapped_column(sa.String(16))
    error_code: Mapped[str | None] = mapped_column(sa.String(64))
    cost_nano_usd: Mapped[int] = mapped_column(sa.BigInteger())
    created_at: Mapped[datetime] = mapped_column(sa.DateTime())
    # The HTTP request's x-request-id (client-chosen, so not unique): how support finds a row.
    http_request_id: Mapped[str | None] = mapped_column(sa.String(128))
    guardrail: Mapped[list | None] = mapped_column(sa.JSON())  # the guardrails' decisions


class StoredResponseRow(Base):
    """A response kept by /v1/responses with `store: true`, readable by its key only, until
    `expires_at`. `context` holds the input items the model saw (instructions aside): the
    previous response's context and output, then this request's input."""

    __tablename__ = "stored_responses"
    __table_args__ = (sa.Index(None, "key_id", "created_at"), sa.Index(None, "expires_at"))

    id: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    key_id: Mapped[str] = mapped_column(sa.String(40))
    response: Mapped[dict] = mapped_column(sa.JSON())
    context: Mapped[list] = mapped_column(sa.JSON())
    created_at: Mapped[datetime] = mapped_column(sa.DateTime())
    expires_at: Mapped[datetime] = mapped_column(sa.DateTime())


class StoredCompletionRow(Base):
    """A chat completion kept for its tenant (`store: true`, or a key that captures all): the
    request as sent and the completion as answered, plus the caller's `metadata` (string values;
    `rating` and `comment` are feedback). Deleted `capture_ttl_days` after `created_at`.

    NOTE: `key_id` has no foreign key, like the ledger's: built-in keys have no row.
    """

    __tablename__ = "stored_completions"
    __table_args__ = (sa.Index(None, "tenant_id", "created_at"), sa.Index(None, "key_id"),
                      sa.Index(None, "created_at"))

    id: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(sa.String(200))
    key_id: Mapped[str] = mapped_column(sa.String(40))
    model: Mapped[str] = mapped_column(sa.String(200))
    request: Mapped[dict] = mapped_column(sa.JSON())
    completion: Mapped[dict] = mapped_column(sa.JSON())
    # NOTE: `metadata` is taken by SQLAlchemy's declarative base; the column keeps the name.
    tags: Mapped[dict] = mapped_column("metadata", sa.JSON())
    created_at: Mapped[datetime] = mapped_column(sa.DateTime())
