"""SchedulerOutput -> model inputs -> logits -> sampled tokens. Owns the model and the KV tensors.

Per step: one Python list per input field, one tensor per field, one forward pass over the flat
batch [decode tokens | prefill chunks], logits only for the rows that need them, one host sync
when the sampled ids come back.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from flintlm.engine.outputs import RunnerOutput
from flintlm.engine.request import Logprob, TokenLogprobs
from flintlm.engine.sampler import Sampler, SamplerOutput
from flintlm.engine.structured import build_bitmask
from flintlm.kernels.ops import CpuKernels
from flintlm.models.attention import BatchLayout, CpuNativeAttention, SequenceSlice
from flintlm.models.fast_decode import FastDecode
from flintlm.models.packing import PackedLogits, can_pack, pack_linears
from flintlm.models.quant import QuantizedSteps, keep_quantized, quantized_logits
from flintlm.models.registry import model_class_for

if TYPE_CHECKING:
    from collections.abc import Callable

    from flintlm.config import CacheConfig, ModelConfig
    from flintlm.engine.outputs import ScheduledRequest, SchedulerOutput
    from flintlm.engine.request import Request
    from flintlm.kernels.calibrate import DispatchTable
    from flintlm.loading import LoadedCheckpoint
    from flintlm.models.llama import LlamaForCausalLM

logger = logging.getLogger(__name__)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device={name!r} asked for, but CUDA is not available here; use cpu")
    return torch.device(name)


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        # A CPU with bf16 units (AVX512-BF16, AMX) runs bfloat16 matmuls ~2-4x faster than
        # float32 (measured); elsewhere bfloat16 would be emulated and slower.
        if device.type == "cuda" or can_pack(device, torch.bfloat16):
            return torch.bfloat16
        return torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def available_memory_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return free
    with open("/proc/meminfo") as meminfo:
        for line in meminfo:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")


@dataclass(frozen=True)
class KVCacheLayout:
    num_blocks: int
    block_size: int
    bytes_per_block: int

    @property
    def num_tokens(self) -> int:
        return self.num_blocks * self.block_size


# Without a measured table (engine built directly from a checkpoint): the rule of thumb that
# the table replaced, from 2026-12-03's measurements on AVX-512.
DEFAULT_QUANTIZED_MAX_TOKENS = 64

# Serving runs a step on one thread only if its measured matmuls take less than this: the
# embedded model's 1-4 token steps (4-7 ms; one thread served 1.25-1.6x the tokens/s), not the
# 1B shape's (21-29 ms on AVX2; two threads served a single stream at 33-41 ms a token, one
# thread at 44).
SHORT_STEP_MS = 10.0


class ModelRunner:
    def __init__(self, model_config: ModelConfig, cache_config: CacheConfig,
                 checkpoint: LoadedCheckpoint, max_model_len: int,
                 dispatch: DispatchTable | None = None):
        """`dispatch`: the measured table (`engine/cpu_dispatch.py`) whose choices were folded
        into `model_config`; its thread count per step size is applied here."""
        self.device = resolve_device(model_config.device)
        self.dtype = resolve_dtype(model_config.dtype, self.device)
        self.arch = checkpoint.arch
        self.block_size = cache_config.block_size
        self.kernels = self._load_kernels(model_config.kernels)
        max_rows = model_config.quantized_max_tokens
        if max_rows is None:
            max_rows = DEFAULT_QUANTIZED_MAX_TOKENS
        self.dispatch = dispatch if self.device.type == "cpu" else None
        steps = QuantizedSteps(max_rows, self.dispatch)
        uses_blocks = self.kernels is not None and max_rows > 0 and bool(checkpoint.quantized)
        model, blocks_only = self._read_model(checkpoint, max_model_len, uses_blocks)
        self.compute_logits: Callable[[torch.Tensor], torch.Tensor] = model.compute_logits
        is_packed = can_pack(self.device, self.dtype)
        output_name = ("model.embed_tokens.weight" if self.arch.tie_word_embeddings
                       else "lm_head.weight")
        # NOTE: no packed logits where every step reads them from blocks: a copy nobody reads
        packs_logits = is_packed and not (blocks_only and output_name in checkpoint.quantized)
        if packs_logits:
            self.compute_logits = PackedLogits(model.output_weight)
        if self.kernels is not None and uses_blocks:
            use_int8 = self._int8_activations(model_config.quantized_activations)
            num_kept = keep_quantized(model, checkpoint.quantized, self.kernels, steps,
                                      use_int8)
            self.compute_logits = quantized_logits(model, self.compute_logits,
                                                   checkpoint.quantized, self.kernels, steps,
                                                   use_int8)
            logger.info("steps of <= %d tokens read %d linear layers as GGUF-quantized (%s "
                        "activations)%s", max_rows, num_kept, "int8" if use_int8 else "float",
                        "; no dense copies were made" if blocks_only else "")
        if is_packed:  # the dense layers left: all of them unless read as blocks only
            num_packed = pack_linears(model.layers)
            logger.info("packed %d linear layers%s for oneDNN", num_packed,
                        " and the output projection" if packs_logits else "")
        self.model = model.to(device=self.device).eval()
        self.kv_dtype = (self.dtype if cache_config.kv_cache_dtype == "auto"
                         else resolve_dtype(cache_config.kv_cache_dtype, self.device))
        self.kv_layout = self._plan_kv_cache(cache_config)
        self.kv_caches = self._allocate_kv_cache(self.kv_layout.num_blocks)
        self.fast_decode = FastDecode.build(self.model, self.kv_caches, self.kernels, steps)
        if self.fast_decode is not None:
            logger.info("steps of <= %d tokens run every layer in one native call", max_rows)
        self.sampler = Sampler(self.arch.vocab_size, self.device, seed=model_config.seed,
                               kernels=self.kernels)
        self.single_thread_max_tokens = 0  # see limit_threads_for_small_steps

    def _read_model(self, checkpoint: LoadedCheckpoint, max_positions: int,
                    uses_blocks: bool) -> tuple[LlamaForCausalLM, set[str]]:
        """The model holding the checkpoint's dense weights in `self.dtype`, and the names of
        the matrices a blocks-only checkpoint holds as GGUF blocks alone. Those stay unmade (on
        meta) for `keep_quantized` to serve from the blocks, or, where this runner cannot use
        blocks (no kernels), are dequantized now."""
        with torch.device("meta"):
            model = model_class_for(self.arch)(self.arch, max_positions=max_positions,
                                               kernels=self.kernels)
        # NOTE: weights are cast one by one and the model only moved, never cast as a whole:
        # the rotary cos/sin tables must stay float32. The runner takes the dense tensors over
        # (the checkpoint's dict is emptied), so the parts of the fused q/k/v and gate/up
        # matrices are freed once the model holds its own: ~200 MB less at peak here.
        weights = {name: w.to(self.dtype) for name, w in checkpoint.weights.items()}
        checkpoint.weights.clear()
        blocks_only = {name for name in checkpoint.quantized if name not in weights}
        for name in blocks_only:
            blocks = checkpoint.quantized[name]
            weights[name] = (torch.empty(blocks.shape, dtype=self.dtype, device="meta")
                             if uses_blocks else blocks.dequantize(self.dtype))
        model.load_weights(weights)
        return model, blocks_only if uses_blocks else set()

    def _int8_activations(self, mode: str) -> bool:
        """int8 or exact products for the quantized steps (every kernel tier has both); "auto"
        (no measured table) keeps the exact product in float32, so a float32 run matches the
        reference by default, and int8 where the tier has integer dot products."""
        assert self.kernels is not None
        if mode == "auto":
            return self.dtype == torch.bfloat16 and self.kernels.has_int8_dot
        return mode == "int8"

    def limit_threads_for_small_steps(self, max_tokens: int) -> None:
        """Run steps of at most `max_tokens` tokens on one thread (0: never), and, where the
        dispatch table has timed them, only those measured shorter than SHORT_STEP_MS. For
        serving, where the event loop and the clients share the cores: a short step's many
        short parallel regions stall on every barrier whose other thread the OS has just given
        to them. A longer step loses less to that than one thread loses to two."""
        if self.device.type != "cpu":
            max_tokens = 0
        elif self.dispatch is not None:
            max_tokens = min(max_tokens, self.dispatch.short_steps_max_tokens(SHORT_STEP_MS))
        self.single_thread_max_tokens = max_tokens

    def _load_kernels(self, mode: str) -> CpuKernels | None:
        arch = self.arch
        kernels = CpuKernels.create(self.device, self.dtype, mode)
        if kernels is not None and not CpuNativeAttention.supports(
                arch.num_heads, arch.num_kv_heads, arch.head_dim, self.block_size):
            if mode == "native":
                raise ValueError("kernels='native': the CPU kernels do not support this "
                                 "model's head layout or block size; use kernels='auto'")
            return None
        logger.info("kernels: %s", "flintlm CPU kernels" if kernels else "torch")
        return kernels

    # -- KV cache --------------------------------------------------------------------------------

    def _plan_kv_cache(self, config: CacheConfig) -> KVCacheLayout:
        arch = self.arch
        elem = torch.finfo(self.kv_dtype).bits // 8
        bytes_per_block = 2 * arch.num_layers * config.block_size * arch.kv_size * elem
        budget = config.kv_cache_memory
        if budget is None:
            budget = min(int(available_memory_bytes(self.device) * config.kv_cache_fraction),
                         config.max_kv_cache_memory)
        num_blocks = budget // bytes_per_block
        if num_blocks < 1:
            raise ValueError(f"a KV-cache budget of {budget} bytes holds no block of "
                             f"{bytes_per_block} bytes; raise --kv-cache-memory")
        return KVCacheLayout(num_blocks, config.block_size, bytes_per_block)

    def _allocate_kv_cache(self, num_blocks: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        arch = self.arch
        return self.model.attention.allocate_kv_cache(
            arch.num_layers, num_blocks, self.block_size, arch.num_kv_heads, arch.head_dim,
            self.kv_dtype, self.device)

    # -- the step --------------------------------------------------------------------------------

    def threads_for(self, num_tokens: int) -> int | None:
        """Threads for a step of `num_tokens`, when fewer than all: the serving limit, else the
        measured table's choice; None leaves the thread count alone."""
        if num_tokens <= self.single_thread_max_tokens:
            return 1
        if self.dispatch is not None:
            wanted = self.dispatch.choice_for(num_tokens).num_threads
            return wanted if wanted < torch.get_num_threads() else None
        return None

    @torch.inference_mode()
    def execute(self, scheduler_output: SchedulerOutput) -> RunnerOutput:
        wanted = self.threads_for(scheduler_output.num_batched_tokens)
        if wanted is None:
            return self._execute(scheduler_output)
        threads = torch.get_num_threads()
        torch.set_num_threads(wanted)  # sets OpenMP's team size for the native kernels too
        try:
            return self._execute(scheduler_output)
        finally:
            torch.set_num_threads(threads)

    def _execute(self, scheduler_output: SchedulerOutput) -> RunnerOutput:
        ordered = _batch_order(scheduler_output.scheduled)
        input_ids, positions, layout = self._prepare_inputs(ordered)
        if self.fast_decode is not None and self.fast_decode.can_run(layout.num_tokens):
            hidden = self.fast_decode.forward(input_ids, positions, layout)
        else:
            meta = self.model.attention.metadata(layout, self.device)
            hidden = self.model(input_ids, positions, self.kv_caches, meta)

        # Rows whose logits are needed: the last row of each sampling request, and every row of
        # a chunk whose prompt logprobs were asked for.
        sample_rows, sampling = [], []
        prompt_lp_requests: list[tuple[ScheduledRequest, int, int]] = []
        row = 0
        for scheduled in ordered:
            n = scheduled.num_scheduled_tokens
            if scheduled.is_sampling:
                sample_rows.append(row + n - 1)
                sampling.append(scheduled.request)
            if self._wants_prompt_logprobs(scheduled):
                prompt_lp_requests.append((scheduled, row, n))
            row += n

        output = RunnerOutput()
        if prompt_lp_requests:
            self._prompt_logprobs(hidden, input_ids, prompt_lp_requests, output)
        if sampling:
            logits = self.compute_logits(hidden[torch.tensor(sample_rows,
                                                                   device=self.device)])
            batch = self.sampler.prepare(sampling)
            bitmask = build_bitmask(sampling, self.arch.vocab_size)
            if bitmask is not None:
                batch.token_bitmask = bitmask.to(self.device, non_blocking=True)
            sampled = self.sampler.sample(logits, batch)
            self._collect_samples(sampling, sampled, output)
        return output

    def _prepare_inputs(self, ordered: list[ScheduledRequest]
                        ) -> tuple[torch.Tensor, torch.Tensor, BatchLayout]:
        block_size = self.block_size
        token_ids: list[int] = []
        positions: list[int] = []
        slots: list[int] = []
        sequences = []
        for scheduled in ordered:
            request, start = scheduled.request, scheduled.num_computed_tokens
            end = start + scheduled.num_scheduled_tokens
            block_ids = request.block_ids
            if end - start == 1:
                token_ids.append(_token_at(request, start))
            else:
                token_ids += _token_slice(request, start, end)
            chunk_positions = range(start, end)
            positions += chunk_positions
            slots += [block_ids[p // block_size] * block_size + p % block_size
                      for p in chunk_positions]
            sequences.append(SequenceSlice(block_ids, start, end - start))
        device = self.device
        layout = BatchLayout(sequences, torch.tensor(slots, dtype=torch.long).to(device),
                             block_size)
        return (torch.tensor(token_ids, dtype=torch.long).to(device, non_blocking=True),
                torch.tensor(positions, dtype=torch.long).to(device, non_blocking=True), layout)

    # -- outputs ---------------------------------------------------------------------------------

    def _collect_samples(self, requests: list[Request], sampled: SamplerOutput,
                         output: RunnerOutput) -> None:
        token_ids = sampled.token_ids.tolist()  # the step's one host sync
        chosen = sampled.chosen_logprobs.tolist() if sampled.chosen_logprobs is not None else None
        top_lps = sampled.top_logprobs.tolist() if sampled.top_logprobs is not None else None
        top_ids = sampled.top_token_ids.tolist() if sampled.top_token_ids is not None else None
        for i, request in enumerate(requests):
            output.sampled_token_ids[request.request_id] = token_ids[i]
            k = request.params.logprobs
            if k is None or chosen is None:
                continue
            top = tuple(Logprob(t, lp)
                        for t, lp in zip(top_ids[i][:k], top_lps[i][:k], strict=True)) \
                if k and top_ids is not None and top_lps is not None else ()
            output.logprobs[request.request_id] = TokenLogprobs(
                Logprob(token_ids[i], chosen[i]), top)

    def _wants_prompt_logprobs(self, scheduled: ScheduledRequest) -> bool:
        request = scheduled.request
        return (request.params.prompt_logprobs is not None
                and scheduled.num_computed_tokens < request.num_prompt_tokens
                and request.num_preemptions == 0)

    def _prompt_logprobs(self, hidden: torch.Tensor, input_ids: torch.Tensor,
                         chunks: list[tuple[ScheduledRequest, int, int]],
                         output: RunnerOutput) -> None:
        """Logprob of each prompt token given the ones before it (rows predict the next token)."""
        for scheduled, row, n in chunks:
            request = scheduled.request
            start = scheduled.num_computed_tokens
            # positions start..start+n-1 predict tokens start+1..start+n (prompt tokens only)
            num_targets = min(n, request.num_prompt_tokens - 1 - start)
            entries: list[TokenLogprobs] = []
            if num_targets > 0:
                logprobs = self.compute_logits(hidden[row:row + num_targets]).log_softmax(-1)
                targets = torch.tensor(request.prompt_token_ids[start + 1:start + 1 + num_targets],
                                       device=self.device)
                chosen = logprobs.gather(1, targets.unsqueeze(1)).squeeze(1).tolist()
                k = request.params.prompt_logprobs or 0  # not None: see _wants_prompt_logprobs
                best = logprobs.topk(max(k, 1), dim=-1)
                top_lp, top_ids = best.values.tolist(), best.indices.tolist()
                for i, target in enumerate(targets.tolist()):
                    top = tuple(Logprob(t, lp)
                                for t, lp in zip(top_ids[i][:k], top_lp[i][:k], strict=True))
                    entries.append(TokenLogprobs(Logprob(target, chosen[i]), top))
            output.prompt_logprobs[request.request_id] = entries


def _batch_order(scheduled: list[ScheduledRequest]) -> list[ScheduledRequest]:
    """[decodes | chunks continuing a cached context | chunks starting a sequence], the layout
    the attention backends expect (see models/attention.py)."""
    def kind(s: ScheduledRequest) -> int:
        if s.num_computed_tokens == 0:
            return 2
        return 0 if s.num_scheduled_tokens == 1 else 1

    return sorted(scheduled, key=kind)  # stable: the scheduler's order within each kind


def _token_at(request, position: int) -> int:
    num_prompt = len(request.prompt_token_ids)
    if position < num_prompt:
        return request.prompt_token_ids[position]
    return request.output_token_ids[position - num_prompt]


def _token_slice(request, start: int, end: int) -> list[int]:
    num_prompt = len(request.prompt_token_ids)
    if end <= num_prompt:
        return request.prompt_token_ids[start:end]
    return request.all_token_ids[start:end]
