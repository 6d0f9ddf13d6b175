"""flintlm's CPU kernels built for ARM64 with the cross compiler and run under qemu-user
through driver.c, for tests/kernels/test_arm64_emulated.py.

Only the file exchange and the tool calls live here; what to compute and the references stay in
the test. The build uses the host build's flags for the same (arch, tier), from kernels/native.py.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch

from flintlm.kernels import isa, native

CROSS_COMPILER = "aarch64-linux-gnu-gcc"
EMULATOR = "qemu-aarch64"
DEBIAN_PACKAGES = "gcc-aarch64-linux-gnu qemu-user"
DRIVER_SOURCE = Path(__file__).parent / "driver.c"
# Two threads: the OpenMP loops run split as on real machines, on a host shared by others.
EMULATED_THREADS = "2"
COMPILE_JOBS = 2


@dataclass(frozen=True)
class ArmBuild:
    """One ARM64 build: a kernel tier and the -march standing in for -mcpu=native (the
    extensions it may use); `has_int8_dot` is what it must report (quant_int8_has_dot)."""

    name: str
    tier: str
    march: str
    has_int8_dot: bool


def missing_tools() -> list[str]:
    return [tool for tool in (CROSS_COMPILER, EMULATOR) if shutil.which(tool) is None]


def build_driver(build: ArmBuild, folder: Path) -> Path:
    """The driver linked with every kernel source, static (qemu then needs no sysroot).
    Compiled and linked apart, as native.py builds: fast-math at link time would add gcc's
    flush-to-zero start-up code, which the host library never has."""
    native.write_generated_headers(folder)  # abi.h, as the host build generates it
    flags = [*native.COMPILE_FLAGS, *arm_tier_flags(build), f"-I{folder}",
             f"-I{native.SOURCE_DIR}"]
    sources = [native.SOURCE_DIR / name for name in native.SOURCES] + [DRIVER_SOURCE]
    objects = [folder / f"{build.name}-{source.stem}.o" for source in sources]
    with ThreadPoolExecutor(COMPILE_JOBS) as pool:  # the build is most of this test's time
        list(pool.map(lambda source, obj: _check([CROSS_COMPILER, *flags, "-c", str(source),
                                                  "-o", str(obj)]), sources, objects))
    binary = folder / f"driver-{build.name}"
    _check([CROSS_COMPILER, *map(str, objects), "-static", "-fopenmp", "-o", str(binary), "-lm"])
    return binary


def arm_tier_flags(build: ArmBuild) -> list[str]:
    """native.tier_flags for an ARM64 CPU, with -mcpu=native (meaningless when cross-compiling)
    replaced by the build's -march."""
    arm64 = isa.CpuFeatures("aarch64", "emulated", frozenset({"asimd"}))
    return [f"-march={build.march}" if flag in ("-mcpu=native", "-march=native") else flag
            for flag in native.tier_flags(build.tier, arm64)]


def _check(command: list[str]) -> None:
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)}\n{result.stderr[-4000:]}")


@dataclass
class Case:
    """One kernel call: integer/float arguments by name, input tensors by name (written raw)."""

    kernel: str
    scalars: dict[str, int | float]
    inputs: dict[str, torch.Tensor]


@dataclass
class Emulator:
    """A built driver and a scratch folder; `run` takes a fresh subfolder per call."""

    build: ArmBuild
    driver: Path
    folder: Path
    num_runs: int = 0

    def run(self, cases: list[Case]) -> list[dict[str, bytes]]:
        self.num_runs += 1
        return run(self.driver, cases, self.folder / f"run{self.num_runs}")


def run(driver: Path, cases: list[Case], folder: Path) -> list[dict[str, bytes]]:
    """Every case in one emulator run; returns each case's output files by name."""
    folders = []
    for index, case in enumerate(cases):
        case_dir = folder / f"case{index}"
        case_dir.mkdir(parents=True)
        lines = [case.kernel, *(f"{name} {value!r}" for name, value in case.scalars.items())]
        (case_dir / "case.txt").write_text("\n".join(lines) + "\n")
        for name, tensor in case.inputs.items():
            (case_dir / f"{name}.bin").write_bytes(raw_bytes(tensor))
        folders.append(case_dir)
    env = dict(os.environ, OMP_NUM_THREADS=EMULATED_THREADS)
    result = subprocess.run([EMULATOR, "-cpu", "max", str(driver), *map(str, folders)],
                            capture_output=True, text=True, env=env, timeout=300)
    if result.returncode != 0:
        raise RuntimeError(f"{driver.name} exited {result.returncode}: {result.stderr[-4000:]}")
    return [{path.stem: path.read_bytes() for path in case_dir.glob("*.out")}
            for case_dir in folders]


def raw_bytes(tensor: torch.Tensor) -> bytes:
    """The tensor's elements in memory order (bfloat16 as its 16-bit patterns)."""
    return tensor.contiguous().flatten().view(torch.uint8).numpy().tobytes()


def from_bytes(data: bytes, dtype: torch.dtype, shape: tuple[int, ...]) -> torch.Tensor:
    return torch.frombuffer(bytearray(data), dtype=dtype).reshape(shape)
