"""HF architecture name -> model class. Every Llama-family variant is one class with flags."""

from __future__ import annotations

from flintlm.models.arch import ModelArch
from flintlm.models.llama import LlamaForCausalLM

MODEL_CLASSES: dict[str, type[LlamaForCausalLM]] = {
    "LlamaForCausalLM": LlamaForCausalLM,
    "MistralForCausalLM": LlamaForCausalLM,
    "Qwen2ForCausalLM": LlamaForCausalLM,
    "Qwen3ForCausalLM": LlamaForCausalLM,
}


def model_class_for(arch: ModelArch) -> type[LlamaForCausalLM]:
    try:
        return MODEL_CLASSES[arch.architecture]
    except KeyError:
        supported = ", ".join(sorted(MODEL_CLASSES))
        raise ValueError(f"architecture {arch.architecture!r} is not supported; "
                         f"supported: {supported}") from None
