"""build_app(config, engine, admission): the FastAPI app around a running engine and the
platform; serve(config): open the platform store, load the model, then run uvicorn until
SIGTERM/SIGINT, draining in-flight requests before exiting 0.

Drain order: the signal marks the app draining (new requests get 503, /health 503); uvicorn stops
accepting connections and waits up to `drain_timeout_s` for open responses; the lifespan then
shuts the engine down, aborting whatever is left, waits for every admitted request to settle and
closes the platform, which flushes the ledger; then the process exits 0.
"""

from __future__ import annotations

import logging
import signal
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from types import FrameType
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import uvicorn
from fastapi import FastAPI

from flintlm.api.admission import Admission
from flintlm.api.body_limit import BodyTooLarge
from flintlm.api.deps import ServingState
from flintlm.api.errors import install_error_handlers
from flintlm.api.middleware import RateLimitHeaders
from flintlm.api.routes import (
    admin,
    chat,
    completions,
    health,
    messages,
    models,
    moderations,
    responses,
    tokenize,
    usage,
)
from flintlm.observability.logging import configure as configure_logging
from flintlm.observability.metrics import Metrics

if TYPE_CHECKING:
    from flintlm.config import FlintConfig
    from flintlm.engine.async_engine import AsyncEngine
    from flintlm.platform.service import Platform
    from flintlm.safety.moderation import Moderator
    from flintlm.safety.pipeline import Guardrails

logger = logging.getLogger("flintlm.server")


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
                           guardrails=build_guardrails(config, moderator))

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
    for module in (chat, completions, responses, messages, moderations, models, tokenize, usage,
                   admin, health):
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


def build_guardrails(config: FlintConfig, moderator: Moderator | None) -> Guardrails:
    """The policies of `--guardrails-file`, compiled against the moderation backend.

    Raises:
        ValueError: the file is unreadable or a policy is malformed (named in the message).
    """
    from flintlm.safety.pipeline import Guardrails
    from flintlm.safety.policy import load_policies

    return Guardrails(load_policies(config.moderation.guardrails_file), moderator)


def serve(config: FlintConfig) -> None:
    """Open the platform store, load the model (with a progress bar), then serve until a
    signal drains the server."""
    from flintlm.engine.async_engine import AsyncEngine
    from flintlm.platform.service import Platform
    from flintlm.safety.moderation import build_moderator
    from flintlm.safety.policy import load_policies

    configure_logging(config.server.log_level)
    load_policies(config.moderation.guardrails_file)  # a bad file fails before anything loads
    platform = Platform.from_config(config.platform)  # a bad store fails before the model loads
    try:
        engine = AsyncEngine.from_config(config, progress=True)
        moderator = build_moderator(config)  # a bad --guard-model fails here, before the port
        _log_key_mode(config, platform)
    except BaseException:
        platform.close()
        raise
    admission = Admission(platform, model_name=engine.model_name,
                          max_model_len=engine.max_model_len, static_key=config.server.api_key,
                          limits=config.limits)
    app = build_app(config, engine, admission, moderator)
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


def _log_key_mode(config: FlintConfig, platform: Platform) -> None:
    store = platform.db.engine.url.render_as_string(hide_password=True)
    redis_url = config.platform.redis_url
    limits = f"Redis at {urlsplit(redis_url).hostname}" if redis_url else "in-process"
    logger.info("platform store: %s; rate limits: %s", store, limits)
    is_configured = config.server.api_key is not None or platform.has_admin_key
    if not is_configured and not platform.keys.has_keys():
        logger.warning("no API key is configured (--api-key, --admin-key or `flintlm keys "
                       "create`): every request is served as 'anonymous' (dev mode)")
