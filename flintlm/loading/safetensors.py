"""An HF model folder -> `LoadedCheckpoint`: config.json, *.safetensors (sharded or not), tokenizer.

Supports Llama (incl. llama3/linear rope scaling), Mistral, Qwen2 and Qwen3 configs in both the
transformers 4 (`rope_theta`, `rope_scaling`) and 5 (`rope_parameters`) spellings.
"""

from __future__ import annotations

import glob
import os
from typing import Any

import torch
from safetensors import safe_open

from flintlm.loading.checkpoint import LoadedCheckpoint, ModelLoadError, check_weight_shapes
from flintlm.loading.tokenizer import Tokenizer, read_json_object
from flintlm.models.arch import ModelArch, RopeScaling

_ARCHITECTURES = ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM")
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)  # buffers some old checkpoints saved


def load_safetensors_folder(folder: str, dtype: torch.dtype) -> LoadedCheckpoint:
    """Read an HF folder into `dtype` weights; `ModelLoadError` names the file that is wrong."""
    arch = arch_from_config(os.path.join(folder, "config.json"))
    files = _weight_files(folder)
    tokenizer = Tokenizer.from_folder(folder)
    # name -> file, and the shapes, from the headers only: a bad checkpoint fails before reading.
    locations: dict[str, str] = {}
    shapes: dict[str, tuple[int, ...]] = {}
    for path in files:
        with _open(path) as f:
            for name in f.keys():  # noqa: SIM118 - safe_open is not a dict
                if name.endswith(_IGNORED_SUFFIXES):
                    continue
                if name == "lm_head.weight" and arch.tie_word_embeddings:
                    continue  # tied: HF ignores a stored copy too
                locations[name] = path
                shapes[name] = tuple(f.get_slice(name).get_shape())
    check_weight_shapes(folder, arch, shapes)
    weights: dict[str, torch.Tensor] = {}
    for path in files:
        with _open(path) as f:
            for name in (n for n, p in locations.items() if p == path):
                weights[name] = f.get_tensor(name).to(dtype)
    return LoadedCheckpoint(arch=arch, weights=weights, tokenizer=tokenizer, source=folder)


def arch_from_config(path: str) -> ModelArch:
    """Parse an HF `config.json` into a `ModelArch`."""
    config = read_json_object(path, required=True)
    architectures = config.get("architectures") or []
    architecture = architectures[0] if architectures else None
    if architecture not in _ARCHITECTURES:
        raise ModelLoadError(
            path, f"architecture {architecture!r} is not supported ({', '.join(_ARCHITECTURES)})"
        )
    if config.get("hidden_act", "silu") != "silu" or config.get("mlp_bias", False):
        raise ModelLoadError(path, "only SiLU-gated MLPs without bias are supported")
    if config.get("attention_bias", False) and architecture != "Qwen2ForCausalLM":
        # Llama/Qwen3 `attention_bias` also biases o_proj, which ModelArch cannot express.
        raise ModelLoadError(path, "attention_bias=true (bias on o_proj too) is not supported")
    if config.get("use_sliding_window", False):
        raise ModelLoadError(path, "Qwen sliding-window attention is not supported")
    try:
        hidden = int(config["hidden_size"])
        num_heads = int(config["num_attention_heads"])
        rope = config.get("rope_parameters") or {}
        return ModelArch(
            architecture=architecture,
            vocab_size=int(config["vocab_size"]),
            hidden_size=hidden,
            intermediate_size=int(config["intermediate_size"]),
            num_layers=int(config["num_hidden_layers"]),
            num_heads=num_heads,
            num_kv_heads=int(config.get("num_key_value_heads") or num_heads),
            head_dim=int(config.get("head_dim") or hidden // num_heads),
            max_position_embeddings=int(config.get("max_position_embeddings", 2048)),
            rms_norm_eps=float(config.get("rms_norm_eps", 1e-6)),
            rope_theta=float(config.get("rope_theta", rope.get("rope_theta", 10000.0))),
            rope_scaling=_rope_scaling(path, config.get("rope_scaling") or rope),
            tie_word_embeddings=_is_tied(config, os.path.dirname(path)),
            attention_bias=architecture == "Qwen2ForCausalLM",  # q/k/v bias, always
            qk_norm=architecture == "Qwen3ForCausalLM",
            sliding_window=config.get("sliding_window") if "Mistral" in architecture else None,
            extra={"model_type": config.get("model_type")},
        )
    except (KeyError, TypeError, ValueError) as e:
        raise ModelLoadError(path, f"bad config value ({e!r})") from e


def _rope_scaling(path: str, params: dict[str, Any]) -> RopeScaling | None:
    kind = params.get("rope_type", params.get("type", "default"))
    if kind == "default":
        return None
    if kind == "linear":
        return RopeScaling(kind="linear", factor=float(params["factor"]))
    if kind == "llama3":
        return RopeScaling(
            kind="llama3",
            factor=float(params["factor"]),
            low_freq_factor=float(params["low_freq_factor"]),
            high_freq_factor=float(params["high_freq_factor"]),
            original_max_position_embeddings=int(params["original_max_position_embeddings"]),
        )
    raise ModelLoadError(path, f"rope scaling {kind!r} is not supported (linear, llama3)")


def _is_tied(config: dict[str, Any], folder: str) -> bool:
    if "tie_word_embeddings" in config:
        return bool(config["tie_word_embeddings"])
    # Unstated: tied exactly when the checkpoint has no output projection of its own.
    return not any("lm_head.weight" in _tensor_names(p) for p in _weight_files(folder))


def _weight_files(folder: str) -> list[str]:
    index = os.path.join(folder, "model.safetensors.index.json")
    if os.path.isfile(index):
        weight_map = read_json_object(index, required=True).get("weight_map")
        if not isinstance(weight_map, dict):
            raise ModelLoadError(index, "no weight_map")
        files = sorted({os.path.join(folder, name) for name in weight_map.values()})
        for path in files:
            if not os.path.isfile(path):
                raise ModelLoadError(path, "no such file (listed in model.safetensors.index.json)")
        return files
    files = sorted(glob.glob(os.path.join(folder, "*.safetensors")))
    if not files:
        raise ModelLoadError(folder, "no *.safetensors weights in the folder")
    return files


def _tensor_names(path: str) -> list[str]:
    with _open(path) as f:
        return list(f.keys())


def _open(path: str) -> Any:
    try:
        return safe_open(path, framework="pt")
    except Exception as e:  # NOTE: safetensors raises its own untyped errors
        raise ModelLoadError(path, f"cannot read safetensors file ({e})") from e
