"""Admission limits on both stores (memory and Redis): RPM, TPM, token quota, USD budget;
then limits shared through Redis by limiters on separate connections and in separate processes.

The clock is injected, so windows pass without sleeping; the ledger is stood in for by fixed
totals, since the limiter only asks it where a period's counters start.
"""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Callable
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

import flintlm
from flintlm.platform.keys import KeyLimits, KeyRecord
from flintlm.platform.ledger import UsageTotals
from flintlm.platform.limit_store import (
    LimitStore,
    LimitStoreError,
    MemoryLimitStore,
    RedisLimitStore,
)
from flintlm.platform.limits import Limit, Limiter, format_duration
from tests.conftest import HANG_TIMEOUT_S

if TYPE_CHECKING:
    from tests.platform.conftest import FakeClock

FREE = Decimal(0)


class FixedTotals:
    """A stand-in ledger: every period starts from these totals; records which periods asked."""

    def __init__(self, num_tokens: int = 0, cost_usd: Decimal = FREE) -> None:
        self.num_tokens = num_tokens
        self.cost_usd = cost_usd
        self.period_starts: list[datetime] = []

    def totals_since(self, key_id: str, start: datetime) -> UsageTotals:
        self.period_starts.append(start)
        return UsageTotals(self.num_tokens, self.cost_usd)


def make_key(**limits: Any) -> KeyRecord:
    return KeyRecord(id="key_test", name="test", tenant_id="key_test", prefix="flint-sk-test",
                     created_at=datetime(2025, 1, 1), expires_at=None, revoked_at=None,
                     limits=KeyLimits(**limits))


def test_requests_per_minute_refuse_then_recover(limit_store: LimitStore, clock: FakeClock) -> None:
    limiter = Limiter(limit_store, FixedTotals(), clock)
    key = make_key(rpm=3)
    for remaining in (2, 1, 0):
        decision = limiter.admit(key, num_tokens=10, max_cost_usd=FREE)
        assert decision.allowed and decision.requests is not None
        assert decision.requests.remaining == remaining
    refused = limiter.admit(key, num_tokens=10, max_cost_usd=FREE)
    assert not refused.allowed and refused.reservation is None
    assert refused.limit is Limit.REQUESTS and refused.code == "rate_limit_exceeded"
    assert refused.retry_after_s == pytest.approx(20.0)  # one request refills every 60/3 s
    assert refused.headers() == {
        "x-ratelimit-limit-requests": "3",
        "x-ratelimit-remaining-requests": "0",
        "x-ratelimit-reset-requests": "1m0s",
        "retry-after": "20",
    }
    assert refused.message is not None and "requests per minute" in refused.message

    clock.advance(20)
    assert limiter.admit(key, num_tokens=10, max_cost_usd=FREE).allowed
    clock.advance(60)
    recovered = limiter.admit(key, num_tokens=10, max_cost_usd=FREE)
    assert recovered.requests is not None and recovered.requests.remaining == 2


@pytest.mark.parametrize("kind", ["memory", "redis"])
def test_a_shorter_window_refills_faster(kind: str, request: pytest.FixtureRequest,
                                         clock: FakeClock) -> None:
    if kind == "memory":
        store: LimitStore = MemoryLimitStore(window_s=6)
    else:
        import redis

        url, prefix = request.getfixturevalue("redis_url"), request.getfixturevalue("redis_prefix")
        store = RedisLimitStore(redis.Redis.from_url(url, decode_responses=True), prefix, 6)
    limiter = Limiter(store, FixedTotals(), clock)
    key = make_key(rpm=3, tpm=300)
    for _ in range(3):
        assert limiter.admit(key, num_tokens=100, max_cost_usd=FREE).allowed
    refused = limiter.admit(key, num_tokens=100, max_cost_usd=FREE)
    assert refused.retry_after_s == pytest.approx(2.0)  # a request and 100 tokens per 2 s
    assert refused.message is not None and "per 6s" in refused.message
    clock.advance(2)
    assert limiter.admit(key, num_tokens=100, max_cost_usd=FREE).allowed
    with pytest.raises(ValueError, match="positive"):
        MemoryLimitStore(window_s=0)


