"""The tool-call format and parser (api/tool_calls.py) on hand-written texts: whole texts and the
same texts fed one character at a time give the same content and calls."""

from __future__ import annotations

import json

import pytest
import xgrammar as xgr

from flintlm.api.tool_calls import ToolCallParser, format_call, parse_all, structural_tag

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
    ("a call cut off by max_tokens keeps what it got",
     '<tool_call>\n{"name": "f", "arguments": {"x": [1, 2', "", [("f", '{"x": [1, 2')]),
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


def test_only_closed_arguments_count_as_complete() -> None:
    _, calls = parse_all(format_call("f", '{"a": 1}') + '<tool_call>\n{"name": "g", '
                         '"arguments": {"b": ')
    assert [c.is_complete for c in calls] == [True, False]
    assert json.loads(calls[0].arguments) == {"a": 1}


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
