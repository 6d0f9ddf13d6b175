"""Structured output and tool calls on the real server (embedded model, float32, greedy) through
the official `openai` client: every output must be complete (finish_reason "stop" or
"tool_calls", never a truncated text) and must parse and validate."""

from __future__ import annotations

import json
import re
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import jsonschema
import openai
import pydantic
import pytest

from tests.conftest import LiveServer

FORMATS = jsonschema.Draft202012Validator.FORMAT_CHECKER


def _int(low: int, high: int) -> dict[str, Any]:
    return {"type": "integer", "minimum": low, "maximum": high}


def _str(max_length: int) -> dict[str, Any]:
    return {"type": "string", "maxLength": max_length}


def _obj(required: list[str] | None = None, **properties: Any) -> dict[str, Any]:
    return {"type": "object", "properties": properties,
            "required": list(properties) if required is None else required}


# Small schemas with bounded strings and arrays, so every answer ends well within MAX_TOKENS.
SCHEMAS: list[tuple[str, dict[str, Any]]] = [
    ("A person.", _obj(name=_str(16), age=_int(0, 120))),
    ("A person and their address.",
     _obj(name=_str(16), address=_obj(city=_str(20),
                                      zip={"type": "string", "pattern": "^[0-9]{5}$"}))),
    ("Some test scores.", {"type": "array", "items": _int(0, 100), "minItems": 1, "maxItems": 4}),
    ("A colour.", _obj(color={"enum": ["red", "green", "blue"]})),
    ("Today's temperature.", _obj(temperature={"type": "number", "minimum": -50, "maximum": 50})),
    ("A film.", _obj(["title"], title=_str(24), year=_int(1900, 2030),
                     rating={"type": "number", "minimum": 0, "maximum": 10})),
    ("A value.", _obj(value={"anyOf": [_int(0, 9), _str(8)]})),
    ("A task.", _obj(done={"type": "boolean"}, note={"type": ["string", "null"], "maxLength": 10})),
    ("A shopping list.", _obj(items={"type": "array", "minItems": 1, "maxItems": 3,
                                     "items": _obj(name=_str(10), qty=_int(1, 9))})),
    ("A version record.", _obj(version={"const": "1.0"}, ok={"type": "boolean"})),
    ("A date.", _obj(date={"type": "string", "pattern": "^[0-9]{4}-[0-9]{2}-[0-9]{2}$"})),
    ("A line segment.", {"$defs": {"point": _obj(x=_int(-10, 10), y=_int(-10, 10))},
                         **_obj(start={"$ref": "#/$defs/point"}, end={"$ref": "#/$defs/point"})}),
    ("A probability.", _obj(p={"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1})),
    ("A contact.", _obj(email={"type": "string", "format": "email"})),
    ("A nested setting.", _obj(a=_obj(b=_obj(c=_int(0, 5))))),
    ("Tags for a blog post.", _obj(tags={"type": "array", "minItems": 2, "maxItems": 3,
                                         "items": {"enum": ["news", "tech", "life", "food"]}})),
    ("A user account.", {**_obj(id=_int(1, 1000), active={"type": "boolean"},
                                tags={"type": "array", "items": _str(8), "maxItems": 2}),
                         "additionalProperties": False}),
    ("A shape.", {"anyOf": [
        _obj(kind={"const": "circle"}, radius={"type": "number", "minimum": 0, "maximum": 10}),
        _obj(kind={"const": "square"}, side=_int(1, 10))]}),
    ("A count of apples.", _obj(count={"type": "integer", "multipleOf": 5, "minimum": 0,
                                       "maximum": 100})),
    ("A product code.", _obj(code={"type": "string", "minLength": 3, "maxLength": 6})),
]
MAX_TOKENS = 100

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The current weather in a city",
    "parameters": _obj(city=_str(30), unit={"enum": ["celsius", "fahrenheit"]})}}
ADD = {"type": "function", "function": {
    "name": "add", "description": "Add two integers",
    "parameters": _obj(a=_int(-1000, 1000), b=_int(-1000, 1000))}}
SEARCH = {"type": "function", "function": {
    "name": "search", "description": "Search the news",
    "parameters": _obj(["query"], query=_str(40), limit=_int(1, 10))}}
ALARM = {"type": "function", "function": {
    "name": "set_alarm", "description": "Set an alarm",
    "parameters": _obj(["time"], time={"type": "string", "pattern": "^[0-2][0-9]:[0-5][0-9]$"},
                       label=_str(20))}}
TOOLS = [WEATHER, ADD, SEARCH, ALARM]
PARAMETERS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}


