"""What an open web console costs the server: the serve benchmark (`flintlm.bench.serve`, streamed
completions at 32 concurrent streams) with no console, and with the console open and refreshing:
a real headless Chromium signed in as admin on /console#live (polling /console/api/live every
1.5 s) plus a second tab on the usage page asking for its report every `--usage-every-s`. With
`--console http` an httpx poller asks exactly those endpoints at those rates instead (no browser).

One `flintlm serve` for all runs; the two modes alternate in ABBA order (no console, console,
console, no console, ...), so a drift that is linear over a pair of runs hits both alike. Medians
of `--runs` each, with each mode's min-max: the console's change counts as "within noise" when
each mode's median lies inside the other mode's range (these VMs' run-to-run spread is the noise
floor a change has to clear). Writes a JSON file and a markdown snippet next to it.

`--browser-nice 19` runs Chromium at the lowest CPU priority: a console is normally open on
another machine, and on a 2-core VM the browser's own rendering otherwise competes with the
engine for the same cores (that is the client's cost, not the server's).

    PYTHONPATH=. .venv/bin/python bench/console_overhead.py --runs 3 \
        --out bench/results/console-overhead-$(date +%F).json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import secrets
import statistics
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

from flintlm.bench.peers import FlintlmServer
from flintlm.bench.serve import ServeConfig, run_load
from flintlm.bench.workload import gguf_vocab_size, resolve_gguf, synthetic_token_prompts

LIVE_REFRESH_S = 1.5  # console/static/pages/live.js REFRESH_MS
CHROMIUM = "/usr/bin/chromium"
REPORTED = ("output_throughput", "request_throughput", "ttft_p50_ms", "ttft_p99_ms",
            "tpot_p50_ms", "tpot_p99_ms", "e2el_p50_ms")


class ConsoleLoad:
    """The console's own traffic while a run goes on, on a thread of its own; counts its polls."""

    def __init__(self, kind: str, base_url: str, admin_key: str, usage_every_s: float,
                 browser_executable: str = CHROMIUM) -> None:
        self.kind = kind
        self.browser_executable = browser_executable
        self.base_url = base_url
        self.admin_key = admin_key
        self.usage_every_s = usage_every_s
        self.num_live_polls = 0
        self.num_usage_loads = 0
        self.ready = threading.Event()
        self.error: Exception | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="console-load", daemon=True)

    @contextmanager
    def running(self) -> Iterator[ConsoleLoad]:
        self._thread.start()
        if not self.ready.wait(300) or self.error is not None:
            self._stop.set()
            raise RuntimeError(f"the console did not start: {self.error}")
        try:
            yield self
        finally:
            self._stop.set()
            self._thread.join()
        if self.error is not None:
            raise RuntimeError(f"the console failed during the run: {self.error}")

    def _run(self) -> None:
        try:
            self._browser() if self.kind == "browser" else self._http()
        except Exception as error:  # noqa: BLE001 - re-raised by running() on the main thread
            self.error = error
            self.ready.set()

    def _browser(self) -> None:
        from playwright.sync_api import sync_playwright

        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=self.browser_executable,
                                                 headless=True)
            context = browser.new_context()
            live = context.new_page()
            live.on("request", lambda request: self._count(request.url))
            live.goto(f"{self.base_url}/console")
            live.get_by_test_id("signin-secret").fill(self.admin_key)
            live.get_by_test_id("signin-submit").click()
            live.get_by_test_id("nav").wait_for(state="visible")
            usage = context.new_page()  # the same session, as a second tab
            usage.on("request", lambda request: self._count(request.url))
            usage.goto(f"{self.base_url}/console#usage")
            usage.get_by_test_id("chart-requests").wait_for()
            live.goto(f"{self.base_url}/console#live")
            live.get_by_test_id("live-updated").wait_for()
            self.ready.set()
            while not self._stop.wait(self.usage_every_s):
                usage.get_by_test_id("usage-refresh").click()
            browser.close()

    def _count(self, url: str) -> None:
        if url.endswith("/console/api/live"):
            self.num_live_polls += 1
        elif "/admin/usage?" in url:
            self.num_usage_loads += 1

    def _http(self) -> None:
        today = datetime.now(UTC).date()
        usage_query = {"start": today.replace(day=1).isoformat(),
                       "end": (today + timedelta(days=1)).isoformat(), "group_by": "day"}
        headers = {"Authorization": f"Bearer {self.admin_key}"}
        with httpx.Client(base_url=self.base_url, headers=headers, timeout=60.0) as client:
            self.ready.set()
            next_usage = time.monotonic()
            while not self._stop.is_set():
                client.get("/console/api/live").raise_for_status()
                self.num_live_polls += 1
                if time.monotonic() >= next_usage:
                    client.get("/admin/usage", params=usage_query).raise_for_status()
                    self.num_usage_loads += 1
                    next_usage += self.usage_every_s
                self._stop.wait(LIVE_REFRESH_S)


def issue_key(base_url: str, admin_key: str) -> str:
    """A key for the load (no limits), through the admin API; its secret."""
    response = httpx.post(f"{base_url}/admin/keys", json={"name": "console-overhead-bench"},
                          headers={"Authorization": f"Bearer {admin_key}"}, timeout=60.0)
    response.raise_for_status()
    return str(response.json()["secret"])


