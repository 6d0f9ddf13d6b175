"""The completion store on SQLite and PostgreSQL: tenant isolation, metadata filters, cursor
pagination both ways, metadata updates, erasing a key's data, and retention (a fake clock)."""

from __future__ import annotations

from typing import Any

import pytest

from flintlm.platform.completion_store import (
    CompletionFilter,
    CompletionStore,
    UnknownCursor,
    check_metadata,
)
from flintlm.platform.db import Database
from tests.platform.conftest import FakeClock

DAY_S = 86_400.0


def _save(store: CompletionStore, completion_id: str, *, tenant: str = "tenant-a",
          key: str = "key-a", model: str = "default", **metadata: str) -> None:
    request = {"model": model, "messages": [{"role": "user", "content": f"q {completion_id}"}]}
    completion = {"id": completion_id, "object": "chat.completion", "choices": []}
    store.save(completion_id=completion_id, tenant_id=tenant, key_id=key, model=model,
               request=request, completion=completion, metadata=metadata)


def test_a_tenant_reads_updates_and_deletes_only_its_own(db: Database, clock: FakeClock) -> None:
    store = CompletionStore(db, ttl_s=DAY_S, clock=clock)
    _save(store, "chatcmpl-1", topic="x")
    stored = store.get("tenant-a", "chatcmpl-1")
    assert stored is not None and stored.metadata == {"topic": "x"} and stored.key_id == "key-a"
    assert stored.request["messages"][0]["content"] == "q chatcmpl-1"
    assert store.get("tenant-b", "chatcmpl-1") is None
    assert store.update_metadata("tenant-b", "chatcmpl-1", {"topic": "y"}) is None
    assert store.delete("tenant-b", "chatcmpl-1") is False
    assert store.list("tenant-b").items == []
    updated = store.update_metadata("tenant-a", "chatcmpl-1", {"rating": "1"})
    assert updated is not None and updated.metadata == {"rating": "1"}  # replaced
    merged = store.update_metadata(None, "chatcmpl-1", {"comment": "ok"}, merge=True)
    assert merged is not None and merged.metadata == {"rating": "1", "comment": "ok"}
    assert merged.rating == 1
    assert store.delete("tenant-a", "chatcmpl-1") is True
    assert store.get("tenant-a", "chatcmpl-1") is None


def test_list_filters_by_metadata_and_model_and_pages_both_ways(db: Database,
                                                                clock: FakeClock) -> None:
    store = CompletionStore(db, ttl_s=DAY_S, clock=clock)
    for i in range(5):
        _save(store, f"chatcmpl-{i}", model="default" if i != 3 else "other",
              run="a" if i % 2 == 0 else "b", seq=str(i))
        clock.advance(1)
    _save(store, "chatcmpl-x", tenant="tenant-b", run="a")
    ids = lambda page: [c.id for c in page.items]
    assert ids(store.list("tenant-a")) == [f"chatcmpl-{i}" for i in range(5)]
    assert ids(store.list("tenant-a", order="desc"))[0] == "chatcmpl-4"
    assert ids(store.list("tenant-a", metadata={"run": "a"})) == [
        "chatcmpl-0", "chatcmpl-2", "chatcmpl-4"]
    assert ids(store.list("tenant-a", metadata={"run": "a", "seq": "2"})) == ["chatcmpl-2"]
    assert ids(store.list("tenant-a", model="other")) == ["chatcmpl-3"]
    first = store.list("tenant-a", limit=2)
    assert ids(first) == ["chatcmpl-0", "chatcmpl-1"] and first.has_more
    second = store.list("tenant-a", limit=2, after="chatcmpl-1")
    assert ids(second) == ["chatcmpl-2", "chatcmpl-3"] and second.has_more
    last = store.list("tenant-a", limit=2, after="chatcmpl-3")
    assert ids(last) == ["chatcmpl-4"] and not last.has_more
    back = store.list("tenant-a", limit=2, after="chatcmpl-3", order="desc")
    assert ids(back) == ["chatcmpl-2", "chatcmpl-1"] and back.has_more
    with pytest.raises(UnknownCursor):
        store.list("tenant-a", after="chatcmpl-x")  # another tenant's id is no cursor


