"""Synthetic benchmark models at a tiny Llama 3.2 shape: flintlm loads what the generator writes,
and flintlm's model on that file matches HF transformers' LlamaForCausalLM (llama3 rope
scaling, grouped-query attention 4:1, tied embeddings). Never touches the 1B file."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from flintlm.bench.model_cache import resolve_bench_model, synthetic_model_names
from flintlm.bench.synthetic import LLAMA_3_2_1B, WEIGHT_TYPES, tensor_plan, write_synthetic_gguf
from flintlm.loading import load_checkpoint
from flintlm.loading.gguf import llama3_divisors
from flintlm.models.arch import ModelArch
from flintlm.models.attention import BatchLayout, SequenceSlice
from flintlm.models.llama import LlamaForCausalLM

assert LLAMA_3_2_1B.rope_scaling is not None
# Llama 3.2 1B's numbers at a size that runs in seconds. The original context is cut to 64 so
# short prompts reach the frequencies llama3 scaling changes (at 8192 they barely turn).
TINY = replace(
    LLAMA_3_2_1B, vocab_size=1024, hidden_size=256, intermediate_size=512, num_layers=2,
    num_heads=4, num_kv_heads=1, max_position_embeddings=512,
    rope_scaling=replace(LLAMA_3_2_1B.rope_scaling, original_max_position_embeddings=64),
    extra={"name": "tiny llama 3.2"},
)  # fmt: skip
RELATIVE_TOLERANCE = 1e-3
NUM_PROMPT_TOKENS = 48


@pytest.fixture(autouse=True)
def one_intraop_thread() -> Iterator[None]:
    num_threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors on a shared 2-core machine
    yield
    torch.set_num_threads(num_threads)


@pytest.fixture(scope="module")
def tiny_q8_0(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("synthetic") / "tiny-q8_0.gguf"
    write_synthetic_gguf(TINY, WEIGHT_TYPES["Q8_0"], path)
    return path


@pytest.mark.parametrize("type_name", list(WEIGHT_TYPES))
def test_tiny_file_loads_as_its_shape(type_name: str, tmp_path: Path) -> None:
    path = tmp_path / "tiny.gguf"
    write_synthetic_gguf(TINY, WEIGHT_TYPES[type_name], path)
    checkpoint = load_checkpoint(str(path), torch.float32)
    arch = checkpoint.arch
    same_fields = ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads",
                   "num_kv_heads", "head_dim", "max_position_embeddings", "rope_theta",
                   "tie_word_embeddings")  # fmt: skip
    assert {f: getattr(arch, f) for f in same_fields} == {f: getattr(TINY, f) for f in same_fields}
    assert arch.rms_norm_eps == pytest.approx(TINY.rms_norm_eps)  # stored as float32
    assert arch.rope_scaling is not None and arch.rope_scaling.kind == "llama3"
    assert TINY.rope_scaling is not None
    np.testing.assert_allclose(
        llama3_divisors(arch.rope_scaling, arch.rope_theta, arch.head_dim),
        llama3_divisors(TINY.rope_scaling, TINY.rope_theta, TINY.head_dim), rtol=1e-5)
    kept = {name: w.type_name for name, w in checkpoint.quantized.items()}
    assert kept.pop("model.embed_tokens.weight") == "Q8_0"
    assert set(kept.values()) == {type_name} and len(kept) == 7 * TINY.num_layers
    assert "lm_head.weight" not in checkpoint.weights
    assert checkpoint.tokenizer.decode(checkpoint.tokenizer.encode("Hello world")) == "Hello world"


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path: Path) -> None:
    paths = [tmp_path / f"{name}.gguf" for name in ("a", "b", "c")]
    for path, seed in zip(paths, (0, 0, 1), strict=True):
        write_synthetic_gguf(TINY, WEIGHT_TYPES["Q4_0"], path, seed)
    first, second, other = (p.read_bytes() for p in paths)
    assert first == second and first != other
    assert len(first) > sum(t.nbytes for t in tensor_plan(TINY, WEIGHT_TYPES["Q4_0"]))


def test_the_1b_plan_has_llama_3_2_1b_size() -> None:
    plan = tensor_plan(LLAMA_3_2_1B, WEIGHT_TYPES["Q4_0"])
    num_weights = sum(int(np.prod(t.shape)) for t in plan)
    assert 1.235e9 < num_weights < 1.237e9  # meta-llama/Llama-3.2-1B: 1,235,814,400
    assert 0.8e9 < sum(t.nbytes for t in plan) < 0.85e9


def _hf_model(arch: ModelArch, with_rope_scaling: bool, weights: dict[str, torch.Tensor]):
    from transformers import LlamaConfig
    from transformers import LlamaForCausalLM as HfLlama

    scaling = arch.rope_scaling
    assert scaling is not None
    config = LlamaConfig(
        vocab_size=arch.vocab_size, hidden_size=arch.hidden_size,
        intermediate_size=arch.intermediate_size, num_hidden_layers=arch.num_layers,
        num_attention_heads=arch.num_heads, num_key_value_heads=arch.num_kv_heads,
        head_dim=arch.head_dim, max_position_embeddings=arch.max_position_embeddings,
        rms_norm_eps=arch.rms_norm_eps, rope_theta=arch.rope_theta, tie_word_embeddings=True,
        rope_scaling={
            "rope_type": "llama3", "factor": scaling.factor,
            "low_freq_factor": scaling.low_freq_factor,
            "high_freq_factor": scaling.high_freq_factor,
            "original_max_position_embeddings": scaling.original_max_position_embeddings,
        } if with_rope_scaling else None,
    )  # fmt: skip
    model = HfLlama(config).eval()
    missing, unexpected = model.load_state_dict(weights, strict=False)
    assert set(missing) <= {"lm_head.weight"} and not unexpected
    model.tie_weights()
    return model


def _flintlm_logits(path: Path, token_ids: list[int]) -> tuple[torch.Tensor, dict]:
    checkpoint = load_checkpoint(str(path), torch.float32)
    arch = checkpoint.arch
    weights = dict(checkpoint.weights)
    with torch.device("meta"):
        model = LlamaForCausalLM(arch, max_positions=NUM_PROMPT_TOKENS)
    model.load_weights(checkpoint.weights)
    n, block_size = len(token_ids), 16
    num_blocks = -(-n // block_size)
    caches = [(torch.empty(num_blocks, block_size, arch.num_kv_heads, arch.head_dim),
               torch.empty(num_blocks, block_size, arch.num_kv_heads, arch.head_dim))
              for _ in range(arch.num_layers)]  # fmt: skip
    layout = BatchLayout([SequenceSlice(list(range(num_blocks)), 0, n)], torch.arange(n),
                         block_size)
    meta = model.attention.metadata(layout, torch.device("cpu"))
    with torch.no_grad():
        hidden = model(torch.tensor(token_ids), torch.arange(n), caches, meta)
        return model.compute_logits(hidden), weights


def test_logits_match_hf_with_llama3_rope_scaling(tiny_q8_0: Path) -> None:
    token_ids = torch.randint(0, TINY.vocab_size, (NUM_PROMPT_TOKENS,),
                              generator=torch.Generator().manual_seed(0)).tolist()
    ours, weights = _flintlm_logits(tiny_q8_0, token_ids)

    def error(with_rope_scaling: bool) -> float:
        hf = _hf_model(TINY, with_rope_scaling, weights)
        with torch.no_grad():
            reference = hf(torch.tensor([token_ids])).logits[0].float()
        return ((ours - reference).abs().max() / reference.abs().max()).item()

    assert error(with_rope_scaling=True) < RELATIVE_TOLERANCE
    # The prompt does reach the scaled frequencies: plain RoPE is visibly different.
    assert error(with_rope_scaling=False) > 10 * RELATIVE_TOLERANCE


def test_synthetic_names_resolve_to_a_cached_file(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLINTLM_CACHE_DIR", str(tmp_path))
    assert "llama-3.2-1b-q4_0" in synthetic_model_names()
    cached = tmp_path / "synthetic" / "llama-3.2-1b-q8_0.gguf"
    cached.parent.mkdir()
    cached.write_bytes(b"stand-in: a cached file is reused, never regenerated")
    assert resolve_bench_model("llama-3.2-1b-Q8_0") == str(cached)
    assert resolve_bench_model("default") == "default"
    assert resolve_bench_model("some/model.gguf") == "some/model.gguf"
