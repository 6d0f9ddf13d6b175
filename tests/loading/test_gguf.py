"""GGUF loading: parity with HF transformers' state dict, each dequantized type against a
reference, llama.cpp layouts of every supported architecture, and the errors bad files give."""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np
import pytest
import torch
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, RopeScalingType, quants

from flintlm.loading import LoadedCheckpoint, ModelLoadError, load_checkpoint
from flintlm.loading.dequant import dequantize
from flintlm.models.arch import RopeScaling
from tests.conftest import needs_reference_speed

T = GGMLQuantizationType


@pytest.fixture(scope="module")
def embedded() -> LoadedCheckpoint:
    return load_checkpoint("default", torch.float32)


# --- the embedded model against HF transformers -------------------------------------------


def test_embedded_weights_equal_hf_state_dict(embedded: LoadedCheckpoint, hf_model: Any) -> None:
    reference = hf_model.state_dict()
    # HF lists the tied lm_head (it is embed_tokens); a tied checkpoint leaves it out.
    assert set(embedded.weights) == set(reference) - {"lm_head.weight"}
    for name, weight in embedded.weights.items():
        assert weight.dtype == torch.float32 and weight.device.type == "cpu"
        if not torch.equal(weight, reference[name]):  # exact is expected; 1e-6 is allowed
            torch.testing.assert_close(weight, reference[name], rtol=0, atol=1e-6, msg=name)


def test_embedded_arch_matches_hf_config(embedded: LoadedCheckpoint, hf_model: Any) -> None:
    config, arch = hf_model.config, embedded.arch
    assert arch.architecture == "LlamaForCausalLM"
    assert (arch.vocab_size, arch.hidden_size, arch.intermediate_size) == (
        config.vocab_size,
        config.hidden_size,
        config.intermediate_size,
    )
    assert (arch.num_layers, arch.num_heads, arch.num_kv_heads, arch.head_dim) == (30, 9, 3, 64)
    assert arch.num_layers == config.num_hidden_layers
    assert arch.rope_theta == config.rope_parameters["rope_theta"] == 100000.0
    assert arch.rms_norm_eps == pytest.approx(config.rms_norm_eps)
    assert arch.max_position_embeddings == config.max_position_embeddings
    assert arch.tie_word_embeddings and config.tie_word_embeddings
    assert not arch.attention_bias and not arch.qk_norm and arch.rope_scaling is None


@needs_reference_speed
def test_embedded_model_loads_in_under_two_seconds(embedded_path: str) -> None:
    # The server must be ready in < 5 s; loading is budgeted < 2 s. Best of two, as the test
    # machine may be shared.
    timings = []
    for _ in range(2):
        start = time.perf_counter()
        checkpoint = load_checkpoint("default", torch.bfloat16)
        timings.append(time.perf_counter() - start)
        if timings[-1] < 2.0:
            break
    assert checkpoint.source == embedded_path
    assert min(timings) < 2.0, timings


def test_weights_come_in_the_requested_dtype(embedded: LoadedCheckpoint) -> None:
    half = load_checkpoint("default", torch.bfloat16)
    for name, weight in half.weights.items():
        assert weight.dtype == torch.bfloat16
        assert torch.equal(weight, embedded.weights[name].to(torch.bfloat16)), name


def test_blocks_only_reading_leaves_out_the_dense_matrices(embedded: LoadedCheckpoint) -> None:
    lean = load_checkpoint("default", torch.float32, dense_matrices=False)
    # the embedding is looked up by row, so it is read dense whatever its blocks
    blocks_only = set(embedded.quantized) - {"model.embed_tokens.weight"}
    assert any(".layers." in name for name in blocks_only)
    assert set(lean.weights) == set(embedded.weights) - blocks_only
    assert set(lean.quantized) == set(embedded.quantized)
    for name, weight in lean.quantized.items():
        assert weight.shape == embedded.weights[name].shape
        assert torch.equal(weight.dequantize(torch.float32), embedded.weights[name]), name


# --- dequantization of each type ---------------------------------------------------------


@pytest.mark.parametrize("ggml_type", [T.F32, T.F16, T.BF16])
def test_float_types_decode_exactly(ggml_type: GGMLQuantizationType) -> None:
    values = torch.randn(6, 64, generator=torch.Generator().manual_seed(0))
    stored = values.to(
        {T.F32: torch.float32, T.F16: torch.float16, T.BF16: torch.bfloat16}[ggml_type]
    )
    raw = stored.view(torch.uint8).flatten()
    assert torch.equal(dequantize(raw, ggml_type, (6, 64), torch.float32), stored.float())


