"""The request log's query (`Ledger.events`) on SQLite and PostgreSQL: filters, newest first,
pages that neither skip nor repeat rows, and a cursor that cannot cross a key's filter."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta
from decimal import Decimal

import pytest

from flintlm.platform.db import Database
from flintlm.platform.ledger import EventFilter, Ledger, UnknownEvent, UsageStatus
from tests.platform.test_ledger import QUIET, event

T0 = datetime(2025, 1, 15, 12)


@pytest.fixture
def ledger(db: Database) -> Iterator[Ledger]:
    """Twelve rows, a minute apart: keys a/b alternate, every third on model `big`, the fifth
    rejected; rows 6 and 7 share a timestamp, so the order has to break the tie itself."""
    ledger = Ledger(db, flush_interval_s=QUIET)
    for number in range(12):
        moment = T0 + timedelta(minutes=min(number, 6) if number == 7 else number)
        ledger.record(event(
            f"req-{number:02d}", key_id="key_a" if number % 2 == 0 else "key_b",
            model="big" if number % 3 == 0 else "small", created_at=moment,
            status=UsageStatus.REJECTED if number == 5 else UsageStatus.FINISHED,
            prompt_tokens=10 + number, completion_tokens=number, cost_usd=Decimal("0.0001"),
            ttft_s=0.5, total_time_s=1.25))
    ledger.flush()
    yield ledger
    ledger.close()


def ids(ledger: Ledger, selection: EventFilter, limit: int = 50, before: str | None = None
        ) -> list[str]:
    return [found.request_id for found in ledger.events(selection, limit=limit,
                                                        before=before).events]


def test_rows_come_newest_first_with_every_field(ledger: Ledger) -> None:
    page = ledger.events(EventFilter(), limit=3)
    assert [found.request_id for found in page.events] == ["req-11", "req-10", "req-09"]
    assert page.has_more is True
    newest = page.events[0]
    assert (newest.key_id, newest.model, newest.status) == ("key_b", "small", "finished")
    assert (newest.prompt_tokens, newest.completion_tokens) == (21, 11)
    assert newest.cost_usd == Decimal("0.0001")
    assert (newest.ttft_s, newest.total_time_s) == (0.5, 1.25)
    assert newest.created_at == T0 + timedelta(minutes=11)


def test_filters_combine(ledger: Ledger) -> None:
    assert ids(ledger, EventFilter(key_id="key_a", model="big")) == ["req-06", "req-00"]
    assert ids(ledger, EventFilter(status=UsageStatus.REJECTED)) == ["req-05"]
    window = EventFilter(start=T0 + timedelta(minutes=2), end=T0 + timedelta(minutes=4))
    assert ids(ledger, window) == ["req-03", "req-02"]  # start inclusive, end exclusive
    assert ids(ledger, EventFilter(key_id="key_c")) == []


def test_pages_cover_every_row_once_even_across_equal_times(ledger: Ledger) -> None:
    seen: list[str] = []
    before = None
    while True:
        page = ledger.events(EventFilter(), limit=5, before=before)
        seen += [found.request_id for found in page.events]
        if not page.has_more:
            break
        before = seen[-1]
    assert len(seen) == 12 and set(seen) == {f"req-{n:02d}" for n in range(12)}
    assert seen.index("req-06") != seen.index("req-07")
    assert seen[-1] == "req-00"


def test_a_page_sees_rows_still_in_the_buffer(ledger: Ledger) -> None:
    ledger.record(event("req-late", created_at=T0 + timedelta(hours=1)))
    assert ids(ledger, EventFilter(), limit=1) == ["req-late"]


def test_the_cursor_must_match_the_filter(ledger: Ledger) -> None:
    with pytest.raises(UnknownEvent):
        ledger.events(EventFilter(key_id="key_a"), before="req-03")  # key_b's row
    with pytest.raises(UnknownEvent):
        ledger.events(EventFilter(), before="no-such-request")
    assert ids(ledger, EventFilter(key_id="key_b"), before="req-03") == ["req-01"]
