"""The server's bounds on one generation request (`LimitsConfig`), and the one place where its
parameters are validated.

`checked_params` runs before authentication: shapes, ranges and caps that need neither the key
nor the tokens (a bad request costs nothing: no key lookup, no rate-limit token). `fit_max_tokens`
runs at admission, once the prompts are tokenized and the key is known (so a refusal there gets
its ledger row): the context length, the key's max_tokens ceiling, the completion tokens of the
whole request (max_tokens x n x prompts), and the server default for a request without
max_tokens. NOTE: the context length is checked before that cap, so a max_tokens beyond the
context is reported as `context_length_exceeded`, as OpenAI reports it.
"""

from __future__ import annotations

import asyncio
import dataclasses
from typing import TYPE_CHECKING

from flintlm.api.errors import InvalidParam
from flintlm.api.protocol import ChatCompletionRequest, CompletionRequest

if TYPE_CHECKING:
    from flintlm.config import LimitsConfig
    from flintlm.engine.request import SamplingParams

GenerationRequest = ChatCompletionRequest | CompletionRequest


async def checked_params(body: GenerationRequest, limits: LimitsConfig,
                         vocab_size: int) -> SamplingParams:
    """The request's engine parameters, every key-independent rule checked, or a 400.

    Counts are checked first, on the event loop (cheap); a structured-output spec or tools are
    compiled by xgrammar to check them, which runs on a worker thread.
    """
    _check_counts(body, limits)
    if body.has_constraint:
        params = await asyncio.to_thread(body.sampling_params)
    else:
        params = body.sampling_params()
    return checked_sampling(params, limits, vocab_size)


def checked_sampling(params: SamplingParams, limits: LimitsConfig,
                     vocab_size: int) -> SamplingParams:
    """`params` once their ranges, stop strings and `n` are within the server's bounds, or a 400;
    for routes whose body is not chat's or completions' (Messages)."""
    params.validate(vocab_size)
    _check_stops(params.stop, limits)
    if params.n > limits.max_n:
        raise InvalidParam(f"n={params.n} is more than this server's limit of {limits.max_n} "
                           "choices per request", param="n")
    return params


def _check_counts(body: GenerationRequest, limits: LimitsConfig) -> None:
    if isinstance(body, ChatCompletionRequest):
        check_count("messages", len(body.messages), limits.max_messages)
        check_count("tools", len(body.tools or []), limits.max_tools)
    else:
        check_count("prompt", body.num_prompts, limits.max_prompts)


def check_count(param: str, count: int, limit: int) -> None:
    if count > limit:
        raise InvalidParam(f"{param} has {count} entries; this server takes at most {limit}",
                           param=param)


def _check_stops(stops: list[str], limits: LimitsConfig) -> None:
    check_count("stop", len(stops), limits.max_stop_strings)
    for stop in stops:
        if len(stop) > limits.max_stop_string_chars:
            raise InvalidParam(f"a stop string of {len(stop)} characters is longer than this "
                               f"server's limit of {limits.max_stop_string_chars}", param="stop")


@dataclasses.dataclass(frozen=True)
class TokenBounds:
    """What bounds a tokenized request's completion: the model, the server and the key."""

    max_model_len: int
    default_max_tokens: int
    max_request_completion_tokens: int
    key_max_tokens: int | None = None  # the key's ceiling on max_tokens; None: none


def fit_max_tokens(params: SamplingParams, prompt_lengths: list[int], bounds: TokenBounds,
                   prompt_param: str) -> SamplingParams:
    """`params` with max_tokens set: the client's if it fits, else a 400; if the client set
    none, the server default capped by the context left, the key's ceiling and the per-request
    cap. `prompt_param` is what a prompt too long is called ("prompt" or "messages")."""
    longest = max(prompt_lengths)
    if longest >= bounds.max_model_len:
        raise _too_long(bounds.max_model_len, longest, params.max_tokens or 0, prompt_param)
    ceiling = bounds.key_max_tokens
    if params.max_tokens is None:
        per_choice = bounds.max_request_completion_tokens // (params.n * len(prompt_lengths))
        room = [bounds.default_max_tokens, bounds.max_model_len - longest, per_choice]
        if ceiling is not None:
            room.append(ceiling)
        return dataclasses.replace(params, max_tokens=max(1, min(room)))
    if ceiling is not None and params.max_tokens > ceiling:
        raise InvalidParam(f"max_tokens={params.max_tokens} is more than this key's limit of "
                           f"{ceiling}", param="max_tokens", code="max_tokens_over_key_limit")
    if longest + params.max_tokens > bounds.max_model_len:
        raise _too_long(bounds.max_model_len, longest, params.max_tokens, "max_tokens")
    total = params.max_tokens * params.n * len(prompt_lengths)
    if total > bounds.max_request_completion_tokens:
        raise InvalidParam(
            f"max_tokens x n x prompts = {params.max_tokens} x {params.n} x "
            f"{len(prompt_lengths)} = {total} completion tokens is more than this server's "
            f"limit of {bounds.max_request_completion_tokens} per request", param="max_tokens",
            code="request_completion_tokens_exceeded")
    return params


def _too_long(max_model_len: int, num_prompt: int, max_tokens: int, param: str) -> InvalidParam:
    return InvalidParam(
        f"This model's maximum context length is {max_model_len} tokens. However, you "
        f"requested {num_prompt + max_tokens} tokens ({num_prompt} in the prompt, {max_tokens} "
        "for the completion). Please reduce the prompt or max_tokens.",
        param=param, code="context_length_exceeded")
