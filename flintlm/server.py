"""build_app(config, engine, admission): the FastAPI app around a running engine and the
platform; serve(config): bind the port at once, load the model while answering 503, serve until
SIGTERM/SIGINT, drain, exit 0.

Lifecycle (`api/lifecycle.py` answers for the phases without an API app):
1. The platform store opens and the model path is checked: a bad one fails before the port binds.
2. The port binds; while the main thread loads the model, a server on a thread answers on it
   (503 `model_loading`).
3. Loaded: `build_app` is made; uvicorn serves the front door, now open, on the same socket and
   the app's lifespan starts the engine loop.
4. SIGTERM: draining. The port stays open: /health and new requests get 503 `server_draining`
   with Retry-After while in-flight requests finish (at most `drain_timeout_s`, then the engine
   aborts them, each billed for what ran).
5. Then uvicorn closes the port; the app's lifespan stops the engine, waits for every admitted
   request to settle and closes the platform, which flushes the ledger; the process exits 0.
A signal while loading stops the load and exits 0; a second signal during a drain ends it early.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from types import FrameType
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import uvicorn
from fastapi import FastAPI

from flintlm import env
from flintlm.api.admission import Admission
from flintlm.api.body_limit import BodyTooLarge
from flintlm.api.deps import ServingState
from flintlm.api.errors import install_error_handlers
from flintlm.api.lifecycle import FrontDoor, Phase
from flintlm.api.middleware import RateLimitHeaders
from flintlm.api.request_id import RequestIds
from flintlm.api.routes import (
    admin,
    chat,
    completions,
    health,
    messages,
    models,
    moderations,
    prices,
    request_log,
    responses,
    stored_completions,
    tokenize,
    usage,
)
from flintlm.console import api as console_api
from flintlm.console import routes as console_routes
from flintlm.console.routes import ConsoleHeaders
from flintlm.console.session import ConsoleSessions
from flintlm.observability.logging import configure as configure_logging
from flintlm.observability.metrics import Metrics

if TYPE_CHECKING:
    from flintlm.config import FlintConfig
    from flintlm.engine.async_engine import AsyncEngine
    from flintlm.platform.service import Platform
    from flintlm.safety.moderation import Moderator
    from flintlm.safety.pipeline import Guardrails

logger = logging.getLogger("flintlm.server")

# After the drain, how long uvicorn waits for connections still open (probes, a second signal's
# unfinished requests) before it cancels them.
_CLOSE_GRACE_S = 5
# Test hook: while this file does not exist, loading waits (the loading phase, held open).
HOLD_LOADING_VAR = "test_hold_loading_until"


def build_app(config: FlintConfig, engine: AsyncEngine, admission: Admission,
              moderator: Moderator | None = None) -> FastAPI:
    """The HTTP app; its lifespan starts the engine loop, and at the end drains the engine,
    settles what is left and closes the platform (`admission.close()` flushes the ledger).
    `moderator` serves /v1/moderations; None builds the one `config.moderation` names."""
    if moderator is None:
        from flintlm.safety.moderation import build_moderator

        moderator = build_moderator(config)
    serving = ServingState(config, engine, Metrics(engine.stats, engine.model_name), admission,
                           created=int(time.time()),
                           guardrails=build_guardrails(config, moderator),
                           console_sessions=ConsoleSessions() if config.server.console else None)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        engine.start()
        try:
            yield
        finally:
            serving.begin_drain(config.server.drain_timeout_s)
            try:
                await engine.shutdown(drain_timeout_s=serving.drain_time_left_s())
            finally:
                await admission.close()
                moderator.close()

    app = FastAPI(title="flintlm", summary="OpenAI-compatible LLM API", lifespan=lifespan)
    app.state.serving = serving
    app.state.moderator = moderator
    install_error_handlers(app)
    app.add_middleware(RateLimitHeaders)
    app.add_middleware(BodyTooLarge, max_body_bytes=config.limits.max_body_bytes)
    app.add_middleware(RequestIds)  # outermost of the app's own: its errors carry the id too
    for module in (chat, stored_completions, completions, responses, messages, moderations,
                   models, tokenize, usage, prices, request_log, admin, health):
        app.include_router(module.router)
    if config.server.console:
        app.include_router(console_routes.router)
        app.include_router(console_api.router)
        app.add_middleware(ConsoleHeaders)  # outside RequestIds: its errors get the headers too
    return app


class _Launcher:
    """Runs the API app's lifespan for the server that serves it: the engine loop starts on the
    server's event loop; at the end it drains, settles and flushes the ledger."""

    def __init__(self, app: FastAPI, engine: AsyncEngine) -> None:
        self.app = app
        self.engine = engine
        self._app_lifespan: AbstractAsyncContextManager[Any] | None = None

    async def startup(self) -> None:
        app_lifespan = self.app.router.lifespan_context(self.app)
        await app_lifespan.__aenter__()
        self._app_lifespan = app_lifespan
        logger.info("ready: serving %s", self.engine.model_name)

    async def shutdown(self) -> None:
        if self._app_lifespan is not None:
            await self._app_lifespan.__aexit__(None, None, None)


