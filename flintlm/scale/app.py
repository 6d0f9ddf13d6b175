"""The Ray Serve application of `flintlm serve --ray`, and the command that runs it.

Two deployments: `ingress` (the same FastAPI app as the single-process server: validation,
keys, limits, ledger, streaming, on the shared PostgreSQL + Redis store) and `engine` (N
replicas of the engine, each with its own KV cache, behind the prefix-aware router). Serve's
HTTP proxy fronts the ingress. SIGTERM/SIGINT drains: Serve lets ongoing requests finish (up to
--drain-timeout-s), the ingress settles and flushes the ledger, then Ray shuts down.
"""

from __future__ import annotations

import logging
import signal
import threading
from typing import TYPE_CHECKING, Any

import ray
from ray import serve
from ray.serve.config import HTTPOptions, RequestRouterConfig

from flintlm.observability.logging import configure as configure_logging
from flintlm.scale.engine_deployment import EngineReplica, board_name
from flintlm.scale.routing import ROUTER_CLASSES

if TYPE_CHECKING:
    from ray.serve import Application
    from ray.serve.handle import DeploymentHandle

    from flintlm.config import FlintConfig
    from flintlm.scale.remote_engine import InFlightGate

logger = logging.getLogger("flintlm.scale")

APP_NAME = "flintlm"
# NOTE: requests and streamed outputs are small and travel inline, never through the object
# store, so a local cluster's store is kept small instead of taking 30% of RAM.
_LOCAL_OBJECT_STORE_BYTES = 256 << 20
_SHUTDOWN_GRACE_S = 10.0  # Serve's grace beyond the drain, for the ingress to settle


@serve.ingress()
class Ingress:
    """The HTTP ingress: `server.build_app` over a `RemoteEngine` on the engine deployment."""

    async def __init__(self, config: FlintConfig,  # type: ignore[misc]  # Serve awaits it
                       engine: DeploymentHandle) -> None:
        from flintlm.api.admission import Admission
        from flintlm.loading.loader import load_tokenizer
        from flintlm.platform.service import Platform
        from flintlm.scale.metrics import ReplicaBoard, ReplicaCollector
        from flintlm.scale.remote_engine import InFlightGate, RemoteEngine, ReplicaHeader
        from flintlm.server import build_app

        configure_logging(config.server.log_level, config.server.log_format)
        platform = Platform.from_config(config.platform)
        info = await engine.info.remote()
        max_replicas = config.scale.max_replicas or config.scale.replicas
        board = ReplicaBoard(config.platform.redis_url or "", board_name(APP_NAME))
        remote = RemoteEngine(engine, load_tokenizer(config.model.model), info, board,
                              max_in_flight=info.max_waiting * max_replicas)
        admission = Admission(platform, model_name=remote.model_name,
                              max_model_len=remote.max_model_len,
                              static_key=config.server.api_key, limits=config.limits)
        app = build_app(config, remote, admission)  # type: ignore[arg-type]
        app.state.serving.metrics.registry.register(
            ReplicaCollector(lambda: remote.replicas, remote.model_name))
        app.add_middleware(ReplicaHeader)
        self._app = app
        self._gate = InFlightGate(app)

    def __serve_build_asgi_app__(self) -> InFlightGate:
        return self._gate

    async def drain(self, timeout_s: float) -> int:
        """Refuse new requests (503 `server_draining`), wait up to `timeout_s` for those in
        flight to be answered; returns how many are still in flight."""
        self._app.state.serving.begin_drain(timeout_s)
        await self._gate.wait_idle(timeout_s)
        return self._gate.num_in_flight


def build_application(config: FlintConfig) -> Application:
    """The ingress bound to the engine deployment, as `config.scale` sizes and routes them."""
    scale = config.scale
    drain_s = config.server.drain_timeout_s
    router = RequestRouterConfig(
        request_router_class=ROUTER_CLASSES[scale.router],  # type: ignore[arg-type]
        request_router_kwargs=({} if scale.router == "pow2"
                               else {"imbalanced_threshold": scale.imbalanced_threshold}))
    sizing: dict[str, Any] = {"num_replicas": scale.replicas}
    if scale.max_replicas is not None:
        sizing = {"autoscaling_config": {
            "min_replicas": scale.min_replicas, "max_replicas": scale.max_replicas,
            "initial_replicas": scale.replicas,
            # Queue length: more requests per replica than its batch holds -> scale out.
            "target_ongoing_requests": config.scheduler.max_num_seqs}}
    engine = serve.deployment(
        name="engine", ray_actor_options={"num_cpus": scale.replica_num_cpus},
        max_ongoing_requests=config.scheduler.max_num_seqs + config.scheduler.max_waiting,
        graceful_shutdown_timeout_s=drain_s, graceful_shutdown_wait_loop_s=0.5,
        health_check_period_s=2.0, request_router_config=router, **sizing)(EngineReplica)
    ingress = serve.deployment(
        name="ingress", num_replicas=1, ray_actor_options={"num_cpus": 0},
        max_ongoing_requests=100_000,  # admission and the engines' queues bound the load
        graceful_shutdown_timeout_s=drain_s + _SHUTDOWN_GRACE_S,
        graceful_shutdown_wait_loop_s=0.5)(Ingress)
    return ingress.bind(config, engine.bind(config, APP_NAME))


def serve_on_ray(config: FlintConfig) -> None:
    """Join (or start) a Ray cluster, run the app until SIGTERM/SIGINT, drain, shut down."""
    configure_logging(config.server.log_level, config.server.log_format)
    scale = config.scale
    if scale.ray_address is not None:
        ray.init(address=scale.ray_address, logging_level=logging.WARNING)
    else:
        ray.init(num_cpus=scale.ray_num_cpus, include_dashboard=False,
                 object_store_memory=_LOCAL_OBJECT_STORE_BYTES, logging_level=logging.WARNING)
    stop = threading.Event()
    try:
        logger.info("ray cluster at %s", ray.get_runtime_context().gcs_address)
        serve.start(http_options=HTTPOptions(host=config.server.host, port=config.server.port))
        serve.run(build_application(config), name=APP_NAME, route_prefix="/")
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
        logger.info("ready: %d engine replicas behind http://%s:%d (router: %s)",
                    scale.replicas, config.server.host, config.server.port, scale.router)
        while not stop.wait(0.5):  # a timed wait, so the signal handler gets to run
            pass
        drain_s = config.server.drain_timeout_s
        logger.info("draining: in-flight requests have %.0fs to finish", drain_s)
        # NOTE: Serve's shutdown stops its proxy at once, cutting open streams; so the ingress
        # drains first (one ingress replica: `build_application` runs one).
        num_left = serve.get_app_handle(APP_NAME).drain.remote(drain_s).result(
            timeout_s=drain_s + _SHUTDOWN_GRACE_S)
        if num_left:
            logger.warning("drain timeout: %d requests still in flight are cut off", num_left)
    finally:
        if scale.ray_address is not None:
            serve.delete(APP_NAME)  # a shared cluster: only our app
        else:
            serve.shutdown()
        ray.shutdown()
    logger.info("stopped")
