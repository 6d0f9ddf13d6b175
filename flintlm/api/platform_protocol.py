"""Wire models of the platform's own endpoints (`/admin/keys`, `/admin/usage`, `/v1/usage`,
`/admin/requests`, `/v1/usage/requests`).

Kept apart from `protocol.py`, which is OpenAI's format. Times go out as ISO 8601 UTC ("...Z"),
money as decimal strings (exact, unlike JSON numbers). A key's secret appears only in
`CreatedKey`, the answer to its creation; listings show its display prefix.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field

from flintlm.api.errors import InvalidParam
from flintlm.platform.keys import KeyLimits, QuotaPeriod
from flintlm.platform.tables import parse_db_time

if TYPE_CHECKING:
    from flintlm.platform.keys import KeyRecord, NewKey
    from flintlm.platform.ledger import EventPage, GroupBy, UsageEvent, UsageRow


def iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat(timespec="seconds") + "Z"


def parse_time(text: str | None, param: str) -> datetime | None:
    """A query or body time as naive UTC, or a 400 naming `param`."""
    if text is None or not text.strip():
        return None
    try:
        return parse_db_time(text)
    except ValueError as exc:
        raise InvalidParam(str(exc), param=param) from None


def usage_window(start: str | None, end: str | None) -> tuple[datetime, datetime]:
    """`[start, end)` in naive UTC; defaults: from the first of `end`'s month until now."""
    end_time = parse_time(end, "end") or datetime.now(UTC).replace(tzinfo=None)
    start_time = parse_time(start, "start") or end_time.replace(
        day=1, hour=0, minute=0, second=0, microsecond=0)
    if start_time >= end_time:
        raise InvalidParam(f"start ({iso(start_time)}) must be before end ({iso(end_time)})",
                           param="start")
    return start_time, end_time


def parse_group_by(text: str, allowed: tuple[GroupBy, ...]) -> list[GroupBy]:
    """`group_by=model,day` -> ["model", "day"]; a 400 names what is not in `allowed`."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in allowed]
    if unknown or not names or len(set(names)) != len(names):
        raise InvalidParam(f"group_by={text!r} must be one or more of {', '.join(allowed)}, "
                           "comma-separated", param="group_by")
    return names  # type: ignore[return-value]


class CreateKeyRequest(BaseModel):
    """The body of `POST /admin/keys`; limits left out are unlimited."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200)
    tenant_id: str | None = Field(default=None, min_length=1, max_length=200)
    rpm: int | None = Field(default=None, ge=1)
    tpm: int | None = Field(default=None, ge=1)
    token_quota: int | None = Field(default=None, ge=1)
    quota_period: Literal["day", "month"] = "month"
    budget_usd: Decimal | None = Field(default=None, gt=0)
    max_tokens: int | None = Field(default=None, ge=1)
    max_concurrent: int | None = Field(default=None, ge=1)
    models: list[str] | None = None
    expires_at: str | None = None  # ISO 8601 date or date-time (UTC unless an offset is given)
    capture: Literal["request", "all", "never"] | None = None  # None: the server's --capture
    guardrail: str | None = Field(default=None, min_length=1, max_length=64)  # policy name

    def limits(self) -> KeyLimits:
        return KeyLimits(rpm=self.rpm, tpm=self.tpm, token_quota=self.token_quota,
                         budget_usd=self.budget_usd, quota_period=QuotaPeriod(self.quota_period),
                         max_tokens=self.max_tokens, max_concurrent=self.max_concurrent)

    def expiry(self) -> datetime | None:
        return parse_time(self.expires_at, "expires_at")


class UpdateKeyRequest(BaseModel):
    """The body of `POST /admin/keys/{id}`: the fields to change (only `guardrail` so far;
    null puts the key back on the server's default policy)."""

    model_config = ConfigDict(extra="forbid")

    guardrail: str | None = Field(min_length=1, max_length=64)


