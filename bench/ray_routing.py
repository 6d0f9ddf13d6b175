"""Prefix-aware routing on Ray Serve (issue #18): prefix-cache hit rate and TTFT p50 of
flintlm's prefix router, Ray's PrefixCacheAffinityRouter and power of two choices, on a
multi-tenant workload where each tenant's requests share a long system prompt; and the latency
the ingress hop adds over the single-process server.

For each router a `flintlm serve --ray --replicas R --router X` is started (its own local Ray
cluster), one API key per tenant is issued, and `--requests-per-tenant` streamed chats per
tenant are sent in a shuffled order at `--concurrency`; each has the tenant's system prompt
(~`--system-tokens` tokens) and a new question. Hit rate = cached / prompt tokens over all
requests (from the streams' usage); TTFT is measured by the client. The hop: sequential short
chats (1 token) against `flintlm serve` and against `--ray --replicas 1`, median end-to-end.

    PYTHONPATH=. .venv/bin/python bench/ray_routing.py \
        --database-url postgresql+psycopg://postgres@127.0.0.1:5432/test \
        --redis-url redis://127.0.0.1:6379/0 --out bench/results/ray-routing-$(date +%F).json

On one host the replicas share its cores, so this measures routing (hits, TTFT), not scaling.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import sqlalchemy as sa

ADMIN_KEY = "bench-admin-key-5d1c"
READY_TIMEOUT_S = 600.0
WORDS = ("river", "stone", "ledger", "quota", "cache", "tenant", "replica", "prefix", "token",
         "window", "budget", "signal", "engine", "router", "block", "stream")


@dataclass
class RouterResult:
    router: str
    num_requests: int = 0
    num_failed: int = 0
    prompt_tokens: int = 0
    cached_tokens: int = 0
    ttft_s: list[float] = field(default_factory=list)
    e2e_s: list[float] = field(default_factory=list)
    replicas_per_tenant: dict[str, list[str]] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        return {
            "router": self.router, "requests": self.num_requests, "failed": self.num_failed,
            "hit_rate": round(self.cached_tokens / max(self.prompt_tokens, 1), 4),
            "ttft_p50_s": round(statistics.median(self.ttft_s), 4) if self.ttft_s else None,
            "e2e_p50_s": round(statistics.median(self.e2e_s), 4) if self.e2e_s else None,
            "tenants_on_one_replica": sum(len(set(r)) == 1
                                          for r in self.replicas_per_tenant.values()),
        }


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def fresh_schema(base_url: str) -> str:
    """A URL whose connections see only a new, empty schema (left behind for inspection)."""
    schema = f"bench_ray_{uuid.uuid4().hex[:10]}"
    engine = sa.create_engine(base_url)
    with engine.begin() as connection:
        connection.execute(sa.text(f"CREATE SCHEMA {schema}"))
    engine.dispose()
    url = sa.make_url(base_url).update_query_dict({"options": f"-csearch_path={schema}"})
    return url.render_as_string(hide_password=False)


class Server:
    def __init__(self, args: argparse.Namespace, log_dir: Path, *extra: str) -> None:
        self.port = free_port()
        command = [sys.executable, "-m", "flintlm", "serve", "--port", str(self.port),
                   "--model", args.model, "--kv-cache-memory", args.kv_cache_memory,
                   "--max-model-len", str(args.max_model_len), "--admin-key", ADMIN_KEY,
                   "--database-url", fresh_schema(args.database_url),
                   "--redis-url", args.redis_url, *extra]
        self.log_path = log_dir / f"server-{self.port}.log"
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        self.url = f"http://127.0.0.1:{self.port}"

    def wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited:\n{self.log_path.read_text()[-3000:]}")
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"server not ready:\n{self.log_path.read_text()[-3000:]}")

    def create_key(self, name: str) -> str:
        response = httpx.post(f"{self.url}/admin/keys", json={"name": name}, timeout=60,
                              headers={"Authorization": f"Bearer {ADMIN_KEY}"})
        response.raise_for_status()
        return str(response.json()["secret"])

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(180)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def system_prompt(tenant: int, num_tokens: int) -> str:
    """~`num_tokens` tokens of instructions, different per tenant."""
    rng = random.Random(tenant)
    words = [rng.choice(WORDS) for _ in range(num_tokens)]
    return f"You are the assistant of tenant {tenant}. " + " ".join(words)


async def chat(http: httpx.AsyncClient, secret: str, system: str, question: str,
               max_tokens: int) -> dict[str, Any]:
    body = {"model": "default", "max_tokens": max_tokens, "temperature": 0, "ignore_eos": True,
            "stream": True, "stream_options": {"include_usage": True},
            "messages": [{"role": "system", "content": system},
                         {"role": "user", "content": question}]}
    start = time.perf_counter()
    out: dict[str, Any] = {"ttft_s": None, "usage": None, "replica": None, "error": None}
    async with http.stream("POST", "/v1/chat/completions", json=body,
                           headers={"Authorization": f"Bearer {secret}"}) as response:
        out["replica"] = response.headers.get("x-flintlm-replica")
        if response.status_code != 200:
            out["error"] = f"HTTP {response.status_code}"
            return out
        async for line in response.aiter_lines():
            if not line.startswith("data: {"):
                continue
            chunk = json.loads(line.removeprefix("data: "))
            if "error" in chunk:
                out["error"] = chunk["error"].get("message")
            if out["ttft_s"] is None and any(c["delta"].get("content")
                                             for c in chunk.get("choices", [])):
                out["ttft_s"] = time.perf_counter() - start
            out["usage"] = chunk.get("usage") or out["usage"]
    out["e2e_s"] = time.perf_counter() - start
    return out


async def run_workload(server: Server, router: str, args: argparse.Namespace) -> RouterResult:
    secrets = [server.create_key(f"tenant-{t}") for t in range(args.tenants)]
    systems = [system_prompt(t, args.system_tokens) for t in range(args.tenants)]
    order = [(t, i) for t in range(args.tenants) for i in range(args.requests_per_tenant)]
    random.Random(args.seed).shuffle(order)
    result = RouterResult(router)
    queue: asyncio.Queue[tuple[int, int]] = asyncio.Queue()
    for item in order:
        queue.put_nowait(item)

    async def worker(http: httpx.AsyncClient) -> None:
        while not queue.empty():
            tenant, i = queue.get_nowait()
            out = await chat(http, secrets[tenant], systems[tenant], f"Question {i}: why?",
                             args.max_tokens)
            result.num_requests += 1
            if out["error"] or out["usage"] is None:
                result.num_failed += 1
                continue
            usage = out["usage"]
            result.prompt_tokens += usage["prompt_tokens"]
            result.cached_tokens += (usage.get("prompt_tokens_details") or {}).get(
                "cached_tokens", 0)
            result.ttft_s.append(out["ttft_s"])
            result.e2e_s.append(out["e2e_s"])
            result.replicas_per_tenant.setdefault(str(tenant), []).append(out["replica"])

    async with httpx.AsyncClient(base_url=server.url, timeout=600) as http:
        await asyncio.gather(*(worker(http) for _ in range(args.concurrency)))
    return result


async def hop_latency(server: Server, num_requests: int) -> dict[str, float]:
    secret = server.create_key("hop")
    async with httpx.AsyncClient(base_url=server.url, timeout=600) as http:
        for _ in range(3):  # warm-up
            await chat(http, secret, "Be brief.", "Hi", 1)
        timings = [await chat(http, secret, "Be brief.", "Hi", 1) for _ in range(num_requests)]
    return {"e2e_p50_s": statistics.median(t["e2e_s"] for t in timings),
            "ttft_p50_s": statistics.median(t["ttft_s"] for t in timings if t["ttft_s"])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database-url", required=True, help="PostgreSQL base URL")
    parser.add_argument("--redis-url", required=True)
    parser.add_argument("--model", default="default")
    parser.add_argument("--routers", default="prefix,ray-prefix,pow2")
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--tenants", type=int, default=8)
    parser.add_argument("--system-tokens", type=int, default=2000)
    parser.add_argument("--requests-per-tenant", type=int, default=6)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--kv-cache-memory", default="512MiB",
                        help="per replica; 8 tenants x 2k tokens do not all fit one replica")
    parser.add_argument("--max-model-len", type=int, default=4096)
    parser.add_argument("--ray-num-cpus", type=int, default=None)
    parser.add_argument("--hop-requests", type=int, default=30, help="0 skips the hop")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    log_dir = Path(tempfile.mkdtemp(prefix="flintlm-ray-bench-"))
    ray_flags = ["--ray"] + ([] if args.ray_num_cpus is None
                             else ["--ray-num-cpus", str(args.ray_num_cpus)])
    report: dict[str, Any] = {"args": {k: str(v) for k, v in vars(args).items()},
                              "routers": [], "hop": {}}
    for router in args.routers.split(","):
        server = Server(args, log_dir, *ray_flags, "--replicas", str(args.replicas),
                        "--router", router)
        try:
            server.wait_ready()
            result = asyncio.run(run_workload(server, router, args))
        finally:
            server.stop()
        report["routers"].append({**result.summary(), "detail": asdict(result)})
        print(json.dumps(result.summary()), flush=True)
    if args.hop_requests:
        for name, extra in (("single_process", []),
                            ("ray_ingress", [*ray_flags, "--replicas", "1"])):
            server = Server(args, log_dir, *extra)
            try:
                server.wait_ready()
                report["hop"][name] = asyncio.run(hop_latency(server, args.hop_requests))
            finally:
                server.stop()
            print(name, json.dumps(report["hop"][name]), flush=True)
        hop = report["hop"]
        report["hop"]["added_e2e_p50_s"] = round(
            hop["ray_ingress"]["e2e_p50_s"] - hop["single_process"]["e2e_p50_s"], 4)
        print("ingress hop adds", report["hop"]["added_e2e_p50_s"], "s (e2e p50)")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2))
    print("logs:", log_dir)


if __name__ == "__main__":
    main()
