"""flintlm: an open, efficient, developer-first LLM API platform.

Public surface: `LLM` (offline generation), `SamplingParams`, `FlintConfig`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from flintlm.kernels.isa import cap_torch_to_forced_tier

# NOTE: before anything imports torch, so FLINTLM_CPU_ISA also caps torch's own kernels.
cap_torch_to_forced_tier()

from flintlm.config import FlintConfig  # noqa: E402
from flintlm.engine.request import SamplingParams  # noqa: E402

if TYPE_CHECKING:
    from flintlm.llm import LLM

__all__ = ["LLM", "SamplingParams", "FlintConfig"]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    # NOTE: LLM pulls in torch; importing it lazily keeps `import flintlm` (and the CLI's --help)
    # fast for code that only needs the config or the HTTP layer.
    if name == "LLM":
        from flintlm.llm import LLM
        return LLM
    raise AttributeError(name)
