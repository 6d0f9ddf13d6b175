"""The matmuls of one Llama-3.2-1B-shaped decode step (Q4_0 layers, Q8_0 output head) on
flintlm's int8 kernels, per CPU tier: weight bandwidth in GB/s, the figure a weight-bound
single-stream decode step is made of.

    PYTHONPATH=. python bench/decode_matvec.py --tiers avx2,avx512 --threads 1 --steps 20
    PYTHONPATH=. python bench/decode_matvec.py --tiers avx2 --extra-flags=-mno-avxvnni  # Zen 3/4
    PYTHONPATH=. python bench/decode_matvec.py --resident  # in-L2 speed: the kernel alone
    PYTHONPATH=. python bench/decode_matvec.py --layer --cpu-time --baseline ../main  # batched

Random weights in the interleaved layout the decode step reads (models/quant.py), all 16
layers and the head (~0.9 GB, more than a typical L3, so every step streams from memory as a
real step does). A step calls the 64 layer matmuls in order, then the head; each kind's time is
summed over the layers, and its best of `--steps` steps is reported (the minimum is robust to
a shared machine's noise). GB/s counts the layout's bytes (q, d, m) and the GGUF's bytes.

`--layer` times batched steps instead (offline generation, 16-256 rows): one layer's gate_up
and down matrices, GOPS = 2 N K rows / time, best and median of `--steps` calls. With
`--baseline TREE`, that tree's kernels (built by its own flintlm) run the same calls,
alternating with this tree's, so both see the same machine; `--cpu-time` times the process's
CPU time rather than wall time, so other jobs on a shared machine matter less (1 thread).
"""

from __future__ import annotations

import argparse
import ctypes
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import flintlm  # noqa: F401  - applies FLINTLM_CPU_ISA's cap to torch before torch loads

# isort: split
import torch

from flintlm.kernels import abi, isa, native
from flintlm.kernels.abi import WeightKind
from flintlm.kernels.ops import CpuKernels, QuantMatrix
from flintlm.models.quant import interleave

HIDDEN, INTERMEDIATE, NUM_LAYERS, VOCAB = 2048, 8192, 16, 128256
LAYER = {"qkv": (3072, HIDDEN), "o": (HIDDEN, HIDDEN), "gate_up": (2 * INTERMEDIATE, HIDDEN),
         "down": (HIDDEN, INTERMEDIATE)}
GGUF_BYTES_PER_BLOCK = {True: 18, False: 34}  # Q4_0, Q8_0
BATCH_ROWS = "16,64,128,256"