# Worst error of a quantize -> dequantize round trip on standard normal data.
ROUND_TRIP_TOLERANCE = {T.Q8_0: 0.03, T.Q4_0: 0.5, T.Q4_1: 0.35, T.Q5_0: 0.25, T.Q5_1: 0.2}


@pytest.mark.parametrize("ggml_type", list(ROUND_TRIP_TOLERANCE))
def test_legacy_quants_round_trip(ggml_type: GGMLQuantizationType) -> None:
    data = np.random.default_rng(0).standard_normal((8, 256)).astype(np.float32)
    packed = quants.quantize(data, ggml_type)
    ours = dequantize(torch.from_numpy(packed).flatten(), ggml_type, (8, 256), torch.float32)
    # Bit-identical to gguf-py's implementation, and close to the data it encodes.
    assert torch.equal(ours, torch.from_numpy(quants.dequantize(packed, ggml_type)))
    assert (ours - torch.from_numpy(data)).abs().max() < ROUND_TRIP_TOLERANCE[ggml_type]


def _random_blocks(ggml_type: GGMLQuantizationType, num_blocks: int, seed: int) -> np.ndarray:
    """Random K-quant blocks with finite, small f16 super-block scales."""
    _, type_size = GGML_QUANT_SIZES[ggml_type]
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 256, size=(num_blocks, type_size), dtype=np.uint8)
    scales = rng.uniform(0.001, 0.05, size=(num_blocks, 2)).astype(np.float16).view(np.uint8)
    if ggml_type == T.Q6_K:
        blocks[:, -2:] = scales[:, :2]  # d is the block's last field
    else:
        blocks[:, :4] = scales  # d, dmin lead the block
    return blocks


def _f16(b: np.ndarray) -> float:
    return float(b[:2].copy().view(np.float16)[0])


def _scale_min_k4(j: int, scales: np.ndarray) -> tuple[int, int]:
    """ggml's get_scale_min_k4: 6-bit scale and min of sub-block j from the 12 packed bytes."""
    s = [int(x) for x in scales]
    if j < 4:
        return s[j] & 63, s[j + 4] & 63
    return (s[j + 4] & 0xF) | ((s[j - 4] >> 6) << 4), (s[j + 4] >> 4) | ((s[j] >> 6) << 4)


def _reference_q4_k(block: np.ndarray) -> list[float]:
    d, dmin, scales, qs = _f16(block[0:2]), _f16(block[2:4]), block[4:16], block[16:144]
    out = []
    for chunk in range(4):  # 64 values: low nibbles then high nibbles of 32 bytes
        q = qs[32 * chunk : 32 * chunk + 32]
        for half, shift in ((0, 0), (1, 4)):
            sc, m = _scale_min_k4(2 * chunk + half, scales)
            out += [d * sc * ((int(b) >> shift) & 0xF) - dmin * m for b in q]
    return out


def _reference_q5_k(block: np.ndarray) -> list[float]:
    d, dmin, scales = _f16(block[0:2]), _f16(block[2:4]), block[4:16]
    qh, qs = block[16:48], block[48:176]
    out = []
    for chunk in range(4):
        q = qs[32 * chunk : 32 * chunk + 32]
        for half, shift in ((0, 0), (1, 4)):
            sc, m = _scale_min_k4(2 * chunk + half, scales)
            high_bit = 1 << (2 * chunk + half)
            out += [
                d * sc * (((int(b) >> shift) & 0xF) + (16 if int(h) & high_bit else 0)) - dmin * m
                for b, h in zip(q, qh, strict=True)
            ]
    return out


def _reference_q6_k(block: np.ndarray) -> list[float]:
    ql, qh, scales = block[0:128], block[128:192], block[192:208].view(np.int8)
    d = _f16(block[208:210])
    out = [0.0] * 256
    for n in range(2):  # two halves of 128 values
        lo, hi, sc = ql[64 * n :], qh[32 * n :], scales[8 * n :]
        for i in range(32):
            s = i // 16
            q1 = ((int(lo[i]) & 0xF) | (((int(hi[i]) >> 0) & 3) << 4)) - 32
            q2 = ((int(lo[i + 32]) & 0xF) | (((int(hi[i]) >> 2) & 3) << 4)) - 32
            q3 = ((int(lo[i]) >> 4) | (((int(hi[i]) >> 4) & 3) << 4)) - 32
            q4 = ((int(lo[i + 32]) >> 4) | (((int(hi[i]) >> 6) & 3) << 4)) - 32
            base = 128 * n + i
            out[base] = d * int(sc[s]) * q1
            out[base + 32] = d * int(sc[s + 2]) * q2
            out[base + 64] = d * int(sc[s + 4]) * q3
            out[base + 96] = d * int(sc[s + 6]) * q4
    return out


