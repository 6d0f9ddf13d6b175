"""Where rate-limit and quota counters live: in this process, or in Redis shared by many servers.

A store decides one admission atomically: it refills the key's request and token buckets, checks
them and the key's period counter (settled + in-flight tokens and nano-USD), and either takes
everything or nothing. It knows no key, price or message; `limits.Limiter` builds the plans.
The two implementations run one algorithm (Python here, Lua in Redis) and one test suite.

Public API:
    Limit, AdmitPlan, SettlePlan, PeriodUsage, Verdict, StoreResult, LimitStoreError
    LimitStore (abstract): admit(plan) -> StoreResult, settle(plan)
    MemoryLimitStore(window_s), RedisLimitStore(client, prefix, window_s) /
        RedisLimitStore.from_url(url, window_s=); .window_s
"""

from __future__ import annotations

import abc
import enum
import math
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import redis

# Buckets refill from empty to full in one window: a limit "per minute". Stores take another
# window only so that tests can watch a limit recover without waiting a minute.
RATE_WINDOW_S = 60.0


class Limit(enum.StrEnum):
    """Which limit refused an admission, in the order they are checked."""

    BUDGET = "budget"
    TOKEN_QUOTA = "token_quota"
    REQUESTS = "requests"
    TOKENS = "tokens"


@dataclass(frozen=True)
class PeriodUsage:
    num_tokens: int
    cost_nano_usd: int


@dataclass(frozen=True)
class AdmitPlan:
    """One admission as the store sees it. None limits are not checked.

    `period_id` is set only when the key has a token quota or a budget; `seed` carries the
    ledger's totals for the period when the store has no counter for it yet.
    """

    key_id: str
    now: float
    num_tokens: int  # taken from the TPM bucket and the token quota
    cost_nano_usd: int  # taken from the budget
    rpm: int | None = None
    tpm: int | None = None
    token_quota: int | None = None
    budget_nano_usd: int | None = None
    period_id: str | None = None
    period_ttl_s: int = 0
    seed: PeriodUsage | None = None


@dataclass(frozen=True)
class SettlePlan:
    """Trade an admission's reservation for what the request really used."""

    key_id: str
    now: float
    tpm: int | None
    period_id: str | None
    reserved: PeriodUsage
    used: PeriodUsage


class Verdict(enum.Enum):
    ALLOWED = "allowed"
    REFUSED = "refused"
    NEEDS_SEED = "needs_seed"  # the period counter is missing: retry with `AdmitPlan.seed`


@dataclass(frozen=True)
class StoreResult:
    """The store's answer; bucket levels are after this admission (before it when refused)."""

    verdict: Verdict
    refused_by: Limit | None = None
    requests_level: float | None = None
    tokens_level: float | None = None
    period_usage: PeriodUsage | None = None  # settled + in flight, before this admission


class LimitStoreError(RuntimeError):
    """The shared store cannot be reached; the server answers 503 rather than guess."""


class LimitStore(abc.ABC):
    window_s: float = RATE_WINDOW_S
    """Seconds in which an empty bucket refills to its limit (rpm and tpm are per window)."""

    @abc.abstractmethod
    def admit(self, plan: AdmitPlan) -> StoreResult: ...

    @abc.abstractmethod
    def settle(self, plan: SettlePlan) -> None: ...


def _check_window(window_s: float) -> float:
    if window_s <= 0:
        raise ValueError(f"rate window {window_s}s must be positive (60 for per-minute limits)")
    return float(window_s)


def _refill(level: float, updated_at: float, capacity: int, now: float, window_s: float) -> float:
    elapsed = max(0.0, now - updated_at)
    return min(float(capacity), level + elapsed * capacity / window_s)


@dataclass(slots=True)
class _PeriodCounters:
    """One key's quota counters for one period, as the Redis period hash holds them."""

    period_id: str
    used_tokens: int
    used_nanos: int
    reserved_tokens: int = 0
    reserved_nanos: int = 0

    def total(self) -> PeriodUsage:
        return PeriodUsage(self.used_tokens + self.reserved_tokens,
                           self.used_nanos + self.reserved_nanos)


