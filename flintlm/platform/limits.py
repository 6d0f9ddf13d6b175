"""Admission against a key's limits: requests and tokens per minute, token quota, USD budget.

At admission the request reserves 1 request, `prompt + max_tokens` tokens and its worst-case
cost, atomically in a `LimitStore`; in-flight reservations count against quota and budget, so
racing requests cannot overspend. At the end, `settle` trades the reservation for real use.
Quota and budget counters start each period from the ledger's totals (`UsageSource`).
NOTE: a request admitted just before a period ends settles into that period's counter while its
ledger row is dated in the next; the next period's counter may count it or not, by timing.

Public API:
    Limiter(store, usage, clock): admit(key, num_tokens=, max_cost_usd=) -> AdmissionDecision,
        settle(reservation, num_tokens=, cost_usd=)
    AdmissionDecision (.allowed, .limit, .code, .message, .retry_after_s, .headers()),
    RateWindow, Reservation, Period, current_period(kind, now), UsageSource, Limit
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Protocol

from flintlm.platform.keys import QuotaPeriod
from flintlm.platform.limit_store import (
    AdmitPlan,
    Limit,
    LimitStore,
    PeriodUsage,
    SettlePlan,
    StoreResult,
    Verdict,
)
from flintlm.platform.pricing import nanos_to_usd, usd_to_nanos
from flintlm.platform.tables import db_time

if TYPE_CHECKING:
    from flintlm.platform.keys import KeyRecord
    from flintlm.platform.ledger import UsageTotals

# Counters outlive their period a while so late settles of requests admitted just before the
# end still find them.
_PERIOD_GRACE_S = 86_400


class UsageSource(Protocol):
    """Where a period's counters start from: the ledger's totals (buffered rows included)."""

    def totals_since(self, key_id: str, start: datetime) -> UsageTotals: ...


@dataclass(frozen=True)
class Period:
    """A calendar quota period in naive UTC, `start <= t < end`."""

    id: str
    start: datetime
    end: datetime


def current_period(kind: QuotaPeriod, now: float) -> Period:
    moment = db_time(now)
    if kind is QuotaPeriod.DAY:
        start = moment.replace(hour=0, minute=0, second=0, microsecond=0)
        return Period(start.strftime("d%Y%m%d"), start, start + timedelta(days=1))
    start = moment.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    end = (start + timedelta(days=32)).replace(day=1)
    return Period(start.strftime("m%Y%m"), start, end)


@dataclass(frozen=True)
class RateWindow:
    """Values of one kind's `x-ratelimit-*` headers."""

    limit: int
    remaining: int
    reset_s: float  # until the bucket is full again


@dataclass(slots=True)
class Reservation:
    """What an admitted request holds until `Limiter.settle`; settling twice is a no-op."""

    key_id: str
    tpm: int | None
    period_id: str | None
    reserved: PeriodUsage
    is_settled: bool = False


@dataclass(frozen=True)
class AdmissionDecision:
    """The answer to one admission. Refusals carry the limit, a message and when to retry.

    `code` is OpenAI's error code: `insufficient_quota` for an exhausted token quota or budget
    (retrying soon will not help), `rate_limit_exceeded` for the per-minute limits. Both are 429.
    """

    allowed: bool
    limit: Limit | None = None
    message: str | None = None
    retry_after_s: float | None = None  # None: retrying the same request will never succeed
    requests: RateWindow | None = None
    tokens: RateWindow | None = None
    reservation: Reservation | None = None

    @property
    def code(self) -> str | None:
        if self.limit is None:
            return None
        if self.limit in (Limit.BUDGET, Limit.TOKEN_QUOTA):
            return "insufficient_quota"
        return "rate_limit_exceeded"

    def headers(self) -> dict[str, str]:
        """OpenAI's `x-ratelimit-*` headers for the limits the key has, and `retry-after`."""
        headers: dict[str, str] = {}
        for kind, window in (("requests", self.requests), ("tokens", self.tokens)):
            if window is not None:
                headers[f"x-ratelimit-limit-{kind}"] = str(window.limit)
                headers[f"x-ratelimit-remaining-{kind}"] = str(window.remaining)
                headers[f"x-ratelimit-reset-{kind}"] = format_duration(window.reset_s)
        if not self.allowed and self.retry_after_s is not None:
            headers["retry-after"] = str(math.ceil(self.retry_after_s))
        return headers