K_QUANT_REFERENCES = {T.Q4_K: _reference_q4_k, T.Q5_K: _reference_q5_k, T.Q6_K: _reference_q6_k}


@pytest.mark.parametrize("ggml_type", list(K_QUANT_REFERENCES))
def test_k_quants_match_the_spec(ggml_type: GGMLQuantizationType) -> None:
    blocks = _random_blocks(ggml_type, num_blocks=4, seed=int(ggml_type))
    ours = dequantize(torch.from_numpy(blocks).flatten(), ggml_type, (2, 512), torch.float32)
    expected = [v for block in blocks for v in K_QUANT_REFERENCES[ggml_type](block)]
    torch.testing.assert_close(
        ours.flatten(), torch.tensor(expected, dtype=torch.float32), rtol=1e-5, atol=1e-6
    )


# --- llama.cpp layouts of each architecture ----------------------------------------------


def _assert_weights_equal(checkpoint: LoadedCheckpoint, model: Any, atol: float = 0.0) -> None:
    reference = model.state_dict()
    if checkpoint.arch.tie_word_embeddings:
        reference.pop("lm_head.weight")
    assert set(checkpoint.weights) == set(reference)
    for name, weight in checkpoint.weights.items():
        torch.testing.assert_close(weight, reference[name], rtol=0, atol=atol, msg=name)


@pytest.mark.parametrize("kind", ["llama", "qwen2", "qwen3"])
def test_each_architecture_loads_to_the_hf_state_dict(
    kind: str, write_gguf: Any, tiny_hf_model: Any
) -> None:
    model, settings = tiny_hf_model(kind)
    path = write_gguf(kind, settings, model.state_dict())
    checkpoint = load_checkpoint(path, torch.float32)
    _assert_weights_equal(checkpoint, model)  # q/k rows are un-permuted for llama
    arch = checkpoint.arch
    assert arch.architecture == {"llama": "Llama", "qwen2": "Qwen2", "qwen3": "Qwen3"}[kind] + (
        "ForCausalLM"
    )
    assert arch.head_dim == settings.get("head_dim", 16)
    assert (arch.num_heads, arch.num_kv_heads, arch.vocab_size) == (4, 2, 300)
    assert arch.attention_bias == (kind == "qwen2")
    assert arch.qk_norm == (kind == "qwen3")
    assert not arch.tie_word_embeddings
    assert checkpoint.tokenizer.encode("hehe") == [256, 256]


def test_tied_embeddings_have_no_lm_head(write_gguf: Any, tiny_hf_model: Any) -> None:
    model, settings = tiny_hf_model("llama", tie_word_embeddings=True)
    path = write_gguf("llama", settings, model.state_dict(), skip=("lm_head.weight",))
    checkpoint = load_checkpoint(path, torch.float32)
    assert checkpoint.arch.tie_word_embeddings
    _assert_weights_equal(checkpoint, model)


def test_quantized_projections_load_dequantized(write_gguf: Any, tiny_hf_model: Any) -> None:
    model, settings = tiny_hf_model("llama", hidden_size=64, intermediate_size=128)
    state = model.state_dict()
    types = {
        "model.layers.0.self_attn.q_proj.weight": T.Q8_0,
        "model.layers.0.self_attn.k_proj.weight": T.Q4_1,
        "model.layers.1.mlp.down_proj.weight": T.Q4_0,
        "model.layers.1.mlp.up_proj.weight": T.Q5_1,
    }
    path = write_gguf("llama", settings, state, types=types)
    checkpoint = load_checkpoint(path, torch.float32)
    for name, ggml_type in types.items():
        # Quantization blocks run along rows and llama.cpp's q/k permutation moves whole rows,
        # so the loaded weight is the row-wise round trip of the HF weight.
        packed = quants.quantize(state[name].numpy(), ggml_type)
        expected = torch.from_numpy(quants.dequantize(packed, ggml_type))
        assert torch.equal(checkpoint.weights[name], expected), name


