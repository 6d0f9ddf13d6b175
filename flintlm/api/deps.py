"""Preconditions of the HTTP routes as `Annotated` dependencies.

`Credentials` is the bearer secret as sent (not checked yet, so a generation route can validate
its parameters before it authenticates); `AuthedKey` resolves it to a key (401); `EngineDep`
hands out the engine (503 while draining); `AdmissionDep` is `api/admission.py`'s `Admission`
bound to one HTTP request, so its `x-ratelimit-*` headers reach the response.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated

from fastapi import Depends, Header, Request
from starlette.datastructures import State

from flintlm.api.admission import Admission, Ticket
from flintlm.api.errors import ModelNotFound, ServiceUnavailable
from flintlm.api.session_cookie import CONSOLE_HEADER, COOKIE_NAME, SessionLookup
from flintlm.platform.keys import KeyRecord

if TYPE_CHECKING:
    from flintlm.config import FlintConfig
    from flintlm.engine.async_engine import AsyncEngine
    from flintlm.engine.request import SamplingParams
    from flintlm.observability.metrics import Metrics
    from flintlm.platform.service import Platform
    from flintlm.safety.pipeline import Guardrails, RequestGuard

RATE_LIMIT_HEADERS_STATE = "ratelimit_headers"  # request.state attribute read by the middleware


@dataclass(frozen=True)
class RequestAdmission:
    """`Admission` bound to one HTTP request, so that its `x-ratelimit-*` headers reach the
    response, whatever it turns out to be (JSON, SSE, or an error after admission)."""

    admission: Admission
    state: State
    engine: AsyncEngine

    async def admit(self, key: KeyRecord, request_id: str, prompts: list[list[int]],
                    params: SamplingParams, end_user: str | None = None, *,
                    cache_salt: str | None = None, prompt_param: str = "prompt",
                    guard: RequestGuard | None = None) -> Ticket:
        """`Admission.admit`, with the engine's queue as the room left; `guard`'s decisions go
        to the request's ledger row."""
        ticket = await self.admission.admit(key, request_id, prompts, params, end_user,
                                            cache_salt=cache_salt, prompt_param=prompt_param,
                                            has_room=self.engine.has_room,
                                            guardrail=None if guard is None else guard.decisions)
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
    guardrails: Guardrails
    console_sessions: SessionLookup | None = None  # None: the console is off
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
    return request.app.state.serving


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


def credentials(request: Request, authorization: Annotated[str | None, Header()] = None,
                x_api_key: Annotated[str | None, Header()] = None) -> str | None:
    """The secret of `Authorization: Bearer <key>` or, as Anthropic's clients send it,
    `x-api-key`; else that of the web console's session (`api/session_cookie.py`), which counts
    only on a request that sends neither and carries `x-flintlm-console: 1`; else None."""
    if authorization is not None or x_api_key is not None:
        return bearer_secret(authorization) or x_api_key
    sessions = get_serving(request).console_sessions
    if sessions is None or request.headers.get(CONSOLE_HEADER) != "1":
        return None
    session = sessions.get(request.cookies.get(COOKIE_NAME))
    return None if session is None else session.secret


Credentials = Annotated[str | None, Depends(credentials)]


async def authenticate(serving: Serving, secret: Credentials) -> KeyRecord:
    return await serving.admission.authenticate(secret)


AuthedKey = Annotated[KeyRecord, Depends(authenticate)]


def get_admission(serving: Serving, request: Request) -> RequestAdmission:
    return RequestAdmission(serving.admission, request.state, serving.engine)


AdmissionDep = Annotated[RequestAdmission, Depends(get_admission)]


def check_model(requested: str | None, engine: AsyncEngine) -> None:
    """The `model` field must name the served model (or be left out)."""
    if requested is not None and requested != engine.model_name:
        raise ModelNotFound(f"the model {requested!r} does not exist; this server serves "
                            f"{engine.model_name!r}", param="model")
