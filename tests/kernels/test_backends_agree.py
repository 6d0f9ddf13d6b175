"""The whole engine on flintlm's CPU kernels and on the torch reference path gives the same
greedy tokens (float32) for a batch that mixes fresh prompts, chunked prefill, prefix-cache
hits and decode, and logprobs within float32 noise."""

import random

import pytest
import torch

from flintlm import LLM, SamplingParams
from flintlm.config import CacheConfig, FlintConfig, ModelConfig, SchedulerConfig
from tests.reference import REFERENCE_PATHS

torch.set_num_threads(1)  # the suite shares two cores


def run(kernels: str, prompts: list[list[int]], kv_cache_dtype: str):
    model = ModelConfig(dtype="float32", kernels=kernels, **REFERENCE_PATHS)
    config = FlintConfig(model=model,
                         cache=CacheConfig(kv_cache_memory=48 << 20,
                                           kv_cache_dtype=kv_cache_dtype),
                         scheduler=SchedulerConfig(max_num_batched_tokens=64))
    llm = LLM(config=config)
    params = SamplingParams(max_tokens=12, ignore_eos=True, temperature=0.0, logprobs=2)
    first = llm.generate(prompts, params)
    again = llm.generate(prompts[:3], params)  # same prompts: served from the prefix cache
    assert all(r.num_cached_tokens > 0 for r in again if len(r.prompt_token_ids) > 16)
    return llm, first + again


@pytest.mark.slow
@pytest.mark.parametrize("kv_cache_dtype", ["auto", "bfloat16"])
def test_native_and_torch_kernels_agree(kv_cache_dtype):
    """Also with a bfloat16 cache under the float32 model: both backends round K/V the same way
    (to nearest even), a prompt's own rows included, and compute in float32; but a rotated key
    one float32 ulp apart between the backends can round to neighbouring bfloat16 values, so
    there logprobs agree to bfloat16's rounding (up to 1.1e-2 measured over 12 tokens), not
    float32's; the tokens still agree."""
    rng = random.Random(7)
    prompts = [[rng.randrange(1000, 40000) for _ in range(n)] for n in (3, 20, 47, 100, 130, 9)]
    native_llm, native = run("native", prompts, kv_cache_dtype)
    torch_llm, reference = run("torch", prompts, kv_cache_dtype)
    assert native_llm.engine.runner.kernels is not None
    assert torch_llm.engine.runner.kernels is None
    for ours, ref in zip(native, reference, strict=True):
        assert ours.token_ids == ref.token_ids
        for a, b in zip(ours.outputs[0].logprobs, ref.outputs[0].logprobs, strict=True):
            assert abs(a.chosen.logprob - b.chosen.logprob) < (
                1e-3 if kv_cache_dtype == "auto" else 3e-2)
