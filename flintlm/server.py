"""build_app(config, engine): the FastAPI app around a running engine; serve(config): load the
model, then run uvicorn until SIGTERM/SIGINT, draining in-flight requests before exiting 0.

Drain order: the signal marks the app draining (new requests get 503, /health 503); uvicorn stops
accepting connections and waits up to `drain_timeout_s` for open responses; the lifespan then
shuts the engine down, aborting whatever is left, and the process exits 0.
"""

from __future__ import annotations

import signal
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from types import FrameType
from typing import TYPE_CHECKING

import uvicorn
from fastapi import FastAPI

from flintlm.api.deps import Admission, ServingState
from flintlm.api.errors import install_error_handlers
from flintlm.api.routes import chat, completions, health, models, tokenize
from flintlm.observability.logging import configure as configure_logging
from flintlm.observability.metrics import Metrics

if TYPE_CHECKING:
    from flintlm.config import FlintConfig
    from flintlm.engine.async_engine import AsyncEngine


def build_app(config: FlintConfig, engine: AsyncEngine, admission: Admission | None = None
              ) -> FastAPI:
    """The HTTP app; its lifespan starts the engine loop and shuts it down (the drain)."""
    serving = ServingState(config, engine, Metrics(engine.stats, engine.model_name),
                           admission or Admission(), created=int(time.time()))

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        engine.start()
        try:
            yield
        finally:
            serving.begin_drain(config.server.drain_timeout_s)
            await engine.shutdown(drain_timeout_s=serving.drain_time_left_s())

    app = FastAPI(title="flintlm", summary="OpenAI-compatible LLM API", lifespan=lifespan)
    app.state.serving = serving
    install_error_handlers(app)
    for module in (chat, completions, models, tokenize, health):
        app.include_router(module.router)
    return app


class _DrainingServer(uvicorn.Server):
    """uvicorn's server, telling the app the moment a shutdown signal starts the drain."""

    def __init__(self, config: uvicorn.Config, serving: ServingState, drain_timeout_s: float):
        super().__init__(config)
        self.serving = serving
        self.drain_timeout_s = drain_timeout_s

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self.serving.begin_drain(self.drain_timeout_s)
        super().handle_exit(sig, frame)


def serve(config: FlintConfig) -> None:
    """Load the model (with a progress bar), then serve until a signal drains the server."""
    from flintlm.engine.async_engine import AsyncEngine

    configure_logging(config.server.log_level)
    engine = AsyncEngine.from_config(config, progress=True)
    app = build_app(config, engine)
    uvicorn_config = uvicorn.Config(
        app, host=config.server.host, port=config.server.port,
        log_level=config.server.log_level, timeout_graceful_shutdown=config.server.drain_timeout_s,
    )
    server = _DrainingServer(uvicorn_config, app.state.serving, config.server.drain_timeout_s)
    # NOTE: after a graceful shutdown uvicorn re-raises the signal it caught under the handler
    # that was there before; a no-op one makes a completed drain exit 0 instead of dying by it.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: None)
    server.run()
