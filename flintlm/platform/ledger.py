"""The usage ledger: exactly one row per request, written off the request path and never lost.

`record` only appends to an in-memory buffer, deduplicated by request id; a background thread
writes the buffer every `flush_interval_s`, or sooner once it holds `max_buffered` events, with
`INSERT ... ON CONFLICT (request_id) DO NOTHING`, so a repeated id is ignored by the table too.
Events leave the buffer only after their transaction commits; a failed write is retried.
`flush()` and `close()` drain the buffer: call `close()` at shutdown (on SIGTERM).

Public API:
    UsageStatus, UsageEvent, UsageTotals, UsageRow, GroupBy, EventFilter, EventPage, UnknownEvent
    Ledger(db, flush_interval_s=, max_buffered=, clock=): record(event) -> bool, flush() -> int,
        close(), get(request_id), totals_since(key_id, start),
        usage(start, end, key_id=, group_by=), events(selection, limit=, before=) -> EventPage
"""

from __future__ import annotations

import atexit
import enum
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import date, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Literal, cast

import sqlalchemy as sa

from flintlm.platform.pricing import nanos_to_usd, usd_to_nanos
from flintlm.platform.tables import UsageEventRow, db_time

if TYPE_CHECKING:
    from flintlm.platform.db import Database

logger = logging.getLogger(__name__)

GroupBy = Literal["key", "model", "day"]
_ROWS_PER_INSERT = 500
# Ids already written are remembered a while so a late duplicate is refused without a DB trip.
_NUM_RECENT_IDS = 65_536


class UsageStatus(enum.StrEnum):
    FINISHED = "finished"  # stopped or hit its length
    ABORTED = "aborted"  # client disconnected or the server shut down; billed for what ran
    FAILED = "failed"  # the engine failed on it
    REJECTED = "rejected"  # refused at admission (429); no tokens


@dataclass(frozen=True)
class UsageEvent:
    """One request's final usage. `cached_tokens` is part of `prompt_tokens`."""

    request_id: str
    key_id: str
    model: str
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0
    status: UsageStatus = UsageStatus.FINISHED
    cost_usd: Decimal = Decimal(0)
    error_code: str | None = None
    queue_time_s: float | None = None
    ttft_s: float | None = None
    total_time_s: float | None = None
    created_at: datetime | None = None  # naive UTC; None: stamped by `Ledger.record`
    http_request_id: str | None = None  # the HTTP request's x-request-id, for support
    guardrail: list[dict[str, Any]] | None = None  # decisions: mode, rule, action, categories

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True)
class UsageTotals:
    num_tokens: int
    cost_usd: Decimal


@dataclass(frozen=True)
class UsageRow:
    """Sums over one group; the dimensions not grouped by are None."""

    key_id: str | None
    model: str | None
    day: date | None
    num_requests: int  # rejected requests included
    prompt_tokens: int
    cached_tokens: int
    completion_tokens: int
    cost_usd: Decimal

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True)
class EventFilter:
    """Which rows `Ledger.events` lists; None means any. Times are naive UTC, `[start, end)`."""

    key_id: str | None = None
    model: str | None = None
    status: UsageStatus | None = None
    start: datetime | None = None
    end: datetime | None = None


@dataclass(frozen=True)
class EventPage:
    events: list[UsageEvent]  # newest first
    has_more: bool


class UnknownEvent(LookupError):
    """`before` names no row that the listing's filter lets through."""