class MemoryLimitStore(LimitStore):
    """Counters in this process, under one lock. Limits are per process: use Redis to share."""

    def __init__(self, window_s: float = RATE_WINDOW_S) -> None:
        self.window_s = _check_window(window_s)
        self._lock = threading.Lock()
        self._buckets: dict[tuple[str, Limit], tuple[float, float]] = {}  # -> (level, updated_at)
        self._periods: dict[str, _PeriodCounters] = {}  # key_id -> its current period

    def admit(self, plan: AdmitPlan) -> StoreResult:
        with self._lock:
            counters = self._period_counters(plan)
            if plan.period_id is not None and counters is None:
                return StoreResult(Verdict.NEEDS_SEED)
            usage = counters.total() if counters is not None else None
            requests = self._level(plan.key_id, Limit.REQUESTS, plan.rpm, plan.now)
            tokens = self._level(plan.key_id, Limit.TOKENS, plan.tpm, plan.now)
            refused_by = _first_refusal(plan, usage, requests, tokens)
            if refused_by is not None:
                return StoreResult(Verdict.REFUSED, refused_by, requests, tokens, usage)
            if requests is not None:
                requests -= 1
                self._buckets[plan.key_id, Limit.REQUESTS] = (requests, plan.now)
            if tokens is not None:
                tokens -= plan.num_tokens
                self._buckets[plan.key_id, Limit.TOKENS] = (tokens, plan.now)
            if counters is not None:
                counters.reserved_tokens += plan.num_tokens
                counters.reserved_nanos += plan.cost_nano_usd
            return StoreResult(Verdict.ALLOWED, None, requests, tokens, usage)

    def settle(self, plan: SettlePlan) -> None:
        with self._lock:
            refund = plan.reserved.num_tokens - plan.used.num_tokens
            state = self._buckets.get((plan.key_id, Limit.TOKENS))
            if plan.tpm is not None and state is not None and refund:
                level = _refill(*state, plan.tpm, plan.now, self.window_s)
                self._buckets[plan.key_id, Limit.TOKENS] = (min(plan.tpm, level + refund), plan.now)
            counters = self._periods.get(plan.key_id)
            # A counter of an earlier period is gone: its usage is in the ledger for good.
            if counters is not None and counters.period_id == plan.period_id:
                counters.used_tokens += plan.used.num_tokens
                counters.reserved_tokens -= plan.reserved.num_tokens
                counters.used_nanos += plan.used.cost_nano_usd
                counters.reserved_nanos -= plan.reserved.cost_nano_usd

    def _period_counters(self, plan: AdmitPlan) -> _PeriodCounters | None:
        if plan.period_id is None:
            return None
        counters = self._periods.get(plan.key_id)
        if counters is not None and counters.period_id == plan.period_id:
            return counters
        if plan.seed is None:
            return None
        counters = _PeriodCounters(plan.period_id, plan.seed.num_tokens, plan.seed.cost_nano_usd)
        self._periods[plan.key_id] = counters
        return counters

    def _level(self, key_id: str, limit: Limit, capacity: int | None, now: float) -> float | None:
        if capacity is None:
            return None
        state = self._buckets.get((key_id, limit))
        return float(capacity) if state is None else _refill(*state, capacity, now, self.window_s)


def _first_refusal(
    plan: AdmitPlan, usage: PeriodUsage | None, requests: float | None, tokens: float | None
) -> Limit | None:
    # NOTE: the Lua script in RedisLimitStore mirrors this order; change both together.
    if usage is not None:
        budget, quota = plan.budget_nano_usd, plan.token_quota
        if budget is not None and usage.cost_nano_usd + plan.cost_nano_usd > budget:
            return Limit.BUDGET
        if quota is not None and usage.num_tokens + plan.num_tokens > quota:
            return Limit.TOKEN_QUOTA
    if requests is not None and requests < 1:
        return Limit.REQUESTS
    if tokens is not None and tokens < plan.num_tokens:
        return Limit.TOKENS
    return None