def _llama3_divisors(theta: float, head_dim: int, scaling: dict[str, float]) -> list[float]:
    """Llama 3.1's published rope scaling, as divisors of each RoPE frequency."""
    orig, low, high = scaling["orig"], scaling["low"], scaling["high"]
    divisors = []
    for i in range(head_dim // 2):
        wavelen = 2 * math.pi * theta ** (2 * i / head_dim)
        if wavelen < orig / high:
            divisors.append(1.0)
        elif wavelen > orig / low:
            divisors.append(scaling["factor"])
        else:
            smooth = (orig / wavelen - low) / (high - low)
            divisors.append(1 / ((1 - smooth) / scaling["factor"] + smooth))
    return divisors


def test_llama3_rope_freqs_become_rope_scaling(write_gguf: Any, tiny_hf_model: Any) -> None:
    model, settings = tiny_hf_model(
        "llama", hidden_size=128, num_attention_heads=2, num_key_value_heads=1, rope_theta=500000.0
    )
    spec = {"factor": 16.0, "low": 1.5, "high": 6.0, "orig": 4096}
    divisors = _llama3_divisors(500000.0, 64, spec)
    freqs = np.array(divisors, dtype=np.float32)
    path = write_gguf(
        "llama", settings, model.state_dict(), extra_tensors={"rope_freqs.weight": (freqs, T.F32)}
    )
    scaling = load_checkpoint(path, torch.float32).arch.rope_scaling
    assert scaling is not None and scaling.kind == "llama3" and scaling.factor == 16.0
    recovered = _llama3_divisors(
        500000.0,
        64,
        {
            "factor": scaling.factor,
            "low": scaling.low_freq_factor,
            "high": scaling.high_freq_factor,
            "orig": scaling.original_max_position_embeddings,
        },
    )
    np.testing.assert_allclose(recovered, divisors, rtol=1e-5)


def test_linear_rope_scaling_from_metadata(write_gguf: Any, tiny_hf_model: Any) -> None:
    model, settings = tiny_hf_model("llama")

    def linear(writer: Any) -> None:
        writer.add_rope_scaling_type(RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(4.0)

    path = write_gguf("llama", settings, model.state_dict(), metadata=linear)
    arch = load_checkpoint(path, torch.float32).arch
    assert arch.rope_scaling == RopeScaling(kind="linear", factor=4.0)


# --- errors name the file and the reason -------------------------------------------------


def test_missing_file(tmp_path: Any) -> None:
    path = str(tmp_path / "absent.gguf")
    with pytest.raises(ModelLoadError, match=r"absent\.gguf"):
        load_checkpoint(path, torch.float32)


@pytest.mark.parametrize(("num_bytes", "reason"), [(100_000, "truncated"), (20 << 20, "truncated")])
def test_truncated_gguf(tmp_path: Any, embedded_path: str, num_bytes: int, reason: str) -> None:
    # 100 kB cuts the vocabulary in the header; 20 MB cuts the tensor data.
    path = tmp_path / "cut.gguf"
    with open(embedded_path, "rb") as src, open(path, "wb") as dst:
        dst.write(src.read(num_bytes))
    with pytest.raises(ModelLoadError, match=f"cut.gguf.*{reason}"):
        load_checkpoint(str(path), torch.float32)


def test_not_a_gguf(tmp_path: Any) -> None:
    path = tmp_path / "text.gguf"
    path.write_text("hello, I am not a model")
    with pytest.raises(ModelLoadError, match=r"text\.gguf.*not a GGUF"):
        load_checkpoint(str(path), torch.float32)


def test_unknown_architecture(write_gguf: Any, tiny_hf_model: Any) -> None:
    model, settings = tiny_hf_model("llama")
    path = write_gguf("falcon", settings, model.state_dict(), name="falcon.gguf")
    with pytest.raises(ModelLoadError, match=r"falcon\.gguf.*architecture 'falcon'"):
        load_checkpoint(path, torch.float32)


def test_missing_tensor(write_gguf: Any, tiny_hf_model: Any) -> None:
    model, settings = tiny_hf_model("llama")
    missing = "model.layers.1.mlp.up_proj.weight"
    path = write_gguf("llama", settings, model.state_dict(), skip=(missing,))
    with pytest.raises(ModelLoadError, match=f"model.gguf.*missing tensors {missing}"):
        load_checkpoint(path, torch.float32)


def test_unsupported_tensor_type(write_gguf: Any, tiny_hf_model: Any) -> None:
    model, settings = tiny_hf_model("llama")
    name = "model.layers.0.mlp.gate_proj.weight"
    block_size, type_size = GGML_QUANT_SIZES[T.IQ4_NL]
    raw = np.zeros((96, 64 // block_size * type_size), dtype=np.uint8)
    path = write_gguf(
        "llama",
        settings,
        model.state_dict(),
        skip=(name,),
        extra_tensors={"blk.0.ffn_gate.weight": (raw, T.IQ4_NL)},
    )
    with pytest.raises(ModelLoadError, match=r"blk\.0\.ffn_gate\.weight is IQ4_NL"):
        load_checkpoint(path, torch.float32)


def test_unknown_pre_tokenizer(write_gguf: Any, tiny_hf_model: Any) -> None:
    model, settings = tiny_hf_model("llama")
    path = write_gguf("llama", settings, model.state_dict(), tokenizer_pre="martian")
    with pytest.raises(ModelLoadError, match="pre-tokenizer 'martian'"):
        load_checkpoint(path, torch.float32)