class Ledger:
    """Buffered, idempotent writer of usage events, and reader of usage sums. Thread-safe."""

    def __init__(
        self,
        db: Database,
        *,
        flush_interval_s: float = 1.0,
        max_buffered: int = 256,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._db = db
        self._flush_interval_s = flush_interval_s
        self._max_buffered = max_buffered
        self._clock = clock
        table = cast(sa.Table, UsageEventRow.__table__)
        self._insert = db.insert_ignoring_duplicates(table, ["request_id"])
        self._lock = threading.Lock()  # guards the buffer and the recent ids
        self._flush_lock = threading.Lock()  # one writer at a time, held while rows are in flight
        self._buffer: dict[str, UsageEvent] = {}
        self._recent_ids: deque[str] = deque()
        self._recent_id_set: set[str] = set()
        self._wake = threading.Event()
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._run, name="flintlm-ledger", daemon=True)
        self._thread.start()
        # A safety net for an exit that skips close(); SIGTERM handling still has to call it.
        atexit.register(self.close)

    def record(self, event: UsageEvent) -> bool:
        """Buffer one request's usage; False if its request id was already recorded here."""
        if event.created_at is None:
            event = replace(event, created_at=db_time(self._clock()))
        with self._lock:
            if event.request_id in self._buffer or event.request_id in self._recent_id_set:
                return False
            self._buffer[event.request_id] = event
            is_full = len(self._buffer) >= self._max_buffered
        if self._closed.is_set():
            self.flush()  # a straggler after close(): write it now, nobody else will
        elif is_full:
            self._wake.set()
        return True

    def flush(self) -> int:
        """Write every buffered event now; returns how many were written (or found present).

        Raises:
            sqlalchemy.exc.SQLAlchemyError: the write failed; the events stay buffered.
        """
        with self._flush_lock:
            with self._lock:
                batch = list(self._buffer.values())
            if not batch:
                return 0
            with self._db.engine.begin() as connection:
                for first in range(0, len(batch), _ROWS_PER_INSERT):
                    chunk = batch[first : first + _ROWS_PER_INSERT]
                    connection.execute(self._insert, [_to_row(event) for event in chunk])
            with self._lock:
                for event in batch:
                    del self._buffer[event.request_id]
                    self._remember(event.request_id)
            return len(batch)

    def close(self) -> None:
        """Stop the background writer and drain the buffer; idempotent."""
        if self._closed.is_set():
            return
        self._closed.set()
        atexit.unregister(self.close)
        self._wake.set()
        self._thread.join()
        self.flush()

    def get(self, request_id: str) -> UsageEvent | None:
        with self._lock:
            if request_id in self._buffer:
                return self._buffer[request_id]
        with self._db.session() as session:
            row = session.scalars(
                sa.select(UsageEventRow).where(UsageEventRow.request_id == request_id)
            ).one_or_none()
            return _to_event(row) if row else None

    def totals_since(self, key_id: str, start: datetime) -> UsageTotals:
        """Tokens and USD of `key_id` since `start` (naive UTC), unflushed events included."""
        tokens = UsageEventRow.prompt_tokens + UsageEventRow.completion_tokens
        query = sa.select(
            sa.func.coalesce(sa.func.sum(tokens), 0),
            sa.func.coalesce(sa.func.sum(UsageEventRow.cost_nano_usd), 0),
        ).where(UsageEventRow.key_id == key_id, UsageEventRow.created_at >= start)
        # Holding the flush lock, no event is both in the table and the buffer, nor in neither.
        with self._flush_lock:
            with self._db.session() as session:
                num_tokens, cost_nanos = session.execute(query).one()
            with self._lock:
                buffered = [event for event in self._buffer.values()
                            if event.key_id == key_id and event.created_at
                            and event.created_at >= start]
        num_tokens = int(num_tokens) + sum(event.total_tokens for event in buffered)
        cost = nanos_to_usd(int(cost_nanos)) + sum((e.cost_usd for e in buffered), Decimal(0))
        return UsageTotals(num_tokens, cost)

    def usage(
        self,
        start: datetime,
        end: datetime,
        *,
        key_id: str | None = None,
        group_by: Sequence[GroupBy] = ("model",),
    ) -> list[UsageRow]:
        """Sums per group within `[start, end)` (naive UTC), for one key or (admin) all keys.

        Flushes this process's buffer first, so callers see their own writes.
        """
        dimensions: dict[str, Any] = {
            "key": UsageEventRow.key_id,
            "model": UsageEventRow.model,
            "day": sa.func.date(UsageEventRow.created_at),
        }
        unknown = set(group_by) - set(dimensions)
        if unknown:
            raise ValueError(f"cannot group usage by {sorted(unknown)}; use key, model or day")
        self.flush()
        grouped = [dimensions[name] for name in group_by]
        sums = [
            sa.func.sum(getattr(UsageEventRow, name))
            for name in ("prompt_tokens", "cached_tokens", "completion_tokens", "cost_nano_usd")
        ]
        query = sa.select(*grouped, sa.func.count(), *sums).where(
            UsageEventRow.created_at >= start, UsageEventRow.created_at < end
        )
        if key_id is not None:
            query = query.where(UsageEventRow.key_id == key_id)
        query = query.group_by(*grouped).order_by(*grouped)
        with self._db.session() as session:
            results = session.execute(query).all()
        rows = []
        for result in results:
            groups = dict(zip(group_by, result[: len(group_by)], strict=True))
            num_requests, prompt, cached, completion, cost = result[len(group_by):]
            day = groups.get("day")
            rows.append(UsageRow(
                key_id=groups.get("key"),
                model=groups.get("model"),
                day=date.fromisoformat(day) if isinstance(day, str) else day,
                num_requests=int(num_requests),
                prompt_tokens=int(prompt),
                cached_tokens=int(cached),
                completion_tokens=int(completion),
                cost_usd=nanos_to_usd(int(cost)),
            ))
        return rows

    def events(self, selection: EventFilter, *, limit: int = 50, before: str | None = None
               ) -> EventPage:
        """A page of rows matching `selection`, newest first: `limit` of those older than the row
        whose request id is `before` (the last one of the previous page). Flushes first.

        Raises:
            UnknownEvent: `before` is not a row that `selection` matches.
        """
        row = UsageEventRow
        query = sa.select(row)
        if selection.key_id is not None:
            query = query.where(row.key_id == selection.key_id)
        if selection.model is not None:
            query = query.where(row.model == selection.model)
        if selection.status is not None:
            query = query.where(row.status == UsageStatus(selection.status).value)
        if selection.start is not None:
            query = query.where(row.created_at >= selection.start)
        if selection.end is not None:
            query = query.where(row.created_at < selection.end)
        self.flush()
        with self._db.session() as session:
            if before is not None:
                # NOTE: the cursor is looked up under the same filter, so a key cannot learn
                # whether another key's request id exists.
                cursor = session.execute(query.with_only_columns(row.created_at, row.id)
                                         .where(row.request_id == before)).one_or_none()
                if cursor is None:
                    raise UnknownEvent(before)
                query = query.where(sa.tuple_(row.created_at, row.id) < tuple(cursor))
            query = query.order_by(row.created_at.desc(), row.id.desc()).limit(limit + 1)
            found = [_to_event(result) for result in session.scalars(query)]
        return EventPage(found[:limit], len(found) > limit)

    def _run(self) -> None:
        while not self._closed.is_set():
            self._wake.wait(self._flush_interval_s)
            self._wake.clear()
            try:
                self.flush()
            except Exception:  # keep the writer alive; the rows stay buffered
                logger.exception("ledger flush failed; %d events stay buffered for the next try",
                                 len(self._buffer))

    def _remember(self, request_id: str) -> None:
        self._recent_ids.append(request_id)
        self._recent_id_set.add(request_id)
        if len(self._recent_ids) > _NUM_RECENT_IDS:
            self._recent_id_set.discard(self._recent_ids.popleft())


