"""`export_jsonl` on SQLite and PostgreSQL: every line valid against OpenAI's fine-tuning
formats (JSON schemas in tests/platform/export_data.py), tool calls kept, cut-off answers left
out, ratings and filters honoured, preference pairs the best answer against the worst."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema

from flintlm.platform.completion_store import CompletionFilter, CompletionStore
from flintlm.platform.db import Database
from flintlm.platform.export import ExportFormat, ExportOptions, export_jsonl
from tests.platform.conftest import FakeClock
from tests.platform.export_data import (
    CHAT_SCHEMA,
    PREFERENCE_SCHEMA,
    WEATHER_CALL,
    WEATHER_TOOL,
    answer,
    save,
)

USER = {"role": "user", "content": "Weather in Oslo?"}
DAY_S = 86_400.0


def _lines(path: Path, schema: dict[str, Any]) -> list[dict[str, Any]]:
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    for line in lines:
        jsonschema.validate(line, schema)
    return lines


def _export(store: CompletionStore, path: Path, **options: Any) -> list[dict[str, Any]]:
    export_options = ExportOptions(**options)
    num_lines = export_jsonl(store, path, export_options)
    schema = (PREFERENCE_SCHEMA if export_options.format is ExportFormat.PREFERENCE
              else CHAT_SCHEMA)
    lines = _lines(path, schema)
    assert len(lines) == num_lines
    return lines


def test_chat_lines_keep_the_conversation_and_tool_calls(db: Database, clock: FakeClock,
                                                         tmp_path: Path) -> None:
    store = CompletionStore(db, ttl_s=DAY_S, clock=clock)
    history = [{"role": "developer", "content": "Use tools."}, USER,
               {"role": "assistant", "content": None, "tool_calls": [WEATHER_CALL]},
               {"role": "tool", "tool_call_id": "call_1", "content": "-3 C, snow"}]
    save(store, "chatcmpl-tool", [USER], [answer(None, "tool_calls", [WEATHER_CALL])],
         tools=[WEATHER_TOOL])
    clock.advance(1)
    save(store, "chatcmpl-final", history, [answer("It is -3 C and snowing.")],
         tools=[WEATHER_TOOL])
    clock.advance(1)
    save(store, "chatcmpl-cut", [USER], [answer("It is", "length")])
    clock.advance(1)
    save(store, "chatcmpl-parts", [{"role": "user", "content": [
        {"type": "text", "text": "Hello "}, {"type": "text", "text": "there"}]}],
         [answer("Hi!")])
    lines = _export(store, tmp_path / "chat.jsonl")
    assert len(lines) == 3  # the cut-off answer is left out
    tool_line, final_line, parts_line = lines
    assert tool_line == {"messages": [USER, {"role": "assistant", "tool_calls": [WEATHER_CALL]}],
                         "tools": [WEATHER_TOOL]}
    assert [m["role"] for m in final_line["messages"]] == [
        "system", "user", "assistant", "tool", "assistant"]
    assert final_line["messages"][3] == {"role": "tool", "tool_call_id": "call_1",
                                         "content": "-3 C, snow"}
    assert final_line["messages"][-1] == {"role": "assistant",
                                          "content": "It is -3 C and snowing."}
    assert parts_line["messages"][0] == {"role": "user", "content": "Hello there"}


def test_ratings_and_filters_choose_what_is_exported(db: Database, clock: FakeClock,
                                                    tmp_path: Path) -> None:
    store = CompletionStore(db, ttl_s=10 * DAY_S, clock=clock)
    save(store, "chatcmpl-1", [USER], [answer("one")], rating="5")
    save(store, "chatcmpl-2", [USER], [answer("two")], rating="2")
    save(store, "chatcmpl-3", [USER], [answer("three")])
    clock.advance(DAY_S)
    save(store, "chatcmpl-4", [USER], [answer("four")], key="key-b", model="other",
         rating="4")
    out = tmp_path / "out.jsonl"
    answers = lambda **kw: [
        line["messages"][-1]["content"] for line in _export(store, out, **kw)]
    assert answers() == ["one", "two", "three", "four"]
    assert answers(min_rating=4) == ["one", "four"]
    assert answers(selection=CompletionFilter(key_id="key-b")) == ["four"]
    assert answers(selection=CompletionFilter(model="default")) == ["one", "two", "three"]
    fourth = store.get("tenant-key-b", "chatcmpl-4")
    assert fourth is not None
    assert answers(selection=CompletionFilter(since=fourth.created_at)) == ["four"]


def test_preference_pairs_the_best_rated_answer_against_the_worst(
        db: Database, clock: FakeClock, tmp_path: Path) -> None:
    store = CompletionStore(db, ttl_s=DAY_S, clock=clock)
    other = {"role": "user", "content": "Capital of France?"}
    save(store, "chatcmpl-a", [USER], [answer("It snows.")], rating="3")
    save(store, "chatcmpl-b", [USER], [answer("-3 C and snow.")], rating="5")
    save(store, "chatcmpl-c", [USER], [answer("I like turtles.")], rating="1")
    save(store, "chatcmpl-d", [USER], [answer("Unrated.")])
    save(store, "chatcmpl-e", [other], [answer("Paris.")], rating="4")  # one rating: no pair
    save(store, "chatcmpl-f", [{"role": "user", "content": "Hi"}], [answer("Hi!")], rating="2")
    save(store, "chatcmpl-g", [{"role": "user", "content": "Hi"}], [answer("Hey")], rating="2")
    lines = _export(store, tmp_path / "dpo.jsonl", format=ExportFormat.PREFERENCE)
    assert lines == [{"input": {"messages": [USER]},
                      "preferred_output": [{"role": "assistant", "content": "-3 C and snow."}],
                      "non_preferred_output": [{"role": "assistant",
                                                "content": "I like turtles."}]}]
    assert _export(store, tmp_path / "dpo.jsonl", format=ExportFormat.PREFERENCE,
                   min_rating=6) == []


def test_the_redactor_sees_what_is_exported(db: Database, clock: FakeClock,
                                            tmp_path: Path) -> None:
    store = CompletionStore(db, ttl_s=DAY_S, clock=clock)
    save(store, "chatcmpl-1", [{"role": "user", "content": "mail me at a@b.c"}],
         [answer("ok")])

    def mask(key_id: str, document: dict[str, Any]) -> dict[str, Any]:
        text = json.dumps(document).replace("a@b.c", "[EMAIL]")
        return json.loads(text)  # type: ignore[no-any-return]

    path = tmp_path / "masked.jsonl"
    export_jsonl(store, path, ExportOptions(), redact=mask)
    [line] = _lines(path, CHAT_SCHEMA)
    assert line["messages"][0]["content"] == "mail me at [EMAIL]"
