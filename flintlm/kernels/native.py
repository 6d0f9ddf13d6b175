"""Build and load flintlm's CPU kernels (the *.c files here) with the system C compiler.

The library is compiled once per source, compiler, CPU and instruction-set tier (kernels/isa.py;
the tier decides the compiler flags and tier.h the header) into the user's cache folder and
loaded with ctypes; a machine without a compiler, or a build that fails, gets None and the torch
reference path. Only bindings live here; `kernels/ops.py` decides when to call them.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

import torch  # noqa: F401  - loaded first so the library binds to torch's libgomp, not another

from flintlm.kernels import abi, isa

logger = logging.getLogger(__name__)

SOURCE_DIR = Path(__file__).parent
SOURCES = ("abi.c", "attention.c", "decode_step.c", "layers.c", "quant_matmul.c")
HEADERS = ("common.h", "tier.h")
TIER_HEADERS = {"avx512": "tier_avx512.h", "avx2": "tier_avx2.h", "neon": "tier_neon.h",
                "generic": "tier_generic.h"}
# NOTE: fast-math lets gcc vectorise the float reductions and expf (through libmvec). The
# kernels never rely on inf or NaN arithmetic (running maxima start at -FLT_MAX; the bfloat16
# NaN test looks at bits), and linking is a separate step without fast-math, so gcc's
# flush-to-zero start-up code never enters the process and changes torch's numerics.
COMPILE_FLAGS = ("-O3", "-ffast-math", "-fopenmp", "-fPIC", "-std=c11")
LINK_FLAGS = ("-shared", "-fopenmp", "-lm")

_P = ctypes.c_void_p
_I64 = ctypes.c_int64
SUFFIXES = {torch.float32: "f32", torch.bfloat16: "bf16"}

_lock = threading.Lock()
_loaded: dict[tuple[str, tuple[str, ...]], NativeLibrary | None] = {}


def tier_flags(tier: str, features: isa.CpuFeatures | None = None) -> tuple[str, ...]:
    """The compiler flags that build `tier` on this CPU: its own instruction set and nothing
    above it (a forced lower tier must not use what -march=native alone would enable)."""
    features = features or isa.cpu_features()
    if tier == "generic":
        baseline = ("-march=armv8-a",) if features.is_arm64 else ("-march=x86-64", "-mtune=native")
        return (*baseline, "-DFLINTLM_TIER_GENERIC")  # tier.h: NEON is in ARM64's baseline
    if tier == "neon":
        return ("-mcpu=native",)
    if tier == "avx2" and "avx512f" in features.flags:
        return ("-march=native", "-mno-avx512f")  # drops every AVX-512 subset, keeps AVX-VNNI
    return ("-march=native",)


def available_tiers() -> tuple[str, ...]:
    """The tiers this CPU executes whose header is here, best first ("generic" always)."""
    return tuple(tier for tier in isa.supported_tiers()
                 if (SOURCE_DIR / TIER_HEADERS[tier]).exists())


def default_tier() -> str:
    """FLINTLM_CPU_ISA's tier when set, else the best available one."""
    return isa.forced_tier() or available_tiers()[0]


class NativeLibrary:
    """The loaded kernels: `function(name, dtype)` returns the ctypes function for a dtype."""

    def __init__(self, path: Path, tier: str):
        self.path = path
        self.tier = tier
        self._lib = ctypes.CDLL(str(path))
        abi.check(self.reported_layout())
        self._lib.flintlm_kernels_tier.restype = ctypes.c_char_p
        built_for = self._lib.flintlm_kernels_tier().decode()
        if built_for != tier:
            raise RuntimeError(f"{path} was compiled for the {built_for} tier, not {tier}")
        # NOTE: the int8 path runs on every tier; has_int8_dot says it is also the faster one.
        self.has_int8_dot = bool(self._lib.quant_int8_has_dot())
        self.argmax_rows = self._lib.argmax_rows_f32
        self.argmax_rows.argtypes = [_P, _I64, _I64, _P]
        self.argmax_rows.restype = None
        self._functions: dict[tuple[str, torch.dtype], ctypes._CFuncPtr] = {}
        for kernel in abi.KERNELS:
            for dtype, suffix in SUFFIXES.items():
                function = getattr(self._lib, f"{kernel.name}_{suffix}")
                function.argtypes = kernel.argtypes()
                function.restype = ctypes.c_int if kernel.returns_status else None
                self._functions[kernel.name, dtype] = function

    def reported_layout(self) -> list[int]:
        """The ABI version, limits and structure layout as the library's compiler saw them."""
        report = self._lib.flintlm_kernels_layout
        report.argtypes, report.restype = [_P, _I64], _I64
        count = report(None, 0)
        values = (ctypes.c_int64 * count)()
        report(values, count)
        return list(values)

    def function(self, name: str, dtype: torch.dtype) -> ctypes._CFuncPtr:
        return self._functions[name, dtype]


