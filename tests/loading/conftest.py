"""Fixtures for the loading tests: the HF transformers reference on the embedded GGUF (loaded
once per session), and a writer of tiny GGUF files laid out the way llama.cpp's converter
lays them out."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType, GGUFWriter

from flintlm.loading import resolve_model_path

BYTE_TOKENS_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


@pytest.fixture(scope="module", autouse=True)
def one_intraop_thread() -> Iterator[None]:
    """These tests are memory-bound tensor compares; on a shared 2-core box extra intra-op
    threads only add contention. Restored after each module."""
    num_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(num_threads)


@pytest.fixture(scope="session")
def embedded_path() -> str:
    return resolve_model_path("default")


@pytest.fixture(scope="session")
def hf_model(embedded_path: str) -> Any:
    # NOTE: HF's GGUF path takes seconds; reuse tests/reference.py's cached model when the
    # suite runs with the repo root importable (python -m pytest), so it loads once.
    try:
        from tests.reference import hf_model as shared_hf_model
    except ImportError:
        from transformers import AutoModelForCausalLM

        folder, name = os.path.split(embedded_path)
        return AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    return shared_hf_model()


@pytest.fixture(scope="session")
def hf_tokenizer(embedded_path: str) -> Any:
    from transformers import AutoTokenizer

    folder, name = os.path.split(embedded_path)
    return AutoTokenizer.from_pretrained(folder, gguf_file=name)


def llama_cpp_permute(weight: np.ndarray, num_heads: int) -> np.ndarray:
    """llama.cpp's converter (convert_hf_to_gguf.py, LlamaModel.permute) on q/k rows."""
    rows = weight.shape[0]
    return (
        weight.reshape(num_heads, 2, rows // num_heads // 2, *weight.shape[1:])
        .swapaxes(1, 2)
        .reshape(weight.shape)
    )


_GGUF_NAMES = {
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "self_attn.q_norm": "attn_q_norm",
    "self_attn.k_norm": "attn_k_norm",
    "input_layernorm": "attn_norm",
    "post_attention_layernorm": "ffn_norm",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}


def gguf_name(hf_name: str) -> str:
    if hf_name == "model.embed_tokens.weight":
        return "token_embd.weight"
    if hf_name == "model.norm.weight":
        return "output_norm.weight"
    if hf_name == "lm_head.weight":
        return "output.weight"
    _, _, layer, rest = hf_name.split(".", 3)
    module, param = rest.rsplit(".", 1)
    return f"blk.{layer}.{_GGUF_NAMES[module]}.{param}"


def add_byte_level_vocab(writer: GGUFWriter, pre: str = "default") -> None:
    """A minimal byte-level vocabulary: the 256 byte stand-ins, one merge, three specials."""
    from flintlm.loading.tokenizer import byte_level_alphabet

    tokens = sorted(byte_level_alphabet(), key=byte_level_alphabet().__getitem__)
    tokens += ["he", *BYTE_TOKENS_SPECIALS]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types([1] * 257 + [3] * len(BYTE_TOKENS_SPECIALS))
    writer.add_token_merges(["h e"])
    writer.add_bos_token_id(257)  # <|endoftext|>
    writer.add_eos_token_id(259)  # <|im_end|>
    writer.add_chat_template(
        "{% for m in messages %}<|im_start|>{{ m.content }}<|im_end|>{% endfor %}"
    )


GGUFFactory = Callable[..., str]


@pytest.fixture
def write_gguf(tmp_path: Any) -> GGUFFactory:
    """Write a GGUF from an HF-named float32 state dict, as llama.cpp's converter would.

    `types` maps HF names to the ggml type to store them as (default F32); `skip` drops
    tensors; `extra_tensors` adds GGUF-named arrays (uint8 ones as raw blocks of the type
    given with them); `metadata` adds keys.
    """

    def write(
        arch: str,
        config: dict[str, Any],
        state_dict: dict[str, torch.Tensor],
        *,
        name: str = "model.gguf",
        types: dict[str, GGMLQuantizationType] | None = None,
        skip: tuple[str, ...] = (),
        extra_tensors: dict[str, tuple[np.ndarray, GGMLQuantizationType]] | None = None,
        metadata: Callable[[GGUFWriter], None] | None = None,
        tokenizer_pre: str = "default",
    ) -> str:
        from gguf import quants

        path = str(tmp_path / name)
        writer = GGUFWriter(path, arch)
        writer.add_block_count(config["num_hidden_layers"])
        writer.add_context_length(config["max_position_embeddings"])
        writer.add_embedding_length(config["hidden_size"])
        writer.add_feed_forward_length(config["intermediate_size"])
        writer.add_head_count(config["num_attention_heads"])
        writer.add_head_count_kv(config["num_key_value_heads"])
        writer.add_layer_norm_rms_eps(config["rms_norm_eps"])
        writer.add_rope_freq_base(config.get("rope_theta", 10000.0))
        if "head_dim" in config:
            writer.add_key_length(config["head_dim"])
            writer.add_value_length(config["head_dim"])
        add_byte_level_vocab(writer, tokenizer_pre)
        if metadata:
            metadata(writer)
        for hf_name, tensor in state_dict.items():
            if hf_name in skip:
                continue
            array = tensor.detach().float().numpy()
            if arch == "llama" and ".q_proj." in hf_name:
                array = llama_cpp_permute(array, config["num_attention_heads"])
            elif arch == "llama" and ".k_proj." in hf_name:
                array = llama_cpp_permute(array, config["num_key_value_heads"])
            ggml_type = (types or {}).get(hf_name, GGMLQuantizationType.F32)
            if ggml_type in (GGMLQuantizationType.F32, GGMLQuantizationType.F16):
                dtype = np.float32 if ggml_type == GGMLQuantizationType.F32 else np.float16
                writer.add_tensor(gguf_name(hf_name), array.astype(dtype))
            else:
                packed = quants.quantize(array, ggml_type)
                writer.add_tensor(gguf_name(hf_name), packed, raw_dtype=ggml_type)
        for tensor_name, (array, ggml_type) in (extra_tensors or {}).items():
            raw_dtype = ggml_type if array.dtype == np.uint8 else None
            writer.add_tensor(tensor_name, array, raw_dtype=raw_dtype)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        return path

    return write


@pytest.fixture(scope="session")
def tiny_hf_model() -> Callable[..., tuple[Any, dict[str, Any]]]:
    """Factory: a random tiny HF model of a kind (llama, qwen2, qwen3, mistral), its settings."""
    return _tiny_hf_model


def _tiny_hf_model(kind: str, **overrides: Any) -> tuple[Any, dict[str, Any]]:
    import transformers

    config_class = {
        "llama": transformers.LlamaConfig,
        "qwen2": transformers.Qwen2Config,
        "qwen3": transformers.Qwen3Config,
        "mistral": transformers.MistralConfig,
    }[kind]
    settings: dict[str, Any] = {
        "vocab_size": 300,
        "hidden_size": 64,
        "intermediate_size": 96,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 512,
        "rms_norm_eps": 1e-6,
    }
    if kind == "qwen3":
        settings["head_dim"] = 32
    settings.update(overrides)
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config_class(**settings))
    with torch.no_grad():  # norms start at 1; make them distinguishable
        for name, param in model.named_parameters():
            if "norm" in name or name.endswith(".bias"):
                param.uniform_(0.5, 1.5)
    return model.eval(), settings
