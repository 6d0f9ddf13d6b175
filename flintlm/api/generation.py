"""One API request as engine requests: `n` x prompts branches, started together, merged, aborted
together, and settled once.

`Generation.start` returns only after every branch produced its first output, so validation and
overload errors surface before the route commits to a status code. From then until `close()` a
watcher aborts all branches as soon as the client disconnects. `close()` is the one place where
usage settles (through the admission `Ticket`, with the request's status and timings) and
per-request metrics are observed.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from flintlm.api.errors import APIError, ClientDisconnected, ServiceUnavailable, to_api_error
from flintlm.api.guarding import OutputScreen
from flintlm.engine.request import FinishReason, RequestOutput, SamplingParams, TokenLogprobs, Usage
from flintlm.platform.ledger import UsageStatus
from flintlm.platform.service import Timings

if TYPE_CHECKING:
    from flintlm.api.admission import Ticket
    from flintlm.engine.async_engine import AsyncEngine
    from flintlm.observability.metrics import Metrics
    from flintlm.safety.pipeline import RequestGuard

logger = logging.getLogger("flintlm.api")


@dataclass(slots=True)
class Branch:
    """One engine request: choice `index` of the API response."""

    index: int
    request_id: str
    prompt_index: int
    is_first_of_prompt: bool
    stream: AsyncIterator[RequestOutput]
    last: RequestOutput | None = None
    first_token_s: float | None = None
    end_s: float | None = None

    @property
    def is_finished(self) -> bool:
        return self.last is not None and self.last.finished


@dataclass
class ChoiceResult:
    """A whole choice, accumulated for a non-streamed response."""

    index: int
    prompt_index: int
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[TokenLogprobs] = field(default_factory=list)
    prompt_logprobs: list[TokenLogprobs | None] | None = None
    finish_reason: str | None = None


class Generation:
    def __init__(self, engine: AsyncEngine, metrics: Metrics, ticket: Ticket, receive: Any,
                 guard: OutputScreen | None = None):
        self.engine = engine
        self.guard = guard  # the key's guardrails on the output
        self.filtered: set[int] = set()  # choices a guardrail ended (content_filter)
        self.metrics = metrics
        self.ticket = ticket
        self.branches: list[Branch] = []
        self.start_s = time.monotonic()
        self.is_disconnected = False
        self.error: BaseException | None = None  # what failed the request, if anything did
        self._is_closed = False
        self._watcher = asyncio.create_task(self._watch_disconnect(receive))

    @property
    def request_id(self) -> str:
        return self.ticket.request_id

    @classmethod
    async def start(
        cls,
        engine: AsyncEngine,
        metrics: Metrics,
        ticket: Ticket,
        receive: Any,
        prompts: list[list[int]],
        params: SamplingParams,
        *,
        priority: int = 0,
        cache_salt: str | None = None,
        guard: RequestGuard | None = None,
    ) -> Generation:
        """Submit every branch and wait for each one's first output.

        Args:
            receive: the ASGI receive channel, watched for the client's disconnect.
            params: the request's parameters, validated and admitted (`ticket.params`); `n`
                branches per prompt, seeds `seed + i`.
        Raises:
            InvalidRequestError, EngineOverloadedError, APIError before anything is sent.
        """
        generation = cls(engine, metrics, ticket, receive,
                         None if guard is None else OutputScreen(guard))
        try:  # from here on the ticket is settled by close(), whatever fails
            generation._submit(prompts, params, priority, cache_salt)
            await generation._await_first_outputs()
            for branch in generation.branches:  # a failure in the first step is still a status
                if branch.last is not None:
                    raise_if_failed(branch.last, generation.is_disconnected)
        except BaseException as exc:
            await generation.close(error=exc)
            raise
        return generation

    def _submit(self, prompts: list[list[int]], params: SamplingParams, priority: int,
                cache_salt: str | None) -> None:
        num_choices = params.n * len(prompts)
        for index in range(num_choices):
            prompt_index, i = divmod(index, params.n)
            request_id = self.request_id if num_choices == 1 else f"{self.request_id}-{index}"
            seed = None if params.seed is None else params.seed + i
            branch_params = dataclasses.replace(params, n=1, seed=seed)
            stream = self.engine.generate(request_id, prompts[prompt_index], branch_params,
                                          priority=priority, cache_salt=cache_salt)
            self.branches.append(Branch(index, request_id, prompt_index, i == 0, stream))

    async def _await_first_outputs(self) -> None:
        async def first(branch: Branch) -> None:
            self._record(branch, await anext(branch.stream))

        tasks = [asyncio.create_task(first(b)) for b in self.branches]
        try:
            await asyncio.gather(*tasks)
        finally:  # one failed (or we were cancelled): stop waiting for the others
            for task in tasks:
                task.cancel()

    def _record(self, branch: Branch, output: RequestOutput) -> None:
        now = time.monotonic()
        branch.last = output
        if branch.first_token_s is None and output.new_token_ids:
            branch.first_token_s = now
        if output.finished:
            branch.end_s = now

    async def outputs(self) -> AsyncIterator[tuple[int, RequestOutput]]:
        """Every output of every branch (the first ones included), in arrival order; with a
        guard, streamed outputs as its during_call checks let them out."""
        try:
            async for index, output in self._outputs():
                if index in self.filtered:
                    continue  # its engine request was aborted; what is left is not sent
                if self.guard is not None:
                    output = await self.guard.screen_stream(index, output)
                    if output.finish_reason is FinishReason.CONTENT_FILTER:
                        self._filter(index)
                yield index, output
        except Exception as exc:
            self.error = exc
            raise

    async def _outputs(self) -> AsyncIterator[tuple[int, RequestOutput]]:
        for branch in self.branches:
            if branch.last is not None:  # always: start() waited for it
                yield branch.index, branch.last
        live = [b for b in self.branches if not b.is_finished]
        if len(live) == 1:
            async for output in live[0].stream:
                self._record(live[0], output)
                yield live[0].index, output
            return
        queue: asyncio.Queue[tuple[Branch, RequestOutput | BaseException | None]] = (
            asyncio.Queue())

        async def pump(branch: Branch) -> None:
            try:
                async for output in branch.stream:
                    queue.put_nowait((branch, output))
            except Exception as exc:  # noqa: BLE001 - handed to the consumer, which raises it
                queue.put_nowait((branch, exc))
            queue.put_nowait((branch, None))

        tasks = [asyncio.create_task(pump(b)) for b in live]
        try:
            num_live = len(live)
            while num_live:
                branch, item = await queue.get()
                if item is None:
                    num_live -= 1
                elif isinstance(item, BaseException):
                    raise item
                else:
                    self._record(branch, item)
                    yield branch.index, item
        finally:
            for task in tasks:
                task.cancel()

    async def collect(self) -> list[ChoiceResult]:
        """Run to completion and return the choices; raises if aborted, failed or disconnected."""
        results = [ChoiceResult(b.index, b.prompt_index) for b in self.branches]
        async for index, output in self.outputs():
            raise_if_failed(output, self.is_disconnected)
            result = results[index]
            result.text += output.new_text
            result.token_ids += output.new_token_ids
            result.logprobs += output.new_logprobs or []
            if output.prompt_logprobs is not None:
                result.prompt_logprobs = output.prompt_logprobs
            if output.finish_reason is not None:
                result.finish_reason = output.finish_reason.value
        if self.guard is not None:
            await self.guard.screen_choices(results)
        return results

    def _filter(self, index: int) -> None:
        """A guardrail ended choice `index`: stop its engine request; it settles as finished."""
        self.filtered.add(index)
        branch = self.branches[index]
        if not branch.is_finished:
            self.engine.abort(branch.request_id)

    @property
    def usage(self) -> Usage:
        """Prompt tokens once per prompt (as OpenAI counts `n`), completions of every branch."""
        prompt = cached = completion = 0
        for branch in self.branches:
            if branch.last is None:
                continue
            usage = branch.last.usage
            completion += usage.completion_tokens
            if branch.is_first_of_prompt:
                prompt += usage.prompt_tokens
                cached += usage.cached_tokens
        return Usage(prompt, completion, cached)

    def abort(self) -> None:
        for branch in self.branches:
            if not branch.is_finished:
                self.engine.abort(branch.request_id)

    async def close(self, error: BaseException | None = None) -> None:
        """Abort what still runs, settle usage once, observe metrics. Safe to call twice.

        Args:
            error: what ended the request before it started, if anything did.
        """
        if self._is_closed:
            return
        self._is_closed = True
        if error is not None and self.error is None:
            self.error = error
        try:
            self._watcher.cancel()
            self.abort()
            for branch in self.branches:
                with contextlib.suppress(Exception):
                    await branch.stream.aclose()  # type: ignore[attr-defined]
        finally:  # even when cancelled (shutdown): every admitted request gets its ledger row
            status, error_code = self._outcome()
            await self.ticket.settle(self.usage, status=status, error_code=error_code,
                                     timings=self._timings())
            self._observe()

    def _outcome(self) -> tuple[UsageStatus, str | None]:
        """The ledger status of the request and, unless it finished, an error code."""
        error = self.error
        if error is not None and not isinstance(error, ClientDisconnected | asyncio.CancelledError):
            api_error = to_api_error(error)
            code = api_error.code or api_error.error_type
            # Refused by the engine (bad input, overloaded): like a 429, nothing ran.
            is_refusal = api_error.status_code < 500 or api_error.status_code == 503
            if is_refusal and self.usage.total_tokens == 0:
                return UsageStatus.REJECTED, code
            return UsageStatus.FAILED, code
        reasons = [FinishReason.CONTENT_FILTER if b.index in self.filtered
                   else b.last.finish_reason if b.last else None for b in self.branches]
        if FinishReason.ERROR in reasons:
            return UsageStatus.FAILED, "engine_error"
        if self.is_disconnected or isinstance(error, ClientDisconnected):
            return UsageStatus.ABORTED, "client_disconnected"
        finished = (FinishReason.STOP, FinishReason.LENGTH, FinishReason.CONTENT_FILTER)
        if reasons and all(r in finished for r in reasons):
            return UsageStatus.FINISHED, None
        return UsageStatus.ABORTED, "server_draining"  # the engine shut down under it

    def _timings(self) -> Timings:
        """From admission: time to the first token of any branch and to now; the longest queue."""
        start = self.ticket.created_s
        first_tokens = [b.first_token_s for b in self.branches if b.first_token_s is not None]
        queues = [b.last.queue_time_s for b in self.branches
                  if b.last is not None and b.last.queue_time_s is not None]
        return Timings(
            queue_time_s=max(queues, default=None),
            ttft_s=min(first_tokens) - start if first_tokens else None,
            total_time_s=time.monotonic() - start,
        )

    def _observe(self) -> None:
        now = time.monotonic()
        for branch in self.branches:
            if branch.last is None:
                continue
            reason = branch.last.finish_reason or FinishReason.ABORT
            if branch.index in self.filtered:
                reason = FinishReason.CONTENT_FILTER
            if self.is_disconnected and reason is FinishReason.ABORT:
                reason_text = "disconnect"
            else:
                reason_text = reason.value
            first = branch.first_token_s
            self.metrics.observe_request(
                finish_reason=reason_text,
                prompt_tokens=branch.last.usage.prompt_tokens if branch.is_first_of_prompt else 0,
                completion_tokens=branch.last.usage.completion_tokens,
                e2e_s=(branch.end_s or now) - self.start_s,
                ttft_s=None if first is None else first - self.start_s,
                queue_time_s=branch.last.queue_time_s,
            )
        usage = self.usage
        logger.info("finished %s: prompt=%d cached=%d completion=%d in %.3fs%s", self.request_id,
                    usage.prompt_tokens, usage.cached_tokens, usage.completion_tokens,
                    now - self.start_s, " (client disconnected)" if self.is_disconnected else "")

    async def _watch_disconnect(self, receive: Any) -> None:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                self.is_disconnected = not self._is_closed
                self.abort()
                return


def raise_if_failed(output: RequestOutput, is_disconnected: bool) -> None:
    """An output that ends the request badly becomes the error the client sees."""
    if output.finish_reason is FinishReason.ERROR:
        logger.error("engine error on %s: %s", output.request_id, output.error)
        raise APIError("the engine failed while generating this response")
    if output.finish_reason is FinishReason.ABORT:
        if is_disconnected:
            raise ClientDisconnected
        raise ServiceUnavailable("the request was aborted because the server is shutting down",
                                 code="server_draining")
