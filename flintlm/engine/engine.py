"""The synchronous engine: add requests, then `step()` = schedule -> run -> update.

Single-threaded and testable on its own; `async_engine.py` drives it from a background thread.
Bad input raises `InvalidRequestError` in `add_request` before the request touches any state.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from flintlm.engine.cpu_dispatch import fold_dispatch, measured_dispatch, needs_dense_matrices
from flintlm.engine.detokenizer import IncrementalDetokenizer
from flintlm.engine.faults import FaultInjector
from flintlm.engine.kv_blocks import BlockManager
from flintlm.engine.model_runner import ModelRunner, resolve_device, resolve_dtype
from flintlm.engine.outputs import RunnerOutput
from flintlm.engine.request import (
    FinishReason,
    InvalidRequestError,
    Logprob,
    Request,
    RequestOutput,
    SamplingParams,
    TokenLogprobs,
)
from flintlm.engine.scheduler import Scheduler
from flintlm.engine.structured import GrammarCompiler, GrammarState

if TYPE_CHECKING:
    from flintlm.config import FlintConfig
    from flintlm.engine.outputs import SchedulerOutput
    from flintlm.kernels.calibrate import DispatchTable
    from flintlm.loading import LoadedCheckpoint

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class EngineStats:
    num_running: int
    num_waiting: int
    num_kv_blocks_total: int
    num_kv_blocks_used: int
    prefix_cache_queries: int  # prompt tokens looked up in the prefix cache
    prefix_cache_hits: int  # of those, tokens served from it
    num_preemptions: int
    num_computed_tokens: int  # tokens run through the model since start (prefill + decode)


_M_MMAP_THRESHOLD = -3  # glibc's mallopt() parameter number


def _glibc() -> Any:
    """The C library's allocator controls, or None where it is not glibc."""
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
        return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None
    except OSError:
        return None


def _return_freed_memory() -> None:
    """After loading: give the allocator's free heap back to the OS (glibc only; loading leaves
    hundreds of MiB of float32 dequantization buffers freed but resident), and move every
    object alive now out of the garbage collector's sight: its full collections otherwise
    rescan the model, the tokenizer's vocabulary and torch's modules during decode steps
    (3% of a single-stream step, measured), as vLLM does after start-up."""
    import gc

    gc.collect()
    gc.freeze()
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)


@contextlib.contextmanager
def _loading_allocations() -> Iterator[None]:
    """While loading, every allocation of 1 MiB or more gets a mapping of its own, so each
    freed dequantization or packing buffer goes back to the OS at once instead of staying in
    the heap beside the next tensor (default model: load peak ~900-990 -> ~866 MiB, measured).
    Afterwards the threshold is pinned at 32 MiB, the ceiling of glibc's own moving threshold,
    so the step loop's activations come from the heap as they did before."""
    libc = _glibc()
    if libc is not None:
        libc.mallopt(_M_MMAP_THRESHOLD, 1 << 20)
    try:
        yield
    finally:
        if libc is not None:
            libc.mallopt(_M_MMAP_THRESHOLD, 32 << 20)