def _chat(server: LiveServer, prompt: str, **kwargs: Any) -> Any:
    return server.openai().chat.completions.create(
        model="default", messages=[{"role": "user", "content": prompt}], temperature=0,
        max_tokens=kwargs.pop("max_tokens", MAX_TOKENS), **kwargs)


def _stop_text(choice: Any) -> str:
    """The text of a choice that ended on its own; a truncated one fails the test."""
    assert choice.finish_reason == "stop", (choice.finish_reason, choice.message.content)
    return choice.message.content


def test_20_json_schemas_in_one_batch_all_validate(server: LiveServer) -> None:
    def ask(item: tuple[int, tuple[str, dict[str, Any]]]) -> tuple[dict[str, Any], Any]:
        i, (prompt, schema) = item
        response_format = {"type": "json_schema",
                           "json_schema": {"name": f"schema_{i}", "schema": schema,
                                           "strict": True}}
        response = _chat(server, f"{prompt} Answer in JSON.", response_format=response_format)
        return schema, response.choices[0]

    with ThreadPoolExecutor(len(SCHEMAS)) as pool:  # concurrent: they share engine batches
        results = list(pool.map(ask, enumerate(SCHEMAS)))
    for schema, choice in results:
        jsonschema.validate(json.loads(_stop_text(choice)), schema, format_checker=FORMATS)


class City(pydantic.BaseModel):
    name: str = pydantic.Field(max_length=30)
    population: int


def test_the_sdks_parse_helper_gets_its_pydantic_model(server: LiveServer) -> None:
    completion = server.openai().chat.completions.parse(
        model="default", messages=[{"role": "user", "content": "Name a big city and its "
                                                                "population."}],
        response_format=City, temperature=0, max_tokens=MAX_TOKENS)
    assert completion.choices[0].finish_reason == "stop"
    assert isinstance(completion.choices[0].message.parsed, City)


def test_guided_json_and_structured_outputs_on_both_endpoints(server: LiveServer) -> None:
    client = server.openai()
    prompt, schema = SCHEMAS[1]
    completion = client.completions.create(
        model="default", prompt=f"{prompt} As JSON:", temperature=0, max_tokens=MAX_TOKENS,
        extra_body={"guided_json": schema})
    assert completion.choices[0].finish_reason == "stop"
    jsonschema.validate(json.loads(completion.choices[0].text), schema)
    chat = _chat(server, prompt, extra_body={"structured_outputs": {"json": json.dumps(schema)}})
    jsonschema.validate(json.loads(_stop_text(chat.choices[0])), schema)


def test_each_of_n_sampled_choices_validates(server: LiveServer) -> None:
    prompt, schema = SCHEMAS[0]
    response = server.openai().chat.completions.create(
        model="default", messages=[{"role": "user", "content": prompt}], n=3, temperature=1.0,
        seed=3, max_tokens=MAX_TOKENS, extra_body={"guided_json": schema})
    for choice in response.choices:
        jsonschema.validate(json.loads(_stop_text(choice)), schema)


def test_json_object_output_parses(server: LiveServer) -> None:
    for prompt in ('Return {"ok": true} as JSON.', "A person as JSON with name and age."):
        choice = _chat(server, prompt, response_format={"type": "json_object"}).choices[0]
        assert isinstance(json.loads(_stop_text(choice)), dict)


REGEXES = [r"[0-9]{3}-[0-9]{3}-[0-9]{4}", r"(yes|no), because [a-z ]{5,20}\.",
           r"[A-Z][a-z]{2,8} (is|was) [a-z]{3,10}"]


@pytest.mark.parametrize("regex", REGEXES)
def test_regex_outputs_match(server: LiveServer, regex: str) -> None:
    chat = _chat(server, "Answer briefly: who are you?", extra_body={"guided_regex": regex})
    assert re.fullmatch(regex, _stop_text(chat.choices[0]))
    completion = server.openai().completions.create(
        model="default", prompt="My answer:", temperature=0, max_tokens=MAX_TOKENS,
        extra_body={"structured_outputs": {"regex": regex}})
    assert completion.choices[0].finish_reason == "stop"
    assert re.fullmatch(regex, completion.choices[0].text)