class _DrainingServer(uvicorn.Server):
    """uvicorn, with a first SIGTERM/SIGINT that drains with the port open instead of closing
    it; the serve ends once nothing is in flight (or the drain times out)."""

    def __init__(self, config: uvicorn.Config, front: FrontDoor, engine: AsyncEngine,
                 drain_timeout_s: float) -> None:
        super().__init__(config)
        self.front = front
        self.engine = engine
        self.drain_timeout_s = drain_timeout_s
        self._is_drain_logged = False

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # NOTE: a signal handler: only flags here (logging could deadlock on its own lock).
        # The front door alone refuses new requests; those already in (a body still arriving,
        # a route still tokenizing) are served. The app's own draining state is set by its
        # lifespan's end, once nothing is in flight.
        if self.front.phase is Phase.READY:
            self.front.begin_drain(self.drain_timeout_s)
            return
        super().handle_exit(sig, frame)  # a second signal: stop now

    async def on_tick(self, counter: int) -> bool:
        front = self.front
        if front.phase is Phase.DRAINING and not self.should_exit:
            if not self._is_drain_logged:
                self._is_drain_logged = True
                logger.info("draining: %d requests in flight, %.0fs at most",
                            front.num_in_flight, front.drain_time_left_s())
            if front.num_in_flight == 0:
                self.should_exit = True
            elif front.drain_time_left_s() == 0:
                logger.warning("drain timeout: aborting %d requests in flight",
                               front.num_in_flight)
                await self.engine.shutdown(drain_timeout_s=0)
                self.should_exit = True
        return await super().on_tick(counter)


class _LoadingStopped(Exception):
    """A signal arrived while the model was loading."""


def _stop_loading(sig: int, frame: FrameType | None) -> None:
    raise _LoadingStopped


def _load_while_answering(config: FlintConfig, sock: socket.socket
                          ) -> tuple[AsyncEngine, Moderator] | None:
    """Load the model on this (the main) thread while a server on another thread answers on
    `sock` for the loading phase; None when a signal stopped the load.

    NOTE: the load stays on the main thread: loading on another one left every later engine
    step ~10x slower (the OpenMP runtimes keep per-thread state), and signals reach only the
    main thread, where a handler can interrupt the load at once.
    """
    from flintlm.engine.async_engine import AsyncEngine
    from flintlm.safety.moderation import build_moderator

    loading_server = uvicorn.Server(uvicorn.Config(
        RequestIds(FrontDoor()), log_level=config.server.log_level, log_config=None,
        lifespan="off", timeout_graceful_shutdown=_CLOSE_GRACE_S))
    # The loading server gets a duplicate: it closes its socket when it stops; ours stays bound.
    thread = threading.Thread(target=loading_server.run, kwargs={"sockets": [sock.dup()]},
                              name="flintlm-loading-server", daemon=True)
    previous = {sig: signal.signal(sig, _stop_loading) for sig in (signal.SIGTERM, signal.SIGINT)}
    thread.start()
    try:
        hold_path = env.lookup(HOLD_LOADING_VAR)
        while hold_path and not os.path.exists(hold_path):
            time.sleep(0.05)
        started_s = time.monotonic()
        # A progress bar is for people reading text logs, not for JSON log collectors.
        engine = AsyncEngine.from_config(config, progress=config.server.log_format == "text")
        moderator = build_moderator(config)  # a guard model, if any, loads in this phase too
        logger.info("model loaded in %.1fs", time.monotonic() - started_s)
        return engine, moderator
    except _LoadingStopped:
        logger.info("stopped while the model was loading")
        return None
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        loading_server.should_exit = True
        thread.join()