def test_tokens_per_minute_reserve_then_settle_to_actual_use(
    limit_store: LimitStore, clock: FakeClock
) -> None:
    limiter = Limiter(limit_store, FixedTotals(), clock)
    key = make_key(tpm=1000)
    first = limiter.admit(key, num_tokens=600, max_cost_usd=FREE)
    assert first.allowed and first.reservation is not None
    assert first.headers() == {
        "x-ratelimit-limit-tokens": "1000",
        "x-ratelimit-remaining-tokens": "400",
        "x-ratelimit-reset-tokens": "36s",
    }
    refused = limiter.admit(key, num_tokens=600, max_cost_usd=FREE)
    assert refused.limit is Limit.TOKENS and refused.code == "rate_limit_exceeded"
    assert refused.retry_after_s == pytest.approx(12.0)  # 200 missing tokens at 1000/60 per s
    assert refused.message is not None and "requested 600" in refused.message

    # The request used 100 of its 600: the other 500 go back to the bucket, once.
    for _ in range(2):
        limiter.settle(first.reservation, num_tokens=100, cost_usd=FREE)
    second = limiter.admit(key, num_tokens=600, max_cost_usd=FREE)
    assert second.allowed and second.tokens is not None and second.tokens.remaining == 300
    assert not limiter.admit(key, num_tokens=400, max_cost_usd=FREE).allowed


def test_request_larger_than_the_tpm_limit_is_never_admitted(
    limit_store: LimitStore, clock: FakeClock
) -> None:
    limiter = Limiter(limit_store, FixedTotals(), clock)
    refused = limiter.admit(make_key(tpm=100), num_tokens=101, max_cost_usd=FREE)
    assert refused.limit is Limit.TOKENS and refused.retry_after_s is None
    assert refused.message is not None and "too large" in refused.message
    assert "retry-after" not in refused.headers()


def test_retry_after_waits_for_the_slower_bucket(limit_store: LimitStore, clock: FakeClock) -> None:
    limiter = Limiter(limit_store, FixedTotals(), clock)
    key = make_key(rpm=60, tpm=600)
    assert limiter.admit(key, num_tokens=600, max_cost_usd=FREE).allowed
    refused = limiter.admit(key, num_tokens=300, max_cost_usd=FREE)
    assert refused.limit is Limit.TOKENS and refused.retry_after_s == pytest.approx(30.0)
    assert refused.requests is not None and refused.requests.remaining == 59


def test_key_without_limits_is_admitted_without_headers(
    limit_store: LimitStore, clock: FakeClock
) -> None:
    decision = Limiter(limit_store, FixedTotals(), clock).admit(
        make_key(), num_tokens=10**9, max_cost_usd=Decimal(10**6))
    assert decision.allowed and decision.headers() == {} and decision.reservation is not None


def test_daily_token_quota_counts_the_ledger_and_in_flight_requests(
    limit_store: LimitStore, clock: FakeClock
) -> None:
    ledger = FixedTotals(num_tokens=900)
    limiter = Limiter(limit_store, ledger, clock)
    key = make_key(token_quota=1000, quota_period="day")
    in_flight = limiter.admit(key, num_tokens=50, max_cost_usd=FREE)
    assert in_flight.allowed and in_flight.reservation is not None
    refused = limiter.admit(key, num_tokens=100, max_cost_usd=FREE)
    assert refused.limit is Limit.TOKEN_QUOTA and refused.code == "insufficient_quota"
    assert refused.message is not None
    assert "daily token quota" in refused.message and "2025-01-16T00:00:00Z" in refused.message
    assert refused.retry_after_s == pytest.approx(12 * 3600)

    limiter.settle(in_flight.reservation, num_tokens=20, cost_usd=FREE)  # 920 used
    assert limiter.admit(key, num_tokens=80, max_cost_usd=FREE).allowed
    assert ledger.period_starts == [datetime(2025, 1, 15)]  # the ledger is read once per period

    clock.advance(12 * 3600)
    ledger.num_tokens = 0
    assert limiter.admit(key, num_tokens=1000, max_cost_usd=FREE).allowed
    assert ledger.period_starts[-1] == datetime(2025, 1, 16)