class Limiter:
    """Admits and settles requests against each key's limits; thread-safe, blocking I/O."""

    def __init__(
        self, store: LimitStore, usage: UsageSource, clock: Callable[[], float] = time.time
    ) -> None:
        self._store = store
        self._usage = usage
        self._clock = clock
        self._settle_lock = threading.Lock()

    def admit(self, key: KeyRecord, *, num_tokens: int, max_cost_usd: Decimal) -> AdmissionDecision:
        """Reserve one request, `num_tokens` (prompt + max_tokens) and `max_cost_usd`, or refuse.

        Raises:
            LimitStoreError: the shared store is unreachable.
        """
        limits, now = key.limits, self._clock()
        if limits.tpm is not None and num_tokens > limits.tpm:
            return AdmissionDecision(
                allowed=False,
                limit=Limit.TOKENS,
                message=(f"Request too large for key {key.id}: it needs {num_tokens} tokens "
                         f"(prompt + max_tokens) but the limit is {limits.tpm} tokens "
                         f"{_per(self._store.window_s)}. Shorten the prompt or lower max_tokens."),
            )
        period = None
        if limits.token_quota is not None or limits.budget_usd is not None:
            period = current_period(limits.quota_period, now)
        plan = AdmitPlan(
            key_id=key.id,
            now=now,
            num_tokens=num_tokens,
            cost_nano_usd=usd_to_nanos(max_cost_usd),
            rpm=limits.rpm,
            tpm=limits.tpm,
            token_quota=limits.token_quota,
            budget_nano_usd=usd_to_nanos(limits.budget_usd) if limits.budget_usd else None,
            period_id=period.id if period else None,
            period_ttl_s=_counter_ttl_s(period, now),
        )
        result = self._store.admit(plan)
        if result.verdict is Verdict.NEEDS_SEED and period is not None:
            totals = self._usage.totals_since(key.id, period.start)
            seed = PeriodUsage(totals.num_tokens, usd_to_nanos(totals.cost_usd))
            result = self._store.admit(replace(plan, seed=seed))
        return _decide(key, plan, period, result, self._store.window_s)

    def settle(self, reservation: Reservation, *, num_tokens: int, cost_usd: Decimal) -> None:
        """Replace the reservation by real use: refund unused TPM, count tokens and USD spent.

        Raises:
            LimitStoreError: the shared store is unreachable.
        """
        with self._settle_lock:
            if reservation.is_settled:
                return
            reservation.is_settled = True
        self._store.settle(SettlePlan(
            key_id=reservation.key_id,
            now=self._clock(),
            tpm=reservation.tpm,
            period_id=reservation.period_id,
            reserved=reservation.reserved,
            used=PeriodUsage(num_tokens, usd_to_nanos(cost_usd)),
        ))


def _decide(
    key: KeyRecord, plan: AdmitPlan, period: Period | None, result: StoreResult, window_s: float
) -> AdmissionDecision:
    requests = _window(plan.rpm, result.requests_level, window_s)
    tokens = _window(plan.tpm, result.tokens_level, window_s)
    if result.verdict is Verdict.ALLOWED:
        reserved = PeriodUsage(plan.num_tokens, plan.cost_nano_usd)
        reservation = Reservation(key.id, plan.tpm, plan.period_id, reserved)
        return AdmissionDecision(True, requests=requests, tokens=tokens, reservation=reservation)
    refused_by = result.refused_by
    if refused_by in (Limit.BUDGET, Limit.TOKEN_QUOTA) and period is not None:
        usage = result.period_usage or PeriodUsage(0, 0)
        message = _quota_message(key, plan, period, refused_by, usage)
        retry_after = (period.end - db_time(plan.now)).total_seconds()
        return AdmissionDecision(False, refused_by, message, retry_after, requests, tokens)
    # Both per-minute buckets may be short; the caller must wait for the slower one.
    waits = {
        Limit.REQUESTS: _wait_s(plan.rpm, result.requests_level, 1, window_s),
        Limit.TOKENS: _wait_s(plan.tpm, result.tokens_level, plan.num_tokens, window_s),
    }
    limit = max(waits, key=lambda name: waits[name])
    retry_after = waits[limit]
    per = _per(window_s)
    if limit is Limit.REQUESTS:
        message = (f"Rate limit reached for requests {per} on key {key.id}: "
                   f"limit {plan.rpm}. Please try again in {format_duration(retry_after)}.")
    else:
        remaining = tokens.remaining if tokens else 0
        message = (f"Rate limit reached for tokens {per} on key {key.id}: limit {plan.tpm}, "
                   f"remaining {remaining}, requested {plan.num_tokens} (prompt + max_tokens). "
                   f"Please try again in {format_duration(retry_after)}.")
    return AdmissionDecision(False, limit, message, retry_after, requests, tokens)


def _quota_message(
    key: KeyRecord, plan: AdmitPlan, period: Period, limit: Limit, usage: PeriodUsage
) -> str:
    adjective = "daily" if period.id.startswith("d") else "monthly"
    resets = f"It resets at {period.end:%Y-%m-%dT%H:%M:%SZ}."
    if limit is Limit.BUDGET:
        return (f"You exceeded the {adjective} budget of key {key.id}: "
                f"{_usd(key.limits.budget_usd)} with {_usd(nanos_to_usd(usage.cost_nano_usd))} "
                f"spent or in flight; this request may cost up to "
                f"{_usd(nanos_to_usd(plan.cost_nano_usd))}. {resets}")
    return (f"You exceeded the {adjective} token quota of key {key.id}: {plan.token_quota} tokens "
            f"with {usage.num_tokens} used or in flight; this request needs up to "
            f"{plan.num_tokens} (prompt + max_tokens). {resets}")


def _counter_ttl_s(period: Period | None, now: float) -> int:
    if period is None:
        return 0
    return int((period.end - db_time(now)).total_seconds()) + _PERIOD_GRACE_S


def _usd(amount: Decimal | None) -> str:
    return f"${amount.normalize():f}" if amount is not None else "no limit"


def _per(window_s: float) -> str:
    return "per minute" if window_s == 60 else f"per {window_s:g}s"


def _window(capacity: int | None, level: float | None, window_s: float) -> RateWindow | None:
    if capacity is None or level is None:
        return None
    reset_s = max(0.0, capacity - level) * window_s / capacity
    return RateWindow(capacity, max(0, math.floor(level)), reset_s)


def _wait_s(capacity: int | None, level: float | None, needed: int, window_s: float) -> float:
    if capacity is None or level is None or level >= needed:
        return 0.0
    return (needed - level) * window_s / capacity


def format_duration(seconds: float) -> str:
    """A duration the way OpenAI writes `x-ratelimit-reset-*`: "20ms", "1.5s", "6m0s"."""
    millis = math.ceil(seconds * 1000)
    if millis < 1000:
        return f"{millis}ms"
    if millis < 60_000:
        return f"{millis / 1000:g}s"
    minutes, rest = divmod(math.ceil(millis / 1000), 60)
    return f"{minutes}m{rest}s"
