"""Paged attention over the block KV cache: a pure-torch path that runs on CPU and CUDA.

The runner lays out each step's tokens as [decode tokens | prefill chunks] and builds one
`AttentionMetadata` per step (shared by every layer). Each layer first writes its new K/V into the
cache slots, then attends, so a request can read blocks another request wrote in the same step.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.nn import functional as F


@dataclass(slots=True)
class PrefillSpan:
    """One request's chunk of query tokens: rows [start, end) of the flat batch."""

    start: int
    end: int
    num_context_tokens: int  # tokens attended to by the chunk's last query (cached + chunk)
    block_ids: torch.Tensor | None  # [num_blocks] when earlier tokens are read from the cache
    mask: torch.Tensor | None  # [chunk, context] bool, None when the chunk starts the sequence


@dataclass(slots=True)
class AttentionMetadata:
    slot_mapping: torch.Tensor  # [num_tokens] flat cache slot of each new token
    num_decode_tokens: int  # the first rows of the batch are single-token decode queries
    decode_block_tables: torch.Tensor | None  # [num_decodes, max_blocks]
    decode_mask: torch.Tensor | None  # [num_decodes, 1, 1, max_blocks * block_size] bool
    prefills: list[PrefillSpan]


def write_kv(k_cache: torch.Tensor, v_cache: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
             slot_mapping: torch.Tensor) -> None:
    # caches [num_blocks, block_size, num_kv_heads, head_dim]; k, v [T, num_kv_heads, head_dim]
    k_cache.view(-1, *k.shape[1:]).index_copy_(0, slot_mapping, k)
    v_cache.view(-1, *v.shape[1:]).index_copy_(0, slot_mapping, v)


def paged_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor,
                    v_cache: torch.Tensor, meta: AttentionMetadata, scale: float) -> torch.Tensor:
    """q [T, H, D], k/v [T, KVH, D] (this step's tokens) -> attention output [T, H, D]."""
    write_kv(k_cache, v_cache, k, v, meta.slot_mapping)
    out = torch.empty_like(q)
    num_decodes = meta.num_decode_tokens
    if num_decodes:
        out[:num_decodes] = _decode_attention(q[:num_decodes], k_cache, v_cache, meta, scale)
    for span in meta.prefills:
        out[span.start:span.end] = _prefill_attention(
            q[span.start:span.end], k[span.start:span.end], v[span.start:span.end],
            k_cache, v_cache, span, scale)
    return out


def _decode_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                      meta: AttentionMetadata, scale: float) -> torch.Tensor:
    num_decodes, num_heads, head_dim = q.shape
    num_kv_heads = k_cache.shape[2]
    group = num_heads // num_kv_heads
    tables = meta.decode_block_tables
    # [B, max_blocks, block_size, KVH, D] -> [B, KVH, L, D]
    keys = k_cache[tables].flatten(1, 2).transpose(1, 2)
    values = v_cache[tables].flatten(1, 2).transpose(1, 2)
    q = q.view(num_decodes, num_kv_heads, group, head_dim)  # [B, KVH, G, D]
    scores = torch.matmul(q, keys.transpose(-1, -2)).float() * scale  # [B, KVH, G, L]
    scores.masked_fill_(~meta.decode_mask, float("-inf"))
    probs = scores.softmax(dim=-1).to(values.dtype)
    return torch.matmul(probs, values).view(num_decodes, num_heads, head_dim)


def _prefill_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor,
                       v_cache: torch.Tensor, span: PrefillSpan, scale: float) -> torch.Tensor:
    if span.block_ids is not None:  # earlier tokens live in the cache: read the whole context
        num_kv_heads, head_dim = k_cache.shape[2:]
        k = k_cache[span.block_ids].view(-1, num_kv_heads, head_dim)[:span.num_context_tokens]
        v = v_cache[span.block_ids].view(-1, num_kv_heads, head_dim)[:span.num_context_tokens]
    out = F.scaled_dot_product_attention(
        q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1),  # [H or KVH, tokens, D]
        attn_mask=span.mask, is_causal=span.mask is None, scale=scale, enable_gqa=True)
    return out.transpose(0, 1)
