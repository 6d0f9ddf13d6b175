"""A blocks-only engine: every step it can run multiplies the GGUF blocks as stored, so the
loader makes no dense copy of the layer matrices. Its outputs match HF transformers, the dense
copies are really absent, and the dense fallback is exactly the loader's dequantization."""

import pytest
import torch

from flintlm import LLM, SamplingParams
from flintlm.kernels.ops import CpuKernels
from flintlm.loading import load_checkpoint
from flintlm.models.quant import (
    DequantizedLinear,
    SmallBatchQuantLinear,
    dequantize_matrix,
    interleave,
    repack,
)
from tests.reference import hf_model

MAX_STEP_TOKENS = 32
PROMPTS = ["The capital of France is", "1, 2, 3, 5, 8, 13,"]


@pytest.fixture(scope="module")
def llm():
    if CpuKernels.create(torch.device("cpu"), torch.float32) is None:
        pytest.skip("no C compiler: no kernels to multiply the blocks")
    # exact products at every step size the scheduler can issue: nothing left to measure
    return LLM("default", dtype="float32", kv_cache_memory="64MiB",
               max_num_batched_tokens=MAX_STEP_TOKENS, quantized_max_tokens=MAX_STEP_TOKENS,
               quantized_activations="exact")


def quantized_layers(llm) -> list[SmallBatchQuantLinear]:
    return [m for m in llm.engine.runner.model.modules() if isinstance(m, SmallBatchQuantLinear)]


def test_no_layer_matrix_is_held_dense(llm):
    model = llm.engine.runner.model
    # the embedding is looked up by row, so it alone stays dense
    assert [name for name, p in model.named_parameters() if p.dim() == 2] == \
        ["embed_tokens.weight"]
    layers = quantized_layers(llm)
    assert len(layers) == 4 * model.arch.num_layers
    assert all(isinstance(layer.dense, DequantizedLinear) and not layer.dense.is_materialized
               for layer in layers)


def test_outputs_match_hf_without_making_a_dense_weight(llm):
    results = llm.generate(PROMPTS, SamplingParams(max_tokens=8, temperature=0.0,
                                                   ignore_eos=True, logprobs=0))
    for result in results:
        num_prompt = len(result.prompt_token_ids)
        with torch.no_grad():
            reference = hf_model()(torch.tensor([result.prompt_token_ids + result.token_ids]))
        reference = reference.logits[0, num_prompt - 1:-1].float()
        assert result.token_ids == reference.argmax(-1).tolist()
        ours = torch.tensor([lp.chosen.logprob for lp in result.outputs[0].logprobs])
        theirs = reference.log_softmax(-1).gather(
            1, torch.tensor(result.token_ids).unsqueeze(1)).squeeze(1)
        assert (ours - theirs).abs().max().item() < 1e-3 * max(1.0, theirs.abs().max().item())
    assert not any(layer.dense.is_materialized for layer in quantized_layers(llm))


def test_the_dense_fallback_is_the_loaders_dequantization(llm):
    checkpoint = load_checkpoint("default", torch.float32)
    dense = checkpoint.weights
    qkv = llm.engine.runner.model.layers[0].self_attn.qkv_proj  # stacked q/k/v blocks
    fallback = DequantizedLinear(qkv.parts, None, torch.float32)
    assert torch.equal(fallback.weight, torch.cat(
        [dense[f"model.layers.0.self_attn.{p}_proj.weight"] for p in "qkv"]))
    x = torch.randn(3, fallback.in_features)
    torch.testing.assert_close(fallback(x), x @ fallback.weight.t())
    # each block type the file holds, in the row and the interleaved (int8 path's) layouts
    by_type = {weight.type_name: name for name, weight in checkpoint.quantized.items()}
    for name in by_type.values():
        matrix = repack(checkpoint.quantized[name])
        assert torch.equal(dequantize_matrix(matrix), dense[name]), name
        assert torch.equal(dequantize_matrix(interleave(matrix)), dense[name]), name