def one_run(args: argparse.Namespace, base_url: str, admin_key: str, api_key: str,
            vocab_size: int, seed: int, console: str | None) -> dict[str, Any]:
    config = ServeConfig(base_url=base_url, model="bench", concurrency=args.concurrency,
                         api_key=api_key, seed=seed)
    prompts = synthetic_token_prompts(args.num_prompts, args.input_len, args.output_len,
                                      vocab_size, seed=seed)
    warmup = synthetic_token_prompts(1, args.input_len, args.output_len, vocab_size,
                                     seed=10_000 + seed)
    if console is None:
        run = asyncio.run(run_load(config, prompts, warmup_prompts=warmup))
        return run.summary.to_flat_dict()
    load = ConsoleLoad(console, base_url, admin_key, args.usage_every_s, args.browser_executable)
    with load.running():
        run = asyncio.run(run_load(config, prompts, warmup_prompts=warmup))
    return run.summary.to_flat_dict() | {"num_live_polls": load.num_live_polls,
                                         "num_usage_loads": load.num_usage_loads}


def within_noise(bare: list[float], open_: list[float]) -> bool:
    """Each mode's median inside the other mode's min-max: the change is no larger than the
    spread of repeated runs of the same mode."""
    return (min(bare) <= statistics.median(open_) <= max(bare)
            and min(open_) <= statistics.median(bare) <= max(open_))


def markdown(results: dict[str, list[dict[str, Any]]], args: argparse.Namespace) -> str:
    console = args.console + (f", browser at nice {args.browser_nice}"
                              if args.console == "browser" and args.browser_nice else "")
    lines = [f"Console overhead: {args.concurrency} streams, {args.num_prompts} prompts of "
             f"{args.input_len} in / {args.output_len} out, medians of {args.runs} (min-max), "
             f"ABBA order (console: {console}, /console#live polling every {LIVE_REFRESH_S} s + "
             f"usage every {args.usage_every_s} s)", "",
             "| metric | no console | console open | change | within noise |",
             "|---|---:|---:|---:|---|"]
    for name in REPORTED:
        bare = [run[name] for run in results["bare"]]
        open_ = [run[name] for run in results["console"]]
        b, o = statistics.median(bare), statistics.median(open_)
        change = (o / b - 1) * 100 if b else float("nan")
        lines.append(f"| {name} | {b:.2f} ({min(bare):.1f}-{max(bare):.1f}) | {o:.2f} "
                     f"({min(open_):.1f}-{max(open_):.1f}) | {change:+.1f}% | "
                     f"{'yes' if within_noise(bare, open_) else 'no'} |")
    return "\n".join(lines) + "\n"


def nice_wrapper(niceness: int, directory: Path) -> str:
    """An executable that starts Chromium at the given CPU priority (Playwright takes a path)."""
    wrapper = directory / "chromium-niced"
    wrapper.write_text(f'#!/bin/sh\nexec nice -n {niceness} {CHROMIUM} "$@"\n')
    wrapper.chmod(0o755)
    return str(wrapper)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--num-prompts", type=int, default=128)
    parser.add_argument("--input-len", type=int, default=128)
    parser.add_argument("--output-len", type=int, default=128)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--console", choices=("browser", "http"), default="browser",
                        help="a real headless Chromium, or an httpx poller of the same endpoints")
    parser.add_argument("--usage-every-s", type=float, default=5.0,
                        help="how often the usage tab asks for its report again")
    parser.add_argument("--browser-nice", type=int, default=0,
                        help="Chromium's niceness (19: it yields the cores to the server)")
    parser.add_argument("--serve-args", default="", help="more `flintlm serve` flags")
    parser.add_argument("--out", type=Path, default=Path("bench/results/console-overhead.json"))
    args = parser.parse_args()

    gguf = resolve_gguf(args.model)
    vocab_size = gguf_vocab_size(gguf)
    admin_key = secrets.token_urlsafe(24)
    serve_args = ["--served-model-name", "bench", "--admin-key", admin_key,
                  "--max-num-seqs", str(args.concurrency), *args.serve_args.split()]
    results: dict[str, list[dict[str, Any]]] = {"bare": [], "console": []}
    with tempfile.TemporaryDirectory() as data_dir, FlintlmServer(
            str(gguf), serve_args, Path(data_dir)) as server:
        api_key = issue_key(server.base_url, admin_key)
        args.browser_executable = (nice_wrapper(args.browser_nice, Path(data_dir))
                                   if args.browser_nice else CHROMIUM)
        for run in range(args.runs):
            order = ("bare", "console") if run % 2 == 0 else ("console", "bare")  # ABBA
            for index, mode in enumerate(order):
                # Fresh prompts for every run: a run repeating the one before it would be served
                # from the prefix cache (the first version of this script measured exactly that).
                flat = one_run(args, server.base_url, admin_key, api_key, vocab_size,
                               seed=1 + 2 * run + index,
                               console=None if mode == "bare" else args.console)
                results[mode].append(flat)
                print(f"run {run + 1} {mode}: {flat['output_throughput']:.1f} output tok/s, "
                      f"TTFT p50 {flat['ttft_p50_ms']:.0f} ms, TPOT p50 "
                      f"{flat['tpot_p50_ms']:.1f} ms, {flat['num_failed']} failed"
                      + (f", {flat['num_live_polls']} live polls" if mode == "console" else ""),
                      flush=True)
    medians = {mode: {name: statistics.median(r[name] for r in runs) for name in REPORTED}
               for mode, runs in results.items()}
    snippet = markdown(results, args)
    print(snippet)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "args": vars(args) | {"out": str(args.out)}, "machine": platform.processor() or
        platform.machine(), "medians": medians, "runs": results}, indent=2))
    args.out.with_suffix(".md").write_text(snippet)


if __name__ == "__main__":
    main()
