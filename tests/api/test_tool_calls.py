"""The tool-call format and parser (api/tool_calls.py) on hand-written texts: whole texts and the
same texts fed one character at a time give the same content and calls."""

from __future__ import annotations

import json

import pytest
import xgrammar as xgr

from flintlm.api.tool_calls import (
    ToolCallParser,
    finish_reason,
    format_call,
    parse_all,
    structural_tag,
)

WEATHER = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}


def _fed_piecewise(text: str, size: int) -> tuple[str, list[tuple[str, str]]]:
    """Feed `text` in pieces of `size` characters; reassemble content and calls as a client
    reassembles OpenAI's stream deltas (by index; the first delta of a call names it)."""
    parser = ToolCallParser()
    content, calls = "", {}
    pieces = [parser.feed(text[i:i + size]) for i in range(0, len(text), size)]
    for parsed in [*pieces, parser.finish()]:
        content += parsed.content
        for delta in parsed.calls:
            call = calls.setdefault(delta.index, {"name": None, "arguments": ""})
            if delta.id is not None:
                assert delta.id.startswith("call_") and delta.name and call["name"] is None
                call["name"] = delta.name
            call["arguments"] += delta.arguments
    return content, [(c["name"], c["arguments"]) for _, c in sorted(calls.items())]


CASES = [
    ("plain text", "Paris is sunny.", "Paris is sunny.", []),
    ("one call", format_call("get_weather", '{"city": "Paris"}'), "",
     [("get_weather", '{"city": "Paris"}')]),
    ("braces and quotes inside strings",
     format_call("echo", r'{"text": "a } b \" { c", "list": [1, {"x": []}]}'), "",
     [("echo", r'{"text": "a } b \" { c", "list": [1, {"x": []}]}')]),
    ("text around two calls",
     "Let me check.\n" + format_call("a", "{}") + "\n" + format_call("b", '{"n": 1}') + "\nDone.\n",
     "Let me check.\n\n\nDone.", [("a", "{}"), ("b", '{"n": 1}')]),
    ("a block that is no call stays content", "<tool_call>\nnot json\n</tool_call> after",
     "<tool_call>\nnot json\n</tool_call> after", []),
    ("a held-back prefix that never becomes a call", "x < y <tool_ca", "x < y <tool_ca", []),
    ("a call cut off by max_tokens is dropped",
     '<tool_call>\n{"name": "f", "arguments": {"x": [1, 2', "", []),
    ("a call whose arguments closed counts before its end tag",
     '<tool_call>\n{"name": "f", "arguments": {"x": 1}', "", [("f", '{"x": 1}')]),
]


@pytest.mark.parametrize(("text", "content", "calls"), [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_content_and_calls_do_not_depend_on_how_the_text_is_cut(
        text: str, content: str, calls: list[tuple[str, str]]) -> None:
    whole_content, whole_calls = parse_all(text)
    assert whole_content == content
    assert [(c.name, c.arguments) for c in whole_calls] == calls
    for size in (1, 2, 5):
        assert _fed_piecewise(text, size) == (content, calls)


def test_only_complete_calls_are_returned_and_streamed_whole() -> None:
    text = format_call("f", '{"a": 1}') + '\n<tool_call>\n{"name": "g", "arguments": {"b": '
    _, calls = parse_all(text)
    assert [(c.name, json.loads(c.arguments)) for c in calls] == [("f", {"a": 1})]
    parser = ToolCallParser()
    deltas = [d for i in range(len(text)) for d in parser.feed(text[i]).calls]
    assert [(d.name, d.arguments) for d in deltas] == [("f", '{"a": 1}')]


@pytest.mark.parametrize(("reason", "has_calls", "expected"), [
    ("stop", True, "tool_calls"), ("length", True, "tool_calls"),
    ("stop", False, "stop"), ("length", False, "length")])
def test_complete_calls_always_finish_with_tool_calls(reason: str, has_calls: bool,
                                                      expected: str) -> None:
    assert finish_reason(reason, has_calls) == expected


@pytest.mark.parametrize("choice", ["auto", "required", "get_weather"])
@pytest.mark.parametrize("is_parallel", [True, False])
def test_after_a_call_only_the_end_or_another_call_may_follow(choice: str,
                                                              is_parallel: bool) -> None:
    tag = structural_tag([("get_weather", WEATHER)], choice, is_parallel)
    grammar = xgr.Grammar.from_structural_tag(json.dumps(tag))
    call = format_call("get_weather", '{"city": "Oslo"}')
    for after in (" More text.", "\n", "\nThe weather is", "<tool_call>"):
        assert not xgr.testing._is_grammar_accept_string(grammar, call + after), after
    assert xgr.testing._is_grammar_accept_string(grammar, call + "\n" + call) == (
        is_parallel and choice != "get_weather")
    assert xgr.testing._is_grammar_accept_string(grammar, "Let me check. " + call) == (
        choice == "auto")


@pytest.mark.parametrize("choice", ["required", "get_weather", "auto"])
def test_the_structural_tag_accepts_the_format_the_parser_reads(choice: str) -> None:
    tag = structural_tag([("get_weather", WEATHER), ("noop", None)], choice, is_parallel=False)
    grammar = xgr.Grammar.from_structural_tag(json.dumps(tag))
    call = format_call("get_weather", '{"city": "Paris"}')
    assert xgr.testing._is_grammar_accept_string(grammar, call)
    assert not xgr.testing._is_grammar_accept_string(
        grammar, format_call("get_weather", '{"town": "Paris"}'))
    assert xgr.testing._is_grammar_accept_string(grammar, "Just text.") == (choice == "auto")
    if choice != "get_weather":
        assert xgr.testing._is_grammar_accept_string(grammar, format_call("noop", "{}"))
    assert parse_all(call)[1][0].arguments == '{"city": "Paris"}'


def test_parallel_calls_only_when_allowed() -> None:
    two = format_call("noop", "{}") + "\n" + format_call("noop", "{}")
    for is_parallel in (True, False):
        tag = structural_tag([("noop", None)], "required", is_parallel)
        grammar = xgr.Grammar.from_structural_tag(json.dumps(tag))
        assert xgr.testing._is_grammar_accept_string(grammar, two) == is_parallel


def test_no_constraint_for_tool_choice_none() -> None:
    assert structural_tag([("noop", None)], "none", is_parallel=True) is None
