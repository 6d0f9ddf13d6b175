"""Offline Python API in vLLM's convention: `LLM(model="default").generate(prompts, params)`.

Runs the synchronous engine in the caller's thread until every prompt is done.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, TypeGuard, cast

from flintlm.config import CacheConfig, FlintConfig, ModelConfig, SchedulerConfig, parse_size
from flintlm.engine.engine import Engine
from flintlm.engine.request import FinishReason, SamplingParams, TokenLogprobs, Usage


@dataclass
class CompletionOutput:
    index: int
    text: str
    token_ids: list[int]
    finish_reason: str | None
    stop_reason: str | int | None = None
    logprobs: list[TokenLogprobs] | None = None


@dataclass
class GenerationResult:
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput] = field(default_factory=list)
    prompt_logprobs: list[TokenLogprobs | None] | None = None
    num_cached_tokens: int = 0

    @property
    def text(self) -> str:
        return self.outputs[0].text

    @property
    def token_ids(self) -> list[int]:
        return self.outputs[0].token_ids

    @property
    def usage(self) -> Usage:
        return Usage(len(self.prompt_token_ids), sum(len(o.token_ids) for o in self.outputs),
                     self.num_cached_tokens)


class LLM:
    def __init__(self, model: str = "default", *, dtype: str = "auto", device: str = "auto",
                 max_model_len: int | None = None, kv_cache_memory: str | int | None = None,
                 max_num_seqs: int = 64, max_num_batched_tokens: int = 512,
                 enable_prefix_caching: bool = True, block_size: int = 16, seed: int = 0,
                 kv_cache_dtype: str = "auto",
                 quantized_max_tokens: int | None = None, quantized_activations: str = "auto",
                 config: FlintConfig | None = None):
        if config is None:
            config = FlintConfig(
                model=ModelConfig(model=model, dtype=dtype, device=device,
                                  max_model_len=max_model_len, seed=seed,
                                  quantized_max_tokens=quantized_max_tokens,
                                  quantized_activations=quantized_activations),
                cache=CacheConfig(block_size=block_size,
                                  kv_cache_memory=None if kv_cache_memory is None
                                  else parse_size(kv_cache_memory),
                                  enable_prefix_caching=enable_prefix_caching,
                                  kv_cache_dtype=kv_cache_dtype),
                scheduler=SchedulerConfig(max_num_seqs=max_num_seqs,
                                          max_num_batched_tokens=max_num_batched_tokens))
        self.config = config
        self.engine = Engine.from_config(config)
        self.tokenizer = self.engine.tokenizer
        self._counter = 0

    def generate(self, prompts: str | list[int] | Sequence[str | list[int]],
                 params: SamplingParams | list[SamplingParams] | None = None,
                 ) -> list[GenerationResult]:
        """Generate for every prompt (text or token ids); results come back in prompt order.

        `params` is one SamplingParams for all prompts, or a list with one per prompt.
        """
        batch: Sequence[str | list[int]]
        if isinstance(prompts, str) or _is_token_ids(prompts):
            batch = [prompts]
        else:  # a batch: the token-ids case was told apart above
            batch = cast("Sequence[str | list[int]]", prompts)
        if isinstance(params, list):
            if len(params) != len(batch):
                raise ValueError(f"{len(params)} SamplingParams for {len(batch)} prompts: pass "
                                 "one per prompt, or a single one for all")
            params_list = params
        else:
            params_list = [params or SamplingParams()] * len(batch)
        results = []
        for prompt, request_params in zip(batch, params_list, strict=True):
            token_ids = self.tokenizer.encode(prompt) if isinstance(prompt, str) else list(prompt)
            results.append(self._add(prompt if isinstance(prompt, str) else None, token_ids,
                                     request_params))
        self._run_to_completion(results)
        return results

    def chat(self, messages: list[dict[str, Any]] | list[list[dict[str, Any]]],
             params: SamplingParams | None = None, **template_kwargs: Any,
             ) -> list[GenerationResult]:
        if messages and isinstance(messages[0], dict):
            conversations = [messages]
        else:
            conversations = cast("list[list[dict[str, Any]]]", messages)
        prompts = [self.tokenizer.apply_chat_template(c, add_generation_prompt=True,
                                                      **template_kwargs)
                   for c in conversations]
        # The rendered template already carries the BOS token where the model wants one.
        token_ids = [self.tokenizer.encode(p, add_special_tokens=False) for p in prompts]
        results = [self._add(p, ids, params or SamplingParams())
                   for p, ids in zip(prompts, token_ids, strict=True)]
        self._run_to_completion(results)
        return results

    def _add(self, prompt: str | None, token_ids: list[int],
             params: SamplingParams) -> GenerationResult:
        self._counter += 1
        result = GenerationResult(f"llm-{self._counter}", prompt, token_ids)
        for index in range(params.n):
            child = dataclasses.replace(params, n=1)
            if params.seed is not None:
                child.seed = params.seed + index
            self.engine.add_request(f"{result.request_id}-{index}", token_ids, child)
            result.outputs.append(CompletionOutput(index, "", [], None))
        return result

    def _run_to_completion(self, results: list[GenerationResult]) -> None:
        by_id = {f"{r.request_id}-{o.index}": (r, o) for r in results for o in r.outputs}
        while self.engine.has_unfinished:
            for output in self.engine.step():
                result, completion = by_id[output.request_id]
                completion.text += output.new_text
                completion.token_ids += output.new_token_ids
                if output.new_logprobs:
                    completion.logprobs = (completion.logprobs or []) + output.new_logprobs
                if output.prompt_logprobs is not None and completion.index == 0:
                    result.prompt_logprobs = output.prompt_logprobs
                if completion.index == 0:
                    result.num_cached_tokens = output.usage.cached_tokens
                if output.finish_reason is not None:
                    completion.finish_reason = FinishReason(output.finish_reason).value
                    completion.stop_reason = output.stop_reason


def _is_token_ids(prompts: object) -> TypeGuard[list[int]]:
    """One prompt given as token ids (a list of ints), not a batch of prompts."""
    return isinstance(prompts, list) and bool(prompts) and isinstance(prompts[0], int)
