"""Preconditions of the HTTP routes as `Annotated` dependencies.

`AuthedKey` resolves the caller's key, `EngineDep` hands out the engine (503 while draining),
`AdmissionDep` admits a request once its token counts are known and returns the `Ticket` that
settles its usage exactly once. Today keys are one optional shared bearer key and admission lets
everything through; the platform (per-key auth, rate limits, quotas, ledger) plugs in here.
"""

from __future__ import annotations

import logging
import secrets
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated

from fastapi import Depends, Header, Request

from flintlm.api.errors import AuthenticationFailed, ModelNotFound, ServiceUnavailable
from flintlm.engine.request import SamplingParams, Usage

if TYPE_CHECKING:
    from flintlm.config import FlintConfig
    from flintlm.engine.async_engine import AsyncEngine
    from flintlm.observability.metrics import Metrics

logger = logging.getLogger("flintlm.api")


@dataclass(frozen=True)
class KeyInfo:
    """Who is calling: `key_id` is None when the server runs without keys."""

    key_id: str | None = None


@dataclass
class Ticket:
    """One admitted API request; `settle` records its usage once, whatever path ends it."""

    request_id: str
    key: KeyInfo
    end_user: str | None = None
    is_settled: bool = field(default=False, init=False)

    def settle(self, usage: Usage) -> None:
        if self.is_settled:
            return
        self.is_settled = True
        # The platform's ledger writes one row per request id here.
        logger.info("usage key=%s user=%s prompt=%d cached=%d completion=%d", self.key.key_id,
                    self.end_user, usage.prompt_tokens, usage.cached_tokens,
                    usage.completion_tokens)


class Admission:
    """Admits requests with their real token counts; rate limits and quotas raise 429 here."""

    async def admit(self, key: KeyInfo, request_id: str, prompts: list[list[int]],
                    params: SamplingParams, end_user: str | None = None) -> Ticket:
        return Ticket(request_id, key, end_user)


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


def authenticate(
    serving: Serving, authorization: Annotated[str | None, Header()] = None
) -> KeyInfo:
    expected = serving.config.server.api_key
    if expected is None:
        return KeyInfo()
    scheme, _, token = (authorization or "").partition(" ")
    if not token or scheme.lower() != "bearer":
        raise AuthenticationFailed("missing API key: send 'Authorization: Bearer <key>'")
    if not secrets.compare_digest(token.strip().encode(), expected.encode()):
        raise AuthenticationFailed("incorrect API key provided")
    return KeyInfo(key_id="default")


AuthedKey = Annotated[KeyInfo, Depends(authenticate)]


def get_admission(serving: Serving) -> Admission:
    return serving.admission


AdmissionDep = Annotated[Admission, Depends(get_admission)]


def check_model(requested: str | None, engine: AsyncEngine) -> None:
    """The `model` field must name the served model (or be left out)."""
    if requested is not None and requested != engine.model_name:
        raise ModelNotFound(f"the model {requested!r} does not exist; this server serves "
                            f"{engine.model_name!r}", param="model")
