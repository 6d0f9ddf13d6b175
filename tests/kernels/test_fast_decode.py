"""The one-call decode step (kernels/decode_step.c via models/fast_decode.py) against the
module path on the same engine: same greedy tokens, float32 logprobs within 1e-4, for single
prompts of 1-40 tokens (prompt rows go through the paged kernel too) and a small batch; on
every instruction-set tier this CPU executes (FLINTLM_CPU_ISA picks the kernels' build)."""

import random

import pytest
import torch

from flintlm import LLM, SamplingParams
from flintlm.kernels import isa, native
from tests.reference import REFERENCE_PATHS

torch.set_num_threads(1)  # the suite shares two cores

# Real text, teacher-forced (prompt logprobs of one-token requests), for the closeness tests.
TEXTS = ["The quick brown fox jumps over the lazy dog. It was a sunny day and the children "
         "played in the park.",
         "def add(a, b):\n    return a + b\n\nprint(add(2, 3))  # prints 5",
         "Paris is the capital of France. Berlin is the capital of Germany. Madrid is the "
         "capital of"]


def teacher_forced(llm: LLM) -> list[tuple[float, int]]:
    """(logprob of the actual next token, top-1 token) at every position of TEXTS, one prompt a
    step (so each step is small enough for the quantized path)."""
    params = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=1)
    return [(entry.chosen.logprob, entry.top[0].token_id)
            for text in TEXTS for entry in llm.generate([text], params)[0].prompt_logprobs
            if entry is not None]


@pytest.fixture(params=isa.supported_tiers())
def tier(request, monkeypatch):
    if request.param not in native.available_tiers():
        pytest.skip(f"no kernels/{native.TIER_HEADERS[request.param]} yet")
    monkeypatch.setenv("FLINTLM_CPU_ISA", request.param)
    return request.param


def test_fast_decode_matches_the_module_path(tier):
    rng = random.Random(3)
    # 6 steps each: the 45-token prompt's decode crosses a KV block edge (48), as a longer
    # decode of the others would; every step runs the same kernel (the generic tier's took 16 s
    # at 12 steps on a Zen 3).
    prompts = [[rng.randrange(1000, 40000) for _ in range(n)] for n in (1, 3, 17, 45)]
    params = SamplingParams(max_tokens=6, ignore_eos=True, temperature=0.0, logprobs=0)
    llm = LLM("default", dtype="float32", kv_cache_memory="32MiB", enable_prefix_caching=False,
              **REFERENCE_PATHS)
    runner = llm.engine.runner
    assert runner.fast_decode is not None and runner.kernels.tier == tier
    fast = [llm.generate([p], params)[0] for p in prompts] + llm.generate(prompts[:3], params)
    runner.fast_decode = None
    modules = [llm.generate([p], params)[0] for p in prompts] + llm.generate(prompts[:3], params)
    for ours, reference in zip(fast, modules, strict=True):
        assert ours.token_ids == reference.token_ids
        for a, b in zip(ours.outputs[0].logprobs, reference.outputs[0].logprobs, strict=True):
            assert abs(a.chosen.logprob - b.chosen.logprob) < 1e-4


def test_bfloat16_quantized_steps_stay_as_close_to_float32_as_bfloat16_is(tier):
    """In bfloat16, steps of up to quantized_max_tokens rows (64 by default) multiply int8
    activations by the GGUF's blocks, as llama.cpp does. Teacher-forced on real text, their
    logprobs stay within bfloat16's own distance of the float32 path (which the model tests hold
    to HF transformers): measured mean |d logprob| 0.058 vs 0.036 for dense bfloat16, top-1
    agreement 95.5% vs 94.0%."""
    from flintlm.config import CacheConfig, FlintConfig, ModelConfig

    def prompt_logprobs(dtype: str, quantized_max_tokens: int) -> list[tuple[float, int]]:
        llm = LLM(config=FlintConfig(
            model=ModelConfig(dtype=dtype, quantized_max_tokens=quantized_max_tokens,
                              quantized_activations="int8" if quantized_max_tokens else "exact"),
            cache=CacheConfig(kv_cache_memory=32 << 20, enable_prefix_caching=False)))
        if dtype == "bfloat16" and quantized_max_tokens:
            assert llm.engine.runner.fast_decode is not None
            assert llm.engine.runner.kernels.tier == tier
            assert all(llm.engine.runner.fast_decode.can_run(len(llm.tokenizer.encode(t)))
                       for t in TEXTS)
        return teacher_forced(llm)

    reference = prompt_logprobs("float32", 0)
    quantized = prompt_logprobs("bfloat16", 64)
    assert quantized != prompt_logprobs("bfloat16", 0)  # the int8 path did run
    assert len(quantized) == len(reference) > 60
    gaps = [abs(a[0] - b[0]) for a, b in zip(reference, quantized, strict=True)]
    num_agreeing = sum(a[1] == b[1] for a, b in zip(reference, quantized, strict=True))
    agreement = num_agreeing / len(reference)
    assert sum(gaps) / len(gaps) < 0.15 and max(gaps) < 1.5
    assert agreement >= 0.85


def test_a_bfloat16_kv_cache_under_float32_stays_close_to_the_float32_cache():
    """kv_cache_dtype=bfloat16 under a float32 model (half the bytes attention reads; llama.cpp
    keeps float16): the one-call step reads every prompt row's context from the cache, so
    teacher-forced logprobs show the cache's rounding alone. Measured on the embedded model:
    mean |d logprob| 0.0040, max 0.034, top-1 agreement 100% (67 positions)."""

    def prompt_logprobs(kv_cache_dtype: str, expected: torch.dtype) -> list[tuple[float, int]]:
        llm = LLM("default", dtype="float32", kv_cache_memory="32MiB", enable_prefix_caching=False,
                  kv_cache_dtype=kv_cache_dtype, **REFERENCE_PATHS)
        runner = llm.engine.runner
        assert runner.fast_decode is not None and runner.kv_dtype == expected
        assert all(cache.dtype == expected for pair in runner.kv_caches for cache in pair)
        return teacher_forced(llm)

    reference = prompt_logprobs("auto", torch.float32)
    rounded = prompt_logprobs("bfloat16", torch.bfloat16)
    assert rounded != reference  # the bfloat16 cache was read
    assert len(rounded) == len(reference) > 60
    gaps = [abs(a[0] - b[0]) for a, b in zip(reference, rounded, strict=True)]
    agreement = sum(a[1] == b[1] for a, b in zip(reference, rounded, strict=True)) / len(gaps)
    assert sum(gaps) / len(gaps) < 0.02 and max(gaps) < 0.2
    assert agreement >= 0.95
