"""build_app(config, engine, admission): the FastAPI app around a running engine and the
platform; serve(config): bind the port at once, load the model in the background, serve until
SIGTERM/SIGINT, drain, exit 0.

Lifecycle (`api/lifecycle.py` answers for the phases without an API app):
1. The platform store opens and the model path is checked: a bad one fails before the port binds.
2. uvicorn binds; the front door answers 503 `model_loading` while the model loads on a thread.
3. Loaded: `build_app` is made, its lifespan starts the engine loop, the front door opens.
4. SIGTERM: draining. The port stays open: /health and new requests get 503 `server_draining`
   with Retry-After while in-flight requests finish (at most `drain_timeout_s`, then the engine
   aborts them, each billed for what ran).
5. Then uvicorn closes the port; the app's lifespan stops the engine, waits for every admitted
   request to settle and closes the platform, which flushes the ledger; the process exits 0.
A signal while loading skips to 5 at once; a second signal during a drain ends it early.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from types import FrameType
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit

import uvicorn
from fastapi import FastAPI

from flintlm import env
from flintlm.api.deps import Admission, ServingState
from flintlm.api.errors import install_error_handlers
from flintlm.api.lifecycle import FrontDoor, Phase
from flintlm.api.middleware import RateLimitHeaders
from flintlm.api.request_id import RequestIds
from flintlm.api.routes import admin, chat, completions, health, models, tokenize, usage
from flintlm.observability.logging import configure as configure_logging
from flintlm.observability.metrics import Metrics

if TYPE_CHECKING:
    from flintlm.config import FlintConfig
    from flintlm.engine.async_engine import AsyncEngine
    from flintlm.platform.service import Platform

logger = logging.getLogger("flintlm.server")

# After the drain, how long uvicorn waits for connections still open (probes, a second signal's
# unfinished requests) before it cancels them.
_CLOSE_GRACE_S = 5
# Test hook: while this file does not exist, loading waits (the loading phase, held open).
HOLD_LOADING_VAR = "test_hold_loading_until"
_T = TypeVar("_T")


def build_app(config: FlintConfig, engine: AsyncEngine, admission: Admission) -> FastAPI:
    """The HTTP app; its lifespan starts the engine loop, and at the end drains the engine,
    settles what is left and closes the platform (`admission.close()` flushes the ledger)."""
    serving = ServingState(config, engine, Metrics(engine.stats, engine.model_name), admission,
                           created=int(time.time()))

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

    app = FastAPI(title="flintlm", summary="OpenAI-compatible LLM API", lifespan=lifespan)
    app.state.serving = serving
    install_error_handlers(app)
    app.add_middleware(RateLimitHeaders)
    app.add_middleware(RequestIds)  # outermost of the app's own: its errors carry the id too
    for module in (chat, completions, models, tokenize, usage, admin, health):
        app.include_router(module.router)
    return app


class _Launcher:
    """Loads the model on a thread while the front door answers 503, then puts the API app
    behind it; at shutdown ends the API app's lifespan (or, never loaded, closes the platform)."""

    def __init__(self, config: FlintConfig, platform: Platform) -> None:
        self.config = config
        self.platform = platform
        self.front = FrontDoor(self.shutdown)
        self.load_error: BaseException | None = None
        self._loading: asyncio.Task[None] | None = None
        self._stop_loading = threading.Event()
        self.is_loader_running = False
        self._engine: AsyncEngine | None = None
        self._app_lifespan: AbstractAsyncContextManager[Any] | None = None

    def start_loading(self) -> None:
        self.is_loader_running = True  # until the loader thread ends, whatever ends it
        self._loading = asyncio.create_task(self._load_and_open())

    async def _load_and_open(self) -> None:
        try:
            engine = await _on_daemon_thread(self._load)
        except Exception as exc:  # noqa: BLE001 - any failure ends the server, naming it
            logger.error("the model failed to load: %s", exc)
            self.load_error = exc
            return
        admission = Admission(self.platform, model_name=engine.model_name,
                              max_model_len=engine.max_model_len,
                              static_key=self.config.server.api_key)
        app = build_app(self.config, engine, admission)
        self._engine = engine
        app_lifespan = app.router.lifespan_context(app)
        await app_lifespan.__aenter__()
        self._app_lifespan = app_lifespan
        self.front.open(app)
        logger.info("ready: serving %s", engine.model_name)

    def _load(self) -> AsyncEngine:  # on the loader thread
        from flintlm.engine.async_engine import AsyncEngine

        try:
            hold_path = env.lookup(HOLD_LOADING_VAR)
            while hold_path and not os.path.exists(hold_path):
                if self._stop_loading.wait(0.05):
                    raise _LoadingStopped
            started_s = time.monotonic()
            # A progress bar is for people reading text logs, not for JSON log collectors.
            is_text = self.config.server.log_format == "text"
            engine = AsyncEngine.from_config(self.config, progress=is_text)
            logger.info("model loaded in %.1fs", time.monotonic() - started_s)
            return engine
        finally:
            self.is_loader_running = False

    def begin_drain(self) -> None:
        # NOTE: the front door alone refuses new requests; those already in (a body still
        # arriving, a route still tokenizing) are served. The app's own draining state is set
        # by its lifespan's end, once nothing is in flight.
        self.front.begin_drain(self.config.server.drain_timeout_s)

    async def abort_in_flight(self) -> None:
        if self._engine is not None:
            await self._engine.shutdown(drain_timeout_s=0)

    async def shutdown(self) -> None:
        """Stop loading (a load in progress is left to die with the process); drain the engine,
        settle and flush the ledger through the API app's lifespan, or close the platform."""
        self._stop_loading.set()
        if self._loading is not None and not self._loading.done():
            logger.info("stopped while the model was loading")
            self._loading.cancel()
        if self._app_lifespan is not None:
            await self._app_lifespan.__aexit__(None, None, None)
        else:
            await asyncio.to_thread(self.platform.close)