def _compiler() -> str | None:
    return os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")


def _cpu_identity() -> str:
    """What -march=native depends on: the model name and feature flags of this CPU."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return os.uname().machine
    # x86 names its CPU and features "model name" / "flags"; ARM64 "CPU implementer" / "CPU
    # part" / "Features" (-mcpu=native enables dotprod, i8mm from them)
    keys = ("model name", "flags", "CPU implementer", "CPU part", "Features")
    lines = [line for line in text.splitlines() if line.startswith(keys)]
    return "\n".join(sorted(set(lines)))


def _cache_dir() -> Path:
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("flintlm")) / "kernels"


def write_generated_headers(folder: Path) -> None:
    """abi.h (kernels/abi.py in C) into `folder`, which a build then puts on its include path."""
    (folder / "abi.h").write_text(abi.header())


def _build(compiler: str, flags: tuple[str, ...], target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as scratch:
        write_generated_headers(Path(scratch))
        objects = []
        for source in SOURCES:
            obj = Path(scratch) / source.replace(".c", ".o")
            subprocess.run([compiler, *COMPILE_FLAGS, *flags, f"-I{scratch}", "-c",
                            str(SOURCE_DIR / source), "-o", str(obj)],
                           check=True, capture_output=True, text=True)
            objects.append(str(obj))
        lib = Path(scratch) / target.name
        subprocess.run([compiler, *objects, "-o", str(lib), *LINK_FLAGS],
                       check=True, capture_output=True, text=True)
        os.replace(lib, target)  # atomic: a concurrent process sees the old file or the new


def load(tier: str | None = None, extra_flags: tuple[str, ...] = ()) -> NativeLibrary | None:
    """The CPU kernels for `tier` (default: `default_tier()`), built on first use; None (and one
    warning) where they cannot be built. `extra_flags` narrow the build further, for tests and
    benchmarks of a variant this CPU would not get (`("-mno-avxvnni",)`: the AVX2 tier as Zen 3
    and Zen 4 build it).

    Raises:
        ValueError: `tier` (or FLINTLM_CPU_ISA) names a tier this CPU or source tree lacks.
    """
    tier = tier or default_tier()
    if tier not in available_tiers():
        raise ValueError(f"CPU kernel tier {tier!r} is not available here; this CPU and "
                         f"source tree offer {', '.join(available_tiers())}")
    with _lock:
        if (tier, extra_flags) not in _loaded:
            _loaded[tier, extra_flags] = _load_uncached(tier, extra_flags)
        return _loaded[tier, extra_flags]


def _load_uncached(tier: str, extra_flags: tuple[str, ...]) -> NativeLibrary | None:
    compiler = _compiler()
    if compiler is None:
        logger.warning("no C compiler found (set CC): using the slower torch kernels")
        return None
    try:
        flags = tier_flags(tier) + extra_flags
        version = subprocess.run([compiler, "--version"], capture_output=True, text=True,
                                 check=True).stdout
        names = SOURCES + HEADERS + tuple(TIER_HEADERS[t] for t in available_tiers())
        texts = [(SOURCE_DIR / name).read_text() for name in names]
        key = hashlib.sha256("\0".join([*texts, abi.header(), tier, " ".join(COMPILE_FLAGS + flags),
                                        " ".join(LINK_FLAGS), version, _cpu_identity()]
                                       ).encode()).hexdigest()[:16]
        target = _cache_dir() / f"flintlm_cpu_kernels_{tier}_{key}.so"
        if not target.exists():
            logger.info("building the %s CPU kernels with %s into %s", tier, compiler, target)
            _build(compiler, flags, target)
        return NativeLibrary(target, tier)
    except subprocess.CalledProcessError as exc:
        logger.warning("building the CPU kernels failed; using the torch kernels:\n%s",
                       exc.stderr[-2000:])
    except (OSError, RuntimeError, AttributeError) as exc:
        logger.warning("loading the CPU kernels failed (%s); using the torch kernels", exc)
    return None
