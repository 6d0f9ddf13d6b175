"""CPU weight packing: `nn.Linear` layers swapped, after loading, for oneDNN-prepacked ones.

oneDNN multiplies bfloat16 on the CPU's AMX/AVX-512 units from its own blocked weight layout;
given a plain weight it reorders it on every call. Packing once at load time saves that
(measured ~30% of a decode step's matmul time at 1-64 tokens). The model file stays unaware:
the swap happens from outside, as gpt-fast swaps in its quantized linears.
"""

from __future__ import annotations

import functools
import logging

import torch
from torch import nn

from flintlm.kernels import isa

logger = logging.getLogger(__name__)


class PackedLinear(nn.Module):
    """y = x @ W.T + b with W held in oneDNN's blocked layout (not a parameter any more)."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.in_features = linear.in_features
        self.out_features = linear.out_features
        # NOTE: batch size None packs for any number of rows; a fixed hint was no faster at
        # the 1-64 rows of decode steps and slower at others (measured).
        self.packed_weight = torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach(), None)
        self.bias = None if linear.bias is None else linear.bias.detach()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(x, self.packed_weight, self.bias, "none", [],
                                                  "")


class PackedLogits(nn.Module):
    """hidden [R, hidden] -> float32 logits [R, vocab], the output projection packed the same
    way; for tied embeddings this is a second, packed copy of the embedding matrix."""

    def __init__(self, weight: torch.Tensor):
        super().__init__()
        self.packed_weight = torch.ops.mkldnn._reorder_linear_weight(weight.detach(), None)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(hidden, self.packed_weight, None, "none", [],
                                                  "").float()


def can_pack(device: torch.device, dtype: torch.dtype) -> bool:
    """oneDNN packing pays for bfloat16 on a CPU with native bf16 units (AVX-512 BF16 or AMX),
    and is allowed only there: under a forced lower tier (FLINTLM_CPU_ISA) or a capped oneDNN
    (ONEDNN_MAX_CPU_ISA) it refuses to pack, so it is asked once."""
    return (device.type == "cpu" and dtype == torch.bfloat16
            and torch.backends.mkldnn.is_available()
            and (isa.has_flag("avx512_bf16") or isa.has_flag("amx_bf16"))
            and _onednn_packs_bf16())


@functools.cache
def _onednn_packs_bf16() -> bool:
    try:
        torch.ops.mkldnn._reorder_linear_weight(torch.zeros(16, 16, dtype=torch.bfloat16), None)
    except RuntimeError:
        return False
    return True


def pack_linears(model: nn.Module) -> int:
    """Replace every `nn.Linear` inside `model` by a `PackedLinear`; returns how many.

    Only names are collected first, so each plain weight is freed as soon as its packed copy
    replaces it (peak memory: the model plus one layer, not two models)."""
    names = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    for name in names:
        parent_name, _, child_name = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child_name, PackedLinear(getattr(parent, child_name)))
    return len(names)
