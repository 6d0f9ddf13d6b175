"""Paged attention over the block KV cache, with rotary embedding and the KV write, by backend.

The runner lays out each step's tokens as [decode tokens | prefill chunks that continue a cached
context | prefill chunks that start a sequence] and describes them with `BatchLayout`; the
backend turns that into its own metadata once per step, shared by every layer. Each layer
rotates q/k, writes the new K/V into the cache slots, then attends, so a request can read blocks
written earlier in the same step.

Backends (chosen by `attention_backend`):
- `TorchAttention`: pure torch, any device; decode gathers each sequence's blocks.
- `CpuNativeAttention`: flintlm's CPU kernels: rotary + KV write in one pass, and paged
  attention that reads each cached K/V row once, in place (no gather copy), from a cache laid
  out for it (keys transposed per block; see kernels/attention.c).
Chunks that start a sequence use SDPA (flash on CPU and CUDA) in both. Each backend allocates
the KV cache in its own layout, of the dtype asked for (`kv_cache_dtype`: the model's, or
bfloat16 under a float32 model, as llama.cpp keeps float16); nothing outside the backend looks
inside it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import torch
from torch.nn import functional as F

from flintlm.kernels.abi import limit
from flintlm.kernels.ops import lazy_zeros

if TYPE_CHECKING:
    from flintlm.kernels.ops import CpuKernels
    from flintlm.models.layers import RotaryEmbedding

KVCache = tuple[torch.Tensor, torch.Tensor]  # each [num_blocks, block_size, num_kv_heads, head_dim]


@dataclass(slots=True)
class SequenceSlice:
    """One request's rows in the flat batch and the cache blocks holding its context."""

    block_ids: list[int]  # every block of the request, in order
    start_position: int  # position of its first row (0 for a chunk that starts the sequence)
    num_rows: int


@dataclass(slots=True)
class BatchLayout:
    """What the runner schedules: decodes (one row each), then continuing chunks, then fresh
    chunks; positions of the rows follow from `start_position`."""

    sequences: list[SequenceSlice]
    slot_mapping: torch.Tensor  # [num_tokens] int64 flat cache slot of each new token
    block_size: int

    @property
    def num_tokens(self) -> int:
        return self.slot_mapping.shape[0]


@dataclass(slots=True)
class FreshSpan:
    """`num_seqs` consecutive chunks of `length` rows each, from row `start`, that start their
    sequences: each attends only to itself (causally)."""

    start: int
    length: int
    num_seqs: int = 1

    @property
    def end(self) -> int:
        return self.start + self.length * self.num_seqs


@dataclass(slots=True)
class TorchAttentionMetadata:
    slot_mapping: torch.Tensor
    num_decode_tokens: int  # the first rows are single-token decode queries
    decode_block_tables: torch.Tensor | None  # [num_decodes, max_blocks] long
    decode_mask: torch.Tensor | None  # [num_decodes, 1, 1, max_blocks * block_size] bool
    continuing: list[tuple[int, int, torch.Tensor, torch.Tensor]]  # rows, block ids, mask
    fresh: list[FreshSpan]


@dataclass(slots=True)
class NativeAttentionMetadata:
    slot_mapping: torch.Tensor
    num_paged_rows: int  # rows [0, num_paged_rows) read the cache: decodes + continuing chunks
    block_tables: torch.Tensor  # [num_paged_seqs, max_blocks] int32
    row_seq: torch.Tensor  # [num_paged_rows] int32: the block-table row of each paged row
    row_ctx: torch.Tensor  # [num_paged_rows] int32: keys visible to the row (its position + 1)
    fresh: list[FreshSpan]


MetadataT = TypeVar("MetadataT")


class AttentionBackend(Protocol[MetadataT]):
    """`forward` takes the metadata that the same backend's `metadata` built for the step."""

    def allocate_kv_cache(self, num_layers: int, num_blocks: int, block_size: int,
                          num_kv_heads: int, head_dim: int, dtype: torch.dtype,
                          device: torch.device) -> list[KVCache]: ...

    def metadata(self, layout: BatchLayout, device: torch.device) -> MetadataT: ...

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                positions: torch.Tensor, rotary: RotaryEmbedding, kv_cache: KVCache,
                meta: MetadataT, scale: float) -> torch.Tensor: ...