def build_guardrails(config: FlintConfig, moderator: Moderator | None) -> Guardrails:
    """The policies of `--guardrails-file`, compiled against the moderation backend.

    Raises:
        ValueError: the file is unreadable or a policy is malformed (named in the message).
    """
    from flintlm.safety.pipeline import Guardrails
    from flintlm.safety.policy import load_policies

    return Guardrails(load_policies(config.moderation.guardrails_file), moderator)


def serve(config: FlintConfig) -> None:
    """Open the platform store, bind the port, load the model (answering 503 meanwhile), serve
    until a signal drains the server.

    Raises:
        ModelLoadError, ...: the model failed to load (after the port was bound).
    """
    from flintlm.loading.loader import resolve_model_path
    from flintlm.platform.service import Platform
    from flintlm.safety.policy import load_policies

    configure_logging(config.server.log_level, config.server.log_format)
    load_policies(config.moderation.guardrails_file)  # a bad file fails before anything loads
    # NOTE: after a graceful shutdown uvicorn re-raises the signal it caught under the handler
    # that was there before; a no-op one makes a completed drain exit 0 instead of dying by it.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: None)
    platform = Platform.from_config(config.platform)  # a bad store fails before the port binds
    try:
        resolve_model_path(config.model.model)  # and so does a missing model
        if config.moderation.guard_model is not None:
            resolve_model_path(config.moderation.guard_model)  # or guard model
        _log_key_mode(config, platform)
        front = FrontDoor()
        uvicorn_config = uvicorn.Config(
            RequestIds(front), host=config.server.host, port=config.server.port,
            log_level=config.server.log_level, log_config=None, lifespan="on",
            timeout_graceful_shutdown=_CLOSE_GRACE_S,
        )
        sock = uvicorn_config.bind_socket()
        loaded = _load_while_answering(config, sock)
    except BaseException:
        platform.close()
        raise
    if loaded is None:
        sock.close()
        platform.close()
        return
    engine, moderator = loaded
    admission = Admission(platform, model_name=engine.model_name,
                          max_model_len=engine.max_model_len, static_key=config.server.api_key,
                          limits=config.limits)
    app = build_app(config, engine, admission, moderator)
    launcher = _Launcher(app, engine)
    front.open(app, on_startup=launcher.startup, on_shutdown=launcher.shutdown)
    server = _DrainingServer(uvicorn_config, front, engine, config.server.drain_timeout_s)
    server.run(sockets=[sock])


def _log_key_mode(config: FlintConfig, platform: Platform) -> None:
    store = platform.db.engine.url.render_as_string(hide_password=True)
    redis_url = config.platform.redis_url
    limits = f"Redis at {urlsplit(redis_url).hostname}" if redis_url else "in-process"
    logger.info("platform store: %s; rate limits: %s", store, limits)
    is_configured = config.server.api_key is not None or platform.has_admin_key
    if not is_configured and not platform.keys.has_keys():
        logger.warning("no API key is configured (--api-key, --admin-key or `flintlm keys "
                       "create`): every request is served as 'anonymous' (dev mode)")
