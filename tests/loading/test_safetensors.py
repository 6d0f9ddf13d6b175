"""HF folders: tiny random models saved by transformers load to the same state dict and arch;
sharded checkpoints, dtypes, path resolution and the errors bad folders give."""

from __future__ import annotations

import json
import os
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file

from flintlm.loading import ModelLoadError, load_checkpoint, resolve_model_path
from flintlm.models.arch import RopeScaling


@pytest.fixture(scope="module")
def tokenizer_files(hf_tokenizer: Any, tmp_path_factory: Any) -> dict[str, bytes]:
    """The embedded model's tokenizer as HF saves it into a folder, {file name: contents}."""
    folder = tmp_path_factory.mktemp("tokenizer")
    hf_tokenizer.save_pretrained(folder)
    return {name: (folder / name).read_bytes() for name in os.listdir(folder)}


@pytest.fixture
def save_folder(tmp_path: Any, tokenizer_files: dict[str, bytes]) -> Any:
    """Save an HF model with the tokenizer files into a fresh folder; returns its path."""

    def save(model: Any, name: str = "model", **kwargs: Any) -> str:
        folder = tmp_path / name
        model.save_pretrained(folder, **kwargs)
        for file_name, data in tokenizer_files.items():
            (folder / file_name).write_bytes(data)
        return str(folder)

    return save


def _assert_same_state_dict(weights: dict[str, torch.Tensor], model: Any, tied: bool) -> None:
    reference = model.state_dict()
    if tied:
        reference.pop("lm_head.weight")
    assert set(weights) == set(reference)
    for name, tensor in weights.items():
        assert torch.equal(tensor, reference[name]), name


LLAMA3_ROPE = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 256,
}


@pytest.mark.parametrize(
    ("kind", "overrides"),
    [
        ("llama", {"rope_scaling": LLAMA3_ROPE, "rope_theta": 500000.0}),
        ("llama", {"tie_word_embeddings": True}),
        ("qwen2", {}),
        ("qwen3", {}),
        ("mistral", {"sliding_window": 128}),
    ],
    ids=["llama3-rope", "llama-tied", "qwen2", "qwen3", "mistral"],
)
def test_folder_loads_to_the_hf_state_dict(
    kind: str, overrides: dict[str, Any], save_folder: Any, tiny_hf_model: Any
) -> None:
    model, settings = tiny_hf_model(kind, **overrides)
    folder = save_folder(model)
    checkpoint = load_checkpoint(folder, torch.float32)
    arch, config = checkpoint.arch, model.config
    assert checkpoint.source == folder
    _assert_same_state_dict(checkpoint.weights, model, tied=config.tie_word_embeddings)
    assert arch.architecture == config.architectures[0]
    assert (arch.vocab_size, arch.hidden_size, arch.intermediate_size, arch.num_layers) == (
        300,
        64,
        96,
        2,
    )
    assert (arch.num_heads, arch.num_kv_heads) == (4, 2)
    assert arch.head_dim == settings.get("head_dim", 16)
    assert arch.rms_norm_eps == config.rms_norm_eps
    assert arch.rope_theta == config.rope_parameters["rope_theta"]
    assert arch.max_position_embeddings == config.max_position_embeddings
    assert arch.tie_word_embeddings == config.tie_word_embeddings
    assert arch.attention_bias == (kind == "qwen2")
    assert arch.qk_norm == (kind == "qwen3")
    assert arch.sliding_window == overrides.get("sliding_window")
    if "rope_scaling" in overrides:
        assert arch.rope_scaling == RopeScaling("llama3", 8.0, 1.0, 4.0, 256)
    else:
        assert arch.rope_scaling is None
    assert checkpoint.tokenizer.encode("Hello world") == [19556, 905]


def test_sharded_checkpoint_and_dtype(save_folder: Any, tiny_hf_model: Any) -> None:
    model, _ = tiny_hf_model("qwen2")
    folder = save_folder(model, max_shard_size="40KB")
    assert os.path.isfile(os.path.join(folder, "model.safetensors.index.json"))
    checkpoint = load_checkpoint(folder, torch.bfloat16)
    reference = model.state_dict()
    assert set(checkpoint.weights) == set(reference)
    for name, tensor in checkpoint.weights.items():
        assert torch.equal(tensor, reference[name].to(torch.bfloat16)), name