# EBNF grammars with a Python regex for the same language.
GRAMMARS = [
    ('root ::= greeting " " name "!"\ngreeting ::= "Hello" | "Hi"\nname ::= [A-Z] [a-z]{1,8}',
     r"(Hello|Hi) [A-Z][a-z]{1,8}!"),
    ('root ::= number (op number){1,3} " = ?"\nnumber ::= [1-9] [0-9]?\nop ::= " + " | " * "',
     r"[1-9][0-9]?(( \+ | \* )[1-9][0-9]?){1,3} = \?"),
]


@pytest.mark.parametrize(("grammar", "regex"), GRAMMARS)
def test_grammar_outputs_match(server: LiveServer, grammar: str, regex: str) -> None:
    chat = _chat(server, "Say something.", extra_body={"guided_grammar": grammar})
    assert re.fullmatch(regex, _stop_text(chat.choices[0]))


def test_choice_output_is_one_of_the_choices(server: LiveServer) -> None:
    choices = ["sunny", "rainy", "it is snowing"]
    chat = _chat(server, "What is the weather like?", extra_body={"guided_choice": choices})
    assert _stop_text(chat.choices[0]) in choices


def _valid_calls(choice: Any) -> list[tuple[str, dict[str, Any]]]:
    """A choice's calls, each checked against its tool's schema."""
    assert choice.finish_reason == "tool_calls", (choice.finish_reason, choice.message)
    calls = choice.message.tool_calls
    assert calls
    result = []
    for call in calls:
        assert call.type == "function" and call.id.startswith("call_")
        arguments = json.loads(call.function.arguments)
        jsonschema.validate(arguments, PARAMETERS[call.function.name])
        result.append((call.function.name, arguments))
    return result


CALL_PROMPTS = ["What's the weather in Paris?", "Add 17 and 25.", "Find news about rockets.",
                "Wake me up at 7:30 tomorrow.", "Hello!"]


def test_required_tool_choice_always_yields_valid_calls(server: LiveServer) -> None:
    def ask(item: tuple[str, bool]) -> Any:
        prompt, is_parallel = item
        return _chat(server, prompt, tools=TOOLS, tool_choice="required",
                     parallel_tool_calls=is_parallel, max_tokens=150).choices[0]

    cases = [(prompt, i % 2 == 1) for i, prompt in enumerate(CALL_PROMPTS)]
    with ThreadPoolExecutor(len(cases)) as pool:
        choices = list(pool.map(ask, cases))
    for (_, is_parallel), choice in zip(cases, choices, strict=True):
        calls = _valid_calls(choice)
        assert is_parallel or len(calls) == 1


def test_named_tool_is_the_one_called(server: LiveServer) -> None:
    for prompt in CALL_PROMPTS[:2]:
        choice = _chat(server, prompt, tools=TOOLS,
                       tool_choice={"type": "function", "function": {"name": "set_alarm"}}
                       ).choices[0]
        [(name, _)] = _valid_calls(choice)
        assert name == "set_alarm"


def _reassembled(stream: Any) -> tuple[str, list[tuple[str, str]], str | None]:
    content, finish_reason = "", None
    calls: dict[int, list[str]] = {}
    for chunk in stream:
        if not chunk.choices:
            continue
        delta = chunk.choices[0].delta
        content += delta.content or ""
        for call in delta.tool_calls or []:
            if call.id is not None:  # first delta of a call: id, type and name
                assert call.index not in calls and call.type == "function"
                assert call.id.startswith("call_") and call.function.name
                calls[call.index] = [call.function.name, ""]
            calls[call.index][1] += call.function.arguments or ""
        finish_reason = chunk.choices[0].finish_reason or finish_reason
    return content, [(name, arguments) for _, (name, arguments) in sorted(calls.items())], (
        finish_reason)


