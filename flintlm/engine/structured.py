"""Structured output: grammars (JSON schema, JSON object, regex, EBNF, structural tags for tool
calls) compiled by xgrammar into per-request matchers whose token bitmasks the batched sampler
applies. Owns no grammar engine of its own: parsing, compiling and matching are xgrammar's.

Compilation is cached per grammar and, in the server, runs on a worker thread before the request
enters the engine, so one slow schema never stalls the step loop. JSON schemas with keywords
xgrammar would silently not enforce are refused, never half-honoured.
"""

from __future__ import annotations

import json
import re
import threading
from typing import TYPE_CHECKING, Any

import torch

from flintlm.engine.request import InvalidRequestError

if TYPE_CHECKING:
    import xgrammar

    from flintlm.engine.request import Request, SamplingParams
    from flintlm.loading.tokenizer import Tokenizer


class GrammarCompiler:
    """Compiles a request's structured-output parameters; xgrammar caches each distinct grammar,
    so a schema is compiled once per process however many requests use it."""

    def __init__(self, tokenizer: Tokenizer, vocab_size: int):
        self._tokenizer = tokenizer
        self._vocab_size = vocab_size
        self._compiler: xgrammar.GrammarCompiler | None = None
        self._lock = threading.Lock()

    def _get_compiler(self) -> xgrammar.GrammarCompiler:
        # NOTE: built on first use: the vocabulary scan costs ~1 s and most servers never need it.
        with self._lock:
            if self._compiler is None:
                import xgrammar as xgr

                tokenizer = self._tokenizer
                vocab = [tokenizer.token_bytes(i) for i in range(tokenizer.vocab_size)]
                info = xgr.TokenizerInfo(vocab, xgr.VocabType.RAW, vocab_size=self._vocab_size,
                                         stop_token_ids=sorted(tokenizer.eos_token_ids))
                self._compiler = xgr.GrammarCompiler(info, max_threads=2, cache_enabled=True)
            return self._compiler

    def compile(self, params: SamplingParams) -> xgrammar.CompiledGrammar | None:
        """The compiled grammar for `params`, or None when it asks for no structure.

        Raises InvalidRequestError (param "response_format") for an invalid or unsupported one;
        the API checks each field earlier with `check_structured_output` to name its own param.
        """
        spec = _spec_of(params)
        if spec is None:
            return None
        kind, value = spec
        if kind == "json_schema":
            check_json_schema(value, "response_format")
        compiler = self._get_compiler()
        try:
            if kind == "json_schema":
                return compiler.compile_json_schema(_json_text(value), any_whitespace=False,
                                                    strict_mode=True)
            if kind == "json_object":
                return compiler.compile_builtin_json_grammar()
            if kind == "regex":
                return compiler.compile_regex(value)
            if kind == "grammar":
                return compiler.compile_grammar(value)
            return compiler.compile_structural_tag(_json_text(value))
        except Exception as exc:  # xgrammar raises RuntimeError/ValueError with its own message
            raise InvalidRequestError(f"invalid {_KIND_NAMES[kind]}: {_clean(exc)}",
                                      param="response_format") from exc


class GrammarState:
    """One request's position in its grammar."""

    def __init__(self, compiled: xgrammar.CompiledGrammar):
        import xgrammar as xgr

        self.matcher = xgr.GrammarMatcher(compiled)

    def fill_bitmask(self, bitmask: torch.Tensor, row: int) -> None:
        self.matcher.fill_next_token_bitmask(bitmask, row)

    def accept(self, token_id: int) -> bool:
        return self.matcher.accept_token(token_id)

    @property
    def is_terminated(self) -> bool:
        return self.matcher.is_terminated()


