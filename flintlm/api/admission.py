"""Admission: who a request is (`authenticate`) and whether it may run now (`admit`), then its
one ledger row (`Ticket.settle`); one `Admission` per server.

`admit` refuses, in this order and each with a ledger row at zero tokens: a model the key may not
use (403), a request that does not fit the context or the key's max_tokens ceiling (400), a key
at its concurrent-request cap (429), a full engine queue (503), a rate limit, quota or budget
(429). Every platform call (DB, Redis) runs on the platform's own worker threads, never on the
event loop; at shutdown `close` waits for every admitted request to settle before it closes the
ledger.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from flintlm.api.bounds import TokenBounds, fit_max_tokens
from flintlm.api.errors import (
    APIError,
    AuthenticationFailed,
    PermissionDenied,
    QuotaExceeded,
    RateLimited,
    ServiceUnavailable,
)
from flintlm.config import LimitsConfig
from flintlm.observability.logging import ContextExecutor, current_request_id
from flintlm.platform.keys import (
    ANONYMOUS_KEY_ID,
    SECRET_PREFIX,
    STATIC_KEY_ID,
    KeyRecord,
    builtin_key,
)
from flintlm.platform.ledger import UsageStatus
from flintlm.platform.limit_store import LimitStoreError
from flintlm.platform.service import NO_USAGE, Platform, Timings

if TYPE_CHECKING:
    from flintlm.engine.request import SamplingParams, Usage
    from flintlm.platform.limits import AdmissionDecision, Reservation
    from flintlm.platform.pricing import TokenUsage

logger = logging.getLogger("flintlm.api")

_T = TypeVar("_T")
RETRY_BUSY_S = 1  # Retry-After of a refusal for being busy (concurrency cap, full queue)


@dataclass
class Ticket:
    """One admitted API request; `settle` records its usage once, whatever path ends it.

    `cache_salt` is the prefix-cache salt the engine must get: the key's tenant, narrowed by the
    client's `cache_salt`. `created_s` (monotonic) is where the ledger's timings start.
    """

    admission: Admission
    request_id: str
    key: KeyRecord
    cache_salt: str
    end_user: str | None = None
    created_s: float = field(default_factory=time.monotonic)
    reservation: Reservation | None = None
    ratelimit_headers: dict[str, str] = field(default_factory=dict)
    http_request_id: str | None = field(default_factory=current_request_id)  # for the ledger row
    params: SamplingParams | None = None  # with max_tokens fitted, once admitted
    # Guardrail decisions, for the ledger row; the request's guard appends as checks fire.
    guardrail: list[dict[str, Any]] | None = None
    is_counted: bool = field(default=False, init=False)  # in its key's concurrent requests
    is_settled: bool = field(default=False, init=False)

    @property
    def admitted_params(self) -> SamplingParams:
        """The parameters admission fitted (max_tokens set); only on an admitted ticket."""
        if self.params is None:
            raise RuntimeError(f"{self.request_id} was not admitted")
        return self.params

    async def settle(self, usage: Usage, *, status: UsageStatus = UsageStatus.FINISHED,
                     error_code: str | None = None, timings: Timings | None = None) -> None:
        await self.admission.settle(self, usage, status=status, error_code=error_code,
                                    timings=timings)


class Admission:
    """Authenticates, admits and settles requests against the platform; one per server.

    Keys: the server's shared `--api-key` is the key `static`; a `flint-sk-...` secret is looked
    up in the store. Only while nothing is configured (no `--api-key`, no `--admin-key`, no key
    ever issued in the store) is a request without a known key served as `anonymous` (dev mode).
    """

    def __init__(self, platform: Platform, *, model_name: str, max_model_len: int,
                 static_key: str | None = None, limits: LimitsConfig | None = None,
                 max_workers: int = 8) -> None:
        self.platform = platform
        self.model_name = model_name
        self.max_model_len = max_model_len
        self.limits = limits or LimitsConfig()
        self._static_key = static_key
        self._num_in_flight: collections.Counter[str] = collections.Counter()  # by key id
        self._is_key_required = static_key is not None or platform.has_admin_key
        # Its threads log and settle in the calling request's context (its request id).
        self._executor = ContextExecutor(max_workers, thread_name_prefix="flintlm-platform")
        self._open: dict[str, Ticket] = {}  # admitted, not settled yet (touched on the loop only)
        self._has_none_open = asyncio.Event()  # set while `_open` is empty; `close` waits on it
        self._has_none_open.set()
        self._settling: set[asyncio.Future[None]] = set()

    async def run(self, function: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
        """Run a blocking platform call on the platform's worker threads."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor,
                                          functools.partial(function, *args, **kwargs))

    async def is_key_required(self) -> bool:
        if not self._is_key_required:  # once a key exists it stays required, even if revoked
            self._is_key_required = await self.run(self.platform.keys.has_keys)
        return self._is_key_required

    async def authenticate(self, secret: str | None) -> KeyRecord:
        """The caller's key for a bearer secret (None: no Authorization header), or 401."""
        if secret and self._static_key is not None and secrets.compare_digest(
                secret.encode(), self._static_key.encode()):
            return builtin_key(STATIC_KEY_ID)
        if secret and secret.startswith(SECRET_PREFIX):
            key = await self.run(self.platform.authenticate, secret)
            if key is None:
                raise AuthenticationFailed(await self.run(self.platform.refusal, secret))
            return key
        if not await self.is_key_required():
            return builtin_key(ANONYMOUS_KEY_ID)
        if not secret:
            raise AuthenticationFailed("Missing API key: send 'Authorization: Bearer <key>'.")
        raise AuthenticationFailed("Incorrect API key provided.")

    async def admit(self, key: KeyRecord, request_id: str, prompts: list[list[int]],
                    params: SamplingParams, end_user: str | None = None, *,
                    cache_salt: str | None = None, prompt_param: str = "prompt",
                    has_room: Callable[[int], bool] | None = None,
                    guardrail: list[dict[str, Any]] | None = None) -> Ticket:
        """Admit a tokenized request, reserving `prompt + max_tokens * n` tokens, or raise.

        Args:
            params: validated (`bounds.checked_params`); the ticket's `params` has max_tokens
                fitted to the context, the server default and the key (`bounds.fit_max_tokens`).
            prompt_param: what a prompt too long is called in the 400 ("prompt", "messages").
            has_room: whether the engine can queue this many more requests now.
            guardrail: the request's guardrail decisions (a list its guard keeps appending to).
        Raises:
            APIError: the refusal; the request already has its ledger row at zero tokens.
        """
        ticket = Ticket(self, request_id, key, key.cache_salt(cache_salt), end_user,
                        guardrail=guardrail)
        self._open[request_id] = ticket
        self._has_none_open.clear()
        try:
            ticket.params = self._check(key, prompts, params, prompt_param, has_room)
        except APIError as exc:
            await self._reject(ticket, exc.code or exc.error_type)
            raise
        ticket.is_counted = True
        self._num_in_flight[key.id] += 1
        num_prompt = sum(len(prompt) for prompt in prompts)
        num_completion = ticket.params.n * len(prompts) * (ticket.params.max_tokens or 0)
        # NOTE: the reservation lands on the ticket inside the worker thread, so a request
        # cancelled while it waits still has it released (by close()) instead of leaking it.
        try:
            decision = await self.run(self._admit, ticket, num_prompt, num_completion)
        except LimitStoreError as exc:
            logger.error("admission of %s failed: %s", request_id, exc)
            await self._reject(ticket, "limits_unavailable")
            raise ServiceUnavailable("the rate-limit store is unreachable; retry shortly",
                                     code="limits_unavailable") from exc
        if not decision.allowed:
            await self._reject(ticket, decision.code)
            raise _refusal(decision)
        return ticket

    def _check(self, key: KeyRecord, prompts: list[list[int]], params: SamplingParams,
               prompt_param: str, has_room: Callable[[int], bool] | None) -> SamplingParams:
        """The refusals that need no platform call, in order; returns the fitted params."""
        if not key.is_model_allowed(self.model_name):
            raise PermissionDenied(f"The key {key.id} may not use the model "
                                   f"{self.model_name!r}.", param="model")
        bounds = TokenBounds(self.max_model_len, self.limits.default_max_tokens,
                             self.limits.max_request_completion_tokens, key.limits.max_tokens)
        fitted = fit_max_tokens(params, [len(prompt) for prompt in prompts], bounds,
                                prompt_param)
        cap = key.limits.max_concurrent or self.limits.max_concurrent_per_key
        if cap is not None and self._num_in_flight[key.id] >= cap:
            raise RateLimited(f"The key {key.id} has {cap} requests in flight, its limit; "
                              "retry when one ends.", code="too_many_concurrent_requests",
                              headers={"Retry-After": str(RETRY_BUSY_S)})
        if has_room is not None and not has_room(params.n * len(prompts)):
            raise ServiceUnavailable("the server is overloaded: its queue is full; retry "
                                     "shortly", code="engine_overloaded",
                                     headers={"Retry-After": str(RETRY_BUSY_S)})
        return fitted

    async def reject(self, key: KeyRecord, request_id: str, error_code: str, *,
                     guardrail: list[dict[str, Any]] | None = None) -> None:
        """Record a request refused before admission (e.g. by a guardrail) at zero tokens."""
        ticket = Ticket(self, request_id, key, key.cache_salt(None), guardrail=guardrail)
        self._open[request_id] = ticket
        await self._reject(ticket, error_code)

    async def _reject(self, ticket: Ticket, error_code: str | None) -> None:
        timings = Timings(total_time_s=time.monotonic() - ticket.created_s)
        await self.settle(ticket, NO_USAGE, status=UsageStatus.REJECTED, error_code=error_code,
                          timings=timings)

    def _admit(self, ticket: Ticket, num_prompt: int, num_completion: int) -> AdmissionDecision:
        decision = self.platform.admit(ticket.key, self.model_name, prompt_tokens=num_prompt,
                                       max_completion_tokens=num_completion)
        ticket.reservation = decision.reservation
        ticket.ratelimit_headers = {name: value for name, value in decision.headers().items()
                                    if name.startswith("x-ratelimit-")}
        return decision

    async def settle(self, ticket: Ticket, usage: TokenUsage, *, status: UsageStatus,
                     error_code: str | None = None, timings: Timings | None = None) -> None:
        """Write the ticket's ledger row and release its reservation, once; never raises."""
        if ticket.is_settled:
            return
        ticket.is_settled = True
        if ticket.is_counted:
            self._num_in_flight[ticket.key.id] -= 1
            if not self._num_in_flight[ticket.key.id]:
                del self._num_in_flight[ticket.key.id]
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self._executor, functools.partial(
            self._settle, ticket, usage, status, error_code, timings))
        self._settling.add(future)

        def done(_: asyncio.Future[None]) -> None:
            self._settling.discard(future)
            self._open.pop(ticket.request_id, None)
            if not self._open:
                self._has_none_open.set()

        future.add_done_callback(done)
        # NOTE: shielded, so a cancelled handler (client gone, shutdown) still gets its row.
        await asyncio.shield(future)

    def _settle(self, ticket: Ticket, usage: TokenUsage, status: UsageStatus,
                error_code: str | None, timings: Timings | None) -> None:
        try:
            self.platform.settle(ticket.request_id, ticket.key.id, self.model_name, usage,
                                 status=status, reservation=ticket.reservation,
                                 error_code=error_code, timings=timings,
                                 guardrail=ticket.guardrail or None,
                                 http_request_id=ticket.http_request_id)
        except Exception:  # the request is over either way; the log says what was lost
            logger.exception("could not settle %s (key %s): %s prompt + %s completion tokens",
                             ticket.request_id, ticket.key.id, usage.prompt_tokens,
                             usage.completion_tokens)
            return
        logger.info("settled %s key=%s user=%s status=%s prompt=%d cached=%d completion=%d",
                     ticket.request_id, ticket.key.id, ticket.end_user, status.value,
                     usage.prompt_tokens, usage.cached_tokens, usage.completion_tokens)

    async def close(self, timeout_s: float = 5.0) -> None:
        """At shutdown, after the engine stopped: let every request settle, then flush the ledger.

        A request still open after `timeout_s` (its handler never reached `settle`) is recorded
        as aborted at zero tokens, so no admitted request goes without its row.
        """
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                await self._has_none_open.wait()
        for ticket in list(self._open.values()):
            if not ticket.is_settled:
                logger.error("request %s never settled; recording it as aborted", ticket.request_id)
                await self.settle(ticket, NO_USAGE, status=UsageStatus.ABORTED,
                                  error_code="unsettled_at_shutdown")
        if self._settling:
            await asyncio.gather(*self._settling, return_exceptions=True)
        await self.run(self.platform.close)
        self._executor.shutdown(wait=True)


def _refusal(decision: AdmissionDecision) -> APIError:
    headers = decision.headers()
    if decision.retry_after_s is None:  # e.g. one request larger than the key's tpm
        headers["x-should-retry"] = "false"
    message = decision.message or "Request refused by the key's limits."
    if decision.code == "insufficient_quota":
        headers["x-should-retry"] = "false"
        return QuotaExceeded(message, headers=headers)
    error = RateLimited(message, headers=headers)
    if decision.limit is not None:
        error.error_type = decision.limit.value  # OpenAI's type: "requests" or "tokens"
    return error
