"""Preconditions of the HTTP routes as `Annotated` dependencies, and the platform as they use it.

`AuthedKey` resolves the caller's key (401), `EngineDep` hands out the engine (503 while
draining), `AdmissionDep` admits a tokenized request (403 for a model the key may not use, 429
over a limit) and returns the `Ticket` whose `settle` writes the request's one ledger row.
`Admission` runs every platform call (DB, Redis) on its own worker threads, never on the event
loop, and at shutdown waits for every admitted request to settle before it closes the ledger.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

from fastapi import Depends, Header, Request
from starlette.datastructures import State

from flintlm.api.errors import (
    APIError,
    AuthenticationFailed,
    ModelNotFound,
    PermissionDenied,
    QuotaExceeded,
    RateLimited,
    ServiceUnavailable,
)
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
    from flintlm.config import FlintConfig
    from flintlm.engine.async_engine import AsyncEngine
    from flintlm.engine.request import SamplingParams, Usage
    from flintlm.observability.metrics import Metrics
    from flintlm.platform.limits import AdmissionDecision, Reservation

logger = logging.getLogger("flintlm.api")

RATE_LIMIT_HEADERS_STATE = "ratelimit_headers"  # request.state attribute read by the middleware
_T = TypeVar("_T")


@dataclass
class Ticket:
    """One admitted API request; `settle` records its usage once, whatever path ends it.

    `cache_salt` is the prefix-cache salt the engine must get: the key's tenant, narrowed by the
    client's `cache_salt`. `created_s` (monotonic) is where the ledger's timings start.
    `http_request_id` is the HTTP request's `x-request-id`, kept for the ledger row.
    """

    admission: Admission
    request_id: str
    key: KeyRecord
    cache_salt: str
    end_user: str | None = None
    created_s: float = field(default_factory=time.monotonic)
    reservation: Reservation | None = None
    ratelimit_headers: dict[str, str] = field(default_factory=dict)
    http_request_id: str | None = field(default_factory=current_request_id)
    is_settled: bool = field(default=False, init=False)

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
                 static_key: str | None = None, max_workers: int = 8) -> None:
        self.platform = platform
        self.model_name = model_name
        self.max_model_len = max_model_len
        self._static_key = static_key
        self._is_key_required = static_key is not None or platform.has_admin_key
        # Its threads log and settle in the calling request's context (its request id).
        self._executor = ContextExecutor(max_workers, thread_name_prefix="flintlm-platform")
        self._open: dict[str, Ticket] = {}  # admitted, not settled yet (touched on the loop only)
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
                    cache_salt: str | None = None) -> Ticket:
        """Admit a tokenized request, reserving `prompt + max_tokens * n` tokens, or raise.

        A refused request (403, 429, 503) gets its ledger row at zero tokens before the error.
        """
        ticket = Ticket(self, request_id, key, key.cache_salt(cache_salt), end_user)
        self._open[request_id] = ticket
        if not key.is_model_allowed(self.model_name):
            await self._reject(ticket, PermissionDenied.default_code)
            raise PermissionDenied(f"The key {key.id} may not use the model {self.model_name!r}.",
                                   param="model")
        num_prompt = sum(len(prompt) for prompt in prompts)
        # NOTE: parameters are validated after admission (a bad one is a 400 and a rejected
        # row); here a negative max_tokens only must not make a negative reservation.
        num_completion = max(1, params.n) * sum(
            max(0, self.max_model_len - len(prompt) if params.max_tokens is None
                else params.max_tokens) for prompt in prompts)
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

    async def settle(self, ticket: Ticket, usage: Usage, *, status: UsageStatus,
                     error_code: str | None = None, timings: Timings | None = None) -> None:
        """Write the ticket's ledger row and release its reservation, once; never raises."""
        if ticket.is_settled:
            return
        ticket.is_settled = True
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self._executor, functools.partial(
            self._settle, ticket, usage, status, error_code, timings))
        self._settling.add(future)

        def done(_: asyncio.Future[None]) -> None:
            self._settling.discard(future)
            self._open.pop(ticket.request_id, None)

        future.add_done_callback(done)
        # NOTE: shielded, so a cancelled handler (client gone, shutdown) still gets its row.
        await asyncio.shield(future)

    def _settle(self, ticket: Ticket, usage: Usage, status: UsageStatus, error_code: str | None,
                timings: Timings | None) -> None:
        try:
            self.platform.settle(ticket.request_id, ticket.key.id, self.model_name, usage,
                                 status=status, reservation=ticket.reservation,
                                 error_code=error_code, timings=timings,
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
        deadline = time.monotonic() + timeout_s
        while self._open and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
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


@dataclass(frozen=True)
class RequestAdmission:
    """`Admission` bound to one HTTP request, so that its `x-ratelimit-*` headers reach the
    response, whatever it turns out to be (JSON, SSE, or an error after admission)."""

    admission: Admission
    state: State

    async def admit(self, key: KeyRecord, request_id: str, prompts: list[list[int]],
                    params: SamplingParams, end_user: str | None = None, *,
                    cache_salt: str | None = None) -> Ticket:
        ticket = await self.admission.admit(key, request_id, prompts, params, end_user,
                                            cache_salt=cache_salt)
        setattr(self.state, RATE_LIMIT_HEADERS_STATE, ticket.ratelimit_headers)
        return ticket


@dataclass
class ServingState:
    """What the routes share, held on `app.state.serving`; built once by `server.build_app`."""

    config: FlintConfig
    engine: AsyncEngine
    metrics: Metrics
    admission: Admission
    created: int
    is_draining: bool = False
    drain_deadline_s: float | None = None

    @property
    def platform(self) -> Platform:
        return self.admission.platform

    def begin_drain(self, timeout_s: float) -> None:
        """Refuse new work from now on; in-flight requests may run `timeout_s` more seconds."""
        if not self.is_draining:
            self.is_draining = True
            self.drain_deadline_s = time.monotonic() + timeout_s

    def drain_time_left_s(self) -> float:
        if self.drain_deadline_s is None:
            return 0.0
        return max(0.0, self.drain_deadline_s - time.monotonic())


def get_serving(request: Request) -> ServingState:
    return request.app.state.serving  # type: ignore[no-any-return]


Serving = Annotated[ServingState, Depends(get_serving)]


def get_engine(serving: Serving) -> AsyncEngine:
    if serving.is_draining:
        raise ServiceUnavailable("the server is shutting down", code="server_draining")
    return serving.engine


EngineDep = Annotated["AsyncEngine", Depends(get_engine)]


def bearer_secret(authorization: str | None) -> str | None:
    """The secret of an `Authorization: Bearer <secret>` header; None when there is none."""
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


async def authenticate(
    serving: Serving, authorization: Annotated[str | None, Header()] = None
) -> KeyRecord:
    return await serving.admission.authenticate(bearer_secret(authorization))


AuthedKey = Annotated[KeyRecord, Depends(authenticate)]


def get_admission(serving: Serving, request: Request) -> RequestAdmission:
    return RequestAdmission(serving.admission, request.state)


AdmissionDep = Annotated[RequestAdmission, Depends(get_admission)]


def check_model(requested: str | None, engine: AsyncEngine) -> None:
    """The `model` field must name the served model (or be left out)."""
    if requested is not None and requested != engine.model_name:
        raise ModelNotFound(f"the model {requested!r} does not exist; this server serves "
                            f"{engine.model_name!r}", param="model")