@pytest.mark.parametrize(("prompt", "tool_choice"), [
    ("What's the weather in Paris?", "required"),
    ("Add 17 and 25.", {"type": "function", "function": {"name": "add"}}),
])
def test_streamed_tool_calls_reassemble_to_the_non_streamed_ones(
        server: LiveServer, prompt: str, tool_choice: Any) -> None:
    kwargs = {"tools": TOOLS, "tool_choice": tool_choice, "max_tokens": 150}
    choice = _chat(server, prompt, **kwargs).choices[0]
    _valid_calls(choice)
    content, calls, finish_reason = _reassembled(_chat(server, prompt, stream=True, **kwargs))
    assert finish_reason == choice.finish_reason == "tool_calls"
    assert content == (choice.message.content or "")
    assert calls == [(c.function.name, c.function.arguments) for c in choice.message.tool_calls]


def test_auto_tool_choice_answers_or_calls_validly(server: LiveServer) -> None:
    choice = _chat(server, CALL_PROMPTS[0], tools=TOOLS, max_tokens=48).choices[0]
    if choice.message.tool_calls:
        _valid_calls(choice)
    else:
        assert choice.finish_reason in ("stop", "length") and choice.message.content


def test_a_conversation_with_tool_results_continues(server: LiveServer) -> None:
    first = _chat(server, "Add 17 and 25.", tools=[ADD], tool_choice="required",
                  parallel_tool_calls=False).choices[0]
    [(_, arguments)] = _valid_calls(first)
    call = first.message.tool_calls[0]
    messages = [{"role": "user", "content": "Add 17 and 25."},
                {"role": "assistant", "tool_calls": [call.model_dump()]},
                {"role": "tool", "tool_call_id": call.id,
                 "content": str(arguments["a"] + arguments["b"])}]
    follow_up = server.openai().chat.completions.create(
        model="default", messages=messages, tools=[ADD], tool_choice="none", temperature=0,
        max_tokens=24)
    assert follow_up.choices[0].message.content and not follow_up.choices[0].message.tool_calls
    with server.http() as http:
        tokens = http.post("/tokenize", json={"messages": messages, "tools": [ADD]}).json()
        prompt = http.post("/detokenize", json={"tokens": tokens["tokens"]}).json()["prompt"]
    assert call.function.arguments in prompt and "<tool_response>" in prompt


@pytest.mark.parametrize(("kwargs", "param"), [
    ({"response_format": {"type": "json_schema",
                          "json_schema": {"name": "x", "schema": {"type": "strng"}}}},
     "response_format.json_schema.schema"),
    ({"extra_body": {"guided_regex": "([a-z]"}}, "guided_regex"),
    ({"extra_body": {"guided_grammar": "root ::= undefined_rule"}}, "guided_grammar"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {
        "type": "object", "properties": {"a": {"type": "integer", "not": {"const": 1}}}}}}]},
     "tools[0].function.parameters"),
])
def test_invalid_specs_are_400s_naming_the_param(server: LiveServer, kwargs: dict,
                                                 param: str) -> None:
    with pytest.raises(openai.BadRequestError) as error:
        _chat(server, "Hi", **kwargs)
    assert error.value.param == param


# Issue #15's case: with an unbounded `city`, a complete call used to come back with
# finish_reason "length" after the grammar let the model run on to max_tokens.
UNBOUNDED_WEATHER = {"type": "function", "function": {
    "name": "get_weather", "parameters": _obj(city={"type": "string"})}}


@pytest.mark.parametrize("parallel_tool_calls", [None, False])
def test_tool_calls_end_cleanly(server: LiveServer, parallel_tool_calls: bool | None) -> None:
    kwargs: dict[str, Any] = {"tools": [UNBOUNDED_WEATHER], "tool_choice": "required",
                              "max_tokens": 60}
    if parallel_tool_calls is not None:
        kwargs["parallel_tool_calls"] = parallel_tool_calls
    choice = _chat(server, "What's the weather in Oslo?", **kwargs).choices[0]
    assert choice.finish_reason == "tool_calls", choice
    calls = [(c.function.name, c.function.arguments) for c in choice.message.tool_calls]
    for _, arguments in calls:
        jsonschema.validate(json.loads(arguments), UNBOUNDED_WEATHER["function"]["parameters"])
    assert parallel_tool_calls is None or len(calls) == 1
    _, streamed_calls, finish_reason = _reassembled(
        _chat(server, "What's the weather in Oslo?", stream=True, **kwargs))
    assert (streamed_calls, finish_reason) == (calls, "tool_calls")
