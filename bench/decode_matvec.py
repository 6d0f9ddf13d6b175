"""The matmuls of one Llama-3.2-1B-shaped decode step (Q4_0 layers, Q8_0 output head) on
flintlm's int8 kernels, per CPU tier: weight bandwidth in GB/s, the figure a weight-bound
single-stream decode step is made of.

    PYTHONPATH=. python bench/decode_matvec.py --tiers avx2,avx512 --threads 1 --steps 20
    PYTHONPATH=. python bench/decode_matvec.py --tiers avx2 --extra-flags=-mno-avxvnni  # Zen 3/4
    PYTHONPATH=. python bench/decode_matvec.py --resident  # in-L2 speed: the kernel alone

Random weights in the interleaved layout the decode step reads (models/quant.py), all 16
layers and the head (~0.9 GB, more than a typical L3, so every step streams from memory as a
real step does). A step calls the 64 layer matmuls in order, then the head; each kind's time is
summed over the layers, and its best of `--steps` steps is reported (the minimum is robust to
a shared machine's noise). GB/s counts the layout's bytes (q, d, m) and the GGUF's bytes.
"""

from __future__ import annotations

import argparse
import time

import flintlm  # noqa: F401  - applies FLINTLM_CPU_ISA's cap to torch before torch loads
import torch

from flintlm.kernels import isa, native
from flintlm.kernels.ops import CpuKernels, QuantMatrix
from flintlm.models.quant import interleave

HIDDEN, INTERMEDIATE, NUM_LAYERS, VOCAB = 2048, 8192, 16, 128256
LAYER = {"qkv": (3072, HIDDEN), "o": (HIDDEN, HIDDEN), "gate_up": (2 * INTERMEDIATE, HIDDEN),
         "down": (HIDDEN, INTERMEDIATE)}
GGUF_BYTES_PER_BLOCK = {True: 18, False: 34}  # Q4_0, Q8_0


def random_matrix(n: int, k: int, is_4bit: bool) -> QuantMatrix:
    """Q4_0 (w = d (q - 8)) or Q8_0 (stored q + 128, w = d (u - 128)), interleaved."""
    q = torch.randint(0, 256, (n, k // 2 if is_4bit else k), dtype=torch.uint8)
    d = (torch.rand(n, k // 32) * 0.01 + 0.001).half()
    m = (d.float() * (-8.0 if is_4bit else -128.0)).half()
    return interleave(QuantMatrix(q, d, m, is_4bit=is_4bit))


def gguf_bytes(matrix: QuantMatrix) -> int:
    return matrix.d.numel() * GGUF_BYTES_PER_BLOCK[matrix.is_4bit]


def best_step(kernels: CpuKernels, layers: list[dict[str, QuantMatrix]], head: QuantMatrix,
              rows: int, steps: int) -> dict[str, float]:
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
                start = time.perf_counter()
                kernels.quant_matmul(x[LAYER[name][1]], matrix, outs[name], 0, True)
                times[name] += time.perf_counter() - start
        start = time.perf_counter()
        kernels.quant_matmul(x[HIDDEN], head, logits, 0, True)
        times["head"] = time.perf_counter() - start
        if step:
            best = {kind: min(best[kind], seconds) for kind, seconds in times.items()}
    return {**best, "step": sum(best.values())}


def resident(kernels: CpuKernels, rows: int) -> str:
    """GB/s on matrices small enough to stay in L2 (best of 30 x 50 calls): the kernel's own
    speed, free of the memory system (and of a shared machine's memory traffic)."""
    cells = []
    for n, k, is_4bit in ((512, HIDDEN, True), (256, INTERMEDIATE, True), (512, HIDDEN, False)):
        matrix = random_matrix(n, k, is_4bit)
        x = torch.randn(rows, k, dtype=kernels.dtype)
        out = torch.empty(rows, n, dtype=kernels.dtype)
        best = float("inf")
        for _ in range(31):
            start = time.perf_counter()
            for _ in range(50):
                kernels.quant_matmul(x, matrix, out, 0, True)
            best = min(best, (time.perf_counter() - start) / 50)
        cells.append(f"{'Q4_0' if is_4bit else 'Q8_0'} {n}x{k} {matrix.nbytes / best / 1e9:.1f}")
    return ", ".join(cells)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tiers", default=",".join(native.available_tiers()[:2]))
    parser.add_argument("--threads", default="1")
    parser.add_argument("--rows", default="1")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--extra-flags", default="",
                        help="compiler flags added to each tier's, comma-separated")
    parser.add_argument("--resident", action="store_true",
                        help="time L2-resident matrices instead of a whole step")
    args = parser.parse_args()
    torch.manual_seed(0)
    layers = [{name: random_matrix(n, k, True) for name, (n, k) in LAYER.items()}
              for _ in range(0 if args.resident else NUM_LAYERS)]
    head = random_matrix(VOCAB, HIDDEN, False)
    size = {name: (sum(layer[name].nbytes for layer in layers),
                   sum(gguf_bytes(layer[name]) for layer in layers)) for name in LAYER}
    size["head"] = (head.nbytes, gguf_bytes(head))
    size["step"] = tuple(map(sum, zip(*size.values())))  # type: ignore[assignment]
    print(f"CPU: {isa.cpu_features().model_name}; FLINTLM_CPU_ISA={isa.forced_tier()}; "
          f"extra flags: {args.extra_flags or 'none'}")
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
                          + resident(kernels, rows), flush=True)
                    continue
                best = best_step(kernels, layers, head, rows, args.steps)
                cells = [f"{best[k] * 1e3:.2f} ({size[k][0] / best[k] / 1e9:.1f})" for k in size]
                print(f"| {tier} | {threads} | {rows} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