def build_bitmask(requests: list[Request], vocab_size: int) -> torch.Tensor | None:
    """[B, ceil(V/32)] int32 allowed-token bitmask for a batch, or None if nothing is constrained.

    Rows of unconstrained requests allow everything, so free and constrained requests share one
    batch.
    """
    if not any(r.grammar is not None for r in requests):
        return None
    bitmask = torch.full((len(requests), (vocab_size + 31) // 32), -1, dtype=torch.int32)
    for row, request in enumerate(requests):
        if request.grammar is not None and not request.grammar.is_terminated:
            request.grammar.fill_bitmask(bitmask, row)
    return bitmask


# -- checks that need no tokenizer (the API runs them per field, to name the field) -------------

_KIND_NAMES = {"json_schema": "JSON schema", "json_object": "JSON object grammar",
               "regex": "regex", "grammar": "grammar", "structural_tag": "structural tag"}

# Keywords xgrammar accepts but does not enforce (checked against xgrammar 0.2.9): a schema using
# them could yield output that fails validation, so it is refused instead of half-honoured.
_UNENFORCED_KEYWORDS = ("not", "if", "then", "else", "dependentRequired", "dependentSchemas",
                        "dependencies", "contains", "minContains", "maxContains",
                        "patternProperties", "propertyNames", "$dynamicRef", "$recursiveRef")
_SUBSCHEMA_MAPS = ("properties", "$defs", "definitions")
_SUBSCHEMA_LISTS = ("anyOf", "oneOf", "allOf", "prefixItems")
_SUBSCHEMAS = ("additionalProperties", "unevaluatedProperties", "items", "additionalItems",
               "unevaluatedItems")


def check_structured_output(params: SamplingParams, param: str) -> None:
    """Raise InvalidRequestError naming `param` if the structured-output spec in `params` is
    invalid or unsupported. Builds the grammar without a tokenizer: fast, and no mask cache."""
    spec = _spec_of(params)
    if spec is None:
        return
    kind, value = spec
    if kind == "json_schema":
        check_json_schema(value, param)
    import xgrammar as xgr

    try:
        if kind == "json_schema":
            xgr.Grammar.from_json_schema(_json_text(value), any_whitespace=False,
                                         strict_mode=True)
        elif kind == "regex":
            xgr.Grammar.from_regex(value)
        elif kind == "grammar":
            xgr.Grammar.from_ebnf(value)
        elif kind == "structural_tag":
            xgr.Grammar.from_structural_tag(_json_text(value))
    except Exception as exc:
        raise InvalidRequestError(f"invalid {_KIND_NAMES[kind]}: {_clean(exc)}",
                                  param=param) from exc


def check_json_schema(schema: Any, param: str) -> None:
    """Raise InvalidRequestError naming `param` unless `schema` is a valid JSON schema object
    whose every keyword constrained decoding can enforce."""
    if isinstance(schema, str):
        try:
            schema = json.loads(schema)
        except ValueError as exc:
            raise InvalidRequestError(f"the JSON schema is not valid JSON: {exc}",
                                      param=param) from exc
    if not isinstance(schema, dict):
        raise InvalidRequestError("the JSON schema must be an object", param=param)
    import jsonschema

    validator = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    try:
        validator.check_schema(schema)
    except jsonschema.SchemaError as exc:
        where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in exc.absolute_path)
        raise InvalidRequestError(f"invalid JSON schema at '{where or '.'}': {exc.message}",
                                  param=param) from exc
    problem = _unenforced_keyword(schema, "")
    if problem is not None:
        raise InvalidRequestError(f"unsupported JSON schema: {problem}; constrained decoding "
                                  "cannot enforce it", param=param)


def _unenforced_keyword(schema: Any, where: str) -> str | None:
    """The first keyword of `schema` (or a subschema) that decoding would not enforce."""
    if not isinstance(schema, dict):
        return None
    for keyword in _UNENFORCED_KEYWORDS:
        if keyword in schema:
            return f"'{keyword}' at '{where or '.'}'"
    if schema.get("uniqueItems") is True:
        return f"'uniqueItems' at '{where or '.'}'"
    if len(schema.get("allOf") or []) > 1:
        return f"'allOf' with more than one subschema at '{where or '.'}'"
    children: list[tuple[str, Any]] = []
    for key in _SUBSCHEMA_MAPS:
        if isinstance(schema.get(key), dict):
            children += [(f"{where}.{key}.{name}", sub) for name, sub in schema[key].items()]
    for key in _SUBSCHEMA_LISTS:
        if isinstance(schema.get(key), list):
            children += [(f"{where}.{key}[{i}]", sub) for i, sub in enumerate(schema[key])]
    for key in _SUBSCHEMAS:
        value = schema.get(key)
        if isinstance(value, list):  # draft-4 tuple `items`
            children += [(f"{where}.{key}[{i}]", sub) for i, sub in enumerate(value)]
        elif value is not None:
            children.append((f"{where}.{key}", value))
    for child_where, child in children:
        problem = _unenforced_keyword(child, child_where)
        if problem is not None:
            return problem
    return None


def _spec_of(params: SamplingParams) -> tuple[str, Any] | None:
    if params.json_schema is not None:
        return "json_schema", params.json_schema
    if params.json_object:
        return "json_object", None
    if params.regex:
        return "regex", params.regex
    if params.grammar:
        return "grammar", params.grammar
    if params.structural_tag is not None:
        return "structural_tag", params.structural_tag
    return None


def _json_text(value: str | dict[str, Any]) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def _clean(exc: BaseException) -> str:
    """xgrammar's message without its log prefix ("[12:00:00] /project/cpp/x.cc:12: ")."""
    return _LOG_PREFIX.sub("", str(exc)).strip()


_LOG_PREFIX = re.compile(r"^\[[\d:]+\] \S+:\d+: ", re.MULTILINE)