class KeyInfo(BaseModel):
    object: Literal["api_key"] = "api_key"
    id: str
    name: str
    tenant_id: str
    prefix: str  # the secret's first characters, to tell keys apart; never the secret
    status: Literal["active", "revoked", "expired"]
    created_at: str
    expires_at: str | None
    revoked_at: str | None
    rpm: int | None
    tpm: int | None
    token_quota: int | None
    quota_period: str
    budget_usd: str | None
    max_tokens: int | None = None
    max_concurrent: int | None = None
    models: list[str] | None
    capture: str | None = None  # which chat completions are stored; None: the server's mode
    guardrail: str | None = None  # its guardrail policy; null: the server's default

    @classmethod
    def of(cls, key: KeyRecord, now: datetime) -> KeyInfo:
        limits = key.limits
        status: Literal["active", "revoked", "expired"] = "active"
        if key.revoked_at is not None:
            status = "revoked"
        elif not key.is_active(now):
            status = "expired"
        return cls(
            id=key.id, name=key.name, tenant_id=key.tenant_id, prefix=key.prefix, status=status,
            created_at=iso(key.created_at) or "", expires_at=iso(key.expires_at),
            revoked_at=iso(key.revoked_at), rpm=limits.rpm, tpm=limits.tpm,
            token_quota=limits.token_quota, quota_period=limits.quota_period.value,
            budget_usd=None if limits.budget_usd is None else f"{limits.budget_usd.normalize():f}",
            max_tokens=limits.max_tokens, max_concurrent=limits.max_concurrent,
            models=None if key.allowed_models is None else list(key.allowed_models),
            capture=None if key.capture is None else key.capture.value,
            guardrail=key.guardrail,
        )


class CreatedKey(KeyInfo):
    secret: str  # shown this once; only its hash is stored

    @classmethod
    def of_new(cls, new_key: NewKey, now: datetime) -> CreatedKey:
        return cls(**KeyInfo.of(new_key.record, now).model_dump(), secret=new_key.secret)


class KeyList(BaseModel):
    object: Literal["list"] = "list"
    data: list[KeyInfo]


class UsageEntry(BaseModel):
    """Sums over one group; the dimensions not grouped by are null."""

    key_id: str | None = None
    model: str | None = None
    day: date | None = None
    num_requests: int  # every request, refused ones included
    prompt_tokens: int
    cached_tokens: int
    completion_tokens: int
    total_tokens: int
    cost_usd: str

    @classmethod
    def of(cls, row: UsageRow) -> UsageEntry:
        return cls(key_id=row.key_id, model=row.model, day=row.day,
                   num_requests=row.num_requests, prompt_tokens=row.prompt_tokens,
                   cached_tokens=row.cached_tokens, completion_tokens=row.completion_tokens,
                   total_tokens=row.total_tokens, cost_usd=f"{row.cost_usd:f}")


class UsageReport(BaseModel):
    object: Literal["usage"] = "usage"
    start: str
    end: str
    group_by: list[str]
    data: list[UsageEntry]


def usage_report(window: tuple[datetime, datetime], group_by: list[GroupBy],
                 rows: list[UsageRow]) -> UsageReport:
    return UsageReport(start=iso(window[0]) or "", end=iso(window[1]) or "",
                       group_by=list(group_by), data=[UsageEntry.of(row) for row in rows])


class RequestLogEntry(BaseModel):
    """One ledger row: a request as it was settled (billed), whatever ended it."""

    id: str  # the request id the response carried (chatcmpl-..., msg_..., ...)
    key_id: str
    model: str
    status: str  # finished | aborted | failed | rejected
    error_code: str | None
    prompt_tokens: int
    cached_tokens: int
    completion_tokens: int
    total_tokens: int
    queue_time_s: float | None
    ttft_s: float | None
    total_time_s: float | None
    cost_usd: str
    created_at: str

    @classmethod
    def of(cls, event: UsageEvent) -> RequestLogEntry:
        return cls(id=event.request_id, key_id=event.key_id, model=event.model,
                   status=str(event.status), error_code=event.error_code,
                   prompt_tokens=event.prompt_tokens, cached_tokens=event.cached_tokens,
                   completion_tokens=event.completion_tokens, total_tokens=event.total_tokens,
                   queue_time_s=event.queue_time_s, ttft_s=event.ttft_s,
                   total_time_s=event.total_time_s, cost_usd=f"{event.cost_usd:f}",
                   created_at=iso(event.created_at) or "")


class RequestLog(BaseModel):
    """A page of the log, newest first; pass `last_id` as `before` for the next one."""

    object: Literal["list"] = "list"
    data: list[RequestLogEntry]
    last_id: str | None
    has_more: bool

    @classmethod
    def of(cls, page: EventPage) -> RequestLog:
        data = [RequestLogEntry.of(event) for event in page.events]
        return cls(data=data, last_id=data[-1].id if data else None, has_more=page.has_more)