def test_transformers_4_config_spelling(save_folder: Any, tiny_hf_model: Any) -> None:
    model, _ = tiny_hf_model("llama")
    folder = save_folder(model)
    config_path = os.path.join(folder, "config.json")
    with open(config_path) as f:
        config = json.load(f)
    config.pop("rope_parameters")
    config.pop("tie_word_embeddings")  # unstated: decided by whether lm_head is stored
    config["rope_theta"] = 123.0
    config["rope_scaling"] = {"type": "linear", "factor": 2.0}
    with open(config_path, "w") as f:
        json.dump(config, f)
    arch = load_checkpoint(folder, torch.float32).arch
    assert arch.rope_theta == 123.0
    assert arch.rope_scaling == RopeScaling(kind="linear", factor=2.0)
    assert not arch.tie_word_embeddings


def test_resolve_model_path(tmp_path: Any) -> None:
    default = resolve_model_path("default")
    assert default.endswith("SmolLM2-135M-Instruct.Q4_1.gguf") and os.path.isfile(default)
    with pytest.raises(ModelLoadError, match="no-such-model"):
        resolve_model_path(str(tmp_path / "no-such-model"))
    with pytest.raises(ModelLoadError, match=r"no config\.json"):
        resolve_model_path(str(tmp_path))
    other = tmp_path / "weights.bin"
    other.write_bytes(b"x")
    with pytest.raises(ModelLoadError, match=r"weights\.bin.*not a \.gguf file"):
        resolve_model_path(str(other))


def _edit_config(folder: str, **changes: Any) -> None:
    path = os.path.join(folder, "config.json")
    with open(path) as f:
        config = json.load(f)
    config.update(changes)
    with open(path, "w") as f:
        json.dump(config, f)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"architectures": ["GPT2LMHeadModel"]}, "config.json.*'GPT2LMHeadModel' is not supported"),
        ({"rope_parameters": {"rope_type": "yarn", "factor": 4.0}}, "config.json.*'yarn'"),
        ({"hidden_act": "gelu"}, "config.json.*SiLU"),
        ({"attention_bias": True}, "config.json.*o_proj"),
        ({"hidden_size": "wide"}, "config.json.*bad config value"),
        ({"num_attention_heads": 8}, "model.*q_proj.weight has shape"),
    ],
)
def test_bad_config(
    changes: dict[str, Any], message: str, save_folder: Any, tiny_hf_model: Any
) -> None:
    model, _ = tiny_hf_model("llama")
    folder = save_folder(model)
    _edit_config(folder, **changes)
    with pytest.raises(ModelLoadError, match=message):
        load_checkpoint(folder, torch.float32)


def test_missing_files_and_tensors(save_folder: Any, tiny_hf_model: Any) -> None:
    model, _ = tiny_hf_model("llama")
    folder = save_folder(model)
    weights_path = os.path.join(folder, "model.safetensors")
    tensors = load_file(weights_path)
    missing = "model.layers.1.mlp.up_proj.weight"
    save_file({k: v for k, v in tensors.items() if k != missing}, weights_path)
    with pytest.raises(ModelLoadError, match=f"missing tensors {missing}"):
        load_checkpoint(folder, torch.float32)

    os.remove(weights_path)
    with pytest.raises(ModelLoadError, match=r"no \*.safetensors"):
        load_checkpoint(folder, torch.float32)

    with open(os.path.join(folder, "config.json"), "w") as f:
        f.write("{not json")
    with pytest.raises(ModelLoadError, match=r"config\.json.*cannot parse JSON"):
        load_checkpoint(folder, torch.float32)


def test_missing_tokenizer(save_folder: Any, tiny_hf_model: Any) -> None:
    model, _ = tiny_hf_model("qwen3")
    folder = save_folder(model)
    os.remove(os.path.join(folder, "tokenizer.json"))
    with pytest.raises(ModelLoadError, match=r"tokenizer\.json"):
        load_checkpoint(folder, torch.float32)


def test_unsupported_dtype() -> None:
    with pytest.raises(ValueError, match="float64"):
        load_checkpoint("default", torch.float64)
