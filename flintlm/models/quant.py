"""GGUF-quantized weights kept quantized for small batches, swapped in after loading.

A decode step of a few tokens reads every weight once per step, so its time is the bytes it
reads: the Q4_1 blocks of the embedded model are 5 bits a weight against 16 for bfloat16.
`SmallBatchQuantLinear` multiplies such steps (those `QuantizedSteps` picks) from the quantized
weights with flintlm's CPU kernel, and hands larger ones (prefill, big batches) to the dense
layer it wraps, whose matmuls are compute-bound and faster on AMX. The model file never knows.

Each GGML matrix is repacked once into the kernel's layout (`QuantMatrix`: the 4- or 8-bit
values, float32 scale and offset per block of 32), which holds exactly the same weights. Where
every step takes the quantized path, the loader makes no dense copy at all (a blocks-only
checkpoint); `DequantizedLinear` then stands in for the dense layer, made only if ever called.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.nn import functional as F

from flintlm.kernels.abi import WeightKind
from flintlm.kernels.ops import QuantMatrix

if TYPE_CHECKING:
    from flintlm.kernels.calibrate import DispatchTable
    from flintlm.kernels.ops import CpuKernels
    from flintlm.loading.checkpoint import QuantizedWeight
    from flintlm.models.llama import LlamaForCausalLM

# GGML block layouts: bytes per block of 32, and where the values start after the f16 scales.
_BLOCK_BYTES = {"Q4_0": 18, "Q4_1": 20, "Q8_0": 34}
_VALUES_AT = {"Q4_0": 2, "Q4_1": 4, "Q8_0": 2}
KEPT_TYPES = frozenset(_BLOCK_BYTES)


def repack(weight: QuantizedWeight) -> QuantMatrix | None:
    """GGML blocks -> `QuantMatrix`: the same weights, float16 scales split out; None in the
    (unseen) case where an offset does not fit float16."""
    kind = weight.type_name
    rows = weight.blocks.shape[0]
    blocks = weight.blocks.view(rows, -1, _BLOCK_BYTES[kind])  # [N, K / 32, bytes]

    def f16_field(start: int) -> torch.Tensor:
        return blocks[..., start:start + 2].contiguous().view(torch.float16).squeeze(-1)

    d = f16_field(0)
    values = blocks[..., _VALUES_AT[kind]:].reshape(rows, -1)
    if kind == "Q4_1":
        m = f16_field(2)
    elif kind == "Q4_0":
        m = -8.0 * d  # w = d (q - 8)
    else:  # Q8_0: int8 q stored as q + 128 so the kernel reads unsigned bytes
        values = values.view(torch.int8).to(torch.int16).add_(128).to(torch.uint8)
        m = -128.0 * d
    if not torch.isfinite(m).all():  # -8 d or -128 d beyond float16's range
        return None
    return QuantMatrix(values.contiguous(), d.contiguous(), m.contiguous(), WeightKind[kind])


def interleave(matrix: QuantMatrix) -> QuantMatrix:
    """The same weights regrouped by 16 rows for the int8 kernel (quant_matmul.c): a pure byte
    permutation, since GGML already keeps values j and j + 16 of a block in one byte. Matrices
    whose rows do not split into groups of 16 keep the row layout."""
    n = matrix.out_features
    if matrix.is_interleaved or n % 16:
        return matrix
    num_blocks = matrix.d.shape[1]
    chunks = 4 if matrix.is_4bit else 8  # 4 bytes of each of the 16 rows a chunk
    q = (matrix.q.view(n // 16, 16, num_blocks, chunks, 4)
         .permute(0, 2, 3, 1, 4).reshape(n // 16, -1))  # [groups, blocks * chunks * 16 * 4]

    def by_group(scales: torch.Tensor) -> torch.Tensor:  # [n, blocks] -> [groups, blocks * 16]
        return scales.view(n // 16, 16, num_blocks).transpose(1, 2).reshape(n // 16, -1)

    return QuantMatrix(q.contiguous(), by_group(matrix.d).contiguous(),
                       by_group(matrix.m).contiguous(), matrix.kind, is_interleaved=True)


def dequantize_matrix(matrix: QuantMatrix) -> torch.Tensor:
    """The float32 weight [N, K] a `QuantMatrix` holds (undoing `interleave` and `repack`): bit
    for bit what the loader dequantizes from the GGUF blocks, as d * q + m is exact in float32
    for 4- and 8-bit q and float16 d and m."""
    q, d, m, n = matrix.q, matrix.d, matrix.m, matrix.out_features
    if matrix.is_interleaved:
        num_blocks = d.shape[1] // 16
        chunks = 4 if matrix.is_4bit else 8
        q = (q.view(n // 16, num_blocks, chunks, 16, 4)
             .permute(0, 3, 1, 2, 4).reshape(n, -1))  # [N, K / 32 * bytes per block]

        def by_row(scales: torch.Tensor) -> torch.Tensor:  # [groups, blocks * 16] -> [n, blocks]
            return scales.view(n // 16, num_blocks, 16).transpose(1, 2).reshape(n, num_blocks)

        d, m = by_row(d), by_row(m)
    values = q.view(n, d.shape[1], -1)  # [N, K / 32, 16 or 32 bytes]
    if matrix.is_4bit:  # byte j holds value j in its low nibble and value j + 16 in its high one
        values = torch.cat([values & 0x0F, values >> 4], dim=-1)
    weight = values.float().mul_(d.float().unsqueeze(-1)).add_(m.float().unsqueeze(-1))
    return weight.view(n, -1)


logger = logging.getLogger(__name__)


class DequantizedLinear(nn.Module):
    """The dense layer a blocks-only checkpoint never made: y = x W.T + b with W dequantized
    from the kernel matrices `parts` (stacked in row order) the first time a step needs it, and
    kept from then on. Steps the quantized path takes never touch it."""

    def __init__(self, parts: list[QuantMatrix], bias: torch.Tensor | None, dtype: torch.dtype):
        super().__init__()
        self.parts = parts
        self.bias = bias
        self.dtype = dtype
        self.out_features = sum(part.out_features for part in parts)
        self.in_features = parts[0].d.numel() // parts[0].out_features * 32
        self._weight: torch.Tensor | None = None

    @property
    def is_materialized(self) -> bool:
        return self._weight is not None

    @property
    def weight(self) -> torch.Tensor:
        if self._weight is None:
            logger.warning("a step took the dense path of a layer read as GGUF blocks only: "
                           "dequantizing its %d x %d weight", self.out_features, self.in_features)
            self._weight = torch.cat([dequantize_matrix(p) for p in self.parts]).to(self.dtype)
        return self._weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)


@dataclass(frozen=True)
class QuantizedSteps:
    """Which steps multiply the quantized weights: those of at most `max_tokens` tokens, and
    of those, where a measured dispatch table chose a quantized path (all of them without)."""

    max_tokens: int
    table: DispatchTable | None = None

    def __call__(self, num_tokens: int) -> bool:
        return num_tokens <= self.max_tokens and (self.table is None
                                                  or self.table.is_quantized(num_tokens))


class SmallBatchQuantLinear(nn.Module):
    """The dense linear layer `dense`, with the batches `steps` picks read from the blocks.

    `parts` are the GGML matrices stacked (in row order) into the dense weight.
    """

    def __init__(self, dense: nn.Module, parts: list[QuantMatrix], bias: torch.Tensor | None,
                 kernels: CpuKernels, steps: QuantizedSteps, use_int8: bool):
        super().__init__()
        self.dense = dense
        self.parts = parts
        self.out_features = sum(part.out_features for part in parts)
        self.bias = bias
        self.kernels = kernels
        self.steps = steps
        self.use_int8 = use_int8

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.steps(x.shape[0]) or not x.is_contiguous():
            return self.dense(x)
        out = x.new_empty(x.shape[0], self.out_features)
        column = 0
        for part in self.parts:
            self.kernels.quant_matmul(x, part, out, column, self.use_int8)
            column += part.out_features
        if self.bias is not None:
            out += self.bias
        return out


class SmallBatchQuantLogits(nn.Module):
    """compute_logits (hidden -> float32 logits) with the same split by batch size."""

    def __init__(self, dense: Callable[[torch.Tensor], torch.Tensor], weight: QuantMatrix,
                 kernels: CpuKernels, steps: QuantizedSteps, use_int8: bool):
        super().__init__()
        self.dense = dense
        self.linear = SmallBatchQuantLinear(nn.Identity(), [weight], None, kernels, steps,
                                            use_int8)
        self.steps = steps

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        if not self.steps(hidden.shape[0]) or not hidden.is_contiguous():
            return self.dense(hidden)
        return self.linear(hidden).float()


def _stacked(matrices: list[QuantMatrix]) -> list[QuantMatrix]:
    """Parts of one type stacked into one matrix (fused q/k/v, gate/up): one kernel call, one
    parallel region per step instead of one per part (each costs ~10-20 us, measured)."""
    if len(matrices) == 1 or len({m.kind for m in matrices}) != 1:
        return matrices
    return [QuantMatrix(torch.cat([m.q for m in matrices]), torch.cat([m.d for m in matrices]),
                        torch.cat([m.m for m in matrices]), matrices[0].kind)]


def _kernel_matrices(parts: list[QuantizedWeight | None],
                     use_int8: bool) -> list[QuantMatrix] | None:
    """A layer's GGML parts in the kernels' layout, or None where one is missing, of a type the
    kernels do not read, or cannot be repacked."""
    kept = [p for p in parts if p is not None and p.type_name in KEPT_TYPES]
    if len(kept) != len(parts):
        return None
    repacked = [repack(p) for p in kept]
    matrices = [m for m in repacked if m is not None]
    if len(matrices) != len(repacked):
        return None
    matrices = _stacked(matrices)
    return [interleave(m) for m in matrices] if use_int8 else matrices


def _is_unmade(module: nn.Module) -> bool:
    """A linear layer whose weight a blocks-only checkpoint did not provide (left on meta)."""
    weight = getattr(module, "weight", None)
    return isinstance(weight, torch.Tensor) and weight.is_meta


def _make_from_blocks(module: nn.Module, parts: list[QuantizedWeight | None],
                      dtype: torch.dtype) -> None:
    """Give an unmade layer its dense weight now, from the GGUF blocks (blocks the kernels
    cannot take: an offset beyond float16, never seen in a real file)."""
    blocks = [p for p in parts if p is not None]
    if len(blocks) != len(parts):
        raise RuntimeError("a layer has neither a dense weight nor blocks for all its parts")
    module.weight = nn.Parameter(torch.cat([p.dequantize(dtype) for p in blocks]),
                                 requires_grad=False)


def _replace(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child_name = name.rpartition(".")
    setattr(model.get_submodule(parent_name), child_name, module)


def keep_quantized(model: LlamaForCausalLM, quantized: dict[str, QuantizedWeight],
                   kernels: CpuKernels, steps: QuantizedSteps, use_int8: bool) -> int:
    """Wrap each linear layer of `model` whose checkpoint matrices are all in `quantized` (and of
    a type the kernel reads) in a `SmallBatchQuantLinear`; returns how many were wrapped.
    `use_int8`: int8 activations (the interleaved layout) rather than the exact float product.
    A layer left unmade by a blocks-only checkpoint gets a `DequantizedLinear` as its dense
    path (or, where its blocks cannot be repacked, its dense weight now)."""
    num_wrapped = 0
    for module_name, sources in model.linear_sources().items():
        dense = model.get_submodule(module_name)
        parts = [quantized.get(name + ".weight") for name in sources]
        matrices = _kernel_matrices(parts, use_int8)
        if matrices is None:
            if _is_unmade(dense):
                _make_from_blocks(dense, parts, kernels.dtype)
            continue
        bias = getattr(dense, "bias", None)
        bias = None if bias is None else bias.detach()
        if _is_unmade(dense):
            dense = DequantizedLinear(matrices, bias, kernels.dtype)
        _replace(model, module_name, SmallBatchQuantLinear(dense, matrices, bias, kernels, steps,
                                                           use_int8))
        num_wrapped += 1
    return num_wrapped


def quantized_logits(model: LlamaForCausalLM, dense: Callable[[torch.Tensor], torch.Tensor],
                     quantized: dict[str, QuantizedWeight], kernels: CpuKernels,
                     steps: QuantizedSteps,
                     use_int8: bool) -> Callable[[torch.Tensor], torch.Tensor]:
    """The output projection `dense` with small batches read from its GGML blocks, when stored
    so; an lm_head left unmade by a blocks-only checkpoint is made as in `keep_quantized`."""
    tied = model.arch.tie_word_embeddings
    weight = quantized.get("model.embed_tokens.weight" if tied else "lm_head.weight")
    matrices = _kernel_matrices([weight], use_int8)
    is_head_unmade = not tied and _is_unmade(model.lm_head)
    if matrices is None:
        if is_head_unmade:
            _make_from_blocks(model.lm_head, [weight], kernels.dtype)
        return dense
    if is_head_unmade:  # the dense logits read model.lm_head.weight, made only if ever needed
        _replace(model, "lm_head", DequantizedLinear(matrices, None, kernels.dtype))
    return SmallBatchQuantLogits(dense, matrices[0], kernels, steps, use_int8)
