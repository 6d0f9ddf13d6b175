"""The contract every loader returns: a `ModelArch`, HF-named weights and a tokenizer.

Owns the list of parameter names a `ModelArch` implies, so both loaders check their output
against one definition. Reads no files itself.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

    from flintlm.loading.tokenizer import Tokenizer
    from flintlm.models.arch import ModelArch

SUPPORTED_DTYPES = ("float32", "float16", "bfloat16")


class ModelLoadError(Exception):
    """A model could not be loaded; the message names the file and the reason."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


@dataclass(frozen=True)
class QuantizedWeight:
    """A 2-D weight as the file stores it, in GGML blocks of 32 weights along each row."""

    type_name: str  # GGML type: Q4_0, Q4_1 or Q8_0
    blocks: torch.Tensor  # [out_features, in_features / 32 * bytes per block] uint8

    @property
    def shape(self) -> tuple[int, int]:
        """[out_features, in_features] of the weight the blocks hold."""
        from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

        block_size, type_size = GGML_QUANT_SIZES[GGMLQuantizationType[self.type_name]]
        rows, row_bytes = self.blocks.shape
        return rows, row_bytes // type_size * block_size

    def dequantize(self, dtype: torch.dtype) -> torch.Tensor:
        """The dense weight, exactly as the loader dequantizes it."""
        from gguf import GGMLQuantizationType

        from flintlm.loading.dequant import dequantize

        return dequantize(self.blocks.reshape(-1), GGMLQuantizationType[self.type_name],
                          self.shape, dtype)


@dataclass
class LoadedCheckpoint:
    """A model read from disk, ready for the model file to build itself from.

    Invariants: `weights` holds exactly `expected_weight_names(arch)`, each shaped as HF's
    `nn.Linear` ([out_features, in_features]) or 1-D for norms and biases, on CPU, in the dtype
    that was asked for. `lm_head.weight` is absent when `arch.tie_word_embeddings`. Read with
    `dense_matrices=False`, the matrices the kernels multiply as stored may be only in
    `quantized` (never the embedding, which is looked up).
    """

    arch: ModelArch
    weights: dict[str, torch.Tensor]
    tokenizer: Tokenizer
    source: str  # resolved path of the .gguf file or the HF folder
    quantized: dict[str, QuantizedWeight] = field(default_factory=dict)
    """The same weights still in their GGML blocks (GGUF Q4_0/Q4_1/Q8_0 matrices only), for
    kernels that multiply them as stored; rows are in HF order like `weights`."""


def expected_weight_names(arch: ModelArch) -> list[str]:
    """The HF parameter names a checkpoint of `arch` must provide, in model order."""
    names = ["model.embed_tokens.weight"]
    for i in range(arch.num_layers):
        layer = f"model.layers.{i}"
        for proj in ("q_proj", "k_proj", "v_proj", "o_proj"):
            names.append(f"{layer}.self_attn.{proj}.weight")
        if arch.attention_bias:
            names += [f"{layer}.self_attn.{p}.bias" for p in ("q_proj", "k_proj", "v_proj")]
        if arch.qk_norm:
            names += [f"{layer}.self_attn.q_norm.weight", f"{layer}.self_attn.k_norm.weight"]
        names += [f"{layer}.mlp.{p}.weight" for p in ("gate_proj", "up_proj", "down_proj")]
        names += [f"{layer}.input_layernorm.weight", f"{layer}.post_attention_layernorm.weight"]
    names.append("model.norm.weight")
    if not arch.tie_word_embeddings:
        names.append("lm_head.weight")
    return names


def expected_weight_shapes(arch: ModelArch) -> dict[str, tuple[int, ...]]:
    """`{name: shape}` for every name in `expected_weight_names(arch)`."""
    hidden, inter = arch.hidden_size, arch.intermediate_size
    by_suffix = {
        "q_proj.weight": (arch.q_size, hidden),
        "k_proj.weight": (arch.kv_size, hidden),
        "v_proj.weight": (arch.kv_size, hidden),
        "o_proj.weight": (hidden, arch.q_size),
        "q_proj.bias": (arch.q_size,),
        "k_proj.bias": (arch.kv_size,),
        "v_proj.bias": (arch.kv_size,),
        "q_norm.weight": (arch.head_dim,),
        "k_norm.weight": (arch.head_dim,),
        "gate_proj.weight": (inter, hidden),
        "up_proj.weight": (inter, hidden),
        "down_proj.weight": (hidden, inter),
        "layernorm.weight": (hidden,),
        "model.norm.weight": (hidden,),
        "embed_tokens.weight": (arch.vocab_size, hidden),
        "lm_head.weight": (arch.vocab_size, hidden),
    }
    shapes = {}
    for name in expected_weight_names(arch):
        suffix = next(s for s in by_suffix if name.endswith(s))
        shapes[name] = by_suffix[suffix]
    return shapes


def check_weight_shapes(path: str, arch: ModelArch, found: Mapping[str, tuple[int, ...]]) -> None:
    """Raise `ModelLoadError` unless `found` ({HF name: shape}) is exactly what `arch` implies.

    Called before any tensor is read, so a bad file fails fast and names what is wrong.
    """
    shapes = expected_weight_shapes(arch)
    missing = [name for name in shapes if name not in found]
    if missing:
        raise ModelLoadError(path, f"missing tensors {_short_list(missing)}")
    unexpected = [name for name in found if name not in shapes]
    if unexpected:
        raise ModelLoadError(path, f"unexpected tensors {_short_list(unexpected)}")
    for name, shape in shapes.items():
        if tuple(found[name]) != shape:
            got = tuple(found[name])
            raise ModelLoadError(path, f"tensor {name} has shape {got}, the config implies {shape}")


def _short_list(names: list[str], limit: int = 5) -> str:
    shown = ", ".join(names[:limit])
    return f"{shown} (+{len(names) - limit} more)" if len(names) > limit else shown
