"""OpenAI's stored chat completions through the official `openai` client against a real server
(SQLite store, keys issued by the admin API): `store: true` keeps a completion (streamed ones
assembled), list filters and pages, retrieve, messages, update, delete; another tenant's id is a
404; `store: false` keeps nothing; a key's capture mode (all, never) overrides the flag.
"""

from __future__ import annotations

from typing import Any

import openai
import pytest
import sqlalchemy as sa

from tests.platform.served import IssuedKey, PlatformServer

MESSAGES = [{"role": "system", "content": "You are brief."},
            {"role": "user", "content": "Say hi."}]
GREEDY: dict[str, Any] = {"model": "default", "messages": MESSAGES, "temperature": 0,
                          "max_tokens": 8}


@pytest.fixture(scope="module")
def served(platform_server: PlatformServer) -> PlatformServer:
    return platform_server


@pytest.fixture(scope="module")
def tenant_a(served: PlatformServer) -> IssuedKey:
    return served.create_key("a", tenant_id="tenant-a")


@pytest.fixture(scope="module")
def client(served: PlatformServer, tenant_a: IssuedKey) -> openai.OpenAI:
    return served.openai(tenant_a)


def _stored_ids(served: PlatformServer) -> set[str]:
    with sa.create_engine(served.store_url).connect() as connection:
        return set(connection.exec_driver_sql("SELECT id FROM stored_completions").scalars())


def test_store_keeps_the_request_and_the_response(client: openai.OpenAI) -> None:
    created = client.chat.completions.create(store=True, metadata={"case": "retrieve"}, seed=7,
                                             **GREEDY)
    stored = client.chat.completions.retrieve(created.id)
    assert stored.id == created.id and stored.model == created.model
    assert stored.choices[0].message.content == created.choices[0].message.content
    assert stored.choices[0].finish_reason == created.choices[0].finish_reason
    assert stored.usage == created.usage
    extra = stored.model_extra or {}
    assert stored.metadata == {"case": "retrieve"}
    assert extra["seed"] == 7 and extra["temperature"] == 0
    messages = client.chat.completions.messages.list(created.id)
    assert [(m.id, m.role, m.content) for m in messages.data] == [
        (f"{created.id}-0", "system", "You are brief."), (f"{created.id}-1", "user", "Say hi.")]
    assert not messages.has_more
    desc = client.chat.completions.messages.list(created.id, order="desc", limit=1)
    assert [m.id for m in desc.data] == [f"{created.id}-1"] and desc.has_more
    after = client.chat.completions.messages.list(created.id, after=f"{created.id}-0")
    assert [m.id for m in after.data] == [f"{created.id}-1"]


def test_list_filters_by_metadata_and_model_and_pages(served: PlatformServer) -> None:
    client = served.openai(served.create_key("lister", tenant_id="tenant-list"))
    ids = [client.chat.completions.create(store=True, metadata={"run": run, "i": str(i)},
                                          **GREEDY).id
           for i, run in enumerate(["x", "y", "x", "x"])]
    listed = client.chat.completions.list()
    assert [c.id for c in listed.data] == ids and not listed.has_more
    assert [c.id for c in client.chat.completions.list(metadata={"run": "x"}).data] == [
        ids[0], ids[2], ids[3]]
    assert [c.id for c in client.chat.completions.list(metadata={"run": "x", "i": "2"}).data
            ] == [ids[2]]
    assert client.chat.completions.list(model="other").data == []
    first = client.chat.completions.list(limit=3, order="desc")
    assert [c.id for c in first.data] == ids[::-1][:3] and first.has_more
    # the client's auto-pagination follows `after` through every page
    assert [c.id for c in client.chat.completions.list(limit=1)] == ids
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.list(after="chatcmpl-unknown")
    assert caught.value.body["param"] == "after"  # type: ignore[index]


