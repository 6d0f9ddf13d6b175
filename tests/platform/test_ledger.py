"""The usage ledger on SQLite and PostgreSQL: one row per request, exact sums, nothing lost."""

from __future__ import annotations

import threading
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from flintlm.platform.db import Database
from flintlm.platform.ledger import Ledger, UsageEvent, UsageStatus
from flintlm.platform.tables import UsageEventRow

JAN_15 = datetime(2025, 1, 15, 12)
JAN_16 = datetime(2025, 1, 16, 9)
QUIET = 3600.0  # a flush interval long enough that only explicit flushes write


def event(request_id: str, **fields: Any) -> UsageEvent:
    values: dict[str, Any] = {"key_id": "key_a", "model": "small", "prompt_tokens": 10,
                                  "completion_tokens": 5, "created_at": JAN_15}
    return UsageEvent(request_id=request_id, **(values | fields))


def count_rows(db: Database) -> int:
    with db.session() as session:
        return session.scalar(sa.select(sa.func.count()).select_from(UsageEventRow)) or 0


def test_a_request_is_recorded_once_in_the_buffer_and_in_the_table(db: Database) -> None:
    ledger = Ledger(db, flush_interval_s=QUIET)
    assert ledger.record(event("req-1", completion_tokens=5)) is True
    assert ledger.record(event("req-1", completion_tokens=999)) is False  # buffered already
    assert ledger.flush() == 1
    assert ledger.record(event("req-1", completion_tokens=999)) is False  # written already
    ledger.close()

    restarted = Ledger(db, flush_interval_s=QUIET)  # knows nothing of req-1: the table decides
    restarted.record(event("req-1", completion_tokens=999))
    restarted.close()
    assert count_rows(db) == 1
    stored = restarted.get("req-1")
    assert stored is not None and stored.completion_tokens == 5


def test_the_http_request_id_is_stored_with_the_row_and_may_repeat(db: Database) -> None:
    ledger = Ledger(db, flush_interval_s=QUIET)
    ledger.record(event("req-a", http_request_id="client-chosen/1"))
    ledger.record(event("req-b", http_request_id="client-chosen/1"))  # clients may reuse ids
    ledger.record(event("req-c"))
    ledger.close()
    assert count_rows(db) == 3
    stored = [ledger.get(request_id) for request_id in ("req-a", "req-b", "req-c")]
    assert [e.http_request_id if e else "missing" for e in stored] == [
        "client-chosen/1", "client-chosen/1", None]


