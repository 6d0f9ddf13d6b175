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
              output_len: int, seed: int) -> tuple[OfflineResult, list[list[int]]]:
    """One timed pass of `num_prompts` prompts, `num_constrained` of them under the schema.

    Returns:
        The timing, and the token ids the constrained requests generated (for `time_steps`).
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
        start, start_cpu = time.perf_counter(), time.process_time()
        results = llm.generate([p.token_ids or [] for p in prompts], params)
        elapsed, cpu_s = time.perf_counter() - start, time.process_time() - start_cpu
    lengths = {len(r.token_ids) for r in results}
    if lengths != {output_len}:
        raise RuntimeError(f"expected {output_len} tokens per request, got {sorted(lengths)}")
    result = OfflineResult(
        num_prompts=num_prompts, num_prompt_tokens=num_prompts * input_len,
        num_output_tokens=num_prompts * output_len, elapsed_s=elapsed,
        peak_rss_mib=rss.peak_mib,
        extra={"num_cached_tokens": sum(r.num_cached_tokens for r in results),
               # NOTE: this process's CPU time (all threads): on a shared machine it moves far
               # less with the other processes' load than the wall time does.
               "cpu_s": cpu_s, "output_tokens_per_cpu_s": num_prompts * output_len / cpu_s})
    return result, [r.token_ids for r, p in zip(results, params, strict=True)
                    if p.json_schema is not None]


def time_steps(llm: LLM, num_prompts: int, outputs: list[list[int]], repeats: int = 5
               ) -> dict[str, float]:
    """Milliseconds per decode step of the structured-output work alone, replaying `outputs`
    (the constrained requests' tokens) through the engine's own pieces: filling the batch's
    bitmask, sampling a [num_prompts, V] batch with the mask versus without, and advancing each
    grammar by its token. Free of the model's (noisy) cost, unlike the throughput pair; each
    part is the fastest of `repeats` replays.
    """
    import torch

    from flintlm import SamplingParams
    from flintlm.engine.request import Request
    from flintlm.engine.sampler import Sampler
    from flintlm.engine.structured import GrammarState, build_bitmask

    engine = llm.engine
    vocab = engine.vocab_size
    schema = SamplingParams(max_tokens=len(outputs[0]), temperature=0.0,
                            json_schema=endless_schema(len(outputs[0])))
    compiled = engine.grammars.compile(schema)
    if compiled is None:
        raise RuntimeError("the schema compiled to no grammar")

    def batch(with_grammar: bool) -> list[Request]:
        requests = [Request(f"r{i}", [1], schema if i < len(outputs) and with_grammar
                            else SamplingParams(temperature=0.0), max_output_tokens=1)
                    for i in range(num_prompts)]
        for request in requests[:len(outputs)] if with_grammar else []:
            request.grammar = GrammarState(compiled)
        return requests

    sampler = Sampler(vocab, torch.device("cpu"))
    logits = torch.randn(num_prompts, vocab)
    num_steps = min(len(o) for o in outputs)
    best: dict[str, float] = {}
    for _ in range(repeats):  # NOTE: the fastest replay per part: interference only adds time
        totals = dict.fromkeys(("fill_bitmask", "sample_with_mask", "sample_without", "accept"),
                               0.0)
        constrained, free = batch(True), batch(False)
        for step in range(num_steps):
            start = time.perf_counter()
            bitmask = build_bitmask(constrained, vocab)
            totals["fill_bitmask"] += time.perf_counter() - start
            for requests, key in ((constrained, "sample_with_mask"), (free, "sample_without")):
                prepared = sampler.prepare(requests)
                prepared.token_bitmask = bitmask if requests is constrained else None
                fresh = logits.clone()  # sample() writes into its logits
                start = time.perf_counter()
                sampler.sample(fresh, prepared)
                totals[key] += time.perf_counter() - start
            start = time.perf_counter()
            for request, output in zip(constrained, outputs, strict=True):
                if not request.grammar.accept(output[step]):  # type: ignore[union-attr]
                    raise RuntimeError("a replayed token was rejected by its grammar")
            totals["accept"] += time.perf_counter() - start
        best = {k: min(v, best.get(k, v)) for k, v in totals.items()}
    totals = best
    figures = {f"{key}_ms": 1e3 * value / num_steps for key, value in totals.items()}
    figures["overhead_ms"] = (figures["fill_bitmask_ms"] + figures["accept_ms"]
                              + figures["sample_with_mask_ms"] - figures["sample_without_ms"])
    return figures


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
