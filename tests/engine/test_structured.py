"""Structured output in the engine (embedded model, CPU, float32): constrained and free requests
share batches without changing the free ones, grammars end requests, and specs that xgrammar
would not enforce are refused."""

from __future__ import annotations

import json
import re

import jsonschema
import pytest

from flintlm import LLM, SamplingParams
from flintlm.api.tool_calls import parse_all, structural_tag
from flintlm.engine.request import InvalidRequestError
from tests.reference import REFERENCE_PATHS

PERSON = {"type": "object", "required": ["name", "age"],
          "properties": {"name": {"type": "string", "maxLength": 12},
                         "age": {"type": "integer", "minimum": 0, "maximum": 120}}}
FREE_PROMPTS = ["The capital of France is", "def fibonacci(n):", "Once upon a time"]
CONSTRAINED = [
    ("A person as JSON:", SamplingParams(max_tokens=60, temperature=0.0, json_schema=PERSON)),
    ("A phone number:", SamplingParams(max_tokens=60, temperature=0.0,
                                       regex=r"[0-9]{3}-[0-9]{4}")),
    ("Yes or no?", SamplingParams(max_tokens=60, temperature=0.7, seed=5,
                                  grammar='root ::= "yes" | "no"')),
]
FREE = SamplingParams(max_tokens=8, temperature=0.0, ignore_eos=True)
DIGIT = {"type": "object", "properties": {"n": {"type": "integer", "minimum": 0, "maximum": 9}},
         "required": ["n"]}


@pytest.fixture(scope="module")
def llm() -> LLM:
    # The reference paths: nothing left to measure (a kernel calibration would cost more than
    # this module; tests/kernels covers it), and the same paths at every step size, so a free
    # request's tokens can change only through its constrained neighbours.
    return LLM("default", dtype="float32", kv_cache_memory="64MiB", max_num_seqs=16,
               **REFERENCE_PATHS)


def _check(text: str, params: SamplingParams) -> None:
    if params.json_schema is not None:
        jsonschema.validate(json.loads(text), params.json_schema)
    elif params.regex is not None:
        assert re.fullmatch(params.regex, text)
    else:
        assert text in ("yes", "no")


def test_free_requests_are_unchanged_by_constrained_neighbours(llm: LLM) -> None:
    alone = [r.token_ids for r in llm.generate(FREE_PROMPTS, FREE)]
    prompts = [p for p, _ in CONSTRAINED] + FREE_PROMPTS
    params = [q for _, q in CONSTRAINED] + [FREE] * len(FREE_PROMPTS)
    results = llm.generate(prompts, params)
    assert [r.token_ids for r in results[len(CONSTRAINED):]] == alone
    for result, (_, constrained) in zip(results[:len(CONSTRAINED)], CONSTRAINED, strict=True):
        assert result.outputs[0].finish_reason == "stop", result.text  # the grammar ended it
        _check(result.text, constrained)


def test_the_end_of_the_grammar_ends_the_request_even_with_ignore_eos(llm: LLM) -> None:
    params = SamplingParams(max_tokens=30, temperature=0.0, ignore_eos=True,
                            grammar='root ::= "done"')
    [result] = llm.generate(["Are you finished?"], params)
    assert result.text == "done" and result.outputs[0].finish_reason == "stop"


def test_a_tool_call_structural_tag_yields_a_call_that_parses(llm: LLM) -> None:
    tag = structural_tag([("pick", DIGIT)], "required", is_parallel=False)
    params = SamplingParams(max_tokens=60, temperature=0.0, structural_tag=tag)
    [result] = llm.generate(["Call a tool:"], params)
    content, calls = parse_all(result.text)
    assert result.outputs[0].finish_reason == "stop" and content == ""
    assert [c.name for c in calls] == ["pick"]
    jsonschema.validate(json.loads(calls[0].arguments), DIGIT)


@pytest.mark.parametrize("schema", [
    {"type": "integer", "not": {"const": 3}},
    {"type": "object", "properties": {"a": {"type": "array", "uniqueItems": True}}},
    {"anyOf": [{"type": "string"}, {"allOf": [{"type": "integer"}, {"minimum": 1}]}]},
    {"type": "object", "patternProperties": {"^x": {"type": "integer"}}},
    {"type": "strin"},
])
def test_schemas_it_would_not_enforce_are_refused(llm: LLM, schema: dict) -> None:
    with pytest.raises(InvalidRequestError) as error:
        llm.generate(["x"], SamplingParams(json_schema=schema))
    assert error.value.param == "response_format"
    assert not llm.engine.has_unfinished


def test_an_invalid_regex_is_refused(llm: LLM) -> None:
    with pytest.raises(InvalidRequestError, match="regex"):
        llm.generate(["x"], SamplingParams(regex="(unclosed"))
    with pytest.raises(InvalidRequestError, match="at most one"):
        llm.generate(["x"], SamplingParams(regex="a", grammar='root ::= "a"'))
