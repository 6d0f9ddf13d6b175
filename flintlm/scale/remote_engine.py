"""The ingress's engine: the `AsyncEngine` surface the routes use (generate, abort, has_room,
tokenizer, model name, stats), served by the engine replicas through a Serve handle.

Each request's stream is one streaming handle call; the router picks its replica from the
request's prefix block hashes. `abort` (client gone, guardrail, shutdown) cancels the call,
which aborts the request on its replica and frees its KV blocks; the stream then ends with an
ABORT output, as the local engine's does. A call Serve cancels (it does when the client of the
HTTP request went away) raises `ClientDisconnected`. A replica that dies ends its streams with
an ERROR output carrying the usage delivered so far, so each request still settles once.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from ray import exceptions as ray_errors
from ray.serve.exceptions import RequestCancelledError

from flintlm.api.errors import ClientDisconnected
from flintlm.engine.request import (
    EngineDeadError,
    EngineOverloadedError,
    FinishReason,
    InvalidRequestError,
    RequestOutput,
    SamplingParams,
    Usage,
)
from flintlm.scale.metrics import PUBLISH_INTERVAL_S, ReplicaStats, summed
from flintlm.scale.protocol import RoutedRequest, prefix_block_hashes

if TYPE_CHECKING:
    from ray.serve.handle import DeploymentHandle

    from flintlm.engine.engine import EngineStats
    from flintlm.loading.tokenizer import Tokenizer
    from flintlm.scale.metrics import ReplicaBoard
    from flintlm.scale.protocol import ReplicaInfo

logger = logging.getLogger("flintlm.scale")

# The replicas that served the HTTP request being handled, for its `x-flintlm-replica` header
# (`ReplicaHeader` sets a fresh list per request; tasks copy the context, sharing the list).
served_by: contextvars.ContextVar[list[str] | None] = contextvars.ContextVar(
    "flintlm_served_by", default=None)

# How long a request whose client went away may take to abort and settle before it is cut.
_SETTLE_AFTER_DISCONNECT_S = 10.0
# What a dead or unreachable replica raises at its caller.
_REPLICA_LOST = (ray_errors.RayActorError, ray_errors.ActorUnavailableError)


class RemoteEngine:
    def __init__(self, handle: DeploymentHandle, tokenizer: Tokenizer, info: ReplicaInfo,
                 board: ReplicaBoard, max_in_flight: int) -> None:
        self._handle = handle.options(stream=True)
        self.tokenizer = tokenizer
        self.model_name = info.model_name
        self.max_model_len = info.max_model_len
        self.block_size = info.block_size
        self.max_in_flight = max_in_flight
        self.board = board
        self.replicas: dict[str, ReplicaStats] = {}  # the board's latest read
        self._calls: dict[str, Any] = {}  # request id -> its streaming call
        self._aborted: set[str] = set()
        self._has_no_calls = asyncio.Event()  # set while `_calls` is empty; shutdown waits
        self._has_no_calls.set()
        self._accepting = True
        self._poller: asyncio.Task[None] | None = None

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> None:
        if self._poller is None:
            self._poller = asyncio.get_running_loop().create_task(self._poll_board())

    async def shutdown(self, drain_timeout_s: float | None = None) -> None:
        """Stop accepting; let calls finish up to the timeout; cancel the rest."""
        self._accepting = False
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(drain_timeout_s or 0.0):
                await self._has_no_calls.wait()
        for request_id in list(self._calls):
            self.abort(request_id)
        if self._poller is not None:
            self._poller.cancel()
        with contextlib.suppress(Exception):
            await self.board.aclose()

    @property
    def num_in_flight(self) -> int:
        return len(self._calls)

    @property
    def failure(self) -> BaseException | None:
        return None  # a replica that dies is replaced; the deployment as a whole goes on

    @property
    def is_alive(self) -> bool:
        return True

    def has_room(self, num_requests: int) -> bool:
        return len(self._calls) + num_requests <= self.max_in_flight

    def stats(self) -> EngineStats:
        return summed(self.replicas)

    # -- requests --------------------------------------------------------------------------------

    async def generate(self, request_id: str, prompt_token_ids: list[int],
                       params: SamplingParams, *, priority: int = 0,
                       cache_salt: str | None = None) -> AsyncIterator[RequestOutput]:
        """As `AsyncEngine.generate`: input errors raise on the first `anext()`; leaving the
        iteration early cancels the call on the replica."""
        if params.n != 1:
            raise InvalidRequestError("the engine takes n=1; fan out n>1 above it", "n")
        if not self._accepting:
            raise EngineOverloadedError("the server is shutting down")
        if not self.has_room(1):
            raise EngineOverloadedError("too many requests are waiting; retry shortly")
        routed = RoutedRequest(request_id, prompt_token_ids, params, priority, cache_salt,
                               prefix_block_hashes(prompt_token_ids, self.block_size, cache_salt))
        call: Any = self._handle.generate.remote(routed)  # a DeploymentResponseGenerator
        self._calls[request_id] = call
        self._has_no_calls.clear()
        usage = Usage(len(prompt_token_ids), 0)
        is_finished = False
        try:
            async for replica_id, output in call:
                _note_replica(replica_id)
                usage = output.usage
                is_finished = output.finished
                yield output
                if is_finished:
                    return
        except (RequestCancelledError, asyncio.CancelledError):
            if request_id not in self._aborted:
                if _is_own_task_cancelled():
                    raise
                raise ClientDisconnected from None  # Serve cancelled the call
            is_finished = True
            yield RequestOutput(request_id, [], "", FinishReason.ABORT, usage)
        except _REPLICA_LOST as exc:
            is_finished = True
            logger.error("request %s: its engine replica was lost: %s", request_id, exc)
            yield RequestOutput(request_id, [], "", FinishReason.ERROR, usage,
                                error=f"engine replica lost: {type(exc).__name__}")
        except ray_errors.RayTaskError as exc:
            raise _engine_error(exc) from None
        finally:
            if not is_finished:
                call.cancel()
            self._calls.pop(request_id, None)
            self._aborted.discard(request_id)
            if not self._calls:
                self._has_no_calls.set()

    def abort(self, request_id: str) -> None:
        call = self._calls.get(request_id)
        if call is not None:
            self._aborted.add(request_id)
            call.cancel()

    async def _poll_board(self) -> None:
        while True:
            try:
                self.replicas = await self.board.read()
            except Exception:
                logger.warning("cannot read the replica board", exc_info=True)
            await asyncio.sleep(PUBLISH_INTERVAL_S)


def _is_own_task_cancelled() -> bool:
    """Whether a cancellation we did not ask for is our own task's (it goes on as such) rather
    than Serve cancelling the call, which is a client that went away.

    NOTE: Serve cancels a request's handle calls when it cancels the request itself, which it
    does when the client goes away, racing the `http.disconnect` that `InFlightGate` then
    reports; either way the request settles as `client_disconnected`.
    """
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


def _note_replica(replica_id: str) -> None:
    replicas = served_by.get()
    if replicas is not None and replica_id not in replicas:
        replicas.append(replica_id)


def _engine_error(exc: ray_errors.RayTaskError) -> BaseException:
    """The replica's own error (bad input, overloaded) as the local engine raises it."""
    cause = exc.cause
    engine_errors = InvalidRequestError | EngineOverloadedError | EngineDeadError
    return cause if isinstance(cause, engine_errors) else exc


