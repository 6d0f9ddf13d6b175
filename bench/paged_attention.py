"""One decode step's paged attention on flintlm's CPU kernels, Llama-3.2-1B shape: 64 sequences
(one query row each) over CONTEXT cached tokens, 16 layers, per compute and cache dtype (float32
over a float32 or a bfloat16 cache, bfloat16 over bfloat16).
Random caches in the kernels' layout, a fresh slab per block (as scattered as a long-running
cache gets); milliseconds a step, the median of 9.

    .venv/bin/python bench/paged_attention.py 192      # FLINTLM_CPU_ISA=avx2 forces the tier
"""

from __future__ import annotations

import statistics
import sys
import time

import flintlm  # noqa: F401  - applies FLINTLM_CPU_ISA's cap to torch before torch loads

# isort: split
import torch

from flintlm.kernels.ops import CpuKernels

ROWS, HEADS, KV_HEADS, HEAD_DIM, BLOCK, LAYERS = 64, 32, 8, 64, 16, 16


def step_ms(dtype: torch.dtype, kv_dtype: torch.dtype, context: int, repeats: int = 9) -> float:
    kernels = CpuKernels.create(torch.device("cpu"), dtype, "native")
    assert kernels is not None
    blocks = -(-context // BLOCK)
    caches = [kernels.allocate_kv_cache(ROWS * blocks, BLOCK, KV_HEADS, HEAD_DIM, kv_dtype)
              for _ in range(LAYERS)]
    for keys, values in caches:
        keys.normal_()
        values.normal_()
    tables = torch.randperm(ROWS * blocks, dtype=torch.int32).view(ROWS, blocks).contiguous()
    row_seq = torch.arange(ROWS, dtype=torch.int32)
    row_ctx = torch.full((ROWS,), context, dtype=torch.int32)
    q = torch.randn(ROWS, HEADS, HEAD_DIM).to(dtype)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for keys, values in caches:
            kernels.paged_attention(q, keys, values, tables, row_seq, row_ctx, HEAD_DIM ** -0.5)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def main() -> None:
    context = int(sys.argv[1]) if len(sys.argv) > 1 else 192
    print(f"{torch.get_num_threads()} threads, {ROWS} rows x {LAYERS} layers, {context} tokens")
    def name(dtype: torch.dtype) -> str:
        return str(dtype).removeprefix("torch.")

    for dtype, kv_dtype in ((torch.float32, torch.float32), (torch.float32, torch.bfloat16),
                            (torch.bfloat16, torch.bfloat16)):
        print(f"  {name(dtype):9} over a {name(kv_dtype):9} cache "
              f"{step_ms(dtype, kv_dtype, context):7.1f} ms a step")


if __name__ == "__main__":
    main()
