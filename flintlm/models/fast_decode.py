"""The Llama decoder's small-batch step as one call into kernels/decode_step.c.

Decode steps of a few tokens spend as much time in Python's per-layer dispatch as in the
matmuls; like a CUDA graph, this replays the model's layers (the same modules' quantized
weights, norms and KV caches, the same math as `LlamaForCausalLM.forward`) in C. It applies
where every linear layer is a single-matrix `SmallBatchQuantLinear` and the model has no q/k
norms or biases; the runner uses it for the steps `QuantizedSteps` picks and falls back to
the module path otherwise.
"""

from __future__ import annotations

import ctypes
from typing import TYPE_CHECKING

import torch

from flintlm.kernels.abi import DecodeBatch, DecodeLayer, DecodeMatrix
from flintlm.kernels.ops import kv_kind
from flintlm.models.attention import paged_row_tables
from flintlm.models.llama import DecoderLayer
from flintlm.models.quant import QuantizedSteps, SmallBatchQuantLinear

if TYPE_CHECKING:
    from flintlm.kernels.ops import CpuKernels, QuantMatrix
    from flintlm.models.attention import BatchLayout, KVCache
    from flintlm.models.llama import LlamaForCausalLM

def _matrix(module: torch.nn.Module) -> QuantMatrix | None:
    if (not isinstance(module, SmallBatchQuantLinear) or len(module.parts) != 1
            or module.bias is not None):
        return None
    return module.parts[0]


class FastDecode:
    """Built once by the runner (`build`); `forward` runs a step's layers in one C call."""

    # NOTE: abi.py builds the structure classes at run time from the C header, so mypy sees
    # them only as ctypes.Structure.
    def __init__(self, model: LlamaForCausalLM, layers: ctypes.Array[ctypes.Structure],
                 kernels: CpuKernels, steps: QuantizedSteps, use_int8: bool,
                 cache_kind: int, keep_alive: list[object]):
        self.model = model
        self.kernels = kernels
        self.steps = steps
        max_rows = steps.max_tokens
        self._layers = layers
        self._use_int8 = use_int8
        self._kv_kind = cache_kind  # every layer's cache is of one dtype
        self._keep_alive = keep_alive  # the tensors the layer table points into
        arch = model.arch
        # decode_step.c's scratch per row: normed, qkv, q_rot, k_rot, attn, gate_up, act
        widths = (arch.hidden_size + (arch.q_size + 2 * arch.kv_size) + arch.q_size
                  + arch.kv_size + arch.q_size + 3 * arch.intermediate_size)
        self._scratch = torch.empty(max_rows * widths, dtype=kernels.dtype)

    @classmethod
    def build(cls, model: LlamaForCausalLM, kv_caches: list[KVCache],
              kernels: CpuKernels | None, steps: QuantizedSteps) -> FastDecode | None:
        """The fast path for this model, or None where it does not apply."""
        arch = model.arch
        if kernels is None or steps.max_tokens < 1 or arch.attention_bias or arch.qk_norm:
            return None
        layers = (DecodeLayer * arch.num_layers)()
        keep_alive: list[object] = []
        use_int8 = False
        for entry, layer, (k_cache, v_cache) in zip(layers, model.layers, kv_caches,
                                                    strict=True):
            if not isinstance(layer, DecoderLayer):
                return None
            linears = (layer.self_attn.qkv_proj, layer.self_attn.o_proj,
                       layer.mlp.gate_up_proj, layer.mlp.down_proj)
            matrices = [m for m in map(_matrix, linears) if m is not None]
            if len(matrices) != len(linears):
                return None
            qkv_proj = linears[0]
            use_int8 = isinstance(qkv_proj, SmallBatchQuantLinear) and qkv_proj.use_int8
            for name, matrix in zip(("qkv", "o", "gate_up", "down"), matrices, strict=True):
                q, d, m = matrix.pointers
                setattr(entry, name, DecodeMatrix(q, d, m, matrix.out_features,
                                                  int(matrix.kind), int(matrix.is_interleaved)))
            entry.input_norm = layer.input_layernorm.weight.data_ptr()
            entry.post_attention_norm = layer.post_attention_layernorm.weight.data_ptr()
            entry.k_cache, entry.v_cache = k_cache.data_ptr(), v_cache.data_ptr()
            keep_alive += [layer, k_cache, v_cache]
        return cls(model, layers, kernels, steps, use_int8, kv_kind(*kv_caches[0]), keep_alive)

    def can_run(self, num_tokens: int) -> bool:
        return self.steps(num_tokens)

    @torch.inference_mode()
    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor,
                layout: BatchLayout) -> torch.Tensor:
        """input_ids, positions [T] -> final hidden states [T, hidden] (normed).

        Every row reads its context from the paged cache, the chunk's own rows included
        (they are written first), so prompts and decodes need no separate path.
        """
        model, arch = self.model, self.model.arch
        block_tables, row_seq, row_ctx = paged_row_tables(layout.sequences)
        max_blocks = block_tables.shape[1]
        positions = positions.contiguous()
        slots = layout.slot_mapping.contiguous()
        rotary = model.rotary
        batch = DecodeBatch(
            num_rows=input_ids.shape[0], hidden=arch.hidden_size, num_heads=arch.num_heads,
            num_kv_heads=arch.num_kv_heads, head_dim=arch.head_dim,
            intermediate=arch.intermediate_size, block_size=layout.block_size,
            max_blocks=max_blocks, eps=arch.rms_norm_eps, scale=arch.head_dim ** -0.5,
            use_int8=int(self._use_int8), kv_kind=self._kv_kind, positions=positions.data_ptr(),
            slots=slots.data_ptr(), cos_table=rotary.cos.data_ptr(),
            sin_table=rotary.sin.data_ptr(), block_tables=block_tables.data_ptr(),
            row_seq=row_seq.data_ptr(), row_ctx=row_ctx.data_ptr())
        residual = model.embed_tokens(input_ids)  # [T, hidden], updated in place
        hidden = torch.empty_like(residual)
        self.kernels.decode_step(ctypes.addressof(self._layers), arch.num_layers,
                                 ctypes.addressof(batch), residual, hidden, self._scratch)
        return model.norm.add_and_norm(hidden, residual)
