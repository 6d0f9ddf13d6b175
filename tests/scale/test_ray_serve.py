"""`flintlm serve --ray` on a local Ray cluster (loopback, 2 replicas of the embedded model), on
PostgreSQL and Redis, driven by the openai SDK and httpx: both replicas serve, a tenant's long
prefix sticks to one replica and hits its cache while tenants spread, a disconnect frees the
blocks on its replica, a killed replica fails only its own requests with exact ledger rows and
is replaced, and SIGTERM drains the whole app.

One server (and Ray cluster) for the module; the tests run in file order and the last one stops
it. Replica stats come from the replica board in Redis, as the ingress's /metrics reads them.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import redis

from flintlm.scale.metrics import ReplicaStats, board_prefix
from tests.conftest import HANG_TIMEOUT_S, launch_server, wait_until_ready
from tests.platform.conftest import fresh_postgres_schema
from tests.platform.served import LEDGER_TIMEOUT_S, IssuedKey, PlatformServer, platform_args

pytest.importorskip("ray.serve", reason="the Ray tests need flintlm[ray]")

# ~480 tokens: 30 full KV blocks of 16, the same text for every tenant (their salts differ).
SYSTEM_PROMPT = " ".join(f"Rule {i}: answer politely and briefly about topic number {i}."
                         for i in range(40))
MIN_CACHED_TOKENS = 256


def chat_body(user: str, max_tokens: int, **extra: Any) -> dict[str, Any]:
    """An HTTP body: the shared system prompt, then `user`; exactly `max_tokens` tokens."""
    return {"model": "default", "max_tokens": max_tokens, "temperature": 0,
            "ignore_eos": True, **extra,
            "messages": [{"role": "system", "content": SYSTEM_PROMPT},
                         {"role": "user", "content": user}]}


def sdk_chat(user: str, max_tokens: int) -> dict[str, Any]:
    """`chat_body` as openai SDK arguments."""
    body = chat_body(user, max_tokens)
    ignore_eos = body.pop("ignore_eos")
    return {**body, "extra_body": {"ignore_eos": ignore_eos}}


@dataclass
class RayServer:
    platform: PlatformServer
    redis_url: str
    board_name: str = ""  # "flintlm@<GCS address>", from the server's log
    tenant_replica: dict[str, str] = field(default_factory=dict)  # key id -> its replica
    tenants: dict[str, IssuedKey] = field(default_factory=dict)

    def board(self) -> dict[str, ReplicaStats]:
        client = redis.Redis.from_url(self.redis_url)
        try:
            pattern = board_prefix(self.board_name) + "*"
            values = [client.get(k) for k in client.scan_iter(match=pattern)]
        finally:
            client.close()
        entries = [ReplicaStats.from_json(v) for v in values if v is not None]
        return {e.replica_id: e for e in entries if _is_alive(e.pid)}

    def wait_for_board(self, check: Any, what: str) -> dict[str, ReplicaStats]:
        deadline = time.monotonic() + HANG_TIMEOUT_S
        while time.monotonic() < deadline:
            board = self.board()
            if check(board):
                return board
            time.sleep(0.2)
        raise AssertionError(f"the replica board never showed {what}: {self.board()}")


def _is_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture(scope="module")
def ray_server(tmp_path_factory: pytest.TempPathFactory, redis_url: str
               ) -> Iterator[RayServer]:
    log_dir = tmp_path_factory.mktemp("ray")
    with fresh_postgres_schema() as store_url:
        live = launch_server(log_dir, *platform_args(
            store_url, "--ray", "--replicas", "2", "--ray-num-cpus", "4",
            "--redis-url", redis_url, "--drain-timeout-s", "120"), api_key=None)
        server = RayServer(PlatformServer(live, store_url), redis_url)
        replica_pids: set[int] = set()
        try:
            wait_until_ready(live)
            match = re.search(r"ray cluster at (\S+)", live.log())
            assert match is not None, live.log()[-3000:]
            server.board_name = f"flintlm@{match.group(1)}"
            board = server.wait_for_board(lambda b: len(b) == 2, "two replicas")
            replica_pids |= {e.pid for e in board.values()}
            yield server
        finally:
            replica_pids |= {e.pid for e in server.board().values()}
            if live.process.poll() is None:
                live.stop()
            server.platform.close()
            # The Ray processes are fate-shared with the server; a replica left behind (a failed
            # test) is ended here, by the pid it published.
            for pid in replica_pids:
                if _is_alive(pid):
                    os.kill(pid, signal.SIGKILL)


def test_both_replicas_serve_tenant_prefixes_stick_and_spread(ray_server: RayServer) -> None:
    platform = ray_server.platform
    served_by: set[str] = set()
    for i in range(4):
        key = platform.create_key(f"tenant-{i}")
        client = platform.openai(key)
        replicas = []
        for attempt in range(2):
            raw = client.chat.completions.with_raw_response.create(
                **sdk_chat(f"Question {attempt}?", 2))
            replicas.append(raw.headers["x-flintlm-replica"])
            completion = raw.parse()
        assert replicas[0] == replicas[1], f"tenant {i}'s repeated prefix moved: {replicas}"
        details = completion.usage.prompt_tokens_details
        assert details is not None and details.cached_tokens >= MIN_CACHED_TOKENS, details
        ray_server.tenant_replica[key.id] = replicas[0]
        ray_server.tenants[key.id] = key
        served_by.add(replicas[0])
    # The same system prompt under four tenants' salts is four prefixes, spread over both.
    assert served_by == set(ray_server.board()), served_by
    with httpx.Client(base_url=platform.url, timeout=HANG_TIMEOUT_S) as http:
        metrics = http.get("/metrics").text
    for replica_id in served_by:
        for name in ("vllm:num_requests_running", "vllm:num_requests_waiting",
                     "vllm:kv_cache_usage_perc"):
            assert f'{name}{{model_name="default",replica="{replica_id}"}}' in metrics
        hits = _sample(metrics, "flintlm_replica_prefix_cache_hits_total", replica_id)
        assert hits >= MIN_CACHED_TOKENS


def _sample(metrics: str, name: str, replica_id: str) -> float:
    prefix = f'{name}{{model_name="default",replica="{replica_id}"}} '
    lines = [line for line in metrics.splitlines() if line.startswith(prefix)]
    assert lines, (name, replica_id)
    return float(lines[0].removeprefix(prefix))


def test_disconnect_frees_blocks_on_its_replica(ray_server: RayServer) -> None:
    platform = ray_server.platform
    key = next(iter(ray_server.tenants.values()))
    max_tokens = 1000
    with platform.http(key) as http, http.stream(
            "POST", "/v1/chat/completions",
            json=chat_body("Tell me a long story.", max_tokens, stream=True)) as response:
        assert response.status_code == 200
        replica_id = response.headers["x-flintlm-replica"]
        chunks = []
        for line in response.iter_lines():
            if line.startswith("data: {"):
                chunks.append(json.loads(line.removeprefix("data: ")))
            if len(chunks) >= 3:
                break  # leaving the block closes the connection mid-stream
    ray_server.wait_for_board(
        lambda b: replica_id in b and b[replica_id].num_in_flight == 0
        and b[replica_id].engine.num_kv_blocks_used == 0,
        f"replica {replica_id} idle with no KV blocks held")
    row = _wait_for_row(platform, chunks[0]["id"])
    assert row["status"] == "aborted" and row["error_code"] == "client_disconnected", row
    assert 2 <= row["completion_tokens"] < max_tokens, row


def _new_result() -> dict[str, Any]:
    return {"tokens": 0, "error": None, "finish_reason": None, "usage": None, "replica": None}


async def _stream(platform: PlatformServer, key: IssuedKey, max_tokens: int,
                  started: asyncio.Event, result: dict[str, Any]) -> dict[str, Any]:
    """One streamed chat with logprobs: what the client received, token by token, filled into
    `result` as it arrives (its replica is known from the first header)."""
    headers = {"Authorization": f"Bearer {key.secret}"}
    body = chat_body("Count slowly.", max_tokens, stream=True, logprobs=True,
                     stream_options={"include_usage": True})
    async with httpx.AsyncClient(base_url=platform.url, headers=headers,
                                 timeout=HANG_TIMEOUT_S) as http, http.stream(
            "POST", "/v1/chat/completions", json=body) as response:
        assert response.status_code == 200
        result["replica"] = response.headers["x-flintlm-replica"]
        async for line in response.aiter_lines():
            if not line.startswith("data: {"):
                continue
            chunk = json.loads(line.removeprefix("data: "))
            if "error" in chunk:
                result["error"] = chunk["error"]
                continue
            result["id"] = chunk["id"]
            result["usage"] = chunk.get("usage") or result["usage"]
            for choice in chunk["choices"]:
                result["tokens"] += len((choice.get("logprobs") or {}).get("content") or [])
                result["finish_reason"] = choice["finish_reason"] or result["finish_reason"]
            if result["tokens"] >= 2:
                started.set()
    return result


def test_killed_replica_fails_only_its_requests(ray_server: RayServer) -> None:
    platform = ray_server.platform
    by_replica: dict[str, IssuedKey] = {}
    for key_id, replica_id in ray_server.tenant_replica.items():
        by_replica.setdefault(replica_id, ray_server.tenants[key_id])
    first, second = sorted(by_replica)
    board = ray_server.board()
    # The kill comes as soon as all three streams have 2 tokens: the victims cannot reach this
    # many first, and the survivor's whole answer is what the test waits for.
    max_tokens = 300

    async def run() -> tuple[str, list[dict[str, Any]]]:
        keys = [by_replica[first], by_replica[first], by_replica[second]]
        started = [asyncio.Event() for _ in keys]
        results = [_new_result() for _ in keys]
        tasks = [asyncio.create_task(_stream(platform, key, max_tokens, event, result))
                 for key, event, result in zip(keys, started, results, strict=True)]
        await asyncio.wait_for(asyncio.gather(*(e.wait() for e in started)), HANG_TIMEOUT_S)
        # Where each stream went is read, not assumed: the router passes over a replica that
        # answers its probe late, so a tenant's stream may land on the other one.
        victim = results[0]["replica"]
        os.kill(board[victim].pid, signal.SIGKILL)
        return victim, list(await asyncio.gather(*tasks))

    victim, results = asyncio.run(run())
    on_victim = [r for r in results if r["replica"] == victim]
    survivors = [r for r in results if r["replica"] != victim]
    assert survivors, f"all three streams went to {victim}: {results}"
    for result in on_victim:  # in-band error, after some tokens, never the whole answer
        assert result["error"] is not None and result["finish_reason"] is None, result
        assert 2 <= result["tokens"] < max_tokens, result
    for result in survivors:
        assert result["error"] is None and result["finish_reason"] == "length", result
        assert result["tokens"] == result["usage"]["completion_tokens"] == max_tokens
    # The ledger bills exactly what each client received.
    rows = {row["request_id"]: row for row in platform.ledger()}
    for result in results:
        row = _wait_for_row(platform, result["id"])
        assert row["completion_tokens"] == result["tokens"], (row, result)
        assert row["status"] == ("failed" if result["error"] else "finished"), row
    del rows
    # Ray replaces the dead replica; the app serves on with two.
    ray_server.wait_for_board(lambda b: len(b) == 2 and victim not in b, "a replacement")
    client = platform.openai(by_replica[victim])
    completion = client.chat.completions.create(**sdk_chat("Still there?", 2))
    assert completion.choices[0].finish_reason == "length"


def _wait_for_row(platform: PlatformServer, request_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + LEDGER_TIMEOUT_S
    while time.monotonic() < deadline:
        rows = [r for r in platform.ledger() if r["request_id"] == request_id]
        if rows:
            return rows[0]
        time.sleep(0.1)
    raise AssertionError(f"no ledger row for {request_id}")


def test_sigterm_drains_the_whole_app(ray_server: RayServer) -> None:
    platform = ray_server.platform
    replica_pids = [e.pid for e in ray_server.board().values()]
    key = next(iter(ray_server.tenants.values()))
    max_tokens = 40

    async def run() -> dict[str, Any]:
        started = asyncio.Event()
        task = asyncio.create_task(_stream(platform, key, max_tokens, started, _new_result()))
        await asyncio.wait_for(started.wait(), HANG_TIMEOUT_S)
        platform.live.process.send_signal(signal.SIGTERM)
        return await task

    result = asyncio.run(run())
    assert result["error"] is None and result["finish_reason"] == "length", result
    assert result["tokens"] == max_tokens
    assert platform.live.process.wait(HANG_TIMEOUT_S) == 0, platform.live.log()[-3000:]
    assert _wait_for_row(platform, result["id"])["status"] == "finished"
    deadline = time.monotonic() + HANG_TIMEOUT_S
    while any(_is_alive(pid) for pid in replica_pids) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(_is_alive(pid) for pid in replica_pids), "replicas outlived the server"
