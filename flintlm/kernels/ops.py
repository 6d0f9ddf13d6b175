"""Torch-facing wrappers of the CPU kernels: check shapes, allocate outputs, pass pointers.

`CpuKernels.create(device, dtype, mode)` returns None wherever the native kernels do not apply
(another device or dtype, no compiler, `mode="torch"`); callers then take their torch path.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass

import torch

from flintlm.kernels import native
from flintlm.kernels.abi import KVKind, WeightKind, limit

logger = logging.getLogger(__name__)

KERNEL_MODES = ("auto", "native", "torch")
_QBLOCK = limit("QBLOCK")
_MAX_K = limit("QBLOCK") * limit("MAX_QBLOCKS")  # K a quantized matmul takes
_FIXED_OFFSET = {WeightKind.Q8_0: -128.0, WeightKind.Q4_0: -8.0}  # m / d where m is not stored
KV_KINDS = {torch.float32: KVKind.F32, torch.bfloat16: KVKind.BF16}  # cache dtypes the kernels read


@dataclass(frozen=True)
class QuantMatrix:
    """A quantized weight [N, K] in a layout `quant_matmul` reads: w = d * q + m per block of
    32 along K (see quant_matmul.c). Built by models/quant.py from the GGUF's blocks.

    Row layout: q [N, K / 2] uint8 (4-bit: two values a byte) or [N, K] uint8 (q + 128), d and m
    [N, K / 32]. Interleaved (the int8 path's, `is_interleaved`): the same bytes regrouped by 16
    rows, q [N / 16, K / 32, 256 or 512], d and m [N / 16, K / 32, 16].

    Invariant: for Q4_0 and Q8_0, m is exactly -8 d and -128 d (the tiles that fold the offset
    never read m, so another m would give another result per tier): checked here.
    """

    q: torch.Tensor
    d: torch.Tensor  # float16
    m: torch.Tensor  # float16
    kind: WeightKind
    is_interleaved: bool = False

    def __post_init__(self) -> None:
        _require_contiguous(self.q, self.d, self.m)
        fixed = _FIXED_OFFSET.get(self.kind)
        if fixed is not None and not torch.equal(self.m, self.d * fixed):
            raise ValueError(f"a {self.kind.name} QuantMatrix needs m = {fixed:g} d exactly; "
                             "store other offsets as Q4_1")

    @property
    def is_4bit(self) -> bool:
        return self.kind != WeightKind.Q8_0

    @functools.cached_property
    def pointers(self) -> tuple[int, int, int]:
        """(q, d, m) data pointers, taken once: the tensors never move."""
        return self.q.data_ptr(), self.d.data_ptr(), self.m.data_ptr()

    @property
    def out_features(self) -> int:
        return self.q.shape[0] * 16 if self.is_interleaved else self.q.shape[0]

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.q, self.d, self.m))


class CpuKernels:
    """Fused kernels for tensors of one dtype on the CPU.

    Invariants: every tensor argument is on the CPU, of `dtype` (index tensors int32/int64 as
    documented), with a contiguous last dimension; rows may be strided where a stride is taken.
    """

    def __init__(self, library: native.NativeLibrary, dtype: torch.dtype):
        self.dtype = dtype
        self.tier = library.tier
        self.has_int8_dot = library.has_int8_dot
        self._paged_attention = library.function("paged_attention", dtype)
        self._rope_write_kv = library.function("rope_write_kv", dtype)
        self._add_rms_norm = library.function("add_rms_norm", dtype)
        self._silu_and_mul = library.function("silu_and_mul", dtype)
        self._quant_matmul = library.function("quant_matmul", dtype)
        self._decode_step = library.function("decode_step", dtype)
        self._argmax_rows = library.argmax_rows

    @classmethod
    def create(cls, device: torch.device, dtype: torch.dtype, mode: str = "auto"
               ) -> CpuKernels | None:
        """The kernels for `device`/`dtype`, or None for the torch path.

        Raises:
            ValueError: `mode="native"` where they cannot be used.
        """
        if mode not in KERNEL_MODES:
            raise ValueError(f"kernels={mode!r} is not one of {', '.join(KERNEL_MODES)}")
        if mode == "torch":
            return None
        usable = device.type == "cpu" and dtype in native.SUFFIXES
        library = native.load() if usable else None
        if library is None:
            if mode == "native":
                raise ValueError(f"kernels='native' needs the CPU kernels, which are not "
                                 f"available for {device.type}/{dtype}; use kernels='auto'")
            return None
        return cls(library, dtype)

    def argmax(self, logits: torch.Tensor) -> torch.Tensor:
        """logits [R, V] float32 (whatever the kernels' dtype) -> [R] int64 index of each row's
        maximum (the first on ties, as torch.argmax)."""
        _require_contiguous(logits)
        if logits.dtype != torch.float32:
            raise ValueError("argmax takes float32 logits")
        out = torch.empty(logits.shape[0], dtype=torch.long)
        self._argmax_rows(logits.data_ptr(), logits.shape[0], logits.shape[1], out.data_ptr())
        return out

    # -- the KV cache in the kernels' layout (attention.c) ---------------------------------------

    @staticmethod
    def pair(kv_dtype: torch.dtype) -> int:
        """Elements per pair in the cache layout: 2 for bfloat16 (pairs of a 32-bit lane)."""
        return 2 if kv_dtype == torch.bfloat16 else 1

    def allocate_kv_cache(self, num_blocks: int, block_size: int, num_kv_heads: int,
                          head_dim: int, kv_dtype: torch.dtype | None = None
                          ) -> tuple[torch.Tensor, torch.Tensor]:
        """Zeroed K [blocks, kv heads, head_dim / P, block_size, P] and V [blocks, kv heads,
        block_size / P, head_dim, P] of `kv_dtype` (float32 or bfloat16, whatever the kernels'
        dtype; default: theirs)."""
        kv_dtype = kv_dtype or self.dtype
        if kv_dtype not in KV_KINDS:
            raise ValueError(f"the CPU kernels keep a float32 or bfloat16 KV cache, not {kv_dtype}")
        pair = self.pair(kv_dtype)
        keys = lazy_zeros((num_blocks, num_kv_heads, head_dim // pair, block_size, pair),
                          kv_dtype)
        values = lazy_zeros((num_blocks, num_kv_heads, block_size // pair, head_dim, pair),
                            kv_dtype)
        return keys, values

    def from_token_major(self, k_cache: torch.Tensor, v_cache: torch.Tensor
                         ) -> tuple[torch.Tensor, torch.Tensor]:
        """[blocks, block_size, kv heads, head_dim] caches (the torch backend's layout) -> this
        layout, of the given caches' dtype; for tests and tools."""
        return kv_cache_from_token_major(k_cache, v_cache, self.pair(k_cache.dtype))

    # -- layers ----------------------------------------------------------------------------------

    def add_rms_norm(self, x: torch.Tensor | None, residual: torch.Tensor, weight: torch.Tensor,
                     eps: float) -> torch.Tensor:
        """residual += x (in place, when x is given); returns rmsnorm(residual) * weight."""
        num_tokens, size = residual.shape
        _require_contiguous(residual, weight, *(() if x is None else (x,)))
        out = torch.empty_like(residual)
        self._add_rms_norm(None if x is None else x.data_ptr(), residual.data_ptr(),
                           weight.data_ptr(), out.data_ptr(), num_tokens, size, eps)
        return out

    def silu_and_mul(self, gate_up: torch.Tensor) -> torch.Tensor:
        """gate_up [T, 2I] -> silu(gate) * up [T, I]."""
        _require_contiguous(gate_up)
        num_tokens, width = gate_up.shape
        out = gate_up.new_empty(num_tokens, width // 2)
        self._silu_and_mul(gate_up.data_ptr(), out.data_ptr(), num_tokens, width // 2)
        return out

    def rope_write_kv(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                      positions: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                      slot_mapping: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                      num_heads: int, num_kv_heads: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Rotate q [T, H*D] and k [T, KVH*D] (row-strided views of one tensor, as the fused
        qkv projection gives them), write rotated k and v into the cache slots (caches from
        `allocate_kv_cache`, of either cache dtype).

        Returns q [T, H, D] and k [T, KVH, D] rotated, contiguous.
        """
        num_tokens = q.shape[0]
        head_dim = cos.shape[-1]
        block_size = k_cache.shape[3]
        row_stride = q.stride(0)
        if not (k.stride(0) == v.stride(0) == row_stride and q.stride(1) == k.stride(1) ==
                v.stride(1) == 1):
            raise ValueError("rope_write_kv needs q, k, v as row views of one tensor")
        _require_contiguous(positions, cos, sin, slot_mapping, k_cache, v_cache)
        q_out = q.new_empty(num_tokens, num_heads, head_dim)
        k_out = k.new_empty(num_tokens, num_kv_heads, head_dim)
        self._rope_write_kv(q.data_ptr(), k.data_ptr(), v.data_ptr(), row_stride,
                            positions.data_ptr(), cos.data_ptr(), sin.data_ptr(),
                            slot_mapping.data_ptr(), q_out.data_ptr(), k_out.data_ptr(),
                            k_cache.data_ptr(), v_cache.data_ptr(), kv_kind(k_cache, v_cache),
                            num_tokens, num_heads,
                            num_kv_heads, head_dim, block_size)
        return q_out, k_out

    def paged_attention(self, q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                        block_tables: torch.Tensor, row_seq: torch.Tensor,
                        row_ctx: torch.Tensor, scale: float) -> torch.Tensor:
        """q [R, H, D] -> out [R, H, D]: row r attends to the first row_ctx[r] tokens of the
        sequence whose blocks are block_tables[row_seq[r]] (int32 tensors)."""
        _require_contiguous(q, k_cache, v_cache, block_tables, row_seq, row_ctx)
        num_rows, num_heads, head_dim = q.shape
        _num_blocks, num_kv_heads, _, block_size, _ = k_cache.shape
        out = torch.empty_like(q)
        self._paged_attention(q.data_ptr(), k_cache.data_ptr(), v_cache.data_ptr(),
                              kv_kind(k_cache, v_cache), block_tables.data_ptr(),
                              row_seq.data_ptr(), row_ctx.data_ptr(), out.data_ptr(), num_rows,
                              num_heads, num_kv_heads, head_dim, block_size,
                              block_tables.shape[1], scale)
        return out


    def quant_matmul(self, x: torch.Tensor, weight: QuantMatrix, out: torch.Tensor, col0: int,
                     use_int8: bool) -> None:
        """out[:, col0:col0 + N] = x @ W.T, reading W quantized.

        Args:
            x: [rows, K] activations, K a multiple of 32 (<= 32768).
            out: [rows, >= col0 + N], written in place.
            use_int8: quantize x to int8 per block of 32 (integer dot products where the tier
                has them, `has_int8_dot`; as llama.cpp); else multiply x in float32, exactly as
                the dense path. The interleaved layout is read by the int8 path only.

        Raises:
            MemoryError: the kernel could not allocate its activation buffer.
        """
        _require_contiguous(x, out)
        rows, k = x.shape
        if k % _QBLOCK or k > _MAX_K:
            raise ValueError(f"quant_matmul takes K % {_QBLOCK} == 0, K <= {_MAX_K}")
        if weight.is_interleaved and not use_int8:
            raise ValueError("an interleaved QuantMatrix is read by the int8 path only")
        q, d, m = weight.pointers
        status = self._quant_matmul(x.data_ptr(), rows, k, q, d, m, int(weight.kind),
                                    int(weight.is_interleaved), weight.out_features,
                                    out.data_ptr(), out.stride(0), col0, int(use_int8))
        _raise_if_unallocated(status, "quant_matmul")

    def decode_step(self, layers_address: int, num_layers: int, batch_address: int,
                    residual: torch.Tensor, hidden: torch.Tensor, scratch: torch.Tensor) -> None:
        """Every layer of a small decode batch in one call (decode_step.c); the layer table and
        batch description are ctypes structures built by models/fast_decode.py."""
        _require_contiguous(residual, hidden, scratch)
        status = self._decode_step(layers_address, num_layers, batch_address,
                                   residual.data_ptr(), hidden.data_ptr(), scratch.data_ptr())
        _raise_if_unallocated(status, "decode_step")


def kv_cache_from_token_major(k_cache: torch.Tensor, v_cache: torch.Tensor, pair: int
                              ) -> tuple[torch.Tensor, torch.Tensor]:
    """`CpuKernels.from_token_major` for a given pair size, without a loaded library (for the
    tests of builds the host cannot load, such as ARM64 under emulation)."""
    num_blocks, block_size, num_kv_heads, head_dim = k_cache.shape
    keys = (k_cache.permute(0, 2, 3, 1)  # [blocks, heads, dim, tokens]
            .reshape(num_blocks, num_kv_heads, head_dim // pair, pair, block_size)
            .transpose(3, 4).contiguous())
    values = (v_cache.permute(0, 2, 1, 3)  # [blocks, heads, tokens, dim]
              .reshape(num_blocks, num_kv_heads, block_size // pair, pair, head_dim)
              .transpose(3, 4).contiguous())
    return keys, values


def lazy_zeros(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """A zeroed CPU tensor whose pages the OS maps on first write (calloc, through numpy).

    NOTE: torch.zeros writes every page at once: a 512 MiB KV cache cost ~0.4 s of start-up
    and was resident from the first second; this way memory follows the cache's use.
    """
    import numpy as np

    itemsize = torch.empty((), dtype=dtype).element_size()
    raw = np.zeros(int(np.prod(shape)) * itemsize, dtype=np.uint8)
    return torch.from_numpy(raw).view(dtype).view(shape)


def kv_kind(k_cache: torch.Tensor, v_cache: torch.Tensor) -> int:
    """The kernels' `kv_kind` of a cache pair (`allocate_kv_cache`'s); raises ValueError for
    dtypes they do not read."""
    kind = KV_KINDS.get(k_cache.dtype)
    if kind is None or v_cache.dtype != k_cache.dtype:
        raise ValueError(f"KV caches of {k_cache.dtype}/{v_cache.dtype}: the CPU kernels read "
                         "float32 or bfloat16 pairs")
    return int(kind)


def _raise_if_unallocated(status: int, kernel: str) -> None:
    """A kernel's nonzero status: it could not allocate its working memory, wrote nothing."""
    if status != 0:
        raise MemoryError(f"CPU kernel {kernel} could not allocate its working memory")


def _require_contiguous(*tensors: torch.Tensor) -> None:
    for tensor in tensors:
        if not tensor.is_contiguous():
            raise ValueError(f"CPU kernel argument of shape {tuple(tensor.shape)} is not "
                             "contiguous")