# KEYS[1]: the key's bucket hash; KEYS[2]: its period hash.
# ARGV: now, rpm, tpm, num_tokens, cost, has_period, token_quota, budget, period_ttl_s,
#       seed_tokens, seed_cost, window_s, bucket_ttl_s. 0 means "no limit"; seed_tokens -1
#       means "no seed". Returns the verdict, the refused limit, both bucket levels and the
#       period's tokens and nano-USD before this admission ('' where not applicable).
# Integers go to HSET/HINCRBY as the ARGV strings: Lua's tostring turns 1e14 into "1e+14".
_ADMIT_LUA = """
local now, rpm, tpm = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local need, cost = tonumber(ARGV[4]), tonumber(ARGV[5])
local quota, budget = tonumber(ARGV[7]), tonumber(ARGV[8])
local window = tonumber(ARGV[12])
local function level(cap, name)
  if cap == 0 then return nil end
  local state = redis.call('HMGET', KEYS[1], name, name .. '_at')
  if not state[1] then return cap end
  local elapsed = math.max(0, now - tonumber(state[2]))
  return math.min(cap, tonumber(state[1]) + elapsed * cap / window)
end
local used_tokens, used_cost = '', ''
if ARGV[6] == '1' then
  if redis.call('EXISTS', KEYS[2]) == 0 then
    if tonumber(ARGV[10]) < 0 then return {'needs_seed'} end
    redis.call('HSET', KEYS[2], 'tokens', ARGV[10], 'cost', ARGV[11],
               'reserved_tokens', 0, 'reserved_cost', 0)
    redis.call('EXPIRE', KEYS[2], ARGV[9])
  end
  local c = redis.call('HMGET', KEYS[2], 'tokens', 'reserved_tokens', 'cost', 'reserved_cost')
  used_tokens = tonumber(c[1]) + tonumber(c[2])
  used_cost = tonumber(c[3]) + tonumber(c[4])
end
local requests, tokens = level(rpm, 'requests'), level(tpm, 'tokens')
local refused = ''
if used_cost ~= '' and budget > 0 and used_cost + cost > budget then refused = 'budget'
elseif used_tokens ~= '' and quota > 0 and used_tokens + need > quota then refused = 'token_quota'
elseif requests and requests < 1 then refused = 'requests'
elseif tokens and tokens < need then refused = 'tokens' end
if refused == '' then
  if requests then
    requests = requests - 1
    redis.call('HSET', KEYS[1], 'requests', tostring(requests), 'requests_at', ARGV[1])
  end
  if tokens then
    tokens = tokens - need
    redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'tokens_at', ARGV[1])
  end
  if requests or tokens then redis.call('EXPIRE', KEYS[1], ARGV[13]) end
  if used_tokens ~= '' then
    redis.call('HINCRBY', KEYS[2], 'reserved_tokens', ARGV[4])
    redis.call('HINCRBY', KEYS[2], 'reserved_cost', ARGV[5])
  end
end
return {refused == '' and 'allowed' or 'refused', refused, tostring(requests or ''),
        tostring(tokens or ''), tostring(used_tokens), tostring(used_cost)}
"""

# KEYS as above. ARGV: now, tpm, refund_tokens, has_period, -reserved_tokens, used_tokens,
#       -reserved_cost, used_cost, window_s. A missing bucket is full and a missing period
#       counter is gone, so neither is recreated here.
_SETTLE_LUA = """
local now, cap, refund = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
if cap > 0 and refund ~= 0 then
  local state = redis.call('HMGET', KEYS[1], 'tokens', 'tokens_at')
  if state[1] then
    local elapsed = math.max(0, now - tonumber(state[2]))
    local level = math.min(cap, tonumber(state[1]) + elapsed * cap / tonumber(ARGV[9]))
    level = math.min(cap, level + refund)
    redis.call('HSET', KEYS[1], 'tokens', tostring(level), 'tokens_at', ARGV[1])
  end
end
if ARGV[4] == '1' and redis.call('EXISTS', KEYS[2]) == 1 then
  redis.call('HINCRBY', KEYS[2], 'reserved_tokens', ARGV[5])
  redis.call('HINCRBY', KEYS[2], 'tokens', ARGV[6])
  redis.call('HINCRBY', KEYS[2], 'reserved_cost', ARGV[7])
  redis.call('HINCRBY', KEYS[2], 'cost', ARGV[8])
end
return 1
"""