def attention_backend(kernels: CpuKernels | None) -> AttentionBackend[Any]:
    """The CPU kernels' backend when they are loaded, else the torch reference."""
    return TorchAttention() if kernels is None else CpuNativeAttention(kernels)


def paged_row_tables(sequences: list[SequenceSlice]
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """What the native paged attention reads for rows that attend over the cache: int32 block
    tables [S, max blocks] (zero-padded), each row's sequence index and its context length
    (position + 1), rows in the order of `sequences`."""
    tables: list[list[int]] = []
    row_seq: list[int] = []
    row_ctx: list[int] = []
    max_blocks = max((len(s.block_ids) for s in sequences), default=1)
    for index, seq in enumerate(sequences):
        tables.append(seq.block_ids + [0] * (max_blocks - len(seq.block_ids)))
        row_seq += [index] * seq.num_rows
        row_ctx += range(seq.start_position + 1, seq.start_position + seq.num_rows + 1)
    return (torch.tensor(tables or [[0]], dtype=torch.int32),
            torch.tensor(row_seq, dtype=torch.int32), torch.tensor(row_ctx, dtype=torch.int32))


def _fresh_spans(layout: BatchLayout) -> list[FreshSpan]:
    """The chunks that start their sequences, consecutive ones of one length merged (one SDPA
    call for the batch of equal prompts a benchmark or a burst of requests brings)."""
    spans: list[FreshSpan] = []
    row = 0
    for seq in layout.sequences:
        if seq.start_position == 0 and seq.num_rows > 0:
            last = spans[-1] if spans else None
            if last is not None and last.end == row and last.length == seq.num_rows:
                last.num_seqs += 1
            else:
                spans.append(FreshSpan(row, seq.num_rows))
        row += seq.num_rows
    return spans


def _as_cached(x: torch.Tensor, cache: torch.Tensor) -> torch.Tensor:
    """x as the cache holds it: rounded to the cache's dtype where that is narrower, so a
    prompt's own rows see the same K/V values as every later row that reads them back."""
    return x if cache.dtype == x.dtype else x.to(cache.dtype).to(x.dtype)


def _fresh_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, span: FreshSpan,
                     scale: float) -> torch.Tensor:
    """Causal SDPA over the span's chunks; q [T, H, D], k/v [T, KVH, D] (as cached:
    `_as_cached`) -> [rows, H, D]."""
    group = q.shape[1] // k.shape[1]
    rows = slice(span.start, span.end)
    shape = (span.num_seqs, span.length)

    def heads_first(x: torch.Tensor) -> torch.Tensor:  # [rows, heads, D] -> [B, heads, L, D]
        return x[rows].reshape(*shape, *x.shape[1:]).transpose(1, 2)

    # NOTE: 4-D inputs with K/V repeated per query head take SDPA's flash kernel on CPU;
    # 3-D or enable_gqa fall back to the math path (4x slower at 128 tokens, measured).
    keys = heads_first(k).repeat_interleave(group, dim=1)
    values = heads_first(v).repeat_interleave(group, dim=1)
    out = F.scaled_dot_product_attention(heads_first(q), keys, values, is_causal=True,
                                         scale=scale)
    return out.transpose(1, 2).reshape(span.end - span.start, *q.shape[1:])


