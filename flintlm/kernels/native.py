"""Build and load flintlm's CPU kernels (the *.c files here) with the system C compiler.

The library is compiled once per source, compiler and CPU (-march=native) into the user's cache
folder and loaded with ctypes; a machine without a compiler, or a build that fails, gets None
and the torch reference path. Only bindings live here; `kernels/ops.py` decides when to call them.
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

logger = logging.getLogger(__name__)

SOURCE_DIR = Path(__file__).parent
SOURCES = ("attention.c", "decode_step.c", "layers.c", "quant_matmul.c")
HEADERS = ("common.h", "tier.h", "tier_avx512.h", "tier_avx2.h", "tier_generic.h", "tier_neon.h",
           "tier_neon_attention.h")
ABI_VERSION = 5
# NOTE: fast-math lets gcc vectorise the float reductions and expf (through libmvec). The
# kernels never rely on inf or NaN arithmetic (running maxima start at -FLT_MAX; the bfloat16
# NaN test looks at bits), and linking is a separate step without fast-math, so gcc's
# flush-to-zero start-up code never enters the process and changes torch's numerics.
COMPILE_FLAGS = ("-O3", "-march=native", "-ffast-math", "-fopenmp", "-fPIC", "-std=c11")
LINK_FLAGS = ("-shared", "-fopenmp", "-lm")

_P = ctypes.c_void_p
_I64 = ctypes.c_int64
_I = ctypes.c_int
_F = ctypes.c_float
SIGNATURES: dict[str, tuple[object, ...]] = {
    "paged_attention": (_P, _P, _P, _P, _P, _P, _P, _I64, _I, _I, _I, _I, _I, _F),
    "rope_write_kv": (_P, _P, _P, _I64, _P, _P, _P, _P, _P, _P, _P, _P, _I64, _I, _I, _I, _I),
    "add_rms_norm": (_P, _P, _P, _P, _I64, _I, _F),
    "silu_and_mul": (_P, _P, _I64, _I),
    "quant_matmul": (_P, _I64, _I64, _P, _P, _P, _I, _I, _I64, _P, _I64, _I64, _I),
    "decode_step": (_P, _I, _P, _P, _P, _P),
}
SUFFIXES = {torch.float32: "f32", torch.bfloat16: "bf16"}

_lock = threading.Lock()
_loaded: dict[str, NativeLibrary | None] = {}


class NativeLibrary:
    """The loaded kernels: `function(name, dtype)` returns the ctypes function for a dtype."""

    def __init__(self, path: Path):
        self.path = path
        self._lib = ctypes.CDLL(str(path))
        if self._lib.flintlm_kernels_abi_version() != ABI_VERSION:
            raise RuntimeError(f"{path} has another ABI version than {ABI_VERSION}")
        self.has_int8_dot = bool(self._lib.quant_int8_available())
        self.argmax_rows = self._lib.argmax_rows_f32
        self.argmax_rows.argtypes = [_P, _I64, _I64, _P]
        self.argmax_rows.restype = None
        self._functions: dict[tuple[str, torch.dtype], ctypes._CFuncPtr] = {}
        for name, argtypes in SIGNATURES.items():
            for dtype, suffix in SUFFIXES.items():
                function = getattr(self._lib, f"{name}_{suffix}")
                function.argtypes = list(argtypes)
                function.restype = None
                self._functions[name, dtype] = function

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
    lines = [line for line in text.splitlines() if line.startswith(("model name", "flags"))]
    return "\n".join(sorted(set(lines)))


def _cache_dir() -> Path:
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("flintlm")) / "kernels"


def _build(compiler: str, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as scratch:
        objects = []
        for source in SOURCES:
            obj = Path(scratch) / source.replace(".c", ".o")
            subprocess.run([compiler, *COMPILE_FLAGS, "-c", str(SOURCE_DIR / source), "-o",
                            str(obj)], check=True, capture_output=True, text=True)
            objects.append(str(obj))
        lib = Path(scratch) / target.name
        subprocess.run([compiler, *objects, "-o", str(lib), *LINK_FLAGS],
                       check=True, capture_output=True, text=True)
        os.replace(lib, target)  # atomic: a concurrent process sees the old file or the new


def load() -> NativeLibrary | None:
    """The CPU kernels, built on first use; None (and one warning) where they cannot be built."""
    with _lock:
        if "lib" in _loaded:
            return _loaded["lib"]
        _loaded["lib"] = library = _load_uncached()
        return library


def _load_uncached() -> NativeLibrary | None:
    compiler = _compiler()
    if compiler is None:
        logger.warning("no C compiler found (set CC): using the slower torch kernels")
        return None
    try:
        version = subprocess.run([compiler, "--version"], capture_output=True, text=True,
                                 check=True).stdout
        texts = [(SOURCE_DIR / name).read_text() for name in SOURCES + HEADERS]
        key = hashlib.sha256("\0".join([*texts, " ".join(COMPILE_FLAGS), " ".join(LINK_FLAGS),
                                        version, _cpu_identity()]).encode()).hexdigest()[:16]
        target = _cache_dir() / f"flintlm_cpu_kernels_{key}.so"
        if not target.exists():
            logger.info("building the CPU kernels with %s into %s", compiler, target)
            _build(compiler, target)
        return NativeLibrary(target)
    except subprocess.CalledProcessError as exc:
        logger.warning("building the CPU kernels failed; using the torch kernels:\n%s",
                       exc.stderr[-2000:])
    except (OSError, RuntimeError, AttributeError) as exc:
        logger.warning("loading the CPU kernels failed (%s); using the torch kernels", exc)
    return None