def test_update_replaces_metadata_and_delete_forgets(client: openai.OpenAI) -> None:
    created = client.chat.completions.create(store=True, metadata={"case": "update"}, **GREEDY)
    updated = client.chat.completions.update(created.id, metadata={"rating": "1",
                                                                   "comment": "good"})
    assert updated.metadata == {"rating": "1", "comment": "good"}
    retrieved = client.chat.completions.retrieve(created.id)
    assert retrieved.metadata == {"rating": "1", "comment": "good"}
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.update(created.id, metadata={"rating": "great"})
    assert caught.value.body["param"] == "metadata"  # type: ignore[index]
    deleted = client.chat.completions.delete(created.id)
    assert deleted.id == created.id and deleted.deleted
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.retrieve(created.id)
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.delete(created.id)


def test_another_tenants_id_is_not_found(served: PlatformServer, client: openai.OpenAI) -> None:
    created = client.chat.completions.create(store=True, **GREEDY)
    same_tenant = served.openai(served.create_key("a2", tenant_id="tenant-a"))
    assert same_tenant.chat.completions.retrieve(created.id).id == created.id
    other = served.openai(served.create_key("b", tenant_id="tenant-b"))
    with pytest.raises(openai.NotFoundError):
        other.chat.completions.retrieve(created.id)
    with pytest.raises(openai.NotFoundError):
        other.chat.completions.messages.list(created.id)
    with pytest.raises(openai.NotFoundError):
        other.chat.completions.update(created.id, metadata={"x": "y"})
    with pytest.raises(openai.NotFoundError):
        other.chat.completions.delete(created.id)
    assert created.id not in [c.id for c in other.chat.completions.list()]
    assert client.chat.completions.retrieve(created.id).id == created.id  # still there


def test_store_false_keeps_nothing(served: PlatformServer, client: openai.OpenAI) -> None:
    before = _stored_ids(served)
    plain = client.chat.completions.create(**GREEDY)
    unstored = client.chat.completions.create(store=False, metadata={"k": "v"}, **GREEDY)
    assert _stored_ids(served) == before
    for completion_id in (plain.id, unstored.id):
        with pytest.raises(openai.NotFoundError):
            client.chat.completions.retrieve(completion_id)


def test_a_streamed_completion_is_stored_assembled(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(store=True, stream=True, metadata={"case": "sse"},
                                            **GREEDY)
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    stored = client.chat.completions.retrieve(chunks[0].id)
    assert stored.choices[0].message.content == text and text
    assert stored.choices[0].message.role == "assistant"
    assert stored.choices[0].finish_reason == "length"
    assert stored.usage is not None and stored.usage.completion_tokens == 8
    assert stored.metadata == {"case": "sse"}


def test_a_key_that_captures_all_keeps_without_store(served: PlatformServer) -> None:
    key = served.create_key("all", capture="all")
    client = served.openai(key)
    created = client.chat.completions.create(**GREEDY)
    assert client.chat.completions.retrieve(created.id).id == created.id


def test_a_key_that_never_captures_refuses_store(served: PlatformServer) -> None:
    key = served.create_key("never", capture="never")
    client = served.openai(key)
    before = _stored_ids(served)
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(store=True, **GREEDY)
    assert caught.value.body["param"] == "store"  # type: ignore[index]
    client.chat.completions.create(store=False, **GREEDY)
    assert _stored_ids(served) == before


def test_bad_metadata_is_refused_before_anything_runs(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(store=True, metadata={f"k{i}": "v" for i in range(17)},
                                       **GREEDY)
    assert caught.value.body["param"] == "metadata"  # type: ignore[index]


def test_a_key_that_never_captures_keeps_no_response_either(served: PlatformServer) -> None:
    """/v1/responses stores by default (OpenAI's `store: true`); a "never" key keeps nothing
    there too, and asking for it explicitly is the same 400 as on chat."""
    client = served.openai(served.create_key("never-responses", capture="never"))
    response = client.responses.create(model="default", input="Say hi.", temperature=0,
                                       max_output_tokens=8)
    assert response.store is False
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(response.id)
    with pytest.raises(openai.BadRequestError) as caught:
        client.responses.create(model="default", input="Say hi.", store=True,
                                max_output_tokens=8)
    assert caught.value.body["param"] == "store"  # type: ignore[index]
