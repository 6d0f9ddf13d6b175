"""Files on disk -> `LoadedCheckpoint` (ModelArch, HF-named weights, tokenizer).

`loader.py` resolves and dispatches; `gguf.py` and `safetensors.py` read one format each.
"""

from flintlm.loading.checkpoint import LoadedCheckpoint, ModelLoadError
from flintlm.loading.loader import load_checkpoint, load_tokenizer, resolve_model_path
from flintlm.loading.tokenizer import Tokenizer

__all__ = [
    "LoadedCheckpoint",
    "ModelLoadError",
    "Tokenizer",
    "load_checkpoint",
    "load_tokenizer",
    "resolve_model_path",
]
