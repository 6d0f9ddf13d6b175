"""Offline throughput: a batch of prompts through a system's Python API, timed end to end.

Owns `OfflineResult` (what every offline system reports), the peak-RSS sampler, and the runner
for flintlm's own `LLM` API. Peers implementing the same `run(prompts)` live in `peers.py`.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Protocol, Self, TypedDict

if TYPE_CHECKING:
    from types import TracebackType

    from flintlm.bench.workload import Prompt


@dataclass(frozen=True, slots=True)
class OfflineResult:
    """One timed pass of a batch of prompts through one system.

    Throughputs divide by `elapsed_s`, the wall time of the whole pass (prefill included), as
    vLLM's `bench throughput` does. `extra` holds system-specific figures such as the single
    stream's prefill and decode rates.
    """

    num_prompts: int
    num_prompt_tokens: int
    num_output_tokens: int
    elapsed_s: float
    peak_rss_mib: float
    extra: dict[str, float] = field(default_factory=dict)

    @property
    def output_throughput(self) -> float:
        return self.num_output_tokens / self.elapsed_s

    @property
    def total_token_throughput(self) -> float:
        return (self.num_prompt_tokens + self.num_output_tokens) / self.elapsed_s

    def to_flat_dict(self) -> dict[str, float]:
        flat: dict[str, float] = {k: v for k, v in asdict(self).items() if k != "extra"}
        flat["output_throughput"] = self.output_throughput
        flat["total_token_throughput"] = self.total_token_throughput
        flat.update(self.extra)
        return flat


class OfflineSystem(Protocol):
    """Anything that turns a list of prompts into generated tokens and times it."""

    name: str

    def run(self, prompts: list[Prompt]) -> OfflineResult: ...


class PeakRss:
    """Context manager sampling a process's resident set size on a thread; `peak_mib` after.

    NOTE: sampling (every `interval_s`) can miss a short spike; `ru_maxrss` would not, but it
    is a lifetime peak and cannot be reset between systems measured in one process.
    """

    def __init__(self, pid: int | None = None, interval_s: float = 0.05) -> None:
        import psutil  # the `bench` extra; keeps `flintlm --help` free of it

        self._error = psutil.Error
        self._process = psutil.Process(pid or os.getpid())
        self._interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self.peak_bytes = 0

    def _sample(self) -> None:
        while True:
            try:
                self.peak_bytes = max(self.peak_bytes, self._process.memory_info().rss)
            except self._error:
                return
            if self._stop.wait(self._interval_s):
                return

    @property
    def peak_mib(self) -> float:
        return self.peak_bytes / 2**20

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join()
        self._sample_once()

    def _sample_once(self) -> None:
        with contextlib.suppress(self._error):  # the process is gone: keep the peak seen
            self.peak_bytes = max(self.peak_bytes, self._process.memory_info().rss)


class _EngineArgs(TypedDict, total=False):
    """The `LLM` arguments a benchmark sets; the rest keep their defaults."""

    model: str
    dtype: str
    max_num_seqs: int
    max_num_batched_tokens: int
    kv_cache_memory: str
    kv_cache_dtype: str


class FlintlmOffline:
    """flintlm's offline `LLM` API: the engine is built once, each `run` generates the batch."""

    def __init__(
        self,
        model: str,
        dtype: str,
        max_num_seqs: int | None = None,
        max_num_batched_tokens: int | None = None,
        threads: int | None = None,
        kv_cache_memory: str | None = None,
        kv_cache_dtype: str | None = None,
    ) -> None:
        from flintlm import LLM  # the engine is heavy; import only when asked for

        if threads is not None:
            import torch

            torch.set_num_threads(threads)
        engine_args: _EngineArgs = {"model": model, "dtype": dtype}
        if max_num_seqs is not None:
            engine_args["max_num_seqs"] = max_num_seqs
        if max_num_batched_tokens is not None:
            engine_args["max_num_batched_tokens"] = max_num_batched_tokens
        if kv_cache_memory is not None:
            engine_args["kv_cache_memory"] = kv_cache_memory
        if kv_cache_dtype is not None:
            engine_args["kv_cache_dtype"] = kv_cache_dtype
        self.name = f"flintlm/{dtype}"
        load_start = time.perf_counter()
        self._llm = LLM(**engine_args)
        self.load_s = time.perf_counter() - load_start

    def run(self, prompts: list[Prompt]) -> OfflineResult:
        from flintlm import SamplingParams

        inputs = [p.engine_input for p in prompts]
        output_lens = {p.num_output_tokens for p in prompts}
        if len(output_lens) != 1:
            raise ValueError("flintlm offline runs need one output length for all prompts")
        params = SamplingParams(max_tokens=output_lens.pop(), ignore_eos=True, temperature=0.0)
        with PeakRss() as rss:
            start = time.perf_counter()
            outputs = self._llm.generate(inputs, params)
            elapsed = time.perf_counter() - start
        num_prompt_tokens = sum(
            len(getattr(o, "prompt_token_ids", None) or p.token_ids or [])
            for o, p in zip(outputs, prompts, strict=True)
        )
        return OfflineResult(
            num_prompts=len(prompts),
            num_prompt_tokens=num_prompt_tokens,
            num_output_tokens=sum(len(o.token_ids) for o in outputs),
            elapsed_s=elapsed,
            peak_rss_mib=rss.peak_mib,
            extra={
                "load_s": self.load_s,
                # Non-zero means prefix-cache hits inflated this run's prefill throughput.
                "num_cached_tokens": sum(getattr(o, "num_cached_tokens", 0) for o in outputs),
            },
        )


