"""The console's APIs through a real server, on SQLite and PostgreSQL: the request log (a request
made with the openai SDK is listed under the id the SDK got, a key sees only its own, the admin
everyone's, filters and pages hold), the live snapshot, and the data export of a rated stored
completion, each with who may read what."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from tests.platform.served import CHAT, NUM_COMPLETION, IssuedKey, PlatformServer, platform_servers


@pytest.fixture(scope="module")
def served(store_url: str, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[PlatformServer]:
    with platform_servers(tmp_path_factory.mktemp("served"), store_url) as [server]:
        yield server


@pytest.fixture(scope="module")
def made(served: PlatformServer) -> dict[str, list[str]]:
    """Two keys: `alice` made three requests, `bob` one; their ids as the SDK saw them."""
    alice, bob = served.create_key("alice"), served.create_key("bob")
    served.issued[:] = [alice, bob]
    ids: dict[str, list[str]] = {"alice": [], "bob": []}
    for name, key, count in (("alice", alice, 3), ("bob", bob, 1)):
        for _ in range(count):
            ids[name].append(served.openai(key).chat.completions.create(**CHAT).id)
    return ids


def keys(served: PlatformServer) -> tuple[IssuedKey, IssuedKey]:
    alice, bob = served.issued[:2]
    return alice, bob


def test_a_key_lists_its_own_requests_newest_first(served: PlatformServer,
                                                   made: dict[str, list[str]]) -> None:
    alice, _ = keys(served)
    with served.http(alice) as http:
        page = http.get("/v1/usage/requests").json()
    assert [row["id"] for row in page["data"]] == made["alice"][::-1]
    newest = page["data"][0]
    assert newest["key_id"] == alice.id and newest["status"] == "finished"
    assert newest["completion_tokens"] == NUM_COMPLETION
    assert newest["total_tokens"] == newest["prompt_tokens"] + NUM_COMPLETION
    assert newest["created_at"].endswith("Z") and newest["total_time_s"] > 0
    assert page["has_more"] is False and page["last_id"] == made["alice"][0]


def test_the_admin_lists_everyone_and_filters(served: PlatformServer,
                                              made: dict[str, list[str]]) -> None:
    _, bob = keys(served)
    with served.admin() as admin:
        everyone = admin.get("/admin/requests").json()["data"]
        only_bob = admin.get("/admin/requests", params={"key_id": bob.id}).json()["data"]
        rejected = admin.get("/admin/requests", params={"status": "rejected"}).json()["data"]
        future = admin.get("/admin/requests", params={"start": "2999-01-01"}).json()["data"]
        bad = admin.get("/admin/requests", params={"status": "done"})
    assert {row["id"] for row in everyone} == set(made["alice"] + made["bob"])
    assert [row["id"] for row in only_bob] == made["bob"]
    assert rejected == [] and future == []
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "status"


def test_pages_follow_the_cursor_and_a_key_cannot_page_from_anothers_row(
        served: PlatformServer, made: dict[str, list[str]]) -> None:
    alice, bob = keys(served)
    with served.http(alice) as http:
        first = http.get("/v1/usage/requests", params={"limit": 2}).json()
        second = http.get("/v1/usage/requests",
                          params={"limit": 2, "before": first["last_id"]}).json()
        foreign = http.get("/v1/usage/requests", params={"before": made["bob"][0]})
    assert first["has_more"] is True and second["has_more"] is False
    assert [r["id"] for r in first["data"] + second["data"]] == made["alice"][::-1]
    assert foreign.status_code == 400 and foreign.json()["error"]["param"] == "before"
    with served.http(bob) as http:
        assert http.get("/admin/requests").status_code == 403


def test_the_live_snapshot_is_the_operators(served: PlatformServer,
                                            made: dict[str, list[str]]) -> None:
    alice, _ = keys(served)
    with served.admin() as admin:
        before = admin.get("/console/api/live").json()  # the window starts here
        served.openai(alice).chat.completions.create(**CHAT)
        after = admin.get("/console/api/live").json()
    assert before["object"] == "console.live" and before["ttft_s"]["count"] == 0
    assert after["kv_blocks_total"] > 0 and 0 <= after["kv_cache_usage"] <= 1
    # NOTE: one request in the window, unless this machine took over a minute to answer it.
    assert after["ttft_s"]["count"] == 1 and after["e2e_s"]["count"] == 1
    assert after["ttft_s"]["p50"] > 0
    with served.http(alice) as http:
        assert http.get("/console/api/live").status_code == 403
    with served.admin("wrong") as stranger:
        assert stranger.get("/console/api/live").status_code == 401


def test_a_rated_stored_completion_exports_for_its_tenant_only(served: PlatformServer,
                                                               made: dict[str, list[str]]) -> None:
    alice, bob = keys(served)
    assert alice.tenant_id != bob.tenant_id
    # A cut-off answer is never exported: stop greedy decoding at a text it is known to write.
    text = served.openai(alice).chat.completions.create(**CHAT).choices[0].message.content
    assert text and text.strip()
    answer = served.openai(alice).chat.completions.create(**CHAT, store=True,
                                                          stop=[text.strip()[-1]])
    assert answer.choices[0].finish_reason == "stop"
    with served.http(alice) as http:
        listed = http.get("/v1/chat/completions", params={"order": "desc"}).json()["data"]
        assert [item["id"] for item in listed] == [answer.id]
        unrated = http.get("/console/api/data/export", params={"min_rating": 1}).text
        rated = http.post(f"/v1/chat/completions/{answer.id}",
                          json={"metadata": {"rating": "1"}})
        exported = http.get("/console/api/data/export", params={"min_rating": 1})
        bad = http.get("/console/api/data/export", params={"format": "csv"})
    assert unrated == "" and rated.status_code == 200
    assert exported.headers["content-type"].startswith("application/jsonl")
    lines = [json.loads(line) for line in exported.text.splitlines()]
    assert len(lines) == 1
    assert lines[0]["messages"][-1] == {"role": "assistant",
                                        "content": answer.choices[0].message.content}
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "format"
    with served.http(bob) as http:
        assert http.get("/console/api/data/export").text == ""
