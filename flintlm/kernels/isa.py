"""What this CPU can run, and which instruction-set tier flintlm's CPU kernels are built for.

Tiers, best first on their architecture (llama.cpp's ggml-cpu builds the same kind of variants):
  avx512   x86-64-v4 with VNNI: AVX-512 F/BW/DQ/VL/VNNI (BF16 where the CPU has it)
  avx2     x86-64-v3: AVX2, FMA, F16C (and AVX-VNNI where the CPU has it)
  neon     ARM64 Advanced SIMD (and the dotprod / i8mm extensions where present)
  generic  portable C, vectorised by the compiler for the architecture's baseline
`FLINTLM_CPU_ISA` forces a tier the CPU can execute (so an AVX-512 machine can build, test and
time the AVX2 code); set before torch is imported, it caps torch's own kernels and oneDNN to
the same tier, so a forced run is an honest stand-in for such a machine. The caps flintlm set
are recorded in FLINTLM_TORCH_CAPS_APPLIED, so a child process started with another tier (or
none) replaces them, while caps the user set are always kept.
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
CAP_NAMES = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA")
_CAPS_APPLIED = "torch_caps_applied"  # FLINTLM_TORCH_CAPS_APPLIED="NAME=value,NAME=value"


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
    effective before torch is imported). Caps the user set are kept; caps a flintlm parent set
    for its own tier (inherited with its environment, still at the value it recorded) are
    replaced by this tier's, or removed when no tier is forced."""
    caps = _TORCH_CAPS.get(forced_tier() or "", {})
    for name, value in _applied_caps().items():
        if os.environ.get(name) == value:
            del os.environ[name]
    applied: dict[str, str] = {}
    for name, value in caps.items():
        if name not in os.environ:
            os.environ[name] = value
            applied[name] = value
    env.store(_CAPS_APPLIED, ",".join(f"{name}={value}" for name, value in applied.items())
              or None)


def torch_caps() -> dict[str, tuple[str, str]]:
    """The caps on torch's and oneDNN's instruction sets in this process's environment:
    name -> (value, "flintlm" where flintlm set it for FLINTLM_CPU_ISA, else "user")."""
    applied = _applied_caps()
    return {name: (os.environ[name], "flintlm" if applied.get(name) == os.environ[name]
                   else "user")
            for name in CAP_NAMES if name in os.environ}


def _applied_caps() -> dict[str, str]:
    text = env.lookup(_CAPS_APPLIED) or ""
    pairs = (item.partition("=") for item in text.split(",") if item)
    return {name: value for name, _, value in pairs if name in CAP_NAMES}