class _LoadingStopped(Exception):
    """The server stopped before the model was loaded."""


async def _on_daemon_thread(function: Callable[[], _T]) -> _T:
    """`function()` on a daemon thread: unlike the loop's executor, a process that stops while
    it runs need not wait for it (a model can take minutes to load)."""
    loop = asyncio.get_running_loop()
    result: asyncio.Future[_T] = loop.create_future()

    def deliver(value: _T | None, error: BaseException | None) -> None:
        if result.done():  # cancelled: the server stopped
            return
        if error is not None:
            result.set_exception(error)
        else:
            result.set_result(value)  # type: ignore[arg-type]

    def run() -> None:
        value, error = None, None
        try:
            value = function()
        except BaseException as exc:  # noqa: BLE001 - handed to the awaiting task
            error = exc
        try:
            loop.call_soon_threadsafe(deliver, value, error)
        except RuntimeError:  # the loop is closed: nobody waits any more
            pass

    threading.Thread(target=run, name="flintlm-loader", daemon=True).start()
    return await result


class _DrainingServer(uvicorn.Server):
    """uvicorn, with the model loaded after the port is bound, and a first SIGTERM/SIGINT that
    drains with the port open instead of closing it."""

    def __init__(self, config: uvicorn.Config, launcher: _Launcher) -> None:
        super().__init__(config)
        self.launcher = launcher
        self._is_drain_logged = False

    async def startup(self, sockets: list | None = None) -> None:  # type: ignore[type-arg]
        await super().startup(sockets)
        if self.started and not self.should_exit:
            self.launcher.start_loading()

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # NOTE: a signal handler: only flags here (logging could deadlock on its own lock).
        if self.launcher.front.phase is Phase.READY:
            self.launcher.begin_drain()
            return
        super().handle_exit(sig, frame)

    async def on_tick(self, counter: int) -> bool:
        front = self.launcher.front
        if self.launcher.load_error is not None:
            self.should_exit = True
        elif front.phase is Phase.DRAINING and not self.should_exit:
            if not self._is_drain_logged:
                self._is_drain_logged = True
                logger.info("draining: %d requests in flight, %.0fs at most",
                            front.num_in_flight, front.drain_time_left_s())
            if front.num_in_flight == 0:
                self.should_exit = True
            elif front.drain_time_left_s() == 0:
                logger.warning("drain timeout: aborting %d requests in flight",
                               front.num_in_flight)
                await self.launcher.abort_in_flight()
                self.should_exit = True
        return await super().on_tick(counter)


def serve(config: FlintConfig) -> None:
    """Open the platform store, bind the port, load the model, serve until a signal drains
    the server.

    Raises:
        ModelLoadError, ...: the model failed to load (after the port was bound).
    """
    from flintlm.loading.loader import resolve_model_path
    from flintlm.platform.service import Platform

    configure_logging(config.server.log_level, config.server.log_format)
    platform = Platform.from_config(config.platform)  # a bad store fails before the port binds
    try:
        resolve_model_path(config.model.model)  # and so does a missing model
        _log_key_mode(config, platform)
    except BaseException:
        platform.close()
        raise
    launcher = _Launcher(config, platform)
    uvicorn_config = uvicorn.Config(
        RequestIds(launcher.front), host=config.server.host, port=config.server.port,
        log_level=config.server.log_level, log_config=None, lifespan="on",
        timeout_graceful_shutdown=_CLOSE_GRACE_S,
    )
    server = _DrainingServer(uvicorn_config, launcher)
    # NOTE: after a graceful shutdown uvicorn re-raises the signal it caught under the handler
    # that was there before; a no-op one makes a completed drain exit 0 instead of dying by it.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: None)
    server.run()
    if launcher.load_error is not None:
        raise launcher.load_error
    if launcher.is_loader_running:
        # NOTE: stopped while loading: the load cannot be interrupted and the platform is closed;
        # end now rather than finish a load nobody will use (or race the interpreter's exit).
        logging.shutdown()
        os._exit(0)


def _log_key_mode(config: FlintConfig, platform: Platform) -> None:
    store = platform.db.engine.url.render_as_string(hide_password=True)
    redis_url = config.platform.redis_url
    limits = f"Redis at {urlsplit(redis_url).hostname}" if redis_url else "in-process"
    logger.info("platform store: %s; rate limits: %s", store, limits)
    is_configured = config.server.api_key is not None or platform.has_admin_key
    if not is_configured and not platform.keys.has_keys():
        logger.warning("no API key is configured (--api-key, --admin-key or `flintlm keys "
                       "create`): every request is served as 'anonymous' (dev mode)")
