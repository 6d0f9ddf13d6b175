"""Bounded consumption on a real server (the default model, `--max-num-seqs 2 --max-waiting 4`):
a 10x burst is refused fast with Retry-After while every admitted request completes and the
ledger stays exact; per-key ceilings and concurrency; the admin API's 403; a flat memory under
an endless body."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import HANG_TIMEOUT_S
from tests.platform.served import PlatformServer, platform_servers

MAX_NUM_SEQS = 2
MAX_WAITING = 4
NUM_BURST = 60  # 10x what the server can hold (running + waiting)
MAX_BODY_BYTES = 1 << 20
NUM_COMPLETION = 16
BODY: dict[str, Any] = {"model": "default", "messages": [{"role": "user", "content": "Hi."}],
                        "max_tokens": NUM_COMPLETION, "temperature": 0, "ignore_eos": True}


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PlatformServer]:
    folder = tmp_path_factory.mktemp("bounded")
    store_url = f"sqlite+pysqlite:///{folder / 'flintlm.db'}"
    with platform_servers(folder, store_url, "--max-num-seqs", str(MAX_NUM_SEQS),
                          "--max-waiting", str(MAX_WAITING),
                          "--max-body-bytes", str(MAX_BODY_BYTES)) as servers:
        yield servers[0]


async def _burst(url: str, secret: str, num: int, body: dict[str, Any],
                 waiting: list[int] | None = None) -> list[tuple[httpx.Response, float]]:
    """`num` concurrent chat requests; with `waiting`, samples of the engine's waiting queue
    (from /metrics) taken while they run."""
    limits = httpx.Limits(max_connections=num + 1, max_keepalive_connections=num + 1)
    async with httpx.AsyncClient(base_url=url, timeout=HANG_TIMEOUT_S, limits=limits,
                                 headers={"Authorization": f"Bearer {secret}"}) as client:
        async def one() -> tuple[httpx.Response, float]:
            start = time.monotonic()
            response = await client.post("/v1/chat/completions", json=body)
            return response, time.monotonic() - start

        async def sample(samples: list[int]) -> None:
            while True:
                text = (await client.get("/metrics")).text
                samples.append(int(float(next(
                    line.split()[-1] for line in text.splitlines()
                    if line.startswith("flintlm_num_requests_waiting")))))
                await asyncio.sleep(0.01)

        sampler = asyncio.create_task(sample(waiting)) if waiting is not None else None
        try:
            return list(await asyncio.gather(*(one() for _ in range(num))))
        finally:
            if sampler is not None:
                sampler.cancel()


def test_a_10x_burst_is_refused_fast_and_the_admitted_complete_exactly(
    served: PlatformServer
) -> None:
    key = served.create_key("burst")
    waiting: list[int] = []
    results = asyncio.run(_burst(served.url, key.secret, NUM_BURST, BODY, waiting))

    served_ok = [(r, t) for r, t in results if r.status_code == 200]
    refused = [(r, t) for r, t in results if r.status_code != 200]
    assert len(served_ok) + len(refused) == NUM_BURST
    assert len(served_ok) >= MAX_WAITING  # at least one full queue got in ...
    assert len(refused) >= NUM_BURST // 2  # ... and the rest mostly did not
    assert waiting and max(waiting) <= MAX_WAITING  # the queue never held more than its bound
    for response, _ in refused:
        assert response.status_code == 503, response.text
        assert response.json()["error"]["code"] == "engine_overloaded"
        assert int(response.headers["Retry-After"]) >= 1
    for response, _ in served_ok:
        body = response.json()
        assert body["choices"][0]["finish_reason"] == "length"
        assert body["usage"]["completion_tokens"] == NUM_COMPLETION
    # Fast: a refusal waits for nothing; an admitted request waits for the batch ahead of it.
    median = sorted(t for _, t in refused)[len(refused) // 2]
    assert median < max(t for _, t in served_ok)

    rows = served.wait_for_ledger(key.id, NUM_BURST)
    assert len({row["request_id"] for row in rows}) == NUM_BURST
    assert Counter(row["status"] for row in rows) == {"finished": len(served_ok),
                                                      "rejected": len(refused)}
    finished = [row for row in rows if row["status"] == "finished"]
    assert sum(row["completion_tokens"] for row in finished) == sum(
        r.json()["usage"]["completion_tokens"] for r, _ in served_ok)
    assert sum(row["prompt_tokens"] for row in finished) == sum(
        r.json()["usage"]["prompt_tokens"] for r, _ in served_ok)
    assert all(row["completion_tokens"] == row["prompt_tokens"] == 0
               for row in rows if row["status"] == "rejected")
    assert {row["error_code"] for row in rows if row["status"] == "rejected"} <= {
        "engine_overloaded"}


def test_a_keys_concurrency_cap_is_a_429_with_retry_after(served: PlatformServer) -> None:
    key = served.create_key("one-at-a-time", max_concurrent=1)
    long_body = {**BODY, "max_tokens": 48}
    results = asyncio.run(_burst(served.url, key.secret, 4, long_body))
    statuses = Counter(r.status_code for r, _ in results)
    assert statuses[200] >= 1 and statuses[429] >= 1 and statuses[200] + statuses[429] == 4
    for response, _ in results:
        if response.status_code == 429:
            error = response.json()["error"]
            assert (error["type"], error["code"]) == ("rate_limit_error",
                                                      "too_many_concurrent_requests")
            assert response.headers["Retry-After"] == "1"
    with served.http(key) as http:  # the slot is free again once the request ended
        assert http.post("/v1/chat/completions", json=BODY).status_code == 200


def test_a_keys_max_tokens_ceiling_bounds_the_request_and_its_default(
    served: PlatformServer
) -> None:
    key = served.create_key("short", max_tokens=5)
    with served.http(key) as http:
        over = http.post("/v1/chat/completions", json={**BODY, "max_tokens": 6})
        unset = http.post("/v1/chat/completions",
                          json={k: v for k, v in BODY.items() if k != "max_tokens"})
    error = over.json()["error"]
    assert over.status_code == 400 and error["param"] == "max_tokens"
    assert unset.status_code == 200, unset.text
    assert unset.json()["usage"]["completion_tokens"] == 5
    assert unset.json()["choices"][0]["finish_reason"] == "length"
    with served.admin() as admin:
        info = admin.get(f"/admin/keys/{key.id}").json()
    assert (info["max_tokens"], info["max_concurrent"]) == (5, None)


def test_a_valid_key_that_is_not_the_admin_key_gets_403_on_admin(
    served: PlatformServer
) -> None:
    key = served.create_key("not-admin")
    with served.http(key) as http:
        forbidden = http.get("/admin/keys")
    with httpx.Client(base_url=served.url, timeout=HANG_TIMEOUT_S,
                      headers={"Authorization": "Bearer flint-sk-wrong"}) as http:
        unknown = http.get("/admin/keys")
    with served.admin() as admin:
        allowed = admin.get("/admin/keys")
    assert forbidden.status_code == 403
    assert forbidden.json()["error"]["type"] == "permission_error"
    assert unknown.status_code == 401
    assert allowed.status_code == 200


def _rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc")
def test_an_endless_body_is_refused_and_memory_stays_flat(served: PlatformServer) -> None:
    from tests.api.test_request_edge import _head, _raw_request

    pid = served.live.process.pid
    before = _rss_bytes(pid)
    head = _head("/v1/chat/completions").replace("fake-key", "x")
    answer, num_sent = _raw_request(served.url, head, 4096, b" " * (1 << 20))  # up to 4 GiB
    assert b" 413 " in answer.partition(b"\r\n")[0], answer[:200]
    assert num_sent < 256 << 20
    assert _rss_bytes(pid) - before < 64 << 20
