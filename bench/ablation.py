"""What each optimisation gained: the same offline workload at several commits, in one run.

Each commit is checked out into a temporary worktree and timed in its own process (with this
checkout's venv), interleaved round-robin so machine noise spreads over all of them; the table
shows the median of the runs per commit and its ratio to the first commit.

    .venv/bin/python bench/ablation.py 9658c63 7fcb69e HEAD --dtype bfloat16 --runs 3

Only `flintlm.LLM` and `SamplingParams` are used, so any commit since the engine landed works.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

# Runs inside the worktree of one commit: one untimed warm-up, then one timed pass.
PROBE = r"""
import json, random, sys, time
import torch
from flintlm import LLM, SamplingParams
spec = json.loads(sys.argv[1])
torch.set_num_threads(spec["threads"])
llm = LLM("default", dtype=spec["dtype"], max_num_seqs=spec["max_num_seqs"],
          max_num_batched_tokens=spec["max_num_batched_tokens"])
rng = random.Random(spec["seed"])
def prompts(n):
    return [[rng.randrange(1000, 49000) for _ in range(spec["input_len"])] for _ in range(n)]
params = SamplingParams(max_tokens=spec["output_len"], ignore_eos=True, temperature=0.0)
llm.generate(prompts(min(4, spec["num_prompts"])), SamplingParams(max_tokens=4, ignore_eos=True,
                                                                    temperature=0.0))
batch = prompts(spec["num_prompts"])
start = time.perf_counter()
outputs = llm.generate(batch, params)
elapsed = time.perf_counter() - start
assert sum(o.num_cached_tokens for o in outputs) == 0, "prefix cache hit in a timed run"
print(json.dumps({"elapsed_s": elapsed,
                  "output_tokens": sum(len(o.token_ids) for o in outputs)}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("revs", nargs="+", help="commits to compare, the baseline first")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--num-prompts", type=int, default=64)
    parser.add_argument("--input-len", type=int, default=128)
    parser.add_argument("--output-len", type=int, default=128)
    parser.add_argument("--max-num-seqs", type=int, default=64)
    parser.add_argument("--max-num-batched-tokens", type=int, default=512)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="flintlm-ablation-") as scratch:
        trees = {}
        for rev in args.revs:
            tree = Path(scratch) / rev.replace("/", "_")
            subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(tree),
                            rev], check=True, capture_output=True)
            trees[rev] = tree
        try:
            results = _run_all(args, trees)
        finally:
            for tree in trees.values():
                subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force",
                                str(tree)], capture_output=True)
    _report(args, results)


def _run_all(args: argparse.Namespace, trees: dict[str, Path]) -> dict[str, list[float]]:
    results: dict[str, list[float]] = {rev: [] for rev in trees}
    for run in range(args.runs):
        for rev, tree in trees.items():
            spec = {"dtype": args.dtype, "num_prompts": args.num_prompts,
                    "input_len": args.input_len, "output_len": args.output_len,
                    "max_num_seqs": args.max_num_seqs,
                    "max_num_batched_tokens": args.max_num_batched_tokens,
                    "threads": args.threads, "seed": 1000 * run + 17}
            env = {**os.environ, "PYTHONPATH": str(tree)}
            done = subprocess.run([sys.executable, "-c", PROBE, json.dumps(spec)], cwd=tree,
                                  env=env, check=True, capture_output=True, text=True)
            result = json.loads(done.stdout.strip().splitlines()[-1])
            tok_s = result["output_tokens"] / result["elapsed_s"]
            results[rev].append(tok_s)
            print(f"run {run + 1}/{args.runs} {rev}: {tok_s:.1f} output tok/s", flush=True)
    return results


def _report(args: argparse.Namespace, results: dict[str, list[float]]) -> None:
    baseline = statistics.median(next(iter(results.values())))
    print(f"\n{args.num_prompts} x {args.input_len} in / {args.output_len} out, {args.dtype}, "
          f"{args.threads} threads, median of {args.runs}")
    print("| commit | output tok/s (median) | min-max | vs first |")
    print("|---|---|---|---|")
    for rev, values in results.items():
        median = statistics.median(values)
        print(f"| {rev} | {median:.0f} | {min(values):.0f}-{max(values):.0f} | "
              f"{median / baseline:.2f}x |")
    if args.out:
        args.out.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                        "output_tok_s": results}, indent=2))


if __name__ == "__main__":
    main()
