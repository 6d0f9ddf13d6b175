"""GGML tensor bytes -> dense torch tensors, one tensor at a time.

Float types are reinterpreted in place; Q8_0, Q4_0 and Q4_1 (the embedded model's types) are
unpacked in torch, bit-identical to `gguf.quants` and ~1.5x faster; the K-quants and Q5_0/Q5_1
go through `gguf.quants.dequantize`, the maintained reference implementation. Math is float32;
the result is cast to the requested dtype last.
"""

from __future__ import annotations

import torch
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, quants

T = GGMLQuantizationType

FLOAT_TYPES = {T.F32: torch.float32, T.F16: torch.float16, T.BF16: torch.bfloat16}
_VIA_GGUF_QUANTS = frozenset({T.Q5_0, T.Q5_1, T.Q4_K, T.Q5_K, T.Q6_K})
SUPPORTED_TYPES = frozenset(FLOAT_TYPES) | {T.Q8_0, T.Q4_0, T.Q4_1} | _VIA_GGUF_QUANTS
# Types whose blocks are also kept as stored, for the CPU kernels that multiply them directly.
BLOCK_TYPES_KEPT = frozenset({T.Q8_0, T.Q4_0, T.Q4_1})


def dequantize(
    raw: torch.Tensor, ggml_type: GGMLQuantizationType, shape: tuple[int, ...], dtype: torch.dtype
) -> torch.Tensor:
    """Decode `raw` (the stored uint8 bytes of one tensor) into a `shape` tensor of `dtype`.

    Raises:
        ValueError: `ggml_type` is not in `SUPPORTED_TYPES`.
    """
    if ggml_type in FLOAT_TYPES:
        return raw.view(FLOAT_TYPES[ggml_type]).reshape(shape).to(dtype)
    _, type_size = GGML_QUANT_SIZES[ggml_type]
    blocks = raw.reshape(-1, type_size)  # [num_blocks, type_size]
    if ggml_type == T.Q8_0:
        values = _q8_0(blocks)
    elif ggml_type == T.Q4_0:
        values = _q4_0(blocks)
    elif ggml_type == T.Q4_1:
        values = _q4_1(blocks)
    elif ggml_type in _VIA_GGUF_QUANTS:
        values = torch.from_numpy(quants.dequantize(blocks.numpy(), ggml_type))
    else:
        raise ValueError(f"ggml type {ggml_type.name} is not supported")
    return values.reshape(shape).to(dtype)


def _f16_column(blocks: torch.Tensor, start: int) -> torch.Tensor:
    """Bytes [start, start + 2) of each block as one float32 scale: [num_blocks, 1]."""
    return blocks[:, start : start + 2].contiguous().view(torch.float16).float()


def _nibbles(packed: torch.Tensor) -> torch.Tensor:
    """[num_blocks, 16] packed bytes -> [num_blocks, 32] float32 quants in 0..15.

    ggml puts element j in the low nibble of byte j and element j + 16 in its high nibble.
    """
    out = torch.empty((packed.shape[0], 2, packed.shape[1]), dtype=torch.float32)
    out[:, 0].copy_(packed & 0x0F)
    out[:, 1].copy_(packed >> 4)
    return out.view(packed.shape[0], -1)


def _q8_0(blocks: torch.Tensor) -> torch.Tensor:
    # block: f16 scale d, 32 x int8 q; x = d * q
    return blocks[:, 2:].view(torch.int8).float().mul_(_f16_column(blocks, 0))


def _q4_0(blocks: torch.Tensor) -> torch.Tensor:
    # block: f16 scale d, 16 bytes of 4-bit q; x = d * (q - 8)
    return _nibbles(blocks[:, 2:]).sub_(8).mul_(_f16_column(blocks, 0))


def _q4_1(blocks: torch.Tensor) -> torch.Tensor:
    # block: f16 scale d, f16 min m, 16 bytes of 4-bit q; x = d * q + m
    return _nibbles(blocks[:, 4:]).mul_(_f16_column(blocks, 0)).add_(_f16_column(blocks, 2))


def supported_type_names() -> str:
    return ", ".join(sorted(t.name for t in SUPPORTED_TYPES))
