"""Structured-output cost: offline throughput of one batch with some of its requests under a JSON
schema versus none, and the time to compile a schema the first and the second time (cached).

Both batches do the same work apart from the grammar: every request generates exactly
`output_len` tokens (EOS ignored, and the schema cannot end sooner), greedily. Runs the offline
`LLM` API and the engine's `GrammarCompiler`; it owns no timing or reporting helpers of its own
beyond these two measurements.
"""

from __future__ import annotations

import dataclasses
import time
from typing import TYPE_CHECKING, Any

from flintlm.bench.offline import OfflineResult, PeakRss
from flintlm.bench.workload import synthetic_token_prompts

if TYPE_CHECKING:
    from flintlm import LLM

_PERSON = {"type": "object", "required": ["name", "age", "email", "tags"], "properties": {
    "name": {"type": "string", "maxLength": 20},
    "age": {"type": "integer", "minimum": 0, "maximum": 120},
    "email": {"type": "string", "format": "email"},
    "tags": {"type": "array", "items": {"enum": ["admin", "user", "guest"]}, "maxItems": 3},
}}


def endless_schema(output_len: int) -> dict[str, Any]:
    """An array of people with more items than `output_len` tokens can hold: a request under it
    runs to max_tokens, like the free ones with ignore_eos."""
    return {"type": "array", "items": _PERSON, "minItems": output_len}


# Schemas for the compile timing: a small flat one, the throughput one, and a larger nested one.
COMPILE_SCHEMAS: dict[str, dict[str, Any]] = {
    "flat": {"type": "object", "required": ["city", "unit"], "properties": {
        "city": {"type": "string"}, "unit": {"enum": ["celsius", "fahrenheit"]}}},
    "person_array": endless_schema(64),
    "nested_order": {
        "$defs": {"address": {"type": "object", "required": ["street", "zip"], "properties": {
            "street": {"type": "string"}, "zip": {"type": "string", "pattern": "^[0-9]{5}$"}}},
                  "item": {"type": "object", "required": ["sku", "qty", "price"], "properties": {
                      "sku": {"type": "string", "pattern": "^[A-Z]{3}-[0-9]{4}$"},
                      "qty": {"type": "integer", "minimum": 1, "maximum": 99},
                      "price": {"type": "number", "minimum": 0}}}},
        "type": "object", "required": ["id", "customer", "items", "status"], "properties": {
            "id": {"type": "integer"},
            "customer": {"type": "object", "required": ["name", "address"], "properties": {
                "name": {"type": "string"}, "address": {"$ref": "#/$defs/address"},
                "billing": {"anyOf": [{"$ref": "#/$defs/address"}, {"type": "null"}]}}},
            "items": {"type": "array", "items": {"$ref": "#/$defs/item"}, "minItems": 1},
            "status": {"enum": ["new", "paid", "shipped", "cancelled"]},
            "note": {"type": "string", "maxLength": 200}}},
}


def run_batch(llm: LLM, num_prompts: int, num_constrained: int, input_len: int,
              output_len: int, seed: int) -> OfflineResult:
    """One timed pass of `num_prompts` prompts, the first `num_constrained` under the schema.

    Raises:
        RuntimeError: a request did not generate exactly `output_len` tokens (the two batches
            would not be comparable).
    """
    from flintlm import SamplingParams

    free = SamplingParams(max_tokens=output_len, ignore_eos=True, temperature=0.0)
    constrained = dataclasses.replace(free, json_schema=endless_schema(output_len))
    params = [constrained] * num_constrained + [free] * (num_prompts - num_constrained)
    # Constrained rows spread through the batch rather than first, as a server would see them.
    params = params[::2] + params[1::2]
    prompts = synthetic_token_prompts(num_prompts, input_len, output_len,
                                      llm.tokenizer.vocab_size, seed)
    with PeakRss() as rss:
        start = time.perf_counter()
        results = llm.generate([p.token_ids or [] for p in prompts], params)
        elapsed = time.perf_counter() - start
    lengths = {len(r.token_ids) for r in results}
    if lengths != {output_len}:
        raise RuntimeError(f"expected {output_len} tokens per request, got {sorted(lengths)}")
    return OfflineResult(
        num_prompts=num_prompts, num_prompt_tokens=num_prompts * input_len,
        num_output_tokens=num_prompts * output_len, elapsed_s=elapsed,
        peak_rss_mib=rss.peak_mib,
        extra={"num_cached_tokens": sum(r.num_cached_tokens for r in results)})


def time_compiles(llm: LLM) -> dict[str, float]:
    """Milliseconds: the vocabulary scan a fresh compiler does once (with a trivial compile), then
    per schema the check the API runs on the request (no tokenizer), the first compile and the
    second (a hit in the compiler's cache)."""
    from flintlm import SamplingParams
    from flintlm.engine.structured import (
        GrammarCompiler,
        check_structured_output,
        clear_check_cache,
    )

    clear_check_cache()
    compiler = GrammarCompiler(llm.tokenizer, llm.engine.vocab_size)
    start = time.perf_counter()
    compiler.compile(SamplingParams(regex="x"))  # builds the tokenizer info: once per process
    figures = {"vocabulary_scan_ms": 1e3 * (time.perf_counter() - start)}
    for name, schema in COMPILE_SCHEMAS.items():
        params = SamplingParams(json_schema=schema)
        for label, step in (("check", lambda p=params: check_structured_output(p, "bench")),
                            ("first_compile", lambda p=params: compiler.compile(p)),
                            ("second_compile", lambda p=params: compiler.compile(p))):
            start = time.perf_counter()
            step()
            figures[f"{name}_{label}_ms"] = 1e3 * (time.perf_counter() - start)
    return figures