def _to_row(event: UsageEvent) -> dict[str, Any]:
    return {
        "request_id": event.request_id,
        "key_id": event.key_id,
        "model": event.model,
        "prompt_tokens": event.prompt_tokens,
        "cached_tokens": event.cached_tokens,
        "completion_tokens": event.completion_tokens,
        "queue_time_s": event.queue_time_s,
        "ttft_s": event.ttft_s,
        "total_time_s": event.total_time_s,
        "status": UsageStatus(event.status).value,
        "error_code": event.error_code,
        "cost_nano_usd": usd_to_nanos(event.cost_usd),
        "created_at": event.created_at,
        "http_request_id": event.http_request_id,
        "guardrail": event.guardrail,
    }


def _to_event(row: UsageEventRow) -> UsageEvent:
    return UsageEvent(
        request_id=row.request_id,
        key_id=row.key_id,
        model=row.model,
        prompt_tokens=row.prompt_tokens,
        completion_tokens=row.completion_tokens,
        cached_tokens=row.cached_tokens,
        status=UsageStatus(row.status),
        cost_usd=nanos_to_usd(row.cost_nano_usd),
        error_code=row.error_code,
        queue_time_s=row.queue_time_s,
        ttft_s=row.ttft_s,
        total_time_s=row.total_time_s,
        created_at=row.created_at,
        http_request_id=row.http_request_id,
        guardrail=row.guardrail,
    )