class TorchAttention:
    """Reference backend: torch ops only, on any device."""

    def allocate_kv_cache(self, num_layers: int, num_blocks: int, block_size: int,
                          num_kv_heads: int, head_dim: int, dtype: torch.dtype,
                          device: torch.device) -> list[KVCache]:
        """[blocks, block_size, kv heads, head_dim] per layer, zeroed."""
        # NOTE: zeros, not empty: masked attention multiplies never-written slots by a zero
        # probability, and 0 * NaN from uninitialised memory would poison the whole row.
        shape = (num_blocks, block_size, num_kv_heads, head_dim)

        def zeros() -> torch.Tensor:
            if device.type == "cpu":
                return lazy_zeros(shape, dtype)
            return torch.zeros(shape, dtype=dtype, device=device)

        return [(zeros(), zeros()) for _ in range(num_layers)]

    def metadata(self, layout: BatchLayout, device: torch.device) -> TorchAttentionMetadata:
        block_size = layout.block_size
        decodes = [s for s in layout.sequences if s.num_rows == 1 and s.start_position > 0]
        tables = mask = None
        if decodes:
            max_blocks = max(len(s.block_ids) for s in decodes)
            tables = torch.tensor([s.block_ids + [0] * (max_blocks - len(s.block_ids))
                                   for s in decodes], dtype=torch.long)
            context_lens = torch.tensor([s.start_position + 1 for s in decodes])
            span = torch.arange(max_blocks * block_size)
            mask = (span.unsqueeze(0) < context_lens.unsqueeze(1))[:, None, None, :]
            tables, mask = tables.to(device), mask.to(device)
        continuing = []
        row = len(decodes)
        for seq in layout.sequences[len(decodes):]:
            if seq.start_position > 0:
                end = seq.start_position + seq.num_rows
                block_ids = torch.tensor(seq.block_ids[:-(-end // block_size)])
                positions = torch.arange(seq.start_position, end)
                # query i sits at position start + i and sees keys 0..start + i
                chunk_mask = torch.arange(end).unsqueeze(0) <= positions.unsqueeze(1)
                continuing.append((row, row + seq.num_rows, block_ids.to(device),
                                   chunk_mask.to(device)))
            row += seq.num_rows
        return TorchAttentionMetadata(layout.slot_mapping, len(decodes), tables, mask,
                                      continuing, _fresh_spans(layout))

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                positions: torch.Tensor, rotary: RotaryEmbedding, kv_cache: KVCache,
                meta: TorchAttentionMetadata, scale: float) -> torch.Tensor:
        """q [T, H*D], k/v [T, KVH*D] (pre-rotary) -> attention output [T, H, D]."""
        k_cache, v_cache = kv_cache
        num_tokens = q.shape[0]
        num_kv_heads, head_dim = k_cache.shape[2:]
        q = q.reshape(num_tokens, -1, head_dim)  # [T, H, D]
        k = k.reshape(num_tokens, num_kv_heads, head_dim)  # [T, KVH, D]
        v = v.reshape(num_tokens, num_kv_heads, head_dim)
        q, k = rotary(positions, q, k)
        k_cache.view(-1, num_kv_heads, head_dim).index_copy_(0, meta.slot_mapping,
                                                             k.to(k_cache.dtype))
        v_cache.view(-1, num_kv_heads, head_dim).index_copy_(0, meta.slot_mapping,
                                                             v.to(v_cache.dtype))
        out = torch.empty_like(q)
        num_decodes = meta.num_decode_tokens
        if num_decodes:
            out[:num_decodes] = self._decode(q[:num_decodes], k_cache, v_cache, meta, scale)
        for start, end, block_ids, mask in meta.continuing:
            keys = k_cache[block_ids].view(-1, num_kv_heads, head_dim)[:mask.shape[1]].to(q.dtype)
            values = (v_cache[block_ids].view(-1, num_kv_heads, head_dim)[:mask.shape[1]]
                      .to(q.dtype))
            out[start:end] = F.scaled_dot_product_attention(
                q[start:end].transpose(0, 1), keys.transpose(0, 1), values.transpose(0, 1),
                attn_mask=mask, scale=scale, enable_gqa=True).transpose(0, 1)
        if meta.fresh:
            k, v = _as_cached(k, k_cache), _as_cached(v, v_cache)
        for span in meta.fresh:
            out[span.start:span.end] = _fresh_attention(q, k, v, span, scale)
        return out

    @staticmethod
    def _decode(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                meta: TorchAttentionMetadata, scale: float) -> torch.Tensor:
        num_decodes, num_heads, head_dim = q.shape
        num_kv_heads = k_cache.shape[2]
        group = num_heads // num_kv_heads
        tables, mask = meta.decode_block_tables, meta.decode_mask
        assert tables is not None and mask is not None  # built whenever there are decode rows
        # [B, max_blocks, block_size, KVH, D] -> [B, KVH, L, D]
        keys = k_cache[tables].flatten(1, 2).transpose(1, 2).to(q.dtype)
        values = v_cache[tables].flatten(1, 2).transpose(1, 2).to(q.dtype)
        q = q.view(num_decodes, num_kv_heads, group, head_dim)  # [B, KVH, G, D]
        scores = torch.matmul(q, keys.transpose(-1, -2)).float() * scale  # [B, KVH, G, L]
        scores.masked_fill_(~mask, float("-inf"))
        probs = scores.softmax(dim=-1).to(values.dtype)
        return torch.matmul(probs, values).view(num_decodes, num_heads, head_dim)


class CpuNativeAttention:
    """flintlm's CPU kernels: fused rotary + KV write, paged attention read in place."""

    # the C kernels' stack arrays (kernels/abi.py)
    MAX_GROUP, MAX_HEAD_DIM, MAX_BLOCK_SIZE = (limit("MAX_GROUP"), limit("MAX_HEAD_DIM"),
                                               limit("MAX_BLOCK"))

    def __init__(self, kernels: CpuKernels):
        self.kernels = kernels

    @classmethod
    def supports(cls, num_heads: int, num_kv_heads: int, head_dim: int, block_size: int) -> bool:
        """Head layouts and block sizes the kernels take (vectors of 16 along both)."""
        return (num_heads // num_kv_heads <= cls.MAX_GROUP and head_dim <= cls.MAX_HEAD_DIM
                and head_dim % 16 == 0 and block_size <= cls.MAX_BLOCK_SIZE
                and block_size % 16 == 0)

    def allocate_kv_cache(self, num_layers: int, num_blocks: int, block_size: int,
                          num_kv_heads: int, head_dim: int, dtype: torch.dtype,
                          device: torch.device) -> list[KVCache]:
        """The kernels' layout (`CpuKernels.allocate_kv_cache`), zeroed, per layer."""
        return [self.kernels.allocate_kv_cache(num_blocks, block_size, num_kv_heads, head_dim,
                                               dtype) for _ in range(num_layers)]

    def metadata(self, layout: BatchLayout, device: torch.device) -> NativeAttentionMetadata:
        paged = [s for s in layout.sequences if s.start_position > 0]
        block_tables, row_seq, row_ctx = paged_row_tables(paged)
        return NativeAttentionMetadata(
            slot_mapping=layout.slot_mapping, num_paged_rows=len(row_seq),
            block_tables=block_tables, row_seq=row_seq, row_ctx=row_ctx,
            fresh=_fresh_spans(layout))

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                positions: torch.Tensor, rotary: RotaryEmbedding, kv_cache: KVCache,
                meta: NativeAttentionMetadata, scale: float) -> torch.Tensor:
        """q [T, H*D], k/v [T, KVH*D] (pre-rotary, row views of one tensor) -> [T, H, D]."""
        k_cache, v_cache = kv_cache
        head_dim = rotary.cos.shape[-1]
        num_kv_heads = k_cache.shape[1]
        q, k = self.kernels.rope_write_kv(q, k, v, positions, rotary.cos, rotary.sin,
                                          meta.slot_mapping, k_cache, v_cache,
                                          q.shape[1] // head_dim, num_kv_heads)
        num_paged = meta.num_paged_rows
        if not meta.fresh:  # the whole batch reads the cache (the usual decode step)
            return self.kernels.paged_attention(q, k_cache, v_cache, meta.block_tables,
                                                meta.row_seq, meta.row_ctx, scale)
        out = torch.empty_like(q)
        if num_paged:
            out[:num_paged] = self.kernels.paged_attention(
                q[:num_paged], k_cache, v_cache, meta.block_tables, meta.row_seq,
                meta.row_ctx, scale)
        k = _as_cached(k, k_cache)
        v = _as_cached(v.reshape(q.shape[0], num_kv_heads, head_dim), v_cache)
        for span in meta.fresh:
            out[span.start:span.end] = _fresh_attention(q, k, v, span, scale)
        return out
