"""Throughput under overload: does flintlm keep serving at its peak when twice as many clients
as it can hold keep asking (issue #14: at least 90% of the unloaded peak)?

One `flintlm serve` with a bounded capacity (`--max-num-seqs` running + `--max-waiting`
queued). Closed-loop clients each send a streamed completion, and on a refusal (429/503) wait
the server's `Retry-After` and ask again, as a well-behaved client does. For `--seconds` new
requests are sent; then the ones in flight finish. Throughput is the output tokens of completed
requests over the whole time, at `capacity` clients (the unloaded peak: every client admitted)
and at 2x capacity (half of them refused at any moment). Medians of `--runs`.

    PYTHONPATH=. .venv/bin/python bench/overload.py --max-num-seqs 8 --max-waiting 8 \
        --seconds 40 --runs 3 --out bench/results/overload-$(date +%F).json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx

from flintlm.bench.peers import FlintlmServer
from flintlm.bench.serve import ServeConfig, send_request
from flintlm.bench.workload import gguf_vocab_size, resolve_gguf, synthetic_token_prompts


@dataclass
class LoadResult:
    clients: int
    seconds: float
    completed: int
    refused: int
    failed: int
    output_tokens: int

    @property
    def output_throughput(self) -> float:
        return self.output_tokens / self.seconds


async def closed_loop(config: ServeConfig, clients: int, seconds: float, input_len: int,
                      output_len: int, vocab_size: int, retry_after_s: float) -> LoadResult:
    prompts = iter(synthetic_token_prompts(100_000, input_len, output_len, vocab_size, seed=7))
    result = LoadResult(clients, 0.0, 0, 0, 0, 0)
    start = time.perf_counter()
    stop_at = start + seconds

    async def client(http: httpx.AsyncClient) -> None:
        while time.perf_counter() < stop_at:
            timing = await send_request(http, next(prompts), config)
            if timing.is_success:
                result.completed += 1
                result.output_tokens += timing.num_output_tokens
            elif timing.error.startswith(("HTTP 429", "HTTP 503")):
                result.refused += 1
                await asyncio.sleep(retry_after_s)
            else:
                result.failed += 1

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(timeout=httpx.Timeout(600.0), limits=limits) as http:
        await asyncio.gather(*(client(http) for _ in range(clients)))
    result.seconds = time.perf_counter() - start
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--max-num-seqs", type=int, default=8)
    parser.add_argument("--max-waiting", type=int, default=8)
    parser.add_argument("--input-len", type=int, default=128)
    parser.add_argument("--output-len", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=40.0)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--retry-after-s", type=float, default=1.0,
                        help="what the client waits after a refusal (flintlm sends 1)")
    parser.add_argument("--serve-args", default="", help="more `flintlm serve` flags")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    gguf = resolve_gguf(args.model)
    capacity = args.max_num_seqs + args.max_waiting
    serve_args = ["--served-model-name", "bench", "--max-num-seqs", str(args.max_num_seqs),
                  "--max-waiting", str(args.max_waiting), *args.serve_args.split()]
    config = ServeConfig(base_url="", model="bench")
    levels = {"peak": capacity, "overload_2x": 2 * capacity}
    results: dict[str, list[LoadResult]] = {name: [] for name in levels}
    with tempfile.TemporaryDirectory() as data_dir, FlintlmServer(
            str(gguf), serve_args, Path(data_dir)) as server:
        config = ServeConfig(base_url=server.base_url, model="bench")
        for run in range(args.runs):
            for name, clients in levels.items():  # interleaved, so drift hits both alike
                result = asyncio.run(closed_loop(
                    config, clients, args.seconds, args.input_len, args.output_len,
                    gguf_vocab_size(gguf), args.retry_after_s))
                results[name].append(result)
                print(f"run {run + 1} {name} ({clients} clients): "
                      f"{result.output_throughput:.1f} output tok/s, {result.completed} done, "
                      f"{result.refused} refused, {result.failed} failed", flush=True)
    medians = {name: statistics.median(r.output_throughput for r in runs)
               for name, runs in results.items()}
    ratio = medians["overload_2x"] / medians["peak"]
    print(f"median output tok/s: peak {medians['peak']:.1f}, 2x overload "
          f"{medians['overload_2x']:.1f}: {ratio:.2f} of the peak")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({
            "args": vars(args) | {"out": str(args.out)}, "capacity": capacity,
            "median_output_throughput": medians, "ratio": ratio,
            "runs": {name: [asdict(r) | {"output_throughput": r.output_throughput}
                            for r in runs] for name, runs in results.items()},
        }, indent=2))


if __name__ == "__main__":
    main()
