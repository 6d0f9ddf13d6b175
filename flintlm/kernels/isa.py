"""What this CPU can run, and which instruction-set tier flintlm's CPU kernels are built for.

Tiers, best first on their architecture (llama.cpp's ggml-cpu builds the same kind of variants):
  avx512   x86-64-v4 with VNNI: AVX-512 F/BW/DQ/VL/VNNI (BF16 where the CPU has it)
  avx2     x86-64-v3: AVX2, FMA, F16C (and AVX-VNNI where the CPU has it)
  neon     ARM64 Advanced SIMD (and the dotprod / i8mm extensions where present)
  generic  portable C, vectorised by the compiler for the architecture's baseline
`FLINTLM_CPU_ISA` forces a tier the CPU can execute (so an AVX-512 machine can build, test and
time the AVX2 code); set before torch is imported, it caps torch's own kernels and oneDNN to
the same tier, so a forced run is an honest stand-in for such a machine.
"""

from __future__ import annotations

import functools
import os
import platform
from dataclasses import dataclass
from pathlib import Path

from flintlm import env

TIERS = ("avx512", "avx2", "neon", "generic")
_X86_TIER_FLAGS = {
    "avx512": frozenset({"avx512f", "avx512bw", "avx512dq", "avx512vl", "avx512_vnni", "avx2",
                         "fma", "f16c"}),
    "avx2": frozenset({"avx2", "fma", "f16c"}),
}
# What torch and oneDNN are capped to under a forced tier (read by them at import / first use).
_TORCH_CAPS = {
    "avx512": {"ATEN_CPU_CAPABILITY": "avx512", "ONEDNN_MAX_CPU_ISA": "AVX512_CORE_BF16"},
    "avx2": {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2_VNNI"},
    "generic": {"ATEN_CPU_CAPABILITY": "default", "ONEDNN_MAX_CPU_ISA": "SSE41"},
}


@dataclass(frozen=True)
class CpuFeatures:
    """The CPU as /proc/cpuinfo describes it."""

    machine: str  # "x86_64" or "aarch64"
    model_name: str
    flags: frozenset[str]

    @property
    def is_arm64(self) -> bool:
        return self.machine in ("aarch64", "arm64")


@functools.cache
def cpu_features() -> CpuFeatures:
    machine = platform.machine().lower()
    model_name, flags = "", frozenset[str]()
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return CpuFeatures(machine, model_name, flags)
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("model name", "cpu model") and not model_name:
            model_name = value.strip()
        elif key in ("flags", "features") and not flags:  # x86 "flags", ARM64 "Features"
            flags = frozenset(value.split())
    return CpuFeatures(machine, model_name, flags)


def supported_tiers(features: CpuFeatures | None = None) -> tuple[str, ...]:
    """The tiers this CPU can execute, best first; "generic" always."""
    features = features or cpu_features()
    if features.is_arm64:
        return ("neon", "generic") if "asimd" in features.flags else ("generic",)
    return (*(tier for tier, needed in _X86_TIER_FLAGS.items() if needed <= features.flags),
            "generic")


def forced_tier() -> str | None:
    """FLINTLM_CPU_ISA, validated against this CPU; None when unset.

    Raises:
        ValueError: an unknown tier, or one this CPU cannot execute.
    """
    name = env.lookup("cpu_isa")
    if name is None:
        return None
    name = name.lower()
    if name not in TIERS:
        raise ValueError(f"{env.var_name('cpu_isa')}={name!r} is not one of {', '.join(TIERS)}")
    if name not in supported_tiers():
        raise ValueError(f"{env.var_name('cpu_isa')}={name}: this CPU runs only "
                         f"{', '.join(supported_tiers())}")
    return name


def selected_tier() -> str:
    """The tier the kernels are built for here: the forced one, else the best supported."""
    return forced_tier() or supported_tiers()[0]


def has_flag(name: str) -> bool:
    """Whether the selected tier may use CPU feature `name` (a /proc/cpuinfo flag): a forced
    lower tier hides everything above it, as on a CPU that lacks it."""
    features = cpu_features()
    tier = selected_tier()
    if name not in features.flags or tier == "generic":
        return False
    return not (tier == "avx2" and name.startswith(("avx512", "amx")))


def cap_torch_to_forced_tier() -> None:
    """Under FLINTLM_CPU_ISA, cap torch's and oneDNN's instruction sets to the same tier (only
    effective before torch is imported; variables the user set are kept)."""
    tier = forced_tier()
    for name, value in _TORCH_CAPS.get(tier or "", {}).items():
        os.environ.setdefault(name, value)