def test_monthly_budget_reserves_the_worst_case_and_settles_the_real_cost(
    limit_store: LimitStore, clock: FakeClock
) -> None:
    limiter = Limiter(limit_store, FixedTotals(cost_usd=Decimal("0.25")), clock)
    key = make_key(budget_usd=Decimal(1))
    first = limiter.admit(key, num_tokens=10, max_cost_usd=Decimal("0.5"))
    assert first.allowed and first.reservation is not None
    refused = limiter.admit(key, num_tokens=10, max_cost_usd=Decimal("0.5"))
    assert refused.limit is Limit.BUDGET and refused.code == "insufficient_quota"
    assert refused.message is not None
    assert "monthly budget" in refused.message and "2025-02-01T00:00:00Z" in refused.message
    assert "$1 with $0.75 spent or in flight" in refused.message
    limiter.settle(first.reservation, num_tokens=10, cost_usd=Decimal("0.1"))  # $0.35 spent
    assert limiter.admit(key, num_tokens=10, max_cost_usd=Decimal("0.5")).allowed


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0.0201, "21ms"), (1.5, "1.5s"), (36, "36s"), (59.9999, "1m0s"), (360, "6m0s")],
)
def test_reset_durations_are_written_like_openai_writes_them(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


@pytest.mark.parametrize(
    ("limits", "num_tokens", "max_cost_usd"),
    [({"budget_usd": Decimal(1)}, 1, Decimal("0.6")), ({"token_quota": 1000}, 600, FREE)],
    ids=["budget", "token_quota"],
)
def test_twenty_racing_admissions_on_a_limit_for_one_let_one_through(
    limit_store: LimitStore, clock: FakeClock, limits: dict, num_tokens: int, max_cost_usd: Decimal
) -> None:
    limiter = Limiter(limit_store, FixedTotals(), clock)
    key = make_key(**limits)
    start = threading.Barrier(20)
    decisions = []

    def admit() -> None:
        start.wait()
        decisions.append(limiter.admit(key, num_tokens=num_tokens, max_cost_usd=max_cost_usd))

    threads = [threading.Thread(target=admit) for _ in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(decision.allowed for decision in decisions) == 1
    assert {decision.code for decision in decisions if not decision.allowed} == {
        "insufficient_quota"}


# One server process: admits 1-token requests against a shared quota of 10 tokens.
_SERVER_PROCESS = """
import sys
from datetime import datetime
from decimal import Decimal
import redis
from flintlm.platform.keys import KeyLimits, KeyRecord
from flintlm.platform.ledger import UsageTotals
from flintlm.platform.limit_store import RedisLimitStore
from flintlm.platform.limits import Limiter

class NoUsage:
    def totals_since(self, key_id, start):
        return UsageTotals(0, Decimal(0))

url, prefix, now, attempts = sys.argv[1], sys.argv[2], float(sys.argv[3]), int(sys.argv[4])
store = RedisLimitStore(redis.Redis.from_url(url, decode_responses=True), prefix)
limiter = Limiter(store, NoUsage(), clock=lambda: now)
key = KeyRecord(id="key_shared", name="shared", tenant_id="key_shared", prefix="flint-sk-x",
                created_at=datetime(2025, 1, 1), expires_at=None, revoked_at=None,
                limits=KeyLimits(rpm=1000, token_quota=10))
print(sum(limiter.admit(key, num_tokens=1, max_cost_usd=Decimal(0)).allowed
          for _ in range(attempts)))
"""


def test_two_limiters_on_separate_connections_share_one_budget(
    make_redis_store: Callable[[], RedisLimitStore], clock: FakeClock
) -> None:
    ledger = FixedTotals()
    first = Limiter(make_redis_store(), ledger, clock)
    second = Limiter(make_redis_store(), ledger, clock)
    key = make_key(rpm=5, budget_usd=Decimal(1))
    allowed = [limiter.admit(key, num_tokens=1, max_cost_usd=FREE).allowed
               for _ in range(5) for limiter in (first, second)]
    assert sum(allowed) == 5  # one RPM bucket for both

    clock.advance(60)
    reservation = first.admit(key, num_tokens=1, max_cost_usd=Decimal("0.75")).reservation
    assert reservation is not None
    assert not second.admit(key, num_tokens=1, max_cost_usd=Decimal("0.5")).allowed
    first.settle(reservation, num_tokens=1, cost_usd=Decimal("0.25"))
    assert second.admit(key, num_tokens=1, max_cost_usd=Decimal("0.5")).allowed
    assert ledger.period_starts and len(ledger.period_starts) == 1  # seeded once, shared


def test_two_server_processes_share_one_token_quota(
    redis_url: str, redis_prefix: str, clock: FakeClock
) -> None:
    repo_root = Path(flintlm.__file__).resolve().parents[1]
    command = [sys.executable, "-c", _SERVER_PROCESS, redis_url, redis_prefix, repr(clock.now), "8"]
    processes = [subprocess.Popen(command, cwd=repo_root, stdout=subprocess.PIPE, text=True)
                 for _ in range(2)]
    outputs = [process.communicate(timeout=HANG_TIMEOUT_S)[0] for process in processes]
    assert [process.returncode for process in processes] == [0, 0]
    assert sum(int(output) for output in outputs) == 10  # 16 attempts, a quota of 10


def test_unreachable_redis_raises_instead_of_guessing(clock: FakeClock) -> None:
    limiter = Limiter(RedisLimitStore.from_url("redis://127.0.0.1:1/0"), FixedTotals(), clock)
    with pytest.raises(LimitStoreError, match="unreachable"):
        limiter.admit(make_key(rpm=1), num_tokens=1, max_cost_usd=FREE)
