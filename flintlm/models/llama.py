"""The Llama-family decoder: Llama 3.x, SmolLM2, Mistral, Qwen2 (qkv bias), Qwen3 (q/k norm).

One model, differences as `ModelArch` flags. Tokens of all requests in a step are one flat batch
([num_tokens, hidden]); attention reads and writes the paged cache through the attention backend
and its per-step metadata (models/attention.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from flintlm.models.arch import ModelArch
from flintlm.models.attention import KVCache, attention_backend
from flintlm.models.layers import GatedMLP, RMSNorm, RotaryEmbedding

if TYPE_CHECKING:
    from flintlm.kernels.ops import CpuKernels
    from flintlm.models.attention import AttentionBackend


class Attention(nn.Module):
    def __init__(self, arch: ModelArch, rotary: RotaryEmbedding, backend: AttentionBackend[Any]):
        super().__init__()
        self.arch = arch
        self.rotary = rotary  # shared by all layers; not a parameter
        self.backend = backend
        self.qkv_proj = nn.Linear(arch.hidden_size, arch.q_size + 2 * arch.kv_size,
                                  bias=arch.attention_bias)
        self.o_proj = nn.Linear(arch.q_size, arch.hidden_size, bias=False)
        if arch.qk_norm:
            self.q_norm = RMSNorm(arch.head_dim, arch.rms_norm_eps)
            self.k_norm = RMSNorm(arch.head_dim, arch.rms_norm_eps)
        self.scale = arch.head_dim ** -0.5

    def forward(self, x: torch.Tensor, positions: torch.Tensor, kv_cache: KVCache,
                meta: object) -> torch.Tensor:
        arch = self.arch
        num_tokens = x.shape[0]
        # q [T, H * D], k and v [T, KVH * D]: row views of one matmul output
        q, k, v = self.qkv_proj(x).split([arch.q_size, arch.kv_size, arch.kv_size], dim=-1)
        if arch.qk_norm:  # per head, before the rotary embedding
            q = self.q_norm(q.reshape(-1, arch.head_dim)).view(num_tokens, arch.q_size)
            k = self.k_norm(k.reshape(-1, arch.head_dim)).view(num_tokens, arch.kv_size)
            k, v = _as_row_views(k, v)
        out = self.backend.forward(q, k, v, positions, self.rotary, kv_cache, meta, self.scale)
        return self.o_proj(out.view(num_tokens, arch.q_size))  # out [T, H, D]


def _as_row_views(k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """k and v as row views of one tensor again (the CPU kernels read them with one stride)."""
    kv = torch.cat([k, v], dim=-1)
    return kv[:, :k.shape[1]], kv[:, k.shape[1]:]


class DecoderLayer(nn.Module):
    def __init__(self, arch: ModelArch, rotary: RotaryEmbedding, backend: AttentionBackend[Any],
                 kernels: CpuKernels | None):
        super().__init__()
        self.input_layernorm = RMSNorm(arch.hidden_size, arch.rms_norm_eps, kernels)
        self.self_attn = Attention(arch, rotary, backend)
        self.post_attention_layernorm = RMSNorm(arch.hidden_size, arch.rms_norm_eps, kernels)
        self.mlp = GatedMLP(arch.hidden_size, arch.intermediate_size, kernels)

    def forward(self, hidden: torch.Tensor | None, residual: torch.Tensor,
                positions: torch.Tensor, kv_cache: KVCache, meta: object) -> torch.Tensor:
        """Adds the previous layer's output `hidden` to `residual` (in place) and returns this
        layer's output, to be added by the next layer (or the final norm)."""
        x = self.input_layernorm.add_and_norm(hidden, residual)
        hidden = self.self_attn(x, positions, kv_cache, meta)
        x = self.post_attention_layernorm.add_and_norm(hidden, residual)
        return self.mlp(x)


