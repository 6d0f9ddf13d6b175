"""The platform as the HTTP layer holds it: keys, limits, pricing and ledger.

`Platform.settle` is the one place usage is settled: it prices the request, writes its ledger
row and trades its rate-limit reservation for real use. Every method does blocking I/O (DB,
Redis); call them from a worker thread, not the event loop.

Wiring, in request order:
    start-up     platform = Platform.from_config(config.platform)   # migrates the DB schema
    auth         key = platform.authenticate(bearer_secret)           # None -> 401
    scoping      key.is_model_allowed(model)                          # False -> 404/403
    admission    decision = platform.admit(key, model, prompt_tokens=, max_completion_tokens=)
                 refused -> 429 with decision.code, .message and .headers(); allowed -> .headers()
    end          finally: platform.settle(request_id, key.id, model, usage, status=...,
                 reservation=decision.reservation, timings=...)       # once, aborted ones too
    shutdown     platform.close()                                     # drains the ledger
"""

from __future__ import annotations

import hmac
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from flintlm.platform.db import Database
from flintlm.platform.keys import KeyRecord, KeyStore
from flintlm.platform.ledger import Ledger, UsageEvent, UsageStatus
from flintlm.platform.limit_store import (
    LimitStore,
    LimitStoreError,
    MemoryLimitStore,
    RedisLimitStore,
)
from flintlm.platform.limits import AdmissionDecision, Limiter, Reservation
from flintlm.platform.pricing import Pricing, TokenCounts, TokenUsage

if TYPE_CHECKING:
    from flintlm.config import PlatformConfig

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Timings:
    """Latencies of one request, stored with its ledger row."""

    queue_time_s: float | None = None
    ttft_s: float | None = None
    total_time_s: float | None = None


_ISO = "%Y-%m-%dT%H:%M:%SZ"

NO_USAGE = TokenCounts()
"""The usage of a request refused before it ran (status `rejected`)."""


class Platform:
    """One per server process: built by `from_config` at start-up, `close()`d at shutdown.

    The parts are public for the admin routes (`keys`, `ledger.usage`, `pricing.prices`);
    request handling goes through `authenticate`, `admit` and `settle` only.
    """

    def __init__(
        self,
        *,
        db: Database,
        keys: KeyStore,
        limiter: Limiter,
        pricing: Pricing,
        ledger: Ledger,
        admin_key: str | None = None,
    ) -> None:
        self.db = db
        self.keys = keys
        self.limiter = limiter
        self.pricing = pricing
        self.ledger = ledger
        self._admin_key = admin_key

    @classmethod
    def from_config(
        cls, config: PlatformConfig, *, clock: Callable[[], float] = time.time
    ) -> Platform:
        """Open the store and migrate it; Redis (if configured) is reached on first use only."""
        pricing = Pricing.from_file(config.prices_file)  # a bad prices file fails before the DB
        db = Database.from_config(config)
        db.migrate()
        ledger = Ledger(db, flush_interval_s=config.ledger_flush_interval_s, clock=clock)
        window_s = config.rate_window_s
        store: LimitStore = (
            RedisLimitStore.from_url(config.redis_url, window_s=window_s) if config.redis_url
            else MemoryLimitStore(window_s)
        )
        return cls(
            db=db,
            keys=KeyStore(db, clock),
            limiter=Limiter(store, ledger, clock),
            pricing=pricing,
            ledger=ledger,
            admin_key=config.admin_key,
        )

    def authenticate(self, secret: str) -> KeyRecord | None:
        """The active key for a bearer secret, or None (unknown, revoked or expired)."""
        return self.keys.verify(secret)

    def refusal(self, secret: str) -> str:
        """Why `authenticate(secret)` found no active key, for the 401; never echoes the secret."""
        record = self.keys.find(secret)
        if record is None:
            return "Incorrect API key provided."
        if record.revoked_at is not None:
            return f"The API key {record.prefix}... was revoked at {record.revoked_at:{_ISO}}."
        if record.expires_at is not None and record.expires_at <= self.keys.now():
            return f"The API key {record.prefix}... expired at {record.expires_at:{_ISO}}."
        return "Incorrect API key provided."  # became valid between the two lookups: retry

    @property
    def has_admin_key(self) -> bool:
        return self._admin_key is not None

    def is_admin(self, secret: str) -> bool:
        """Whether `secret` is the configured admin key; always False when none is set."""
        if self._admin_key is None:
            return False
        return hmac.compare_digest(secret.encode(), self._admin_key.encode())

    def admit(
        self, key: KeyRecord, model: str, *, prompt_tokens: int, max_completion_tokens: int
    ) -> AdmissionDecision:
        """Admit a tokenized request, reserving its worst case: every completion token used.

        Args:
            prompt_tokens: prompt tokens of all prompts of the request.
            max_completion_tokens: the most tokens it may generate, over all choices (n).

        Raises:
            LimitStoreError: Redis is unreachable (answer 503).
        """
        worst_case = TokenCounts(prompt_tokens, 0, max_completion_tokens)
        return self.limiter.admit(
            key,
            num_tokens=prompt_tokens + max_completion_tokens,
            max_cost_usd=self.pricing.cost(model, worst_case),
        )

    def settle(
        self,
        request_id: str,
        key_id: str,
        model: str,
        usage: TokenUsage,
        *,
        status: UsageStatus = UsageStatus.FINISHED,
        reservation: Reservation | None = None,
        error_code: str | None = None,
        timings: Timings | None = None,
        http_request_id: str | None = None,
        guardrail: list[dict[str, Any]] | None = None,
    ) -> UsageEvent:
        """Price and record one request's final usage and release its reservation; idempotent.

        `guardrail` holds the request's guardrail decisions (mode, rule, action, categories).
        Never raises for a Redis outage: the ledger row is the truth and is already buffered.
        """
        timings = timings or Timings()
        event = UsageEvent(
            request_id=request_id,
            key_id=key_id,
            model=model,
            prompt_tokens=usage.prompt_tokens,
            completion_tokens=usage.completion_tokens,
            cached_tokens=usage.cached_tokens,
            status=status,
            cost_usd=self.pricing.cost(model, usage),
            error_code=error_code,
            queue_time_s=timings.queue_time_s,
            ttft_s=timings.ttft_s,
            total_time_s=timings.total_time_s,
            http_request_id=http_request_id,
            guardrail=guardrail,
        )
        self.ledger.record(event)
        if reservation is not None:
            try:
                self.limiter.settle(
                    reservation,
                    num_tokens=usage.prompt_tokens + usage.completion_tokens,
                    cost_usd=event.cost_usd,
                )
            except LimitStoreError:
                logger.exception("could not settle %s in the rate-limit store", request_id)
        return event

    def close(self) -> None:
        """Drain the ledger and close the store; call once at shutdown."""
        try:
            self.ledger.close()
        finally:
            self.db.close()