def random_matrix(n: int, k: int, is_4bit: bool) -> QuantMatrix:
    """Q4_0 (w = d (q - 8)) or Q8_0 (stored q + 128, w = d (u - 128)), interleaved."""
    q = torch.randint(0, 256, (n, k // 2 if is_4bit else k), dtype=torch.uint8)
    d = (torch.rand(n, k // 32) * 0.01 + 0.001).half()
    m = d * (-8.0 if is_4bit else -128.0)
    return interleave(QuantMatrix(q, d, m, WeightKind.Q4_0 if is_4bit else WeightKind.Q8_0))


def gguf_bytes(matrix: QuantMatrix) -> int:
    return matrix.d.numel() * GGUF_BYTES_PER_BLOCK[matrix.is_4bit]


def best_step(kernels: CpuKernels, layers: list[dict[str, QuantMatrix]], head: QuantMatrix,
              rows: int, steps: int, clock: Callable[[], float]) -> dict[str, float]:
    """Seconds per kind (summed over the layers), each the best of `steps` steps, and "step"
    their sum (each kind's best taken apart: on a shared machine no whole step is quiet)."""
    x = {k: torch.randn(rows, k, dtype=kernels.dtype) for k in (HIDDEN, INTERMEDIATE)}
    outs = {name: torch.empty(rows, n, dtype=kernels.dtype) for name, (n, _) in LAYER.items()}
    logits = torch.empty(rows, VOCAB, dtype=kernels.dtype)
    best = dict.fromkeys([*LAYER, "head"], float("inf"))
    for step in range(steps + 1):  # the first is a warm-up
        times = dict.fromkeys([*LAYER, "head"], 0.0)
        for layer in layers:
            for name, matrix in layer.items():
                start = clock()
                kernels.quant_matmul(x[LAYER[name][1]], matrix, outs[name], 0, True)
                times[name] += clock() - start
        start = clock()
        kernels.quant_matmul(x[HIDDEN], head, logits, 0, True)
        times["head"] = clock() - start
        if step:
            best = {kind: min(best[kind], seconds) for kind, seconds in times.items()}
    return {**best, "step": sum(best.values())}


def resident(kernels: CpuKernels, rows: int, clock: Callable[[], float]) -> str:
    """GB/s on matrices small enough to stay in L2 (best of 30 x 50 calls): the kernel's own
    speed, free of the memory system (and of a shared machine's memory traffic)."""
    cells = []
    for n, k, is_4bit in ((512, HIDDEN, True), (256, INTERMEDIATE, True), (512, HIDDEN, False)):
        matrix = random_matrix(n, k, is_4bit)
        x = torch.randn(rows, k, dtype=kernels.dtype)
        out = torch.empty(rows, n, dtype=kernels.dtype)
        best = float("inf")
        for _ in range(31):
            start = clock()
            for _ in range(50):
                kernels.quant_matmul(x, matrix, out, 0, True)
            best = min(best, (clock() - start) / 50)
        cells.append(f"{'Q4_0' if is_4bit else 'Q8_0'} {n}x{k} {matrix.nbytes / best / 1e9:.1f}")
    return ", ".join(cells)


# A quant_matmul call: (x, matrix, out) -> None.
Matmul = Callable[[torch.Tensor, QuantMatrix, torch.Tensor], None]


def tree_matmul(kernels: CpuKernels) -> Matmul:
    return lambda x, matrix, out: kernels.quant_matmul(x, matrix, out, 0, True)


def baseline_matmul(tree: str, tier: str, extra: tuple[str, ...]) -> Matmul:
    """quant_matmul_f32 of the kernels another source tree builds (by its own flintlm, in a
    child process), loaded beside this tree's. Before ABI 8 its weight argument was is_q4."""
    code = ("import sys; from flintlm.kernels import native; "
            "print(native.load(sys.argv[1], tuple(sys.argv[2:])).path)")
    path = subprocess.run([sys.executable, "-c", code, tier, *extra], check=True,
                          capture_output=True, text=True, cwd=tree,
                          env={**os.environ, "PYTHONPATH": os.path.abspath(tree)}
                          ).stdout.split()[-1]
    library = ctypes.CDLL(path)
    library.flintlm_kernels_layout.restype = ctypes.c_int64
    abi_version = ctypes.c_int64()
    library.flintlm_kernels_layout(ctypes.byref(abi_version), ctypes.c_int64(1))
    function = library.quant_matmul_f32
    [kernel] = [kernel for kernel in abi.KERNELS if kernel.name == "quant_matmul"]
    function.argtypes, function.restype = kernel.argtypes(), ctypes.c_int

    def call(x: torch.Tensor, matrix: QuantMatrix, out: torch.Tensor) -> None:
        kind = int(matrix.kind) if abi_version.value >= 8 else int(matrix.is_4bit)
        q, d, m = matrix.pointers
        if function(x.data_ptr(), x.shape[0], x.shape[1], q, d, m, kind, 1,
                    matrix.out_features, out.data_ptr(), out.shape[1], 0, 1):
            raise MemoryError("quant_matmul could not allocate")
    return call


def layer_table(matmuls: dict[str, Matmul], tier: str, rows_list: list[int], types: list[str],
                steps: int, clock: Callable[[], float]) -> None:
    """Prints markdown rows: per matrix, type and row count, each variant's GOPS, best (median)
    of `steps` calls, the variants' calls alternating."""
    for type_name in types:
        for name in ("gate_up", "down"):
            n, k = LAYER[name]
            matrix = random_matrix(n, k, type_name == "Q4_0")
            for rows in rows_list:
                x = torch.randn(rows, k)
                outs = {label: torch.empty(rows, n) for label in matmuls}
                seconds: dict[str, list[float]] = {label: [] for label in matmuls}
                for step in range(steps + 1):  # the first is a warm-up
                    for label, matmul in matmuls.items():
                        start = clock()
                        matmul(x, matrix, outs[label])
                        if step:
                            seconds[label].append(clock() - start)
                ops = 2 * n * k * rows / 1e9
                cells = [f"{ops / min(t):.0f} ({ops / statistics.median(t):.0f})"
                         for t in seconds.values()]
                ratio = min(seconds["base"]) / min(seconds["tree"]) if "base" in seconds else 1
                print(f"| {tier} | {name} {n}x{k} | {type_name} | {rows} | " + " | ".join(cells)
                      + f" | {ratio:.2f} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tiers", default=",".join(native.available_tiers()[:2]))
    parser.add_argument("--threads", default="1")
    parser.add_argument("--rows", default=None,
                        help=f"activation rows, comma-separated (1; --layer: {BATCH_ROWS})")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--extra-flags", default="",
                        help="compiler flags added to each tier's, comma-separated")
    parser.add_argument("--resident", action="store_true",
                        help="time L2-resident matrices instead of a whole step")
    parser.add_argument("--layer", action="store_true",
                        help="time one layer's gate_up and down at batch sizes, in GOPS")
    parser.add_argument("--types", default="Q4_0", help="--layer: Q4_0 and/or Q8_0")
    parser.add_argument("--baseline", default=None,
                        help="--layer: also time the kernels of this source tree")
    parser.add_argument("--cpu-time", action="store_true",
                        help="time the process's CPU time instead of wall time")
    args = parser.parse_args()
    torch.manual_seed(0)
    clock = time.process_time if args.cpu_time else time.perf_counter
    if args.layer:
        run_layer(args, clock)
        return
    args.rows = args.rows or "1"
    layers = [{name: random_matrix(n, k, True) for name, (n, k) in LAYER.items()}
              for _ in range(0 if args.resident else NUM_LAYERS)]
    head = random_matrix(VOCAB, HIDDEN, False)
    size = {name: (sum(layer[name].nbytes for layer in layers),
                   sum(gguf_bytes(layer[name]) for layer in layers)) for name in LAYER}
    size["head"] = (head.nbytes, gguf_bytes(head))
    size["step"] = tuple(map(sum, zip(*size.values(), strict=True)))  # type: ignore[assignment]
    print(f"CPU: {isa.cpu_features().model_name}; FLINTLM_CPU_ISA={isa.forced_tier()}; "
          f"extra flags: {args.extra_flags or 'none'}; {'CPU' if args.cpu_time else 'wall'} time")
    print("bytes a step: " + ", ".join(f"{k} {v[0] / 1e6:.0f} MB (GGUF {v[1] / 1e6:.0f})"
                                       for k, v in size.items()))
    print("\n| tier | threads | rows | " + " | ".join(f"{k} ms (GB/s)" for k in size) + " |")
    print("|---|---|---|" + "---|" * len(size))
    for tier in args.tiers.split(","):
        extra = tuple(flag for flag in args.extra_flags.split(",") if flag)
        kernels = CpuKernels(native.load(tier, extra), torch.float32)
        for threads in map(int, args.threads.split(",")):
            torch.set_num_threads(threads)  # also the kernels' OpenMP (the same libgomp)
            for rows in map(int, args.rows.split(",")):
                if args.resident:
                    print(f"{tier}, {threads} threads, {rows} rows, resident GB/s: "
                          + resident(kernels, rows, clock), flush=True)
                    continue
                best = best_step(kernels, layers, head, rows, args.steps, clock)
                cells = [f"{best[k] * 1e3:.2f} ({size[k][0] / best[k] / 1e9:.1f})" for k in size]
                print(f"| {tier} | {threads} | {rows} | " + " | ".join(cells) + " |", flush=True)


def run_layer(args: argparse.Namespace, clock: Callable[[], float]) -> None:
    extra = tuple(flag for flag in args.extra_flags.split(",") if flag)
    torch.set_num_threads(int(args.threads.split(",")[0]))
    print(f"CPU: {isa.cpu_features().model_name}; extra flags: {args.extra_flags or 'none'}; "
          f"{torch.get_num_threads()} threads; {'CPU' if args.cpu_time else 'wall'} time; "
          f"GOPS best (median) of {args.steps}")
    labels = ([f"base {args.baseline}"] if args.baseline else []) + ["this tree"]
    print("\n| tier | matrix | type | rows | " + " | ".join(f"{label} GOPS" for label in labels)
          + " | speed-up |")
    print("|---|---|---|---|" + "---|" * (len(labels) + 1))
    for tier in args.tiers.split(","):
        matmuls = {"tree": tree_matmul(CpuKernels(native.load(tier, extra), torch.float32))}
        if args.baseline:
            matmuls = {"base": baseline_matmul(args.baseline, tier, extra), **matmuls}
        layer_table(matmuls, tier, [int(r) for r in (args.rows or BATCH_ROWS).split(",")],
                    args.types.split(","), args.steps, clock)


if __name__ == "__main__":
    main()
