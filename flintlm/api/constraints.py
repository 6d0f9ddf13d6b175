"""Structured-output constraints from wherever a client put them: OpenAI's `response_format`,
vLLM's `guided_*` fields and `structured_outputs` object, or a chat request's tools.

Each becomes `SamplingParams` fields plus the name of the param it came from, so an invalid or
unsupported spec is a 400 naming that param before anything reaches the engine. Pure mapping and
checks: no HTTP, no engine state.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from flintlm.api import tool_calls
from flintlm.engine.request import InvalidRequestError, SamplingParams

if TYPE_CHECKING:
    from flintlm.api.protocol import ResponseFormat, StructuredOutputs, ToolDefinition

# vLLM's request-level extension fields -> the SamplingParams field each one sets.
GUIDED_FIELDS = ("guided_json", "guided_regex", "guided_grammar", "guided_choice")


@dataclass(frozen=True)
class Constraint:
    param: str  # where the client put it, e.g. "response_format.json_schema.schema"
    fields: dict[str, Any]  # SamplingParams fields, e.g. {"json_schema": {...}}


def from_request(response_format: ResponseFormat | None, guided: dict[str, Any],
                 structured_outputs: StructuredOutputs | None) -> Constraint | None:
    """The one constraint a request asks for, checked; InvalidRequestError if it asks for more
    than one or the spec is invalid.

    Args:
        guided: the request's `guided_*` fields that are set, by name.
    """
    found: list[Constraint] = []
    if response_format is not None and response_format.type != "text":
        found.append(_from_response_format(response_format))
    for name, value in guided.items():
        found.append(_from_guided(name, value))
    if structured_outputs is not None:
        found.append(_from_structured_outputs(structured_outputs))
    if len(found) > 1:
        raise InvalidRequestError(
            f"give one structured-output constraint, not both {found[0].param} and "
            f"{found[1].param}", param=found[1].param)
    if not found:
        return None
    return checked(found[0])


def checked(constraint: Constraint) -> Constraint:
    from flintlm.engine.structured import check_structured_output  # xgrammar: load on first use

    check_structured_output(SamplingParams(**constraint.fields), constraint.param)
    return constraint


def for_tools(tools: list[ToolDefinition], choice: str | None, is_parallel: bool, *,
              schema_param: str = "tools[{}].function.parameters") -> Constraint | None:
    """The constraint that makes every tool call parse and match its schema (see tool_calls).

    Args:
        schema_param: where the client put tool i's schema, with `{}` for i (for 400s).
    """
    from flintlm.engine.structured import check_json_schema

    for i, tool in enumerate(tools):
        if tool.function.parameters is not None:
            check_json_schema(tool.function.parameters, schema_param.format(i))
    tag = tool_calls.structural_tag(
        [(t.function.name, t.function.parameters) for t in tools], choice, is_parallel)
    if tag is None:
        return None
    return checked(Constraint("tools", {"structural_tag": tag}))


def choice_grammar(choices: list[str]) -> str:
    """An EBNF grammar matching exactly one of `choices` (JSON string escapes are EBNF's)."""
    return "root ::= " + " | ".join(json.dumps(c, ensure_ascii=False) for c in choices)


def _from_response_format(response_format: ResponseFormat) -> Constraint:
    if response_format.type == "json_object":
        return Constraint("response_format", {"json_object": True})
    spec = response_format.json_schema
    if spec is None:
        raise InvalidRequestError("response_format of type 'json_schema' needs 'json_schema'",
                                  param="response_format.json_schema")
    return Constraint("response_format.json_schema.schema", {"json_schema": spec.schema_})


def _from_guided(name: str, value: Any) -> Constraint:
    if name == "guided_json":
        return Constraint(name, {"json_schema": _json_value(value, name)})
    if name == "guided_regex":
        return Constraint(name, {"regex": value})
    if name == "guided_grammar":
        return Constraint(name, {"grammar": value})
    return Constraint(name, {"grammar": _choices(value, name)})


def _from_structured_outputs(spec: StructuredOutputs) -> Constraint:
    chosen = {k: v for k, v in spec.model_dump(by_alias=True).items()
              if v is not None and v is not False}
    if len(chosen) != 1:
        raise InvalidRequestError(
            "structured_outputs needs exactly one of json, regex, grammar, choice, json_object, "
            f"structural_tag; got {len(chosen)}", param="structured_outputs")
    (key, value), = chosen.items()
    param = f"structured_outputs.{key}"
    if key == "json":
        return Constraint(param, {"json_schema": _json_value(value, param)})
    if key == "choice":
        return Constraint(param, {"grammar": _choices(value, param)})
    if key == "structural_tag":
        return Constraint(param, {"structural_tag": _json_value(value, param)})
    return Constraint(param, {key: value})


def _json_value(value: str | dict[str, Any], param: str) -> dict[str, Any]:
    if isinstance(value, dict):
        return value
    try:
        parsed = json.loads(value)
    except ValueError as exc:
        raise InvalidRequestError(f"{param} is not valid JSON: {exc}", param=param) from exc
    if not isinstance(parsed, dict):
        raise InvalidRequestError(f"{param} must be a JSON object", param=param)
    return parsed


def _choices(choices: list[str], param: str) -> str:
    if not choices:
        raise InvalidRequestError(f"{param} needs at least one choice", param=param)
    return choice_grammar(choices)
