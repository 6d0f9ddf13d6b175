"""Two server processes on one store and one Redis share every key's limits, on SQLite and on
PostgreSQL: what one server admits counts on the other.

The rate window is a day (WINDOW_S), so nothing refills while a test runs, however slow the
machine; Redis state of the keys made here is deleted afterwards.
"""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest
import redis

from tests.platform.served import CHAT, NUM_COMPLETION, IssuedKey, PlatformServer, platform_servers
from tests.platform.test_served_keys import PRICES, concurrently, raw_chat

WINDOW_S = 86_400


@pytest.fixture(scope="module")
def pair(store_url: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory
         ) -> Iterator[list[PlatformServer]]:
    log_dir = tmp_path_factory.mktemp("served")
    prices = log_dir / "prices.toml"
    prices.write_text(PRICES)
    with platform_servers(log_dir, store_url, "--redis-url", redis_url, "--rate-window-s",
                          str(WINDOW_S), "--prices-file", str(prices), count=2) as servers:
        yield servers
        client = redis.Redis.from_url(redis_url)
        for key in servers[0].issued:
            for name in client.scan_iter(f"flintlm:*{{{key.id}}}*"):
                client.delete(name)
        client.close()


@pytest.fixture(scope="module")
def num_prompt(pair: list[PlatformServer]) -> int:
    first = pair[0]
    return first.count_tokens(first.create_key("tokenizer"), messages=CHAT["messages"])


def _statuses(pair: list[PlatformServer], key: IssuedKey, order: str, **overrides: Any
              ) -> list[int]:
    """Requests sent to the servers in `order` ("ABA": first, second, first), one at a time."""
    clients = {"A": pair[0].openai(key), "B": pair[1].openai(key)}
    return [raw_chat(clients[name], **overrides).status_code for name in order]


def test_requests_per_minute_are_shared(pair: list[PlatformServer]) -> None:
    key = pair[0].create_key("shared-rpm", rpm=3)
    assert _statuses(pair, key, "ABABA") == [200, 200, 200, 429, 429]
    refused = raw_chat(pair[1].openai(key))
    assert refused.headers["x-ratelimit-remaining-requests"] == "0"
    assert refused.json()["error"]["type"] == "requests"


def test_tokens_per_minute_are_shared(pair: list[PlatformServer], num_prompt: int) -> None:
    per_request = num_prompt + NUM_COMPLETION
    key = pair[1].create_key("shared-tpm", tpm=2 * per_request)
    assert _statuses(pair, key, "AB") == [200, 200]
    refused = raw_chat(pair[0].openai(key))
    assert refused.status_code == 429 and refused.json()["error"]["type"] == "tokens"
    assert refused.headers["x-ratelimit-remaining-tokens"] == "0"


def test_the_token_quota_is_shared(pair: list[PlatformServer], num_prompt: int) -> None:
    per_request = num_prompt + NUM_COMPLETION
    key = pair[0].create_key("shared-quota", token_quota=2 * per_request - 1)
    assert _statuses(pair, key, "A") == [200]
    refused = raw_chat(pair[1].openai(key))
    assert refused.status_code == 429 and refused.headers["x-should-retry"] == "false"
    assert refused.json()["error"]["code"] == "insufficient_quota"


def test_twenty_requests_racing_over_two_servers_on_a_budget_for_one(
    pair: list[PlatformServer], num_prompt: int
) -> None:
    worst_case_nanos = num_prompt * 1_000_000 + NUM_COMPLETION * 2_000_000
    key = pair[0].create_key("shared-budget",
                             budget_usd=str(Decimal(worst_case_nanos * 3 // 2) / 10**9))
    clients = [pair[0].openai(key), pair[1].openai(key)]
    calls = iter(range(20))
    responses = concurrently(20, lambda: raw_chat(clients[next(calls) % 2]))
    assert sorted(r.status_code for r in responses) == [200] + [429] * 19
    rows = pair[0].wait_for_ledger(key.id, 20)  # both servers' rows, in the one store
    assert sorted(r["status"] for r in rows) == ["finished"] + ["rejected"] * 19
