"""Structured output and tools at the HTTP layer, against `FakeEngine`: which SamplingParams each
way of asking for structure produces, the 400s that name the param, tools in the prompt, and
tool calls in responses and stream chunks. The real model is in test_structured_output.py."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest

from flintlm.api.tool_calls import format_call, structural_tag

from .conftest import FakeServer
from .test_protocol_fake_engine import _error, _sse

USER = [{"role": "user", "content": "x"}]
SCHEMA = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "description": "Weather now",
                                      "parameters": {"type": "object",
                                                     "properties": {"city": {"type": "string"}},
                                                     "required": ["city"]}}},
    {"type": "function", "function": {"name": "noop"}},
]


@pytest.fixture(autouse=True)
def long_context(fake_server: FakeServer) -> Iterator[None]:
    """Room for the tool definitions in the prompt (the fake engine counts bytes); admission
    checks the context length, so it gets the longer one too."""
    fake_server.engine.max_model_len = fake_server.admission.max_model_len = 8192
    yield
    fake_server.engine.max_model_len = fake_server.admission.max_model_len = (
        type(fake_server.engine).max_model_len)


def _submitted(fake_server: FakeServer, path: str, body: dict) -> object:
    with fake_server.client() as client:
        response = client.post(path, json=body)
    assert response.status_code == 200, response.text
    return fake_server.engine.submitted[-1]


@pytest.mark.parametrize(("extra", "field", "value"), [
    ({"response_format": {"type": "json_object"}}, "json_object", True),
    ({"response_format": {"type": "json_schema",
                          "json_schema": {"name": "a", "schema": SCHEMA, "strict": True}}},
     "json_schema", SCHEMA),
    ({"guided_json": SCHEMA}, "json_schema", SCHEMA),
    ({"guided_json": json.dumps(SCHEMA)}, "json_schema", SCHEMA),
    ({"guided_regex": "[a-z]+"}, "regex", "[a-z]+"),
    ({"guided_grammar": 'root ::= "a" | "b"'}, "grammar", 'root ::= "a" | "b"'),
    ({"guided_choice": ["yes", 'say "no"']}, "grammar", 'root ::= "yes" | "say \\"no\\""'),
    ({"structured_outputs": {"json": SCHEMA}}, "json_schema", SCHEMA),
    ({"structured_outputs": {"regex": "[0-9]"}}, "regex", "[0-9]"),
    ({"structured_outputs": {"grammar": 'root ::= "z"'}}, "grammar", 'root ::= "z"'),
    ({"structured_outputs": {"choice": ["a"]}}, "grammar", 'root ::= "a"'),
    ({"structured_outputs": {"json_object": True}}, "json_object", True),
])
@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions"])
def test_each_way_of_asking_for_structure_reaches_the_engine(
        fake_server: FakeServer, path: str, extra: dict, field: str, value: object) -> None:
    body = {"messages": USER} if path == "/v1/chat/completions" else {"prompt": "x"}
    params = _submitted(fake_server, path, {**body, **extra}).params  # type: ignore[attr-defined]
    assert getattr(params, field) == value
    assert params.has_structured_output


def test_text_response_format_and_no_tools_constrain_nothing(fake_server: FakeServer) -> None:
    body = {"messages": USER, "response_format": {"type": "text"}, "tools": TOOLS,
            "tool_choice": "none"}
    submitted = _submitted(fake_server, "/v1/chat/completions", body)
    assert not submitted.params.has_structured_output  # type: ignore[attr-defined]


BAD_SCHEMA = {"type": "object", "properties": {"a": {"type": "integr"}}}
UNENFORCED = {"type": "object", "properties": {"a": {"type": "integer", "not": {"const": 1}}}}


@pytest.mark.parametrize(("extra", "param", "words"), [
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "a",
                                                                 "schema": BAD_SCHEMA}}},
     "response_format.json_schema.schema", "integr"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "a",
                                                                 "schema": UNENFORCED}}},
     "response_format.json_schema.schema", "'not'"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "a", "schema": {
        "type": "array", "items": {"type": "integer"}, "uniqueItems": True}}}},
     "response_format.json_schema.schema", "uniqueItems"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "a", "schema": {
        "allOf": [{"type": "integer"}, {"minimum": 3}]}}}},
     "response_format.json_schema.schema", "allOf"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "a", "schema": {
        "$ref": "#/$defs/missing"}}}}, "response_format.json_schema.schema", "missing"),
    ({"response_format": {"type": "json_schema", "json_schema": {"schema": SCHEMA}}},
     "response_format.json_schema.name", "name"),
    ({"response_format": {"type": "json_schema"}}, "response_format.json_schema", "json_schema"),
    ({"response_format": {"type": "yaml"}}, "response_format.type", "json_schema"),
    ({"guided_json": "{not json"}, "guided_json", "JSON"),
    ({"guided_json": BAD_SCHEMA}, "guided_json", "integr"),
    ({"guided_regex": "(unclosed"}, "guided_regex", "regex"),
    ({"guided_grammar": "root ::= missing_rule"}, "guided_grammar", "missing_rule"),
    ({"guided_choice": []}, "guided_choice", "choice"),
    ({"guided_regex": "a", "guided_json": SCHEMA}, "guided_regex", "one"),
    ({"response_format": {"type": "json_object"}, "guided_regex": "a"}, "guided_regex", "one"),
    ({"structured_outputs": {"regex": "a", "json": SCHEMA}}, "structured_outputs", "exactly one"),
    ({"structured_outputs": {}}, "structured_outputs", "exactly one"),
    ({"structured_outputs": {"whitespace_pattern": " "}}, "structured_outputs.whitespace_pattern",
     "not permitted"),
    ({"structured_outputs": {"json": UNENFORCED}}, "structured_outputs.json", "'not'"),
    ({"structured_outputs": {"structural_tag": {"type": "structural_tag",
                                                "format": {"type": "bogus"}}}},
     "structured_outputs.structural_tag", "bogus"),
])
@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions"])
def test_invalid_or_unsupported_specs_are_400s_naming_the_param(
        fake_server: FakeServer, path: str, extra: dict, param: str, words: str) -> None:
    body = {"messages": USER} if path == "/v1/chat/completions" else {"prompt": "x"}
    before = len(fake_server.engine.submitted)
    with fake_server.client() as client:
        error = _error(client.post(path, json={**body, **extra}), 400, param)
    assert words.lower() in error["message"].lower()
    assert len(fake_server.engine.submitted) == before  # refused before the engine


def _tool(name: str, parameters: object = None) -> dict:
    function: dict = {"name": name}
    if parameters is not None:
        function["parameters"] = parameters
    return {"type": "function", "function": function}


@pytest.mark.parametrize(("extra", "param"), [
    ({"tool_choice": "required"}, "tool_choice"),
    ({"tool_choice": "auto"}, "tool_choice"),
    ({"parallel_tool_calls": False}, "parallel_tool_calls"),
    ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}},
     "tool_choice"),
    ({"tools": TOOLS, "tool_choice": "sometimes"}, "tool_choice"),
    ({"tools": [_tool("bad name")]}, "tools[0].function.name"),
    ({"tools": [_tool("f"), _tool("f")]}, "tools"),
    ({"tools": [_tool("f", BAD_SCHEMA)]}, "tools[0].function.parameters"),
    ({"tools": [_tool("f"), _tool("g", UNENFORCED)]}, "tools[1].function.parameters"),
    ({"tools": [{"type": "function"}]}, "tools[0].function"),
    ({"tools": [{"type": "retrieval", "function": {"name": "f"}}]}, "tools[0].type"),
    ({"tools": TOOLS, "response_format": {"type": "json_object"}}, "response_format"),
    ({"tools": TOOLS, "guided_regex": "a"}, "guided_regex"),
    ({"messages": [{"role": "function", "name": "f", "content": "1"}]}, "messages[0].role"),
    ({"messages": [{"role": "tool", "content": "1"}]}, "messages[0].tool_call_id"),
    ({"messages": [{"role": "user", "content": "x", "tool_calls": [
        {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}]},
     "messages[0].tool_calls"),
    ({"messages": [{"role": "assistant", "tool_calls": [
        {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{oops"}}]}]},
     "messages[0].tool_calls[0].function.arguments"),
])
def test_invalid_tool_requests_are_400s_naming_the_param(fake_server: FakeServer, extra: dict,
                                                         param: str) -> None:
    with fake_server.client() as client:
        _error(client.post("/v1/chat/completions", json={"messages": USER, **extra}), 400, param)


def _prompt(fake_server: FakeServer, body: dict) -> str:
    sub = _submitted(fake_server, "/v1/chat/completions", body)
    return bytes(sub.prompt_token_ids).decode()  # type: ignore[attr-defined]


def test_tools_go_into_the_system_prompt_unless_tool_choice_is_none(
        fake_server: FakeServer) -> None:
    prompt = _prompt(fake_server, {"messages": [{"role": "system", "content": "Be brief."},
                                                *USER], "tools": TOOLS})
    assert prompt.startswith("<system>Be brief.\n\n# Tools\n")
    assert json.dumps(TOOLS[0]) in prompt and '"name": "noop"' in prompt
    assert "<tool_call>" in prompt
    params = fake_server.engine.submitted[-1].params
    tools = [(t["function"]["name"], t["function"].get("parameters")) for t in TOOLS]
    assert params.structural_tag == structural_tag(tools, "auto", is_parallel=True)  # the default
    prompt = _prompt(fake_server, {"messages": USER, "tools": TOOLS, "tool_choice": "none"})
    assert "get_weather" not in prompt


def test_tool_history_renders_calls_and_results(fake_server: FakeServer) -> None:
    arguments = '{"city": "Paris"}'
    messages = [
        *USER,
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function",
             "function": {"name": "get_weather", "arguments": arguments}},
            {"id": "call_2", "type": "function", "function": {"name": "noop", "arguments": "{}"}},
        ]},
        {"role": "tool", "tool_call_id": "call_1", "content": "21 C"},
        {"role": "tool", "tool_call_id": "call_2", "content": "done"},
    ]
    prompt = _prompt(fake_server, {"messages": messages, "tools": TOOLS})
    calls = format_call("get_weather", arguments) + "\n" + format_call("noop", "{}")
    assert f"<assistant>{calls}\n" in prompt
    assert ("<user><tool_response>\n21 C\n</tool_response>\n"
            "<tool_response>\ndone\n</tool_response>\n<assistant>") in prompt
    with fake_server.client() as client:
        tokenized = client.post("/tokenize", json={"messages": messages, "tools": TOOLS}).json()
    assert bytes(tokenized["tokens"]).decode() == prompt


@pytest.fixture
def replying_with_calls(fake_server: FakeServer) -> Iterator[str]:
    """The fake engine answers with text, two calls and text (one byte per token)."""
    reply = ("Checking.\n" + format_call("get_weather", '{"city": "Paris {1}"}') + "\n"
             + format_call("noop", "{}"))
    fake_server.engine.reply = reply
    yield reply
    fake_server.engine.reply = type(fake_server.engine).reply


def test_calls_come_back_as_tool_calls_streamed_or_not(fake_server: FakeServer,
                                                       replying_with_calls: str) -> None:
    body = {"messages": USER, "tools": TOOLS, "tool_choice": "required"}
    with fake_server.client() as client:
        full = client.post("/v1/chat/completions", json=body).json()
        stream = client.post("/v1/chat/completions", json={**body, "stream": True})
    choice = full["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] == "Checking."
    calls = choice["message"]["tool_calls"]
    assert [(c["type"], c["function"]["name"], c["function"]["arguments"]) for c in calls] == [
        ("function", "get_weather", '{"city": "Paris {1}"}'), ("function", "noop", "{}")]
    assert all(c["id"].startswith("call_") for c in calls) and calls[0]["id"] != calls[1]["id"]

    chunks = [e for e in _sse(stream) if isinstance(e, dict)]
    content, streamed = "", {}
    for chunk in chunks[1:]:
        delta = chunk["choices"][0]["delta"]
        content += delta.get("content", "")
        for call in delta.get("tool_calls", []):
            if "id" in call:  # the first delta of a call: id, type and name
                assert call["index"] not in streamed and call["type"] == "function"
                streamed[call["index"]] = {"name": call["function"]["name"], "arguments": ""}
            else:
                assert set(call) == {"index", "function"} and set(call["function"]) == {
                    "arguments"}
            streamed[call["index"]]["arguments"] += call["function"]["arguments"]
    assert content == choice["message"]["content"]
    assert [(s["name"], s["arguments"]) for _, s in sorted(streamed.items())] == [
        (c["function"]["name"], c["function"]["arguments"]) for c in calls]
    num_argument_deltas = sum(1 for c in chunks for d in c["choices"][0]["delta"].get(
        "tool_calls", []) if "id" not in d)
    assert num_argument_deltas == 0  # each call arrives whole, once its arguments are complete
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"


def test_without_tools_a_call_shaped_reply_is_plain_content(fake_server: FakeServer,
                                                            replying_with_calls: str) -> None:
    with fake_server.client() as client:
        full = client.post("/v1/chat/completions", json={"messages": USER}).json()
    assert full["choices"][0]["message"]["content"] == replying_with_calls
    assert full["choices"][0]["message"]["tool_calls"] is None
    assert full["choices"][0]["finish_reason"] == "stop"


def test_tools_on_tokenize_need_messages(fake_server: FakeServer) -> None:
    with fake_server.client() as client:
        response = client.post("/tokenize", json={"prompt": "x", "tools": TOOLS})
    assert isinstance(response, httpx.Response)
    _error(response, 400, "tools")