def test_retention_deletes_what_is_past_the_ttl(db: Database, clock: FakeClock) -> None:
    store = CompletionStore(db, ttl_s=2 * DAY_S, clock=clock)
    _save(store, "chatcmpl-old")
    clock.advance(DAY_S)
    _save(store, "chatcmpl-mid")
    clock.advance(DAY_S + 1)  # "old" is now past two days, "mid" is not
    assert store.get("tenant-a", "chatcmpl-old") is None  # invisible before any purge
    assert [c.id for c in store.list("tenant-a").items] == ["chatcmpl-mid"]
    _save(store, "chatcmpl-new")  # a write purges
    with db.engine.connect() as connection:
        kept = set(connection.exec_driver_sql("SELECT id FROM stored_completions").scalars())
    assert kept == {"chatcmpl-mid", "chatcmpl-new"}
    clock.advance(DAY_S)
    assert store.purge_expired() == 1  # the sweep without a write: "mid" goes
    assert [c.id for c in store.select(CompletionFilter())] == ["chatcmpl-new"]


def test_erasing_a_key_leaves_other_keys_data(db: Database, clock: FakeClock) -> None:
    store = CompletionStore(db, ttl_s=DAY_S, clock=clock)
    _save(store, "chatcmpl-1", key="key-a")
    _save(store, "chatcmpl-2", key="key-a")
    _save(store, "chatcmpl-3", key="key-b")
    assert store.delete_key("key-a") == 2
    assert [c.id for c in store.select(CompletionFilter())] == ["chatcmpl-3"]
    assert store.delete_key("key-a") == 0


def test_select_filters_by_key_model_and_time(db: Database, clock: FakeClock) -> None:
    store = CompletionStore(db, ttl_s=10 * DAY_S, clock=clock)
    _save(store, "chatcmpl-1", key="key-a")
    clock.advance(DAY_S)
    since = store.get("tenant-a", "chatcmpl-1").created_at  # type: ignore[union-attr]
    _save(store, "chatcmpl-2", key="key-b", model="other")
    _save(store, "chatcmpl-3", key="key-a")
    select = lambda **kw: [c.id for c in store.select(CompletionFilter(**kw))]
    assert select(key_id="key-a") == ["chatcmpl-1", "chatcmpl-3"]
    assert select(model="other") == ["chatcmpl-2"]
    from datetime import timedelta
    assert select(since=since + timedelta(seconds=1)) == ["chatcmpl-2", "chatcmpl-3"]


def test_the_redactor_sees_every_document_before_it_is_stored(db: Database,
                                                             clock: FakeClock) -> None:
    seen: list[str] = []

    def mask(key_id: str, document: dict[str, Any]) -> dict[str, Any]:
        seen.append(key_id)
        return {**document, "masked": True}

    store = CompletionStore(db, ttl_s=DAY_S, clock=clock, redact=mask)
    _save(store, "chatcmpl-1")
    stored = store.get("tenant-a", "chatcmpl-1")
    assert stored is not None and stored.request["masked"] and stored.completion["masked"]
    assert seen == ["key-a", "key-a"]


@pytest.mark.parametrize(("metadata", "message"), [
    ({f"k{i}": "v" for i in range(17)}, "at most 16"),
    ({"k" * 65: "v"}, "1 to 64"),
    ({"k": "v" * 513}, "at most 512"),
    ({"k": 1}, "must be a string"),
    ({"rating": "good"}, "must be an integer"),
])
def test_metadata_rules_name_the_pair_at_fault(metadata: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        check_metadata(metadata)


@pytest.mark.parametrize("name", ['quote"d', "it's", "a.b", "ü", "back\\slash", "$[0]"])
def test_metadata_filters_are_exact_for_any_key(db: Database, clock: FakeClock,
                                                name: str) -> None:
    store = CompletionStore(db, ttl_s=DAY_S, clock=clock)
    _save(store, "chatcmpl-1", **{name: "ü v"})
    _save(store, "chatcmpl-2", **{name: "other"})
    _save(store, "chatcmpl-3", plain="ü v")
    assert [c.id for c in store.list("tenant-a", metadata={name: "ü v"}).items] == ["chatcmpl-1"]
    page = store.list("tenant-a", metadata={name: "other", "plain": "x"})
    assert page.items == [] and not page.has_more
