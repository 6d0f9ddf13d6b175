"""A GGUF file -> `LoadedCheckpoint`: ModelArch from metadata, HF-named dense weights, tokenizer.

Supports GGUF architectures llama (Llama 2/3, SmolLM2, Mistral), qwen2 and qwen3. Tensors are
dequantized one at a time from the mmap, so peak memory is the output plus one tensor.
"""

from __future__ import annotations

import math
import re
from typing import Any

import torch

from flintlm.loading.checkpoint import (
    LoadedCheckpoint,
    ModelLoadError,
    QuantizedWeight,
    check_weight_shapes,
)
from flintlm.loading.dequant import (
    BLOCK_TYPES_KEPT,
    SUPPORTED_TYPES,
    dequantize,
    supported_type_names,
)
from flintlm.loading.gguf_file import GGUFFile, GGUFTensorInfo
from flintlm.loading.gguf_tokenizer import tokenizer_from_gguf
from flintlm.models.arch import ModelArch, RopeScaling

# GGUF architecture -> HF architecture name
_ARCHITECTURES = {
    "llama": "LlamaForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
}
_GLOBAL_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_LAYER_NAMES = {
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm",
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_LAYER_TENSOR = re.compile(r"blk\.(\d+)\.(\w+)\.(weight|bias)")
_ROPE_FREQS = "rope_freqs.weight"
_EMBEDDING = "model.embed_tokens.weight"


def load_gguf(path: str, dtype: torch.dtype, dense_matrices: bool = True) -> LoadedCheckpoint:
    """Read `path` into dense `dtype` weights; `ModelLoadError` names what is wrong with it.

    `dense_matrices=False` (every step multiplies the blocks as stored): where every layer
    matrix is in a block type the kernels read, those matrices and the output head's are kept
    as blocks only, not dequantized too."""
    gguf = GGUFFile(path)
    arch = _arch_from_metadata(gguf)
    names = {info.name: _hf_name(path, info.name) for info in gguf.tensors.values()}
    names.pop(_ROPE_FREQS, None)  # folded into arch.rope_scaling
    # Everything is checked before the first tensor is decoded, so bad files fail fast.
    check_weight_shapes(path, arch, {hf: gguf.tensors[name].shape for name, hf in names.items()})
    _check_types(gguf, names)
    tokenizer = tokenizer_from_gguf(gguf.metadata, path)
    # llama.cpp permutes q/k rows for its RoPE kernel in the llama architecture only.
    rope_heads = {"q_proj": arch.num_heads, "k_proj": arch.num_kv_heads}
    is_permuted = gguf.metadata["general.architecture"] == "llama"
    blocks_only = not dense_matrices and _layer_matrices_kept(gguf)
    weights, quantized = {}, {}
    for name, hf_name in names.items():
        info = gguf.tensors[name]
        blocks = _blocks(gguf, info) if info.ggml_type in BLOCK_TYPES_KEPT else None
        # NOTE: the embedding stays dense: it is looked up by row, never multiplied.
        is_skipped = blocks_only and blocks is not None and hf_name != _EMBEDDING
        weight = None if is_skipped else _dense(gguf, info, dtype)
        heads = rope_heads.get(hf_name.split(".")[-2]) if is_permuted else None
        if heads is not None:
            weight = None if weight is None else _unpermute_rope_rows(weight, heads)
            blocks = None if blocks is None else _unpermute_rope_rows(blocks, heads)
        if weight is not None:
            weights[hf_name] = weight
        if blocks is not None:
            quantized[hf_name] = QuantizedWeight(info.ggml_type.name, blocks)
    return LoadedCheckpoint(arch=arch, weights=weights, tokenizer=tokenizer, source=path,
                            quantized=quantized)


def _layer_matrices_kept(gguf: GGUFFile) -> bool:
    """Whether every decoder-layer matrix is in a block type the kernels read: only then can
    each fused layer (q/k/v, gate/up) be served from blocks alone."""
    return all(info.ggml_type in BLOCK_TYPES_KEPT for name, info in gguf.tensors.items()
               if name.startswith("blk.") and len(info.shape) == 2)


def _blocks(gguf: GGUFFile, info: GGUFTensorInfo) -> torch.Tensor | None:
    """A 2-D tensor's bytes as [rows, bytes per row] (a view of the mmap), or None if not 2-D."""
    if len(info.shape) != 2:
        return None
    return gguf.raw(info.name).view(info.shape[0], -1)


def _check_types(gguf: GGUFFile, names: dict[str, str]) -> None:
    for name in names:
        ggml_type = gguf.tensors[name].ggml_type
        if ggml_type not in SUPPORTED_TYPES:
            raise ModelLoadError(
                gguf.path,
                f"tensor {name} is {ggml_type.name}; supported types are {supported_type_names()}",
            )


def _unpermute_rope_rows(weight: torch.Tensor, num_heads: int) -> torch.Tensor:
    """Undo llama.cpp's q/k row order for its interleaved RoPE, back to HF's rotate-half order.

    Per head, llama.cpp stores row pairs (i, i + head_dim/2) next to each other:
    HF rows   [0, 1, ..., h/2-1 | h/2, ..., h-1]   -> GGUF rows [0, h/2, 1, h/2+1, ...]
    so viewing each head as [h/2, 2] and transposing to [2, h/2] restores HF's order.
    """
    rows = weight.shape[0]
    tail = weight.shape[1:]
    per_head = weight.reshape(num_heads, rows // num_heads // 2, 2, *tail)  # [heads, h/2, 2, ...]
    return per_head.transpose(1, 2).reshape(rows, *tail).contiguous()


def _dense(gguf: GGUFFile, info: GGUFTensorInfo, dtype: torch.dtype) -> torch.Tensor:
    return dequantize(gguf.raw(info.name), info.ggml_type, info.shape, dtype)


def _hf_name(path: str, gguf_name: str) -> str:
    if gguf_name in _GLOBAL_NAMES or gguf_name == _ROPE_FREQS:
        return _GLOBAL_NAMES.get(gguf_name, gguf_name)
    match = _LAYER_TENSOR.fullmatch(gguf_name)
    if match is None or match.group(2) not in _LAYER_NAMES:
        raise ModelLoadError(path, f"unexpected tensor {gguf_name}")
    layer, kind, param = match.groups()
    return f"model.layers.{layer}.{_LAYER_NAMES[kind]}.{param}"


def _arch_from_metadata(gguf: GGUFFile) -> ModelArch:
    meta, path = gguf.metadata, gguf.path
    gguf_arch = meta.get("general.architecture")
    if gguf_arch not in _ARCHITECTURES:
        supported = ", ".join(_ARCHITECTURES)
        raise ModelLoadError(path, f"architecture {gguf_arch!r} is not supported ({supported})")

    def key(name: str, default: Any = None) -> Any:
        value = meta.get(f"{gguf_arch}.{name}", default)
        if value is None:
            raise ModelLoadError(path, f"missing metadata {gguf_arch}.{name}")
        return value

    hidden = int(key("embedding_length"))
    num_heads = int(key("attention.head_count"))
    embed = gguf.tensors.get("token_embd.weight")
    vocab_size = embed.shape[0] if embed else len(meta.get("tokenizer.ggml.tokens", ()))
    return ModelArch(
        architecture=_ARCHITECTURES[gguf_arch],
        vocab_size=int(meta.get(f"{gguf_arch}.vocab_size", vocab_size)),
        hidden_size=hidden,
        intermediate_size=int(key("feed_forward_length")),
        num_layers=int(key("block_count")),
        num_heads=num_heads,
        num_kv_heads=int(key("attention.head_count_kv", num_heads)),
        head_dim=int(key("attention.key_length", hidden // num_heads)),
        max_position_embeddings=int(key("context_length")),
        rms_norm_eps=float(key("attention.layer_norm_rms_epsilon", 1e-6)),
        rope_theta=float(key("rope.freq_base", 10000.0)),
        rope_scaling=_rope_scaling(gguf, gguf_arch),
        tie_word_embeddings="output.weight" not in gguf.tensors,
        attention_bias="blk.0.attn_q.bias" in gguf.tensors,
        qk_norm="blk.0.attn_q_norm.weight" in gguf.tensors,
        sliding_window=meta.get(f"{gguf_arch}.attention.sliding_window"),
        extra={"gguf_architecture": gguf_arch, "name": meta.get("general.name")},
    )


def _rope_scaling(gguf: GGUFFile, gguf_arch: str) -> RopeScaling | None:
    meta = gguf.metadata
    kind = meta.get(f"{gguf_arch}.rope.scaling.type", "none")
    factor = float(meta.get(f"{gguf_arch}.rope.scaling.factor", 1.0))
    if _ROPE_FREQS in gguf.tensors:
        return _llama3_scaling_from_freqs(gguf, gguf_arch)
    if kind == "none" or (kind == "linear" and factor == 1.0):
        return None
    if kind == "linear":
        return RopeScaling(kind="linear", factor=factor)
    raise ModelLoadError(gguf.path, f"rope scaling {kind!r} is not supported (linear, llama3)")


def _llama3_scaling_from_freqs(gguf: GGUFFile, gguf_arch: str) -> RopeScaling | None:
    """Recover Llama 3 rope scaling from llama.cpp's `rope_freqs` (one divisor per frequency).

    llama3 scaling divides frequency i by 1 (short wavelengths), by `factor` (long ones), and in
    between by 1 / ((1 - s) / factor + s) where s = orig / (wavelen * (high - low)) - low / (high
    - low) is linear in 1 / wavelen. Two in-between points give that line; only the ratios
    orig/low and orig/high matter, so orig is taken from metadata (or 8192) and low/high
    follow. The fit is checked against every stored divisor.
    """
    meta, path = gguf.metadata, gguf.path
    info = gguf.tensors[_ROPE_FREQS]
    divisors = _dense(gguf, info, torch.float64).flatten().tolist()
    head_dim = 2 * len(divisors)
    theta = float(meta.get(f"{gguf_arch}.rope.freq_base", 10000.0))
    inv_wavelens = [theta ** (-2 * i / head_dim) / (2 * math.pi) for i in range(len(divisors))]
    factor = max(divisors)
    if factor <= 1.0 + 1e-6:
        return None  # all divisors 1: plain RoPE
    between = [
        (inv, (1 / d - 1 / factor) / (1 - 1 / factor))
        for inv, d in zip(inv_wavelens, divisors, strict=True)
        if 1.0 + 1e-4 < d < factor - 1e-4
    ]
    orig = int(meta.get(f"{gguf_arch}.rope.scaling.original_context_length", 8192))
    if len(between) >= 2:
        (x0, s0), (x1, s1) = between[0], between[-1]
        slope = (s1 - s0) / (x1 - x0)  # = orig / (high - low)
        intercept = s0 - slope * x0  # = -low / (high - low)
        span = orig / slope
        low, high = -intercept * span, (1 - intercept) * span
    else:  # no in-between band stored: the standard Llama 3 band edges
        low, high = 1.0, 4.0
    scaling = RopeScaling("llama3", factor, low, high, orig)
    expected = llama3_divisors(scaling, theta, head_dim)
    if any(abs(a - b) > 1e-3 * b for a, b in zip(expected, divisors, strict=True)):
        raise ModelLoadError(path, "rope_freqs does not follow Llama 3 rope scaling")
    return scaling


def llama3_divisors(scaling: RopeScaling, theta: float, head_dim: int) -> list[float]:
    """How much llama3 scaling divides each of the head_dim/2 RoPE frequencies by."""
    low_wavelen = scaling.original_max_position_embeddings / scaling.low_freq_factor
    high_wavelen = scaling.original_max_position_embeddings / scaling.high_freq_factor
    divisors = []
    for i in range(head_dim // 2):
        wavelen = 2 * math.pi * theta ** (2 * i / head_dim)
        if wavelen < high_wavelen:
            divisors.append(1.0)
        elif wavelen > low_wavelen:
            divisors.append(scaling.factor)
        else:
            span = scaling.high_freq_factor - scaling.low_freq_factor
            smooth = scaling.original_max_position_embeddings / wavelen - scaling.low_freq_factor
            smooth /= span
            divisors.append(1 / ((1 - smooth) / scaling.factor + smooth))
    return divisors


def read_gguf_arch(path: str) -> tuple[ModelArch, str | None]:
    """The architecture of a GGUF file from its metadata alone (no tensor is read), and the
    block type of its layer matrices when the CPU kernels read that type as stored."""
    gguf = GGUFFile(path)
    info = gguf.tensors.get("blk.0.ffn_gate.weight")
    if info is None or info.ggml_type not in BLOCK_TYPES_KEPT:
        return _arch_from_metadata(gguf), None
    return _arch_from_metadata(gguf), info.ggml_type.name
