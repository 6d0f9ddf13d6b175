"""One SmolLM2-135M layer's matmuls (and its logits) on flintlm's quantized kernels, per CPU
tier, against torch's dense and quantized matmuls; prints a markdown table (microseconds).

    PYTHONPATH=. python bench/kernel_tiers.py                       # every tier, torch as is
    FLINTLM_CPU_ISA=avx2 PYTHONPATH=. python bench/kernel_tiers.py  # torch capped to AVX2 too

Q4_1 weights (random bytes: the kernels' time does not depend on the values). Each variant
is timed in turn, repeats interleaved, best of the repeats; the layer is the sum of its four
matrices (qkv 960x576, o 576x576, gate_up 3072x576, down 576x1536).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import flintlm  # noqa: F401  - applies FLINTLM_CPU_ISA's cap to torch before torch loads

# isort: split
import torch
from torch.nn import functional as F

from flintlm.kernels import isa, native
from flintlm.kernels.abi import WeightKind
from flintlm.kernels.ops import CpuKernels, QuantMatrix
from flintlm.models.quant import interleave

LAYER = {"qkv": (960, 576), "o": (576, 576), "gate_up": (3072, 576), "down": (576, 1536)}
LOGITS = {"logits": (49152, 576)}


def q4_1(n: int, k: int) -> tuple[QuantMatrix, torch.Tensor]:
    """A random Q4_1 matrix in the kernels' row layout and its dequantized float32 weights."""
    q = torch.randint(0, 256, (n, k // 2), dtype=torch.uint8)
    d = (torch.rand(n, k // 32) * 0.01).half()
    m = (torch.rand(n, k // 32) * -0.08).half()
    values = torch.stack([q & 15, q >> 4], 1).view(n, 2, k // 32, 16)  # [n, lo/hi, block, 16]
    values = values.permute(0, 2, 1, 3).reshape(n, k // 32, 32).float()
    dense = values * d.float()[..., None] + m.float()[..., None]
    return QuantMatrix(q, d, m, WeightKind.Q4_1), dense.view(n, k)


def torch_variants(dense: torch.Tensor, rows: int) -> dict[str, Callable[[], object]]:
    """torch's dense and quantized matmuls of x [rows, K] by this weight; those that fail to
    run here are left out."""
    n, k = dense.shape
    x32, x16 = torch.randn(rows, k), torch.randn(rows, k).bfloat16()
    w16 = dense.bfloat16()
    variants: dict[str, Callable[[], object]] = {
        "torch f32 linear": lambda: F.linear(x32, dense),
        "torch bf16 linear": lambda: F.linear(x16, w16),
    }
    try:
        packed = torch.ops.mkldnn._reorder_linear_weight(w16, rows)
        variants["oneDNN bf16 packed"] = lambda: torch.ops.mkldnn._linear_pointwise(
            x16, packed, None, "none", [], "")
    except (RuntimeError, AttributeError):
        pass
    w8 = torch.randint(-127, 128, (n, k), dtype=torch.int8)
    scales8 = torch.rand(n).bfloat16()
    variants["torch int8pack_mm"] = lambda: torch.ops.aten._weight_int8pack_mm(x16, w8, scales8)
    try:
        w4 = torch.ops.aten._convert_weight_to_int4pack_for_cpu(
            torch.randint(0, 16, (n, k), dtype=torch.int32), 2)
        scales_zeros = torch.rand(k // 32, n, 2).bfloat16()
        variants["torch int4pack_mm g32"] = lambda: torch.ops.aten._weight_int4pack_mm_for_cpu(
            x16, w4, 32, scales_zeros)
    except (RuntimeError, AttributeError):
        pass
    xi8, wi8 = torch.randint(-127, 128, (rows, k), dtype=torch.int8), w8.t()
    variants["torch _int_mm"] = lambda: torch._int_mm(xi8, wi8)
    working = {}
    for name, run in variants.items():
        try:
            run()
            working[name] = run
        except (RuntimeError, AttributeError, NotImplementedError):
            pass
    return working


def flintlm_variants(matrix: QuantMatrix, rows: int, tiers: tuple[str, ...]
                     ) -> dict[str, Callable[[], object]]:
    n, k = matrix.out_features, matrix.q.shape[1] * 2
    interleaved = interleave(matrix)
    variants = {}
    for tier in tiers:
        exact = CpuKernels(native.load(tier), torch.float32)
        int8 = CpuKernels(native.load(tier), torch.bfloat16)
        x32, x16 = torch.randn(rows, k), torch.randn(rows, k).bfloat16()
        out32, out16 = torch.empty(rows, n), torch.empty(rows, n, dtype=torch.bfloat16)
        variants[f"flintlm {tier} int8"] = (
            lambda kern=int8, x=x16, o=out16: kern.quant_matmul(x, interleaved, o, 0, True))
        variants[f"flintlm {tier} exact"] = (
            lambda kern=exact, x=x32, o=out32: kern.quant_matmul(x, matrix, o, 0, False))
    return variants


def best_times(variants: dict[str, Callable[[], object]], repeats: int, budget_s: float
               ) -> dict[str, float]:
    """Best seconds a call per variant, the repeats of all variants interleaved."""
    calls = {}
    for name, run in variants.items():  # warm up, and size each timing to ~budget_s
        run()
        start = time.perf_counter()
        run()
        calls[name] = max(1, int(budget_s / max(time.perf_counter() - start, 1e-6)))
    best = dict.fromkeys(variants, float("inf"))
    for _ in range(repeats):
        for name, run in variants.items():
            start = time.perf_counter()
            for _ in range(calls[name]):
                run()
            best[name] = min(best[name], (time.perf_counter() - start) / calls[name])
    return best


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", default="1,4,16,64")
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--tiers", default=",".join(native.available_tiers()))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--budget-ms", type=float, default=4.0)
    args = parser.parse_args()
    tiers = tuple(args.tiers.split(","))
    weights = {name: q4_1(*shape) for name, shape in {**LAYER, **LOGITS}.items()}
    print(f"CPU: {isa.cpu_features().model_name}; FLINTLM_CPU_ISA={isa.forced_tier()}; "
          f"torch {torch.__version__}, ATen capability {torch.backends.cpu.get_cpu_capability()}")
    print("\n| threads | rows | path | layer (us) | logits (us) |\n|---|---|---|---|---|")
    for threads in map(int, args.threads.split(",")):
        torch.set_num_threads(threads)  # also the kernels' OpenMP (the same libgomp)
        for rows in map(int, args.rows.split(",")):
            totals: dict[str, dict[str, float]] = {"layer": {}, "logits": {}}
            for name, (matrix, dense) in weights.items():
                part = "logits" if name in LOGITS else "layer"
                variants = {**flintlm_variants(matrix, rows, tiers),
                            **torch_variants(dense, rows)}
                for variant, seconds in best_times(variants, args.repeats,
                                                   args.budget_ms / 1e3).items():
                    totals[part][variant] = totals[part].get(variant, 0.0) + seconds
            for variant in totals["layer"]:
                print(f"| {threads} | {rows} | {variant} | {totals['layer'][variant] * 1e6:.0f} "
                      f"| {totals['logits'].get(variant, float('nan')) * 1e6:.0f} |")


if __name__ == "__main__":
    main()