class FlintlmSingleStream(FlintlmOffline):
    """flintlm one prompt at a time (batch size 1), as `LlamaCppSingleStream` runs llama.cpp:
    the time to the first token is the prefill, the rest the decode."""

    def __init__(self, model: str, dtype: str, threads: int | None = None,
                 kv_cache_dtype: str | None = None) -> None:
        super().__init__(model, dtype, threads=threads, kv_cache_dtype=kv_cache_dtype)
        self.name = f"flintlm/{dtype}/single-stream"

    def run(self, prompts: list[Prompt]) -> OfflineResult:
        from flintlm import SamplingParams

        engine = self._llm.engine
        prefill_s = decode_s = 0.0
        num_prompt = num_output = 0
        with PeakRss() as rss:
            start = time.perf_counter()
            for index, prompt in enumerate(prompts):
                token_ids = prompt.token_ids or self._llm.tokenizer.encode(prompt.text or "")
                params = SamplingParams(max_tokens=prompt.num_output_tokens, ignore_eos=True,
                                        temperature=0.0)
                sent = time.perf_counter()
                engine.add_request(f"single-{index}-{sent}", token_ids, params)
                first = None
                while engine.has_unfinished:
                    for output in engine.step():
                        num_output += len(output.new_token_ids)
                        if first is None and output.new_token_ids:
                            first = time.perf_counter()
                        if output.finished and output.usage.cached_tokens:
                            raise RuntimeError("prefix-cache hit in a timed single-stream run")
                prefill_s += (first or sent) - sent
                decode_s += time.perf_counter() - (first or sent)
                num_prompt += len(token_ids)
            elapsed = time.perf_counter() - start
        return OfflineResult(
            num_prompts=len(prompts),
            num_prompt_tokens=num_prompt,
            num_output_tokens=num_output,
            elapsed_s=elapsed,
            peak_rss_mib=rss.peak_mib,
            extra={
                "load_s": self.load_s,
                "ttft_mean_ms": 1000.0 * prefill_s / len(prompts),
                "prefill_tokens_per_s": num_prompt / prefill_s if prefill_s else 0.0,
                "decode_tokens_per_s": (num_output - len(prompts)) / decode_s,
            },
        )