class InFlightGate:
    """ASGI wrapper of the ingress app: counts the HTTP requests in flight (a drain waits for
    the last byte of each to leave before Serve's proxy goes away), and turns Serve's way of
    reporting a client that went away, cancelling the request's task, into the
    `http.disconnect` the app watches for, as uvicorn reports it (so the request settles as
    `client_disconnected`, not as cut by a shutdown)."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.num_in_flight = 0
        self._is_idle = asyncio.Event()
        self._is_idle.set()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        self.num_in_flight += 1
        self._is_idle.clear()
        try:
            await self._serve(scope, receive, send)
        finally:
            self.num_in_flight -= 1
            if self.num_in_flight == 0:
                self._is_idle.set()

    async def _serve(self, scope: Any, receive: Any, send: Any) -> None:
        client_gone = asyncio.Event()

        async def receive_or_disconnect() -> Any:
            message = asyncio.ensure_future(receive())
            gone = asyncio.ensure_future(client_gone.wait())
            await asyncio.wait((message, gone), return_when=asyncio.FIRST_COMPLETED)
            if message.done():
                gone.cancel()
                return message.result()
            message.cancel()
            return {"type": "http.disconnect"}

        app_task = asyncio.ensure_future(self.app(scope, receive_or_disconnect, send))
        try:
            await asyncio.shield(app_task)
        except asyncio.CancelledError:
            client_gone.set()  # the app aborts and settles the request, then ends
            with contextlib.suppress(Exception, asyncio.CancelledError):
                async with asyncio.timeout(_SETTLE_AFTER_DISCONNECT_S):
                    await app_task
            app_task.cancel()
            raise

    async def wait_idle(self, timeout_s: float) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                await self._is_idle.wait()


class ReplicaHeader:
    """ASGI middleware: `x-flintlm-replica` names the replica(s) that served the response."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        replicas: list[str] = []
        token = served_by.set(replicas)

        async def send_with_replica(message: Any) -> None:
            if message["type"] == "http.response.start" and replicas:
                headers = [*message.get("headers", []),
                           (b"x-flintlm-replica", ",".join(replicas).encode())]
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_with_replica)
        finally:
            served_by.reset(token)