def test_500_concurrent_records_from_5_keys_sum_exactly(db: Database) -> None:
    # Small batches, so the background writer flushes while records keep arriving.
    ledger = Ledger(db, flush_interval_s=0.01, max_buffered=32)
    events = [
        event(f"req-{i}", key_id=f"key_{i % 5}", prompt_tokens=i, cached_tokens=i // 2,
              completion_tokens=2 * i, cost_usd=Decimal(i) / 10**7)
        for i in range(500)
    ]
    start = threading.Barrier(10)

    def record(part: list[UsageEvent]) -> None:
        start.wait()
        for item in part:
            ledger.record(item)
            ledger.record(item)  # a retried settle of the same request

    threads = [threading.Thread(target=record, args=(events[i::10],)) for i in range(10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    ledger.close()

    assert count_rows(db) == 500
    rows = ledger.usage(JAN_15.replace(hour=0), JAN_16, group_by=("key",))
    assert [row.key_id for row in rows] == [f"key_{k}" for k in range(5)]
    for k, row in enumerate(rows):
        mine = [item for item in events if item.key_id == f"key_{k}"]
        assert row.num_requests == 100
        assert row.prompt_tokens == sum(item.prompt_tokens for item in mine)
        assert row.cached_tokens == sum(item.cached_tokens for item in mine)
        assert row.completion_tokens == sum(item.completion_tokens for item in mine)
        assert row.cost_usd == sum(item.cost_usd for item in mine)


def test_close_drains_the_buffer_and_later_records_are_written_at_once(db: Database) -> None:
    ledger = Ledger(db, flush_interval_s=QUIET, max_buffered=10_000)
    for i in range(50):
        ledger.record(event(f"req-{i}"))
    assert count_rows(db) == 0  # nothing written yet: all of it is buffered
    ledger.close()
    assert count_rows(db) == 50
    ledger.record(event("straggler"))
    assert count_rows(db) == 51


def test_failed_writes_keep_the_events_until_a_later_flush(tmp_path: Path) -> None:
    db = Database(sa.URL.create("sqlite+pysqlite", database=str(tmp_path / "x.db"))
                  .render_as_string())
    ledger = Ledger(db, flush_interval_s=QUIET)
    ledger.record(event("req-1"))
    with pytest.raises(sa.exc.OperationalError):  # no schema yet: the write fails
        ledger.flush()
    db.migrate()
    ledger.close()
    assert count_rows(db) == 1
    db.close()


def test_usage_groups_by_model_and_day_within_the_range(db: Database) -> None:
    ledger = Ledger(db, flush_interval_s=QUIET)
    ledger.record(event("a", model="small", created_at=JAN_15))
    ledger.record(event("b", model="big", created_at=JAN_15, prompt_tokens=100))
    ledger.record(event("c", model="small", created_at=JAN_16))
    ledger.record(event("d", model="small", created_at=JAN_16, key_id="key_b"))
    ledger.record(event("late", created_at=datetime(2025, 1, 17)))  # outside [start, end)
    ledger.record(event("rej", created_at=JAN_16, status=UsageStatus.REJECTED,
                        prompt_tokens=0, completion_tokens=0))
    start, end = datetime(2025, 1, 15), datetime(2025, 1, 17)

    by_model = ledger.usage(start, end, key_id="key_a", group_by=("model",))
    assert [(row.model, row.num_requests, row.prompt_tokens) for row in by_model] == [
        ("big", 1, 100), ("small", 3, 20)]
    by_day = ledger.usage(start, end, key_id="key_a", group_by=("day",))
    assert [(row.day, row.num_requests) for row in by_day] == [
        (JAN_15.date(), 2), (JAN_16.date(), 2)]
    admin = ledger.usage(start, end, group_by=("key", "model", "day"))
    assert [(row.key_id, row.model, row.day) for row in admin] == [
        ("key_a", "big", JAN_15.date()),
        ("key_a", "small", JAN_15.date()),
        ("key_a", "small", JAN_16.date()),
        ("key_b", "small", JAN_16.date()),
    ]
    with pytest.raises(ValueError, match="cannot group"):
        ledger.usage(start, end, group_by=("tenant",))  # type: ignore[arg-type]
    ledger.close()


def test_totals_since_include_unflushed_events(db: Database) -> None:
    ledger = Ledger(db, flush_interval_s=QUIET)
    ledger.record(event("old", created_at=datetime(2025, 1, 1), cost_usd=Decimal(5)))
    ledger.record(event("flushed", cost_usd=Decimal("0.25")))
    ledger.flush()
    ledger.record(event("buffered", cost_usd=Decimal("0.5"), key_id="key_a"))
    ledger.record(event("other key", key_id="key_b"))
    totals = ledger.totals_since("key_a", datetime(2025, 1, 15))
    assert totals.num_tokens == 30 and totals.cost_usd == Decimal("0.75")
    ledger.close()


def test_get_returns_the_stored_event(db: Database) -> None:
    ledger = Ledger(db, flush_interval_s=QUIET)
    recorded = event("req-9", status=UsageStatus.ABORTED, error_code="client_disconnected",
                     ttft_s=0.25, queue_time_s=0.01, total_time_s=1.5, cost_usd=Decimal("0.1"))
    ledger.record(recorded)
    ledger.close()
    assert ledger.get("req-9") == recorded
    assert ledger.get("missing") is None
