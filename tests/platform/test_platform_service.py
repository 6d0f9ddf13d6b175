"""The Platform facade as the server drives it: start-up, auth, admission, settle, shutdown."""

from __future__ import annotations

import subprocess
import sys
import threading
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import redis

import flintlm
from flintlm.config import PlatformConfig
from flintlm.platform.keys import KeyLimits
from flintlm.platform.ledger import UsageStatus
from flintlm.platform.limits import Limit
from flintlm.platform.pricing import TokenCounts
from flintlm.platform.service import NO_USAGE, Platform, Timings
from tests.conftest import HANG_TIMEOUT_S

if TYPE_CHECKING:
    from tests.platform.conftest import FakeClock

PRICES = '[models."*"]\ninput = 1.0\ncached_input = 0.5\noutput = 2.0\n'  # USD per 1M tokens


@pytest.fixture
def config(tmp_path: Path) -> PlatformConfig:
    prices = tmp_path / "prices.toml"
    prices.write_text(PRICES)
    return PlatformConfig(data_dir=str(tmp_path / "data"), prices_file=str(prices),
                          admin_key="admin-secret", ledger_flush_interval_s=3600)


def test_a_request_from_key_to_ledger_row(config: PlatformConfig, clock: FakeClock) -> None:
    platform = Platform.from_config(config, clock=clock)
    issued = platform.keys.create("app", limits=KeyLimits(rpm=10, tpm=10_000))
    key = platform.authenticate(issued.secret)
    assert key is not None and platform.authenticate("flint-sk-wrong") is None

    decision = platform.admit(key, "small", prompt_tokens=1000, max_completion_tokens=500)
    assert decision.allowed and decision.headers()["x-ratelimit-remaining-tokens"] == "8500"
    usage = TokenCounts(prompt_tokens=1000, cached_tokens=400, completion_tokens=100)
    timings = Timings(queue_time_s=0.01, ttft_s=0.1, total_time_s=0.5)
    for _ in range(2):  # a second settle of the same request changes nothing
        event = platform.settle("req-1", key.id, "small", usage, reservation=decision.reservation,
                                timings=timings)
    assert event.cost_usd == Decimal("0.0010")  # 600 * $1 + 400 * $0.5 + 100 * $2 per 1M
    after = platform.admit(key, "small", prompt_tokens=1, max_completion_tokens=0)
    assert after.tokens is not None and after.tokens.remaining == 10_000 - 1100 - 1
    platform.close()

    restarted = Platform.from_config(config, clock=clock)
    [row] = restarted.ledger.usage(datetime(2025, 1, 1), datetime(2026, 1, 1), key_id=key.id)
    assert (row.num_requests, row.completion_tokens, row.cost_usd) == (1, 100, Decimal("0.001"))
    stored = restarted.ledger.get("req-1")
    assert stored is not None and stored.ttft_s == 0.1 and stored.status is UsageStatus.FINISHED
    restarted.close()


def test_a_restarted_server_counts_the_quota_already_used(
    config: PlatformConfig, clock: FakeClock
) -> None:
    platform = Platform.from_config(config, clock=clock)
    key = platform.keys.create("quota", limits=KeyLimits(token_quota=1000)).record
    decision = platform.admit(key, "small", prompt_tokens=500, max_completion_tokens=400)
    platform.settle("req-1", key.id, "small", TokenCounts(500, 0, 300),
                    reservation=decision.reservation)
    platform.close()

    restarted = Platform.from_config(config, clock=clock)  # fresh in-memory limits
    refused = restarted.admit(key, "small", prompt_tokens=100, max_completion_tokens=150)
    assert refused.limit is Limit.TOKEN_QUOTA and refused.code == "insufficient_quota"
    assert restarted.admit(key, "small", prompt_tokens=100, max_completion_tokens=100).allowed
    restarted.close()


def test_rejected_and_aborted_requests_get_their_row(
    config: PlatformConfig, clock: FakeClock
) -> None:
    platform = Platform.from_config(config, clock=clock)
    key = platform.keys.create("rpm", limits=KeyLimits(rpm=1)).record
    admitted = platform.admit(key, "small", prompt_tokens=10, max_completion_tokens=10)
    refused = platform.admit(key, "small", prompt_tokens=10, max_completion_tokens=10)
    assert refused.limit is Limit.REQUESTS
    platform.settle("req-429", key.id, "small", NO_USAGE, status=UsageStatus.REJECTED,
                    error_code=refused.code)
    platform.settle("req-gone", key.id, "small", TokenCounts(10, 0, 3),
                    status=UsageStatus.ABORTED, reservation=admitted.reservation)
    platform.close()
    rejected, aborted = platform.ledger.get("req-429"), platform.ledger.get("req-gone")
    assert rejected is not None and rejected.cost_usd == 0
    assert rejected.error_code == "rate_limit_exceeded"
    assert aborted is not None and aborted.status is UsageStatus.ABORTED
    assert aborted.cost_usd == Decimal("0.000016")  # billed for what it generated


def test_budget_race_through_redis_lets_one_request_through(
    config: PlatformConfig, clock: FakeClock, redis_url: str
) -> None:
    platform = Platform.from_config(PlatformConfig(**{**vars(config), "redis_url": redis_url}),
                                    clock=clock)
    # One request's worst case is 1000 * $1 + 1000 * $2 per 1M = $0.003; the budget fits one.
    key = platform.keys.create("race", limits=KeyLimits(budget_usd=Decimal("0.005"))).record
    start = threading.Barrier(20)
    decisions = []

    def admit() -> None:
        start.wait()
        decisions.append(platform.admit(key, "m", prompt_tokens=1000, max_completion_tokens=1000))

    threads = [threading.Thread(target=admit) for _ in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    platform.close()
    assert sum(decision.allowed for decision in decisions) == 1
    client = redis.Redis.from_url(redis_url)
    for name in client.scan_iter(f"flintlm:*{{{key.id}}}*"):
        client.delete(name)
    client.close()


def test_admin_key(config: PlatformConfig) -> None:
    platform = Platform.from_config(config)
    assert platform.is_admin("admin-secret") and not platform.is_admin("admin-secreT")
    platform.close()
    without = Platform.from_config(PlatformConfig(data_dir=config.data_dir))
    assert not without.is_admin("")
    without.close()


def test_the_platform_imports_neither_torch_nor_the_http_layer() -> None:
    probe = ("import sys, flintlm.platform.service; "
             "print(sorted({'torch', 'fastapi', 'flintlm.api'} & set(sys.modules)))")
    repo_root = Path(flintlm.__file__).resolve().parents[1]
    result = subprocess.run([sys.executable, "-c", probe], cwd=repo_root, capture_output=True,
                            text=True, timeout=HANG_TIMEOUT_S, check=True)
    assert result.stdout.strip() == "[]"
