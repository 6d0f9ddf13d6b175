"""Structured output: grammars (JSON schema, JSON object, regex, EBNF, structural tags for tool
calls) compiled by xgrammar into per-request matchers whose token bitmasks the batched sampler
applies. Owns no grammar engine of its own: parsing, compiling and matching are xgrammar's.

Compilation is cached per grammar and, in the server, runs on a worker thread before the request
enters the engine, so one slow schema never stalls the step loop. JSON schemas with keywords
xgrammar would silently not enforce are refused, never half-honoured.
"""

from __future__ import annotations

import functools
import json
import re
import threading
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

import torch

from flintlm.engine.request import InvalidRequestError

if TYPE_CHECKING:
    import xgrammar

    from flintlm.engine.request import Request, SamplingParams
    from flintlm.loading.tokenizer import Tokenizer


class GrammarCompiler:
    """Compiles a request's structured-output parameters once per distinct grammar: compiled
    grammars stay in an LRU cache of `cache_size` entries, so a server that meets many one-off
    schemas does not grow without bound. Thread-safe; compiles run outside the lock."""

    def __init__(self, tokenizer: Tokenizer, vocab_size: int, cache_size: int = 256):
        self._tokenizer = tokenizer
        self._vocab_size = vocab_size
        self._compiler: xgrammar.GrammarCompiler | None = None
        self._lock = threading.Lock()
        self._cache: OrderedDict[tuple[str, str], xgrammar.CompiledGrammar] = OrderedDict()
        self._cache_size = cache_size

    def _get_compiler(self) -> xgrammar.GrammarCompiler:
        # NOTE: built on first use: the vocabulary scan costs ~1 s and most servers never need it.
        with self._lock:
            if self._compiler is None:
                import xgrammar as xgr

                tokenizer = self._tokenizer
                vocab = [tokenizer.token_bytes(i) for i in range(tokenizer.vocab_size)]
                info = xgr.TokenizerInfo(vocab, xgr.VocabType.RAW, vocab_size=self._vocab_size,
                                         stop_token_ids=sorted(tokenizer.eos_token_ids))
                # NOTE: xgrammar's own cache is unbounded; the LRU above replaces it.
                self._compiler = xgr.GrammarCompiler(info, max_threads=2, cache_enabled=False)
            return self._compiler

    def compile(self, params: SamplingParams) -> xgrammar.CompiledGrammar | None:
        """The compiled grammar for `params`, or None when it asks for no structure.

        Raises InvalidRequestError (param "response_format") for an invalid or unsupported one;
        the API checks each field earlier with `check_structured_output` to name its own param.
        """
        key = _key_of(params)
        if key is None:
            return None
        with self._lock:
            compiled = self._cache.get(key)
            if compiled is not None:
                self._cache.move_to_end(key)
                return compiled
        problem = _problem(*key)
        if problem is not None:
            raise InvalidRequestError(problem, param="response_format")
        compiled = self._compile(*key)
        with self._lock:
            self._cache[key] = compiled
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return compiled

    def _compile(self, kind: str, text: str) -> xgrammar.CompiledGrammar:
        compiler = self._get_compiler()
        try:
            if kind == "json_schema":
                return compiler.compile_json_schema(text, any_whitespace=False, strict_mode=True)
            if kind == "json_object":
                return compiler.compile_builtin_json_grammar()
            if kind == "regex":
                return compiler.compile_regex(text)
            if kind == "grammar":
                return compiler.compile_grammar(text)
            return compiler.compile_structural_tag(text)
        except (RuntimeError, ValueError, TypeError) as exc:  # xgrammar's, with its message
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
    invalid or unsupported. Builds the grammar without a tokenizer (no mask cache), and
    remembers the verdict per spec, so a schema sent again costs a dictionary lookup."""
    key = _key_of(params)
    problem = None if key is None else _problem(*key)
    if problem is not None:
        raise InvalidRequestError(problem, param=param)


def clear_check_cache() -> None:
    """Forget the remembered verdicts (a benchmark uses it to time a first check again)."""
    _problem.cache_clear()
    _schema_problem.cache_clear()


@functools.lru_cache(maxsize=512)  # NOTE: a pure function's memo: same spec, same verdict
def _problem(kind: str, text: str) -> str | None:
    """What is wrong with a spec, or None; `text` is the JSON text of a schema or tag."""
    if kind == "json_schema" and (problem := _schema_problem(text)) is not None:
        return problem
    import xgrammar as xgr

    try:
        if kind == "json_schema":
            xgr.Grammar.from_json_schema(text, any_whitespace=False, strict_mode=True)
        elif kind == "regex":
            xgr.Grammar.from_regex(text)
        elif kind == "grammar":
            xgr.Grammar.from_ebnf(text)
        elif kind == "structural_tag":
            xgr.Grammar.from_structural_tag(text)
    except (RuntimeError, ValueError, TypeError) as exc:  # xgrammar's, with its message
        return f"invalid {_KIND_NAMES[kind]}: {_clean(exc)}"
    return None


def check_json_schema(schema: Any, param: str) -> None:
    """Raise InvalidRequestError naming `param` unless `schema` (an object or its JSON text) is a
    valid JSON schema whose every keyword constrained decoding can enforce."""
    text = schema if isinstance(schema, str) else json.dumps(schema)
    problem = _schema_problem(text)
    if problem is not None:
        raise InvalidRequestError(problem, param=param)


@functools.lru_cache(maxsize=512)  # NOTE: a pure function's memo, as _problem's
def _schema_problem(text: str) -> str | None:
    """What is wrong with a JSON schema given as JSON text, or None."""
    try:
        schema = json.loads(text)
    except ValueError as exc:
        return f"the JSON schema is not valid JSON: {exc}"
    if not isinstance(schema, dict):
        return "the JSON schema must be an object"
    import jsonschema

    validator = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    try:
        validator.check_schema(schema)
    except jsonschema.SchemaError as exc:
        where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in exc.absolute_path)
        return f"invalid JSON schema at '{where or '.'}': {exc.message}"
    problem = _unenforced_keyword(schema, "")
    if problem is not None:
        return f"unsupported JSON schema: {problem}; constrained decoding cannot enforce it"
    return None


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


def _key_of(params: SamplingParams) -> tuple[str, str] | None:
    """(kind, text) of the one spec in `params`: what the cache and the checks are keyed on."""
    if params.json_schema is not None:
        return "json_schema", _json_text(params.json_schema)
    if params.json_object:
        return "json_object", ""
    if params.regex:
        return "regex", params.regex
    if params.grammar:
        return "grammar", params.grammar
    if params.structural_tag is not None:
        return "structural_tag", _json_text(params.structural_tag)
    return None


def _json_text(value: str | dict[str, Any]) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def _clean(exc: BaseException) -> str:
    """xgrammar's message without its log prefix ("[12:00:00] /project/cpp/x.cc:12: ")."""
    return _LOG_PREFIX.sub("", str(exc)).strip()


_LOG_PREFIX = re.compile(r"^\[[\d:]+\] \S+:\d+: ", re.MULTILINE)
