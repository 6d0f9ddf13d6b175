"""Structured output: grammars (JSON schema, JSON object, regex, EBNF) compiled by xgrammar into
per-request matchers whose token bitmasks the batched sampler applies.

Compilation is cached per grammar and, in the server, runs on a worker thread before the request
enters the engine, so one slow schema never stalls the step loop.
"""

from __future__ import annotations

import json
import threading
from typing import TYPE_CHECKING, Any

import torch

from flintlm.engine.request import InvalidRequestError

if TYPE_CHECKING:
    import xgrammar

    from flintlm.engine.request import Request, SamplingParams
    from flintlm.loading.tokenizer import Tokenizer


class GrammarCompiler:
    """Compiles a request's structured-output parameters once per distinct grammar."""

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

        Raises InvalidRequestError (param "response_format") for an invalid or unsupported one.
        """
        if not params.has_structured_output:
            return None
        compiler = self._get_compiler()
        try:
            if params.json_schema is not None:
                schema = params.json_schema
                text = schema if isinstance(schema, str) else json.dumps(schema)
                return compiler.compile_json_schema(text, any_whitespace=False, strict_mode=True)
            if params.json_object:
                return compiler.compile_builtin_json_grammar()
            if params.regex:
                return compiler.compile_regex(params.regex)
            return compiler.compile_grammar(params.grammar)  # type: ignore[arg-type]
        except Exception as exc:  # xgrammar raises RuntimeError/ValueError with its own message
            raise InvalidRequestError(f"invalid structured output specification: {exc}",
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


def structured_params_from_openai(response_format: dict[str, Any] | None) -> dict[str, Any]:
    """Map OpenAI's `response_format` to SamplingParams fields (used by the API layer)."""
    if not response_format or response_format.get("type") == "text":
        return {}
    kind = response_format.get("type")
    if kind == "json_object":
        return {"json_object": True}
    if kind == "json_schema":
        spec = response_format.get("json_schema") or {}
        schema = spec.get("schema")
        if not isinstance(schema, dict):
            raise InvalidRequestError("response_format.json_schema.schema must be an object",
                                      param="response_format")
        return {"json_schema": schema}
    raise InvalidRequestError(f"response_format type {kind!r} is not supported; use text, "
                              "json_object or json_schema", param="response_format")