class Engine:
    def __init__(self, config: FlintConfig, checkpoint: LoadedCheckpoint,
                 dispatch: DispatchTable | None = None, faults: FaultInjector | None = None):
        """`faults` makes chosen steps fail on purpose (tests only; see `faults.py`)."""
        self.config = config
        self.faults = faults
        self.tokenizer = checkpoint.tokenizer
        arch = checkpoint.arch
        wanted_len = config.model.max_model_len or arch.max_position_embeddings
        self.runner = ModelRunner(config.model, config.cache, checkpoint, wanted_len, dispatch)
        layout = self.runner.kv_layout
        if layout.num_tokens < wanted_len:
            logger.warning("KV cache holds %d tokens, fewer than max_model_len=%d; capping it",
                           layout.num_tokens, wanted_len)
        self.max_model_len = min(wanted_len, layout.num_tokens)
        self.vocab_size = arch.vocab_size
        self.block_manager = BlockManager(layout.num_blocks, layout.block_size,
                                          config.cache.enable_prefix_caching)
        self.scheduler = Scheduler(config.scheduler, self.block_manager)
        self.requests: dict[str, Request] = {}
        self.grammars = GrammarCompiler(self.tokenizer, arch.vocab_size)
        self._token_text: dict[int, str] = {}
        logger.info("KV cache: %d blocks of %d tokens = %d tokens (%.1f MiB), %s on %s",
                    layout.num_blocks, layout.block_size, layout.num_tokens,
                    layout.num_blocks * layout.bytes_per_block / 2**20, self.runner.kv_dtype,
                    self.runner.device)

    @classmethod
    def from_config(cls, config: FlintConfig, progress: bool = False,
                    faults: FaultInjector | None = None) -> Engine:
        """Load the configured model and build the engine; `progress` shows a tqdm bar."""
        from flintlm.loading import load_checkpoint

        device = resolve_device(config.model.device)
        dispatch = measured_dispatch(config.model, device)
        config = config.replace(model=fold_dispatch(
            config.model, dispatch, config.scheduler.max_num_batched_tokens))
        dtype = resolve_dtype(config.model.dtype, device)
        dense = needs_dense_matrices(config.model, dispatch,
                                     config.scheduler.max_num_batched_tokens)
        with _loading_allocations():
            if not progress:
                engine = cls(config, load_checkpoint(config.model.model, dtype, dense),
                             dispatch, faults)
            else:
                from tqdm import tqdm

                with tqdm(total=2, desc="Loading model", unit="step") as bar:
                    checkpoint = load_checkpoint(config.model.model, dtype, dense)
                    bar.update(1)
                    engine = cls(config, checkpoint, dispatch, faults)
                    bar.update(1)
                    del checkpoint
        _return_freed_memory()
        return engine

    # -- requests --------------------------------------------------------------------------------

    def validate(self, prompt_token_ids: list[int], params: SamplingParams) -> None:
        """Raise InvalidRequestError for anything this engine cannot serve."""
        if not prompt_token_ids:
            raise InvalidRequestError("the prompt is empty; send at least one token", "prompt")
        bad = [t for t in prompt_token_ids if not (isinstance(t, int) and 0 <= t < self.vocab_size)]
        if bad:
            raise InvalidRequestError(f"prompt has token ids outside the vocabulary "
                                      f"[0, {self.vocab_size}): {bad[:5]}", "prompt")
        params.validate(self.vocab_size)
        num_prompt = len(prompt_token_ids)
        max_tokens = params.max_tokens or 0
        if num_prompt + max_tokens > self.max_model_len or num_prompt >= self.max_model_len:
            raise InvalidRequestError(
                f"This model's maximum context length is {self.max_model_len} tokens. However, "
                f"you requested {num_prompt + max_tokens} tokens ({num_prompt} in the prompt, "
                f"{max_tokens} for the completion). Please reduce the prompt or max_tokens.",
                param="prompt" if num_prompt >= self.max_model_len else "max_tokens",
                code="context_length_exceeded")

    def add_request(self, request_id: str, prompt_token_ids: list[int], params: SamplingParams,
                    *, priority: int = 0, cache_salt: str | None = None,
                    arrival_time: float | None = None, compiled_grammar: Any = None) -> Request:
        """Queue a request. `compiled_grammar` is the result of `self.grammars.compile(params)`
        when the caller compiled it off this thread; otherwise it is compiled here."""
        if request_id in self.requests:
            raise InvalidRequestError(f"request id {request_id!r} is already running", "id")
        self.validate(prompt_token_ids, params)
        max_output = params.max_tokens
        if max_output is None:
            max_output = self.max_model_len - len(prompt_token_ids)
        request = Request(request_id, list(prompt_token_ids), params,
                          eos_token_ids=self.tokenizer.eos_token_ids,
                          max_output_tokens=max_output, priority=priority,
                          cache_salt=cache_salt, arrival_time=arrival_time)
        request.detokenizer = IncrementalDetokenizer(
            self.tokenizer, request.prompt_token_ids, stop=params.stop,
            include_stop_str_in_output=params.include_stop_str_in_output,
            skip_special_tokens=params.skip_special_tokens)
        if params.has_structured_output:
            compiled = compiled_grammar or self.grammars.compile(params)
            assert compiled is not None  # a structured-output request always compiles to one
            request.grammar = GrammarState(compiled)
        self.requests[request_id] = request
        self.scheduler.add_request(request)
        return request

    def abort(self, request_id: str) -> RequestOutput | None:
        """Stop a request now and free its blocks; returns its final output, or None if unknown."""
        request = self.requests.get(request_id)
        if request is None:
            return None
        return self._finish(request, FinishReason.ABORT, [], "")

    @property
    def has_unfinished(self) -> bool:
        return self.scheduler.has_unfinished

    def stats(self) -> EngineStats:
        return EngineStats(
            num_running=self.scheduler.num_running, num_waiting=self.scheduler.num_waiting,
            num_kv_blocks_total=self.block_manager.num_blocks,
            num_kv_blocks_used=self.block_manager.num_used_blocks,
            prefix_cache_queries=self.scheduler.prefix_query_tokens,
            prefix_cache_hits=self.scheduler.prefix_hit_tokens,
            num_preemptions=self.scheduler.num_preemptions,
            num_computed_tokens=self.scheduler.num_computed_tokens_total)

    # -- the step --------------------------------------------------------------------------------

    def step(self) -> list[RequestOutput]:
        """One step. A runner failure fails only this step's requests (and takes back the prefix
        hashes it published); an exception that escapes means the engine's own state broke."""
        scheduler_output = self.scheduler.schedule()
        runner_output = self._run(scheduler_output)
        return self._update(scheduler_output, runner_output)

    def _run(self, scheduler_output: SchedulerOutput) -> RunnerOutput | None:
        if scheduler_output.is_empty:
            return RunnerOutput()
        try:
            if self.faults is not None:
                self.faults.before_run(scheduler_output)
            return self.runner.execute(scheduler_output)
        except Exception:  # a failing batch must not take the engine down with it
            logger.exception("model runner failed; failing the %d requests of this step",
                             len(scheduler_output.scheduled))
            return None

    def _update(self, scheduler_output: SchedulerOutput,
                runner_output: RunnerOutput | None) -> list[RequestOutput]:
        if runner_output is None:
            self.scheduler.rollback()
            return [self._fail(s.request) for s in scheduler_output.scheduled]
        self.scheduler.update(scheduler_output)
        outputs = []
        for scheduled in scheduler_output.scheduled:
            try:
                output = self._update_request(scheduled.request, scheduled.is_sampling,
                                              runner_output)
            except Exception:  # one request's bad output (grammar, detokenizer) is its own
                logger.exception("updating %s failed", scheduled.request.request_id)
                output = self._fail(scheduled.request)
            if output is not None:
                outputs.append(output)
        return outputs

    def _update_request(self, request: Request, is_sampling: bool,
                        runner_output: RunnerOutput) -> RequestOutput | None:
        chunk_logprobs = runner_output.prompt_logprobs.get(request.request_id)
        if chunk_logprobs is not None:
            if request.prompt_logprobs is None:
                request.prompt_logprobs = [None]  # the first token has no context
            request.prompt_logprobs += [self._named(lp) for lp in chunk_logprobs]
        if not is_sampling:
            return None
        token_id = runner_output.sampled_token_ids[request.request_id]
        return self._append_token(request, token_id, runner_output.logprobs.get(request.request_id))

    def _fail(self, request: Request) -> RequestOutput:
        """End `request` with an engine error (its blocks freed at once), unless it has ended."""
        if request.is_finished:
            return self._output(request, [], "", None)
        return self._finish(request, FinishReason.ERROR, [], "", error="internal error")

    def _append_token(self, request: Request, token_id: int,
                      logprobs: TokenLogprobs | None) -> RequestOutput:
        if request.max_output_tokens == 0:  # echo-only (prompt logprobs): nothing to generate
            return self._finish(request, FinishReason.LENGTH, [], "")
        request.output_token_ids.append(token_id)
        if request.first_token_time is None:
            request.first_token_time = time.monotonic()
        if logprobs is not None:
            logprobs = self._named(logprobs)
            request.output_logprobs.append(logprobs)
        params = request.params
        if request.grammar is not None and not request.grammar.accept(token_id):
            return self._finish(request, FinishReason.ERROR, [token_id], "",
                                error="sampled token rejected by the grammar")
        detokenizer = request.detokenizer
        assert detokenizer is not None  # `add_request` gives every request its own
        text, stop_string = detokenizer.append([token_id])
        num_output = len(request.output_token_ids)
        is_eos = (not params.ignore_eos and token_id in request.eos_token_ids
                  and num_output >= params.min_tokens)
        is_grammar_complete = request.grammar is not None and request.grammar.is_terminated
        reason: FinishReason | None = None
        stop_reason: str | int | None = None  # the stop string or stop token id that ended it
        if stop_string is not None:
            reason, stop_reason = FinishReason.STOP, stop_string
        elif token_id in params.stop_token_ids and num_output >= params.min_tokens:
            reason, stop_reason = FinishReason.STOP, token_id
        elif is_eos or is_grammar_complete:
            reason = FinishReason.STOP
        elif num_output >= request.max_output_tokens or request.num_tokens >= self.max_model_len:
            reason = FinishReason.LENGTH
        new_logprobs = [logprobs] if logprobs is not None else None
        if reason is not None:
            if stop_string is None:
                text += detokenizer.flush()
            request.stop_reason = stop_reason
            return self._finish(request, reason, [token_id], text, new_logprobs)
        return self._output(request, [token_id], text, new_logprobs)

    def _finish(self, request: Request, reason: FinishReason, new_token_ids: list[int],
                text: str, logprobs: list[TokenLogprobs] | None = None,
                error: str | None = None) -> RequestOutput:
        self.scheduler.finish_request(request, reason)
        request.error = error
        del self.requests[request.request_id]
        return self._output(request, new_token_ids, text, logprobs)

    def _output(self, request: Request, new_token_ids: list[int], text: str,
                logprobs: list[TokenLogprobs] | None) -> RequestOutput:
        is_first = len(request.output_token_ids) <= len(new_token_ids)
        queue_time = None
        if request.scheduled_time is not None:
            queue_time = request.scheduled_time - request.arrival_time
        return RequestOutput(
            request_id=request.request_id, new_token_ids=new_token_ids, new_text=text,
            finish_reason=request.finish_reason if request.is_finished else None,
            usage=request.usage(), new_logprobs=logprobs,
            prompt_logprobs=request.prompt_logprobs if is_first else None,
            stop_reason=request.stop_reason, error=request.error,
            first_token_time=request.first_token_time, queue_time_s=queue_time)

    def _named(self, logprobs: TokenLogprobs) -> TokenLogprobs:
        """Fill in the token text of a logprob entry and its alternatives."""
        def name(entry: Logprob) -> Logprob:
            return Logprob(entry.token_id, entry.logprob, self._text_of(entry.token_id))
        return TokenLogprobs(name(logprobs.chosen), tuple(name(e) for e in logprobs.top))

    def _text_of(self, token_id: int) -> str:
        text = self._token_text.get(token_id)
        if text is None:
            text = self.tokenizer.decode([token_id], skip_special_tokens=False)
            self._token_text[token_id] = text
        return text
