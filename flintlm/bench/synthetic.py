"""Synthetic GGUF models: a real model's shape with seeded random weights, quantized as
llama-quantize would store them, for benchmarks of sizes no bundled model has.

The file is laid out as llama.cpp's converter lays out a Llama 3 GGUF (same metadata keys,
Llama 3 rope scaling as a `rope_freqs` tensor, tied embeddings); the tokenizer is borrowed
from the embedded model (synthetic_vocab.py). Never loads or runs a model.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from gguf import (
    GGML_QUANT_SIZES,
    GGML_QUANT_VERSION,
    GGMLQuantizationType,
    GGUFWriter,
    LlamaFileType,
    quants,
)

from flintlm.bench.synthetic_vocab import add_vocabulary, embedded_vocabulary
from flintlm.loading.gguf import llama3_divisors
from flintlm.models.arch import ModelArch, RopeScaling

if TYPE_CHECKING:
    from pathlib import Path

T = GGMLQuantizationType

# meta-llama/Llama-3.2-1B's config.json, number for number.
LLAMA_3_2_1B = ModelArch(
    architecture="LlamaForCausalLM",
    vocab_size=128256,
    hidden_size=2048,
    intermediate_size=8192,
    num_layers=16,
    num_heads=32,
    num_kv_heads=8,
    head_dim=64,
    max_position_embeddings=131072,
    rms_norm_eps=1e-5,
    rope_theta=500000.0,
    rope_scaling=RopeScaling("llama3", factor=32.0, low_freq_factor=1.0, high_freq_factor=4.0,
                             original_max_position_embeddings=8192),
    tie_word_embeddings=True,
    extra={"name": "Llama 3.2 1B (random weights)", "size_label": "1B"},
)
SHAPES = {"llama-3.2-1b": LLAMA_3_2_1B}
WEIGHT_TYPES = {"Q4_0": T.Q4_0, "Q4_1": T.Q4_1, "Q8_0": T.Q8_0}
_FILE_TYPES = {T.Q4_0: LlamaFileType.MOSTLY_Q4_0, T.Q4_1: LlamaFileType.MOSTLY_Q4_1,
               T.Q8_0: LlamaFileType.MOSTLY_Q8_0}  # fmt: skip
# NOTE: llama-quantize stores a tied 2048-wide embedding as Q6_K for Q4_0/Q4_1 files. Q8_0 is
# its choice for Q8_0 files and for the embedded model, and (unlike Q6_K) a type flintlm's
# output kernel reads as stored, so both engines multiply the output head quantized.
EMBEDDING_TYPE = T.Q8_0
# A trained model's scale (HF's initializer_range): activations stay finite through 16 layers.
WEIGHT_STD = 0.02
_CHUNK_ELEMENTS = 1 << 24  # rows are drawn and quantized in pieces of ~64 MB of float32


@dataclass(frozen=True)
class PlannedTensor:
    """One tensor of the file: its GGUF name, torch-order shape and storage type."""

    name: str
    shape: tuple[int, ...]
    ggml_type: GGMLQuantizationType

    @property
    def nbytes(self) -> int:
        block_size, type_size = GGML_QUANT_SIZES[self.ggml_type]
        return int(np.prod(self.shape)) // block_size * type_size


def tensor_plan(arch: ModelArch, weight_type: GGMLQuantizationType) -> list[PlannedTensor]:
    """Every tensor of a GGUF of `arch`, in llama.cpp's names, matrices as `weight_type`."""
    if arch.architecture != "LlamaForCausalLM" or arch.attention_bias or arch.qk_norm:
        raise ValueError(f"synthetic models are plain Llama; {arch.architecture} with bias or "
                         "q/k norm is not supported")  # fmt: skip
    hidden, inter = arch.hidden_size, arch.intermediate_size
    plan = []
    if arch.rope_scaling is not None:
        if arch.rope_scaling.kind != "llama3":
            raise ValueError(f"rope scaling {arch.rope_scaling.kind!r}: only llama3 is written")
        plan.append(PlannedTensor("rope_freqs.weight", (arch.head_dim // 2,), T.F32))
    plan.append(PlannedTensor("token_embd.weight", (arch.vocab_size, hidden), EMBEDDING_TYPE))
    if not arch.tie_word_embeddings:
        plan.append(PlannedTensor("output.weight", (arch.vocab_size, hidden), EMBEDDING_TYPE))
    for i in range(arch.num_layers):
        matrices = {
            "attn_q": (arch.q_size, hidden),
            "attn_k": (arch.kv_size, hidden),
            "attn_v": (arch.kv_size, hidden),
            "attn_output": (hidden, arch.q_size),
            "ffn_gate": (inter, hidden),
            "ffn_up": (inter, hidden),
            "ffn_down": (hidden, inter),
        }
        plan.append(PlannedTensor(f"blk.{i}.attn_norm.weight", (hidden,), T.F32))
        plan += [PlannedTensor(f"blk.{i}.{kind}.weight", shape, weight_type)
                 for kind, shape in matrices.items()]  # fmt: skip
        plan.append(PlannedTensor(f"blk.{i}.ffn_norm.weight", (hidden,), T.F32))
    plan.append(PlannedTensor("output_norm.weight", (hidden,), T.F32))
    return plan


def write_synthetic_gguf(
    arch: ModelArch, weight_type: GGMLQuantizationType, path: Path, seed: int = 0
) -> None:
    """Write a GGUF of `arch` with random weights (normal, std `WEIGHT_STD`; norms 1) to `path`.

    Tensors are drawn, quantized and written one at a time (the 1B shape never holds more than
    one tensor's bytes); the file appears under `path` only once complete.
    """
    if weight_type not in _FILE_TYPES:
        raise ValueError(f"weight type {weight_type.name}: use one of {', '.join(WEIGHT_TYPES)}")
    plan = tensor_plan(arch, weight_type)
    partial = path.with_name(path.name + ".partial")
    writer = GGUFWriter(partial, "llama")
    _add_metadata(writer, arch, weight_type)
    for tensor in plan:
        byte_shape = (*tensor.shape[:-1], tensor.nbytes // int(np.prod(tensor.shape[:-1])))
        writer.add_tensor_info(tensor.name, byte_shape, np.dtype(np.uint8), tensor.nbytes,
                               raw_dtype=tensor.ggml_type)  # fmt: skip
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for index, tensor in enumerate(plan):
        rng = np.random.default_rng([seed, index])  # each tensor its own stream: order-free
        writer.write_tensor_data(_tensor_bytes(tensor, arch, rng))
    writer.close()
    os.replace(partial, path)


def _add_metadata(writer: GGUFWriter, arch: ModelArch, weight_type: GGMLQuantizationType) -> None:
    """The keys convert_hf_to_gguf.py writes for a Llama 3 checkpoint (llama3 rope scaling goes
    in the `rope_freqs` tensor, not in keys)."""
    writer.add_type("model")
    writer.add_name(arch.extra.get("name", "synthetic llama"))
    if "size_label" in arch.extra:
        writer.add_size_label(arch.extra["size_label"])
    writer.add_block_count(arch.num_layers)
    writer.add_context_length(arch.max_position_embeddings)
    writer.add_embedding_length(arch.hidden_size)
    writer.add_feed_forward_length(arch.intermediate_size)
    writer.add_head_count(arch.num_heads)
    writer.add_head_count_kv(arch.num_kv_heads)
    writer.add_rope_freq_base(arch.rope_theta)
    writer.add_layer_norm_rms_eps(arch.rms_norm_eps)
    writer.add_key_length(arch.head_dim)
    writer.add_value_length(arch.head_dim)
    writer.add_file_type(_FILE_TYPES[weight_type])
    writer.add_vocab_size(arch.vocab_size)
    writer.add_rope_dimension_count(arch.head_dim)
    add_vocabulary(writer, embedded_vocabulary(arch.vocab_size))
    writer.add_quantization_version(GGML_QUANT_VERSION)


def _tensor_bytes(
    tensor: PlannedTensor, arch: ModelArch, rng: np.random.Generator
) -> np.ndarray:
    """The stored bytes of one tensor (uint8). Matrices are drawn in row chunks so the float32
    copy of the 128k-row embedding (1 GB) never exists at once.

    NOTE: q/k rows are not permuted for llama.cpp's RoPE layout: a permutation of i.i.d.
    random rows is just as random, so the file is indistinguishable from a converted one.
    """
    if tensor.name == "rope_freqs.weight":
        assert arch.rope_scaling is not None  # tensor_plan adds it only then
        divisors = llama3_divisors(arch.rope_scaling, arch.rope_theta, arch.head_dim)
        return np.asarray(divisors, dtype=np.float32).view(np.uint8)
    if len(tensor.shape) == 1:  # RMSNorm weights
        return np.ones(tensor.shape, dtype=np.float32).view(np.uint8)
    rows, cols = tensor.shape
    out = np.empty((rows, tensor.nbytes // rows), dtype=np.uint8)
    step = max(1, _CHUNK_ELEMENTS // cols)
    for start in range(0, rows, step):
        count = min(step, rows - start)
        values = rng.standard_normal((count, cols), dtype=np.float32)
        values *= WEIGHT_STD
        out[start : start + count] = quants.quantize(values, tensor.ggml_type)
    return out