class RedisLimitStore(LimitStore):
    """Counters in Redis, changed only by Lua scripts, so any number of servers share them.

    Keys: `<prefix>:rate:{<key_id>}` and `<prefix>:period:{<key_id>}:<period_id>`; the braces
    keep one key's hashes in one Redis Cluster slot, as a script touching both requires.
    NOTE: `now` comes from the server's clock, so servers sharing limits need synced clocks.
    """

    def __init__(
        self, client: redis.Redis, prefix: str = "flintlm", window_s: float = RATE_WINDOW_S
    ) -> None:
        self.window_s = _check_window(window_s)
        # A bucket untouched for a whole window is full again, so Redis may forget it after that.
        self._state_ttl_s = max(1, math.ceil(2 * self.window_s))
        self._client = client
        self._prefix = prefix
        self._admit = client.register_script(_ADMIT_LUA)
        self._settle = client.register_script(_SETTLE_LUA)

    @classmethod
    def from_url(
        cls, url: str, prefix: str = "flintlm", *, window_s: float = RATE_WINDOW_S
    ) -> RedisLimitStore:
        """Connects lazily: start-up does not wait for Redis; the first admission does."""
        import redis

        return cls(redis.Redis.from_url(url, decode_responses=True), prefix, window_s)

    def admit(self, plan: AdmitPlan) -> StoreResult:
        seed = plan.seed or PeriodUsage(-1, -1)
        args = [
            repr(plan.now), plan.rpm or 0, plan.tpm or 0, plan.num_tokens, plan.cost_nano_usd,
            int(plan.period_id is not None), plan.token_quota or 0, plan.budget_nano_usd or 0,
            plan.period_ttl_s, seed.num_tokens, seed.cost_nano_usd, self.window_s,
            self._state_ttl_s,
        ]
        reply = self._call(self._admit, self._keys(plan.key_id, plan.period_id), args)
        if reply[0] == "needs_seed":
            return StoreResult(Verdict.NEEDS_SEED)
        verdict, refused_by, requests, tokens, used_tokens, used_cost = reply
        usage = PeriodUsage(int(float(used_tokens)), int(float(used_cost))) if used_tokens else None
        return StoreResult(
            verdict=Verdict(verdict),
            refused_by=Limit(refused_by) if refused_by else None,
            requests_level=float(requests) if requests else None,
            tokens_level=float(tokens) if tokens else None,
            period_usage=usage,
        )

    def settle(self, plan: SettlePlan) -> None:
        args = [
            repr(plan.now), plan.tpm or 0, plan.reserved.num_tokens - plan.used.num_tokens,
            int(plan.period_id is not None), -plan.reserved.num_tokens, plan.used.num_tokens,
            -plan.reserved.cost_nano_usd, plan.used.cost_nano_usd, self.window_s,
        ]
        self._call(self._settle, self._keys(plan.key_id, plan.period_id), args)

    def _keys(self, key_id: str, period_id: str | None) -> list[str]:
        return [
            f"{self._prefix}:rate:{{{key_id}}}",
            f"{self._prefix}:period:{{{key_id}}}:{period_id or 'none'}",
        ]

    def _call(self, script: redis.commands.core.Script, keys: list[str], args: list) -> list:
        import redis

        try:
            return script(keys=keys, args=args)
        except redis.RedisError as error:
            raise LimitStoreError(f"rate-limit store unreachable: {error}") from error
