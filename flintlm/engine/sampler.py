"""Batched sampling: `prepare()` gathers per-request parameters on the host into tensors once per
step; `sample()` runs on the device with no host sync except reading the chosen ids.

Order of logit processing: grammar mask -> logit_bias -> min_tokens -> penalties -> (greedy: argmax)
-> temperature -> min_p -> top_k/top_p -> sample. Logprobs are reported from the raw model logits.
Random sampling uses the exponential trick (argmax(p / q), q ~ Exp(1)): no cumulative-sum search,
and a seeded request draws its noise from its own generator, so its output does not depend on
what else is in the batch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from collections.abc import Sequence

    from flintlm.engine.request import Request
    from flintlm.kernels.ops import CpuKernels


@dataclass(slots=True)
class SamplingBatch:
    num_rows: int
    is_all_greedy: bool
    is_greedy: torch.Tensor  # [B] bool
    temperature: torch.Tensor  # [B, 1]; 1.0 on greedy rows so division is harmless
    top_k: torch.Tensor | None  # [B] long, vocab size where off
    top_p: torch.Tensor | None  # [B]
    min_p: torch.Tensor | None  # [B]
    logit_bias: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None  # rows, token ids, values
    banned: tuple[torch.Tensor, torch.Tensor] | None  # rows, token ids (min_tokens: no EOS yet)
    penalties: tuple[torch.Tensor, ...] | None  # rep [B,1], presence [B,1], freq [B,1],
    #                                             output counts [B,V], prompt mask [B,V]
    seeded_rows: list[tuple[int, torch.Generator]]
    num_logprobs: int | None  # most top alternatives any row asked for; None: no logprobs
    token_bitmask: torch.Tensor | None = None  # [B, ceil(V/32)] int32 from the grammar, or None
    grammar_rows: list[int] = field(default_factory=list)  # rows with a grammar (the mask's)


@dataclass(slots=True)
class SamplerOutput:
    token_ids: torch.Tensor  # [B]
    chosen_logprobs: torch.Tensor | None  # [B]
    top_logprobs: torch.Tensor | None  # [B, k]
    top_token_ids: torch.Tensor | None  # [B, k]


class Sampler:
    def __init__(self, vocab_size: int, device: torch.device, seed: int = 0,
                 kernels: CpuKernels | None = None):
        """`kernels`: flintlm's CPU kernels, for a vectorised argmax (torch's is ~10x slower)."""
        self.vocab_size = vocab_size
        self.device = device
        self.generator = torch.Generator(device=device)
        self.generator.manual_seed(seed)
        self.kernels = kernels

    def _argmax(self, values: torch.Tensor) -> torch.Tensor:
        if self.kernels is not None and values.is_contiguous():
            return self.kernels.argmax(values)
        return values.argmax(dim=-1)

    def prepare(self, requests: list[Request]) -> SamplingBatch:
        params = [r.params for r in requests]
        device = self.device
        is_greedy = [p.is_greedy for p in params]
        num_rows = len(requests)

        def column(values: Sequence[float], dtype: torch.dtype = torch.float32) -> torch.Tensor:
            return torch.tensor(values, dtype=dtype).to(device, non_blocking=True)

        temperature = column([1.0 if g else p.temperature
                              for g, p in zip(is_greedy, params, strict=True)])
        top_k = top_p = min_p = None
        if any(p.top_k > 0 for p in params):
            top_k = column([p.top_k if p.top_k > 0 else self.vocab_size for p in params],
                           torch.long)
        if any(p.top_p < 1.0 for p in params):
            top_p = column([p.top_p for p in params])
        if any(p.min_p > 0.0 for p in params):
            min_p = column([p.min_p for p in params])

        seeded_rows = []
        for row, request in enumerate(requests):
            if request.params.seed is not None and not is_greedy[row]:
                if request.generator is None:
                    request.generator = torch.Generator(device=device)
                    request.generator.manual_seed(request.params.seed)
                seeded_rows.append((row, request.generator))
        num_logprobs = max((p.logprobs for p in params if p.logprobs is not None), default=None)
        return SamplingBatch(
            num_rows=num_rows, is_all_greedy=all(is_greedy),
            is_greedy=column(is_greedy, torch.bool), temperature=temperature.unsqueeze(1),
            top_k=top_k, top_p=top_p, min_p=min_p,
            logit_bias=self._logit_bias(requests), banned=self._banned_tokens(requests),
            penalties=self._penalties(requests), seeded_rows=seeded_rows,
            num_logprobs=num_logprobs,
            grammar_rows=[row for row, r in enumerate(requests) if r.grammar is not None])

    @torch.no_grad()
    def sample(self, logits: torch.Tensor, batch: SamplingBatch) -> SamplerOutput:
        """logits [B, V] float32 (modified in place) -> sampled ids and logprobs."""
        chosen_lp = top_lp = top_ids = None
        raw_logprobs = logits.log_softmax(dim=-1) if batch.num_logprobs is not None else None
        if batch.token_bitmask is not None:
            _apply_bitmask(logits, batch.token_bitmask, batch.grammar_rows)
        if batch.logit_bias is not None:
            rows, token_ids, values = batch.logit_bias
            logits.index_put_((rows, token_ids), values, accumulate=True)
        if batch.banned is not None:
            logits.index_put_(batch.banned, torch.tensor(float("-inf"), device=logits.device))
        if batch.penalties is not None:
            _apply_penalties(logits, *batch.penalties)

        if batch.is_all_greedy:
            token_ids = self._argmax(logits)
        else:
            token_ids = self._random_sample(logits, batch)

        if raw_logprobs is not None:
            chosen_lp = raw_logprobs.gather(1, token_ids.unsqueeze(1)).squeeze(1)
            if batch.num_logprobs:
                top_lp, top_ids = raw_logprobs.topk(batch.num_logprobs, dim=-1)
        return SamplerOutput(token_ids, chosen_lp, top_lp, top_ids)

    def _random_sample(self, logits: torch.Tensor, batch: SamplingBatch) -> torch.Tensor:
        greedy_ids = self._argmax(logits)
        logits = logits / batch.temperature
        if batch.min_p is not None:
            probs = logits.softmax(dim=-1)
            threshold = batch.min_p.unsqueeze(1) * probs.max(dim=-1, keepdim=True).values
            logits = logits.masked_fill(probs < threshold, float("-inf"))
        if batch.top_k is not None or batch.top_p is not None:
            logits = _top_k_top_p(logits, batch.top_k, batch.top_p)
        probs = logits.softmax(dim=-1)
        noise = torch.empty_like(probs).exponential_(generator=self.generator)
        for row, generator in batch.seeded_rows:
            noise[row].exponential_(generator=generator)
        sampled = self._argmax(probs / noise)
        return torch.where(batch.is_greedy, greedy_ids, sampled)

    # -- host-side preparation of sparse parameters ---------------------------------------------

    def _logit_bias(self, requests: list[Request]
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
        rows: list[int] = []
        ids: list[int] = []
        values: list[float] = []
        for row, request in enumerate(requests):
            for token_id, bias in (request.params.logit_bias or {}).items():
                rows.append(row)
                ids.append(int(token_id))
                values.append(float(bias))
        if not rows:
            return None
        return (torch.tensor(rows, device=self.device), torch.tensor(ids, device=self.device),
                torch.tensor(values, device=self.device))

    def _banned_tokens(self, requests: list[Request]
                       ) -> tuple[torch.Tensor, torch.Tensor] | None:
        rows: list[int] = []
        ids: list[int] = []
        for row, request in enumerate(requests):
            if len(request.output_token_ids) < request.params.min_tokens:
                stops = set(request.params.stop_token_ids)
                if not request.params.ignore_eos:
                    stops |= request.eos_token_ids
                rows += [row] * len(stops)
                ids += sorted(stops)
        if not rows:
            return None
        return torch.tensor(rows, device=self.device), torch.tensor(ids, device=self.device)

    def _penalties(self, requests: list[Request]) -> tuple[torch.Tensor, ...] | None:
        if not any(r.params.has_penalties for r in requests):
            return None
        num_rows, vocab = len(requests), self.vocab_size
        counts = torch.zeros(num_rows, vocab, device=self.device)
        prompt_mask = torch.zeros(num_rows, vocab, dtype=torch.bool, device=self.device)
        for row, request in enumerate(requests):
            if not request.params.has_penalties:
                continue
            if request.output_token_ids:
                output_ids = torch.tensor(request.output_token_ids, device=self.device)
                counts[row].index_add_(0, output_ids, torch.ones_like(output_ids,
                                                                       dtype=counts.dtype))
            prompt_mask[row, torch.tensor(request.prompt_token_ids, device=self.device)] = True

        def column(name: str) -> torch.Tensor:
            values = [getattr(r.params, name) for r in requests]
            return torch.tensor(values, device=self.device).unsqueeze(1)

        return (column("repetition_penalty"), column("presence_penalty"),
                column("frequency_penalty"), counts, prompt_mask)


def _apply_penalties(logits: torch.Tensor, repetition: torch.Tensor, presence: torch.Tensor,
                     frequency: torch.Tensor, counts: torch.Tensor,
                     prompt_mask: torch.Tensor) -> None:
    seen = (counts > 0) | prompt_mask
    penalised = torch.where(logits > 0, logits / repetition, logits * repetition)
    logits.copy_(torch.where(seen, penalised, logits))
    logits -= frequency * counts + presence * (counts > 0).to(logits.dtype)


def _top_k_top_p(logits: torch.Tensor, top_k: torch.Tensor | None,
                 top_p: torch.Tensor | None) -> torch.Tensor:
    sorted_logits, sorted_ids = logits.sort(dim=-1, descending=True)
    vocab = logits.shape[-1]
    if top_k is not None:
        ranks = torch.arange(vocab, device=logits.device).unsqueeze(0)
        sorted_logits = sorted_logits.masked_fill(ranks >= top_k.unsqueeze(1), float("-inf"))
    if top_p is not None:
        probs = sorted_logits.softmax(dim=-1)
        # keep a token if the mass before it is below top_p (the first token always survives)
        mass_before = probs.cumsum(dim=-1) - probs
        sorted_logits = sorted_logits.masked_fill(mass_before >= top_p.unsqueeze(1),
                                                  float("-inf"))
    return torch.full_like(logits, float("-inf")).scatter_(1, sorted_ids, sorted_logits)


def _apply_bitmask(logits: torch.Tensor, bitmask: torch.Tensor, rows: list[int]) -> None:
    """Mask out tokens whose bit is 0 in a packed int32 bitmask [B, ceil(V/32)]; only `rows`
    have a grammar (the others' bits are all 1), so only they are unpacked and written.

    NOTE: with half a batch of 32 constrained by JSON masks, on the 2-core CPU, this takes 3.0 ms
    a step against 4.1 ms for unpacking the whole batch and 4.2 ms for xgrammar's own CPU
    kernel (single-threaded).
    """
    vocab = logits.shape[-1]
    bits = torch.arange(32, device=logits.device, dtype=torch.int32)
    if len(rows) == logits.shape[0]:
        allowed = ((bitmask.unsqueeze(-1) >> bits) & 1).bool().flatten(1)[:, :vocab]
        logits.masked_fill_(~allowed, float("-inf"))
        return
    index = torch.tensor(rows, device=logits.device)
    allowed = ((bitmask.index_select(0, index).unsqueeze(-1) >> bits) & 1).bool().flatten(1)
    masked = logits.index_select(0, index).masked_fill_(~allowed[:, :vocab], float("-inf"))
    logits.index_copy_(0, index, masked)
