"""`flintlm data rate | export | delete` run as subprocesses on a SQLite store (the one `serve`
would use with the same --database-url), seeded through the completion store."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import jsonschema
import pytest
import sqlalchemy as sa

from flintlm.platform.completion_store import CompletionFilter, CompletionStore
from flintlm.platform.db import Database
from tests.conftest import HANG_TIMEOUT_S
from tests.platform.export_data import CHAT_SCHEMA, PREFERENCE_SCHEMA, answer, save

USER = {"role": "user", "content": "Weather in Oslo?"}
DAY_S = 86_400.0


@pytest.fixture
def store_url(tmp_path: Path) -> str:
    return sa.URL.create("sqlite+pysqlite", database=str(tmp_path / "flintlm.db")
                         ).render_as_string()


@pytest.fixture
def store(store_url: str) -> Iterator[CompletionStore]:
    db = Database(store_url)
    db.migrate()
    yield CompletionStore(db, ttl_s=30 * DAY_S)  # the real clock: the CLI's own
    db.close()


def _data(store_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLINTLM_")}
    return subprocess.run([sys.executable, "-m", "flintlm", "data", *args,
                           "--database-url", store_url], check=False, capture_output=True,
                          text=True, env=env, timeout=HANG_TIMEOUT_S)


def test_rate_sets_feedback_and_export_keeps_the_well_rated(
        store: CompletionStore, store_url: str, tmp_path: Path) -> None:
    save(store, "chatcmpl-good", [USER], [answer("-3 C and snow.")], run="a")
    save(store, "chatcmpl-bad", [USER], [answer("I like turtles.")])
    rated = _data(store_url, "rate", "chatcmpl-good", "--rating", "5", "--comment", "exact")
    assert rated.returncode == 0, rated.stderr
    assert _data(store_url, "rate", "chatcmpl-bad", "--rating", "1").returncode == 0
    good = store.get(None, "chatcmpl-good")
    assert good is not None and good.metadata == {"run": "a", "rating": "5", "comment": "exact"}
    unknown = _data(store_url, "rate", "chatcmpl-nope", "--rating", "5")
    assert unknown.returncode == 1 and "no stored completion chatcmpl-nope" in unknown.stderr

    out = tmp_path / "sft.jsonl"
    exported = _data(store_url, "export", "--out", str(out), "--min-rating", "4")
    assert exported.returncode == 0, exported.stderr
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    for line in lines:
        jsonschema.validate(line, CHAT_SCHEMA)
    assert [line["messages"][-1]["content"] for line in lines] == ["-3 C and snow."]

    dpo = tmp_path / "dpo.jsonl"
    paired = _data(store_url, "export", "--out", str(dpo), "--format", "preference")
    assert paired.returncode == 0, paired.stderr
    [pair] = [json.loads(line) for line in dpo.read_text().splitlines()]
    jsonschema.validate(pair, PREFERENCE_SCHEMA)
    assert pair["preferred_output"][0]["content"] == "-3 C and snow."
    assert pair["non_preferred_output"][0]["content"] == "I like turtles."


def test_export_filters_by_key_model_and_since(store: CompletionStore, store_url: str,
                                              tmp_path: Path) -> None:
    save(store, "chatcmpl-1", [USER], [answer("one")], key="key-a")
    save(store, "chatcmpl-2", [USER], [answer("two")], key="key-b", model="other")
    out = tmp_path / "out.jsonl"

    def exported(*flags: str) -> list[str]:
        result = _data(store_url, "export", "--out", str(out), *flags)
        assert result.returncode == 0, result.stderr
        return [json.loads(line)["messages"][-1]["content"]
                for line in out.read_text().splitlines()]

    assert exported() == ["one", "two"]
    assert exported("--key", "key-b") == ["two"]
    assert exported("--model", "default") == ["one"]
    assert exported("--since", str(time.time() + 3600)) == []
    assert exported("--since", "2000-01-01") == ["one", "two"]
    bad = _data(store_url, "export", "--out", str(out), "--format", "csv")
    assert bad.returncode == 2 and "openai-chat, preference" in bad.stderr
    bad_since = _data(store_url, "export", "--out", str(out), "--since", "yesterday")
    assert bad_since.returncode == 2 and "cannot read the time" in bad_since.stderr


def test_export_hides_what_is_past_the_retention_and_purge_deletes_it(store: CompletionStore, store_url: str,
                                      tmp_path: Path) -> None:
    old = CompletionStore(store.db, ttl_s=30 * DAY_S, clock=lambda: time.time() - 10 * DAY_S)
    save(old, "chatcmpl-old", [USER], [answer("old")])
    save(store, "chatcmpl-new", [USER], [answer("new")])
    out = tmp_path / "out.jsonl"
    result = _data(store_url, "export", "--out", str(out), "--capture-ttl-days", "5")
    assert result.returncode == 0, result.stderr
    assert [json.loads(line)["messages"][-1]["content"]
            for line in out.read_text().splitlines()] == ["new"]
    everything = CompletionStore(store.db, ttl_s=100 * DAY_S)
    assert len(list(everything.select(CompletionFilter()))) == 2  # hidden, not deleted
    purged = _data(store_url, "purge", "--capture-ttl-days", "5")
    assert purged.returncode == 0, purged.stderr
    assert "deleted 1 stored completions" in purged.stdout
    assert [c.id for c in everything.select(CompletionFilter())] == ["chatcmpl-new"]


def test_delete_erases_one_keys_data(store: CompletionStore, store_url: str) -> None:
    save(store, "chatcmpl-1", [USER], [answer("one")], key="key-a")
    save(store, "chatcmpl-2", [USER], [answer("two")], key="key-a")
    save(store, "chatcmpl-3", [USER], [answer("three")], key="key-b")
    result = _data(store_url, "delete", "--key", "key-a")
    assert result.returncode == 0, result.stderr
    assert "deleted 2 stored completions of key-a" in result.stdout
    assert [c.id for c in store.select(CompletionFilter())] == ["chatcmpl-3"]


def test_keys_create_sets_the_capture_mode(store: CompletionStore, store_url: str) -> None:
    from flintlm.platform.capture import CaptureMode
    from flintlm.platform.keys import KeyStore

    env = {k: v for k, v in os.environ.items() if not k.startswith("FLINTLM_")}

    def create(*flags: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "flintlm", "keys", "create", *flags,
                               "--database-url", store_url], check=False, capture_output=True,
                              text=True, env=env, timeout=HANG_TIMEOUT_S)

    assert create("--name", "all", "--capture", "all").returncode == 0
    assert create("--name", "default").returncode == 0
    refused = create("--name", "bad", "--capture", "sometimes")
    assert refused.returncode == 2 and "request, all, never" in refused.stderr
    modes = {key.name: key.capture for key in KeyStore(store.db).list()}
    assert modes == {"all": CaptureMode.ALL, "default": None}