class LlamaForCausalLM(nn.Module):
    def __init__(self, arch: ModelArch, max_positions: int | None = None,
                 kernels: CpuKernels | None = None):
        """`kernels`: flintlm's CPU kernels for the fused layers, or None for torch ops."""
        super().__init__()
        self.arch = arch
        rotary = RotaryEmbedding(arch.head_dim, max_positions or arch.max_position_embeddings,
                                 arch.rope_theta, arch.rope_scaling)
        self.rotary = rotary
        self.attention = attention_backend(kernels)
        # NOTE: an explicit (uninitialised) weight skips Embedding's normal_() init: on the meta
        # device that first call imports torch's Python decompositions, 3.3 s of start-up.
        self.embed_tokens = nn.Embedding(arch.vocab_size, arch.hidden_size,
                                         _weight=torch.empty(arch.vocab_size, arch.hidden_size))
        self.layers = nn.ModuleList(DecoderLayer(arch, rotary, self.attention, kernels)
                                    for _ in range(arch.num_layers))
        self.norm = RMSNorm(arch.hidden_size, arch.rms_norm_eps, kernels)
        if not arch.tie_word_embeddings:
            self.lm_head = nn.Linear(arch.hidden_size, arch.vocab_size, bias=False)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor,
                kv_caches: list[KVCache], meta: object) -> torch.Tensor:
        """input_ids, positions [T] -> final hidden states [T, hidden] (normed).

        `meta` is `self.attention.metadata(layout, device)` for this step's batch.
        """
        residual = self.embed_tokens(input_ids)  # [T, hidden], a fresh tensor updated in place
        hidden = None
        for layer, kv_cache in zip(self.layers, kv_caches, strict=True):
            hidden = layer(hidden, residual, positions, kv_cache, meta)
        return self.norm.add_and_norm(hidden, residual)

    @property
    def output_weight(self) -> torch.Tensor:
        """[vocab, hidden]: the lm_head, or the embedding matrix when they are tied."""
        return self.embed_tokens.weight if self.arch.tie_word_embeddings else self.lm_head.weight

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden [R, hidden] -> float32 logits [R, vocab]."""
        return torch.matmul(hidden, self.output_weight.t()).float()

    def linear_sources(self) -> dict[str, list[str]]:
        """Each linear layer of the decoder -> the HF checkpoint matrices stacked into its
        weight, in row order (q/k/v and gate/up are fused)."""
        sources = {}
        for i in range(self.arch.num_layers):
            src, dst = f"model.layers.{i}.", f"layers.{i}."
            sources[dst + "self_attn.qkv_proj"] = [src + f"self_attn.{p}_proj" for p in "qkv"]
            sources[dst + "self_attn.o_proj"] = [src + "self_attn.o_proj"]
            sources[dst + "mlp.gate_up_proj"] = [src + "mlp.gate_proj", src + "mlp.up_proj"]
            sources[dst + "mlp.down_proj"] = [src + "mlp.down_proj"]
        return sources

    @torch.no_grad()
    def load_weights(self, weights: dict[str, torch.Tensor]) -> None:
        """Take HF-named tensors, fuse q/k/v and gate/up, and assign them (no copies kept)."""
        used: set[str] = set()

        def take(name: str) -> torch.Tensor:
            if name not in weights:
                raise KeyError(f"checkpoint has no tensor {name!r}")
            used.add(name)
            return weights[name]

        state = {"embed_tokens.weight": take("model.embed_tokens.weight"),
                 "norm.weight": take("model.norm.weight")}
        if not self.arch.tie_word_embeddings:
            state["lm_head.weight"] = take("lm_head.weight")
        for module, sources in self.linear_sources().items():
            parts = [take(name + ".weight") for name in sources]
            state[module + ".weight"] = _fused(parts)
        for i in range(self.arch.num_layers):
            src, dst = f"model.layers.{i}.", f"layers.{i}."
            attn = src + "self_attn."
            if self.arch.attention_bias:
                state[dst + "self_attn.qkv_proj.bias"] = torch.cat(
                    [take(attn + f"{p}_proj.bias") for p in "qkv"])
            if self.arch.qk_norm:
                state[dst + "self_attn.q_norm.weight"] = take(attn + "q_norm.weight")
                state[dst + "self_attn.k_norm.weight"] = take(attn + "k_norm.weight")
            state[dst + "input_layernorm.weight"] = take(src + "input_layernorm.weight")
            state[dst + "post_attention_layernorm.weight"] = take(
                src + "post_attention_layernorm.weight")
        unused = set(weights) - used - {"lm_head.weight"}
        if unused:
            raise KeyError(f"checkpoint tensors not used by the model: {sorted(unused)[:5]}")
        expected = {name: p.shape for name, p in self.named_parameters()}
        for name, tensor in state.items():
            if tensor.shape != expected[name]:
                raise ValueError(f"{name}: checkpoint shape {tuple(tensor.shape)} != "
                                 f"model shape {tuple(expected[name])}")
        self.load_state_dict(state, strict=True, assign=True)


def _fused(parts: list[torch.Tensor]) -> torch.Tensor:
    """The parts stacked by rows. Parts on meta (matrices served from their GGUF blocks alone)
    get an empty meta tensor of the stacked shape: torch.cat on meta tensors goes through
    torch's Python meta kernels, whose first call cost ~1.3 s of every load (embedded model
    1.97 -> 0.70 s, 1B shape 5.6 -> 4.0 s, measured)."""
    if len(parts) == 1:
        return parts[0]
    if all(part.is_meta for part in parts):
        rows = sum(part.shape[0] for part in parts)
        return torch.empty((rows, *parts[0].shape[1:]), dtype=parts[0].dtype, device="meta")
    return torch.cat(parts)
