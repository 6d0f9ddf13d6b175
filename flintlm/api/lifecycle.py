"""The server's front door: an ASGI app in front of the API app that answers honestly while
there is no API app yet (the model loads) and once the server stops taking work (draining).

Phases: LOADING (the port is bound; `/health` and every request get 503 `model_loading` with
`Retry-After`) -> READY (requests pass to the API app, counted while in flight) -> DRAINING
(after SIGTERM: `/health` and new requests get 503 `server_draining` with `Retry-After` while
the ones in flight finish). `GET /health/live` answers 200 in every phase: the process lives.
It does not load, drain or stop anything itself; `server.py` moves it between phases.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Awaitable, Callable

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from flintlm.api.errors import RETRY_AFTER_S, error_body

LIVENESS_PATH = "/health/live"
Hook = Callable[[], Awaitable[None]]


class Phase(enum.Enum):
    LOADING = "loading"
    READY = "ready"
    DRAINING = "draining"


_REFUSALS = {
    Phase.LOADING: ("the model is loading; retry shortly", "model_loading"),
    Phase.DRAINING: ("the server is shutting down; retry on another server", "server_draining"),
}


class FrontDoor:
    """The ASGI app uvicorn serves. `open(app)` makes it READY; `begin_drain` makes it DRAINING."""

    def __init__(self) -> None:
        self.phase = Phase.LOADING
        self.num_in_flight = 0  # requests passed to the API app and not answered yet
        self._app: ASGIApp | None = None
        self._on_startup: Hook | None = None
        self._on_shutdown: Hook | None = None
        self._drain_deadline_s: float | None = None

    def open(self, app: ASGIApp, *, on_startup: Hook | None = None,
             on_shutdown: Hook | None = None) -> None:
        """Serve `app` from now on; the hooks run on uvicorn's lifespan startup and shutdown
        (the app's own lifespan: the front door speaks lifespan for it)."""
        self._app = app
        self._on_startup, self._on_shutdown = on_startup, on_shutdown
        if self.phase is Phase.LOADING:
            self.phase = Phase.READY

    def begin_drain(self, timeout_s: float) -> None:
        """Refuse new work; in-flight requests may run `timeout_s` more seconds."""
        if self.phase is not Phase.DRAINING:
            self.phase = Phase.DRAINING
            self._drain_deadline_s = time.monotonic() + timeout_s

    def drain_time_left_s(self) -> float:
        if self._drain_deadline_s is None:
            return 0.0
        return max(0.0, self._drain_deadline_s - time.monotonic())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if self.phase is Phase.READY and self._app is not None:
            self.num_in_flight += 1
            try:
                await self._app(scope, receive, send)
            finally:
                self.num_in_flight -= 1
        elif scope["type"] == "http" and scope["path"] == LIVENESS_PATH:
            await JSONResponse({"status": "alive"})(scope, receive, send)
        elif scope["type"] == "http":
            await self._refuse(scope, receive, send)
        else:  # a websocket: nothing of ours speaks it
            await send({"type": "websocket.close", "code": 1013})

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        message, code = _REFUSALS[self.phase]  # READY always has an app
        headers = {"Retry-After": str(RETRY_AFTER_S)}
        if self.phase is Phase.DRAINING:
            headers["Connection"] = "close"  # the next try should reach another server
        body = error_body(message, "server_error", None, code)
        await JSONResponse(body, status_code=503, headers=headers)(scope, receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    if self._on_startup is not None:
                        await self._on_startup()
                except Exception as exc:
                    await send({"type": "lifespan.startup.failed", "message": repr(exc)})
                    raise
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                try:
                    if self._on_shutdown is not None:
                        await self._on_shutdown()
                except Exception as exc:
                    await send({"type": "lifespan.shutdown.failed", "message": repr(exc)})
                    raise
                await send({"type": "lifespan.shutdown.complete"})
                return
