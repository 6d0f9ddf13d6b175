"""The asyncio face of the engine: the step loop runs on its own thread; callers await streams.

Commands (add, abort) cross into the loop thread through a queue; outputs cross back with
`call_soon_threadsafe` into one asyncio.Queue per request. The event loop never runs a model step.
If the loop itself dies, every stream and every later request fails fast with EngineDeadError.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from flintlm import env
from flintlm.engine.engine import Engine, EngineStats
from flintlm.engine.faults import FaultInjector
from flintlm.engine.request import (
    EngineDeadError,
    EngineOverloadedError,
    InvalidRequestError,
    RequestOutput,
    SamplingParams,
)

if TYPE_CHECKING:
    from flintlm.config import FlintConfig

logger = logging.getLogger(__name__)


@dataclass
class _Stream:
    loop: asyncio.AbstractEventLoop
    outputs: asyncio.Queue[RequestOutput | BaseException]
    finished: bool = False


class AsyncEngine:
    def __init__(self, engine: Engine, model_name: str, max_waiting: int = 1024):
        self.engine = engine
        self.tokenizer = engine.tokenizer
        self.model_name = model_name
        self.max_model_len = engine.max_model_len
        self.max_waiting = max_waiting
        self._commands: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()
        self._wakeup = threading.Event()
        self._streams: dict[str, _Stream] = {}
        self._has_no_streams = asyncio.Event()  # set while `_streams` is empty; shutdown waits
        self._has_no_streams.set()
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._accepting = True
        self._failure: BaseException | None = None

    @classmethod
    def from_config(cls, config: FlintConfig, progress: bool = False) -> AsyncEngine:
        faults = None
        fault_spec = env.lookup("fault_inject")
        if fault_spec is not None:
            faults = FaultInjector.parse(fault_spec)
            logger.warning("fault injection is on (%s=%s): for tests only",
                           env.var_name("fault_inject"), fault_spec)
        engine = Engine.from_config(config, progress=progress, faults=faults)
        engine.runner.limit_threads_for_small_steps(config.model.serving_single_thread_max_tokens)
        name = config.model.served_model_name or served_name_for(config.model.model)
        return cls(engine, name, config.scheduler.max_waiting)

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run_loop, name="flintlm-engine",
                                            daemon=True)
            self._thread.start()

    async def shutdown(self, drain_timeout_s: float | None = None) -> None:
        """Stop accepting; let in-flight requests finish up to the timeout; abort the rest."""
        self._accepting = False
        await _wait_at_most(self._has_no_streams, drain_timeout_s or 0.0)
        for request_id in list(self._streams):
            self.abort(request_id)
        await _wait_at_most(self._has_no_streams, 5.0)  # the aborts reach their streams
        self._stopping = True
        self._wakeup.set()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, 10.0)

    @property
    def num_in_flight(self) -> int:
        return len(self._streams)

    @property
    def failure(self) -> BaseException | None:
        """What stopped the engine loop, or None while it serves."""
        return self._failure

    @property
    def is_alive(self) -> bool:
        """False once the loop has died: readiness answers 503 and no request can run."""
        return self._failure is None

    def has_room(self, num_requests: int) -> bool:
        """Whether `num_requests` more can wait without passing `max_waiting`.

        NOTE: counted here, on the event loop, from the streams handed out: the scheduler's own
        queue lags behind (an add travels through the command queue), so checking it let a burst
        in whole. In flight but not running is waiting (or about to be).
        """
        num_waiting = len(self._streams) - self.engine.scheduler.num_running
        return max(0, num_waiting) + num_requests <= self.max_waiting

    def stats(self) -> EngineStats:
        return self.engine.stats()

    # -- requests --------------------------------------------------------------------------------

    async def generate(self, request_id: str, prompt_token_ids: list[int],
                       params: SamplingParams, *, priority: int = 0,
                       cache_salt: str | None = None) -> AsyncIterator[RequestOutput]:
        """Stream a request's outputs. Errors in the input raise on the first `anext()`, before
        any output; leaving the iteration early (client gone, cancelled) aborts the request."""
        if params.n != 1:
            raise InvalidRequestError("the engine takes n=1; fan out n>1 above it", "n")
        self._raise_if_dead()
        if not self._accepting:
            raise EngineOverloadedError("the server is shutting down")
        if request_id in self._streams:
            raise InvalidRequestError(f"request id {request_id!r} is already in flight", "id")
        if not self.has_room(1):
            raise EngineOverloadedError("too many requests are waiting; retry shortly")
        # NOTE: the slot is taken before the first await, so concurrent callers cannot all pass
        # the check above. Input errors come back from `Engine.add_request` on the loop thread.
        stream = _Stream(asyncio.get_running_loop(), asyncio.Queue())
        self._streams[request_id] = stream
        self._has_no_streams.clear()
        try:
            compiled_grammar = None
            if params.has_structured_output:  # compile off the step loop (cached per grammar)
                compiled_grammar = await asyncio.to_thread(self.engine.grammars.compile, params)
            arrival = time.monotonic()
            self._send("add", (request_id, prompt_token_ids, params, priority, cache_salt,
                               arrival, compiled_grammar))
            self._raise_if_dead()  # died before it saw this stream: nothing would answer it
            while True:
                item = await stream.outputs.get()
                if isinstance(item, BaseException):
                    raise item
                if item.finished:
                    stream.finished = True
                yield item
                if stream.finished:
                    return
        finally:
            if not stream.finished:
                self.abort(request_id)
            self._streams.pop(request_id, None)
            if not self._streams:
                self._has_no_streams.set()

    def abort(self, request_id: str) -> None:
        self._send("abort", request_id)

    def _raise_if_dead(self) -> None:
        if self._failure is not None:
            raise EngineDeadError(f"the engine stopped after an internal error: {self._failure}")

    # -- the loop thread -------------------------------------------------------------------------

    def _send(self, command: str, payload: Any) -> None:
        self._commands.put((command, payload))
        self._wakeup.set()

    def _run_loop(self) -> None:
        try:
            self._serve()
        except BaseException as exc:  # noqa: BLE001 - the loop's end is reported, not re-raised
            self._die(exc)

    def _serve(self) -> None:
        """Step while there is work. A runner failure is handled inside `step()`; anything that
        escapes it means the engine's own bookkeeping broke, and serving on could hand out KV
        that was never written, so the loop stops instead (readiness then answers 503)."""
        engine = self.engine
        while not self._stopping:
            self._apply_commands()
            if not engine.has_unfinished:
                self._wakeup.wait(timeout=1.0)
                self._wakeup.clear()
                continue
            if engine.faults is not None:
                engine.faults.before_loop_step()
            self._deliver(engine.step())

    def _die(self, exc: BaseException) -> None:
        """Mark the engine dead, then fail every stream (a stream added after the mark sees it
        in `generate`, so none waits forever)."""
        self._failure = exc
        logger.critical("the engine loop died; every request now fails with 503", exc_info=exc)
        error = EngineDeadError(f"the engine stopped after an internal error: {exc}")
        for request_id in list(self._streams):
            self._deliver_error(request_id, error)

    def _apply_commands(self) -> None:
        while True:
            try:
                command, payload = self._commands.get_nowait()
            except queue.Empty:
                return
            if command == "add":
                request_id, prompt, params, priority, salt, arrival, grammar = payload
                try:
                    self.engine.add_request(request_id, prompt, params, priority=priority,
                                            cache_salt=salt, arrival_time=arrival,
                                            compiled_grammar=grammar)
                except Exception as exc:  # noqa: BLE001 - raised to its caller by `generate`
                    self._deliver_error(request_id, exc)
            elif command == "abort":
                output = self.engine.abort(payload)
                if output is not None:
                    self._deliver([output])

    def _deliver(self, outputs: list[RequestOutput]) -> None:
        for output in outputs:
            self._put(output.request_id, output)

    def _deliver_error(self, request_id: str, exc: BaseException) -> None:
        self._put(request_id, exc)

    def _put(self, request_id: str, item: RequestOutput | BaseException) -> None:
        stream = self._streams.get(request_id)
        if stream is None:
            return
        with contextlib.suppress(RuntimeError):  # its event loop is closed: nobody waits
            stream.loop.call_soon_threadsafe(stream.outputs.put_nowait, item)


async def _wait_at_most(event: asyncio.Event, timeout_s: float) -> None:
    """Wait until `event` is set or `timeout_s` has passed, whichever comes first."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout_s):
            await event.wait()


def served_name_for(model: str) -> str:
    """"default" stays "default"; a path is served under its file or folder name."""
    import os

    if model == "default":
        return "default"
    name = os.path.basename(os.path.normpath(model))
    return name[:-5] if name.endswith(".gguf") else name
