"""The response store on SQLite and PostgreSQL: a key reads only its own responses, for `ttl_s`,
and keeps at most `max_per_key` of them (the oldest go first)."""

from __future__ import annotations

from flintlm.platform.db import Database
from flintlm.platform.response_store import ResponseStore
from tests.platform.conftest import FakeClock

CONTEXT = [{"type": "message", "id": "msg_1", "role": "user",
            "content": [{"type": "input_text", "text": "Hi"}]}]


def _response(response_id: str) -> dict[str, object]:
    return {"id": response_id, "object": "response", "status": "completed", "output": []}


def test_a_key_reads_and_deletes_only_its_own_responses(db: Database, clock: FakeClock) -> None:
    store = ResponseStore(db, ttl_s=60, max_per_key=10, clock=clock)
    store.save("key-a", "resp_1", _response("resp_1"), CONTEXT)
    stored = store.get("key-a", "resp_1")
    assert stored is not None
    assert stored.response == _response("resp_1") and stored.context == CONTEXT
    assert store.get("key-b", "resp_1") is None
    assert store.delete("key-b", "resp_1") is False
    assert store.delete("key-a", "resp_1") is True
    assert store.get("key-a", "resp_1") is None
    assert store.delete("key-a", "resp_1") is False


def test_responses_expire_after_the_ttl_and_are_purged(db: Database, clock: FakeClock) -> None:
    store = ResponseStore(db, ttl_s=60, max_per_key=10, clock=clock)
    store.save("key-a", "resp_old", _response("resp_old"), CONTEXT)
    clock.advance(59)
    assert store.get("key-a", "resp_old") is not None
    clock.advance(2)
    assert store.get("key-a", "resp_old") is None
    store.save("key-b", "resp_new", _response("resp_new"), CONTEXT)  # purges expired rows
    with db.engine.connect() as connection:
        ids = set(connection.exec_driver_sql("SELECT id FROM stored_responses").scalars())
    assert ids == {"resp_new"}


def test_a_key_keeps_at_most_its_cap_dropping_the_oldest(db: Database, clock: FakeClock) -> None:
    store = ResponseStore(db, ttl_s=3600, max_per_key=3, clock=clock)
    for i in range(5):
        store.save("key-a", f"resp_{i}", _response(f"resp_{i}"), CONTEXT)
        clock.advance(1)
    store.save("key-b", "resp_b", _response("resp_b"), CONTEXT)
    kept = [i for i in range(5) if store.get("key-a", f"resp_{i}") is not None]
    assert kept == [2, 3, 4]
    assert store.get("key-b", "resp_b") is not None  # another key's cap is its own
