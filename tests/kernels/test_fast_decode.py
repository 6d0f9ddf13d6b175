"""The one-call decode step (kernels/decode_step.c via models/fast_decode.py) against the
module path on the same engine: same greedy tokens, float32 logprobs within 1e-4, for single
prompts of 1-40 tokens (prompt rows go through the paged kernel too) and a small batch."""

import random

import torch

from flintlm import LLM, SamplingParams

torch.set_num_threads(1)  # noqa: the suite shares two cores


def test_fast_decode_matches_the_module_path():
    rng = random.Random(3)
    prompts = [[rng.randrange(1000, 40000) for _ in range(n)] for n in (1, 3, 17, 40)]
    params = SamplingParams(max_tokens=12, ignore_eos=True, temperature=0.0, logprobs=0)
    llm = LLM("default", dtype="float32", kv_cache_memory="32MiB", enable_prefix_caching=False)
    runner = llm.engine.runner
    assert runner.fast_decode is not None
    fast = [llm.generate([p], params)[0] for p in prompts] + llm.generate(prompts[:3], params)
    runner.fast_decode = None
    modules = [llm.generate([p], params)[0] for p in prompts] + llm.generate(prompts[:3], params)
    for ours, reference in zip(fast, modules):
        assert ours.token_ids == reference.token_ids
        for a, b in zip(ours.outputs[0].logprobs, reference.outputs[0].logprobs):
            assert abs(a.chosen.logprob - b.chosen.logprob) < 1e-4
