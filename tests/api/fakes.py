"""A stand-in `AsyncEngine` for API tests that need to see exactly what reached the engine
(every honoured parameter must arrive in `SamplingParams`) or to control timing. Byte-level
tokenizer: token id = byte value; it answers with `reply` (`REPLY` unless a test sets another
ASCII text), one byte per token.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from flintlm.engine.request import (
    FinishReason,
    InvalidRequestError,
    Logprob,
    RequestOutput,
    SamplingParams,
    TokenLogprobs,
    Usage,
)

REPLY = "Hello from the fake engine."
EOS = 256
FAIL_AT_ONCE = b"fail-at-once"  # a prompt containing this raises before any output
FAIL_LATER = b"fail-later"  # ... or after the first output
SECRET = "secret internal detail"


class FakeTokenizer:
    vocab_size = 260
    eos_token_ids = frozenset({EOS})
    bos_token_id = None
    num_calls_on_event_loop = 0  # encode, decode and render calls run on the event loop's thread

    def _note_thread(self) -> None:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return  # a worker thread: where rendering and tokenizing belong
        self.num_calls_on_event_loop += 1

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        self._note_thread()
        return list(text.encode())

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        self._note_thread()
        return bytes(i for i in ids if i < 256).decode(errors="replace")

    def id_to_token(self, token_id: int) -> str:
        return self.decode([token_id])

    def token_bytes(self, token_id: int) -> bytes:
        return bytes([token_id]) if token_id < 256 else b""

    def apply_chat_template(self, messages: list[dict], *, tools: list | None = None,
                            add_generation_prompt: bool = True, **_: object) -> str:
        self._note_thread()
        text = "".join(f"<{m['role']}>{m['content']}\n" for m in messages)
        return text + ("<assistant>" if add_generation_prompt else "")


@dataclass
class FakeStats:
    num_running: int = 0
    num_waiting: int = 0
    num_kv_blocks_total: int = 100
    num_kv_blocks_used: int = 0
    prefix_cache_queries: int = 0
    prefix_cache_hits: int = 0
    num_preemptions: int = 0


@dataclass
class Submitted:
    request_id: str
    prompt_token_ids: list[int]
    params: SamplingParams
    priority: int
    cache_salt: str | None


@dataclass
class FakeEngine:
    tokenizer: FakeTokenizer = field(default_factory=FakeTokenizer)
    model_name: str = "fake"
    max_model_len: int = 256
    token_delay_s: float = 0.0
    reply: str = REPLY
    submitted: list[Submitted] = field(default_factory=list)
    aborted: set[str] = field(default_factory=set)
    running: set[str] = field(default_factory=set)
    is_alive: bool = True
    max_in_flight: int = 1024

    def start(self) -> None: ...

    async def shutdown(self, drain_timeout_s: float | None = None) -> None: ...

    def stats(self) -> FakeStats:
        return FakeStats(num_running=len(self.running), num_kv_blocks_used=len(self.running))

    def abort(self, request_id: str) -> None:
        self.aborted.add(request_id)

    def has_room(self, num_requests: int) -> bool:
        return len(self.running) + num_requests <= self.max_in_flight

    async def generate(self, request_id: str, prompt_token_ids: list[int],
                       params: SamplingParams, *, priority: int = 0,
                       cache_salt: str | None = None) -> AsyncIterator[RequestOutput]:
        params.validate(self.tokenizer.vocab_size)
        if len(prompt_token_ids) + (params.max_tokens or 0) > self.max_model_len:
            raise InvalidRequestError("too long", "messages", "context_length_exceeded")
        self.submitted.append(Submitted(request_id, prompt_token_ids, params, priority,
                                        cache_salt))
        prompt_text = bytes(t for t in prompt_token_ids if t < 256)
        if FAIL_AT_ONCE in prompt_text:
            raise RuntimeError(SECRET)
        self.running.add(request_id)
        try:
            async for output in self._outputs(request_id, prompt_token_ids, params):
                yield output
                if FAIL_LATER in prompt_text:
                    raise RuntimeError(SECRET)
        finally:
            self.running.discard(request_id)

    async def _outputs(self, request_id: str, prompt: list[int], params: SamplingParams
                       ) -> AsyncIterator[RequestOutput]:
        reply = list(self.reply.encode())
        limit = len(reply) if params.max_tokens is None else min(params.max_tokens, len(reply))
        if params.ignore_eos and params.max_tokens is not None:
            limit = params.max_tokens
        prompt_logprobs = None
        if params.prompt_logprobs is not None:
            prompt_logprobs = [None] + [_logprobs(t) for t in prompt[1:]]
        text = ""
        for i in range(max(limit, 1)):
            await asyncio.sleep(self.token_delay_s)
            if request_id in self.aborted:
                yield _out(request_id, [], "", FinishReason.ABORT, len(prompt), i)
                return
            if limit == 0:
                break
            token = reply[i % len(reply)]
            text += chr(token)
            hit = next((s for s in params.stop if s in text), None)
            if hit is not None:
                yield _out(request_id, [], "", FinishReason.STOP, len(prompt), i)
                return
            reason = FinishReason.LENGTH if i + 1 == limit else None
            if reason and limit == len(reply) and params.max_tokens != limit:
                reason = FinishReason.STOP
            out = _out(request_id, [token], chr(token), reason, len(prompt), i + 1)
            if params.logprobs is not None:
                out.new_logprobs = [_logprobs(token, params.logprobs)]
            if i == 0:
                out.prompt_logprobs = prompt_logprobs
            yield out
            if reason:
                return
        out = _out(request_id, [], "", FinishReason.LENGTH, len(prompt), 0)
        out.prompt_logprobs = prompt_logprobs
        yield out


def _logprobs(token: int, num_top: int = 1) -> TokenLogprobs:
    chosen = Logprob(token, -0.5, chr(token) if token < 256 else "")
    top = tuple(Logprob(t, -0.5 - i, chr(t)) for i, t in enumerate(range(token, token + num_top)))
    return TokenLogprobs(chosen, top)


def _out(request_id: str, ids: list[int], text: str, reason: FinishReason | None,
         num_prompt: int, num_completion: int) -> RequestOutput:
    return RequestOutput(request_id, ids, text, reason, Usage(num_prompt, num_completion),
                         queue_time_s=0.0)
