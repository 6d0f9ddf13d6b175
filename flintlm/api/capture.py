"""Stored completions at the HTTP edge: decides whether a chat request is kept (its `store` flag
and the key's capture mode), and keeps it, off the event loop, once its answer is whole.

Works on the wire format the client got, not on the route's internals: a JSON response is kept
as sent; a stream is assembled from its chunks, as the `openai` client assembles one, and kept
before `[DONE]`, so a listing right after the stream finds it. A stream that fails or is cut off
is not kept. Failing to keep one is logged; the answer was already paid for and is still given.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from starlette.responses import Response

from flintlm.api.errors import InvalidParam
from flintlm.api.protocol import usage_info
from flintlm.api.streaming import DONE_FRAME, SSEResponse
from flintlm.platform.capture import CaptureMode, effective_mode, is_captured
from flintlm.platform.completion_store import CompletionStore, check_metadata

if TYPE_CHECKING:
    from flintlm.api.deps import ServingState
    from flintlm.api.generation import Generation
    from flintlm.api.protocol import ChatCompletionRequest
    from flintlm.platform.keys import KeyRecord

logger = logging.getLogger("flintlm.api")


def completion_store(serving: ServingState) -> CompletionStore:
    """The store, masking the PII each key's guardrail policy names before anything is kept."""
    redact = serving.guardrails.redactor(serving.platform.keys.get)
    return CompletionStore.from_config(serving.platform.db, serving.config.platform, redact)


class ChatCapture:
    """Keeps one chat completion for the caller's tenant."""

    def __init__(self, serving: ServingState, key: KeyRecord, body: ChatCompletionRequest):
        self.serving = serving
        self.key = key
        self.metadata: dict[str, str] = dict(body.metadata or {})
        self.request = body.model_dump(mode="json", exclude_unset=True, by_alias=True,
                                       exclude={"metadata"})

    @classmethod
    def for_request(cls, serving: ServingState, key: KeyRecord, body: ChatCompletionRequest
                    ) -> ChatCapture | None:
        """The capture of this request, or None when it is not kept; a 400 for `store: true`
        on a key that never captures, or for metadata OpenAI would refuse."""
        mode = effective_mode(key.capture, CaptureMode(serving.config.platform.capture))
        if body.store and mode is CaptureMode.NEVER:
            raise InvalidParam("this API key does not allow storing completions (its capture "
                               "mode is 'never'); send store: false", param="store")
        try:
            check_metadata(body.metadata or {})
        except ValueError as exc:
            raise InvalidParam(str(exc), param="metadata") from None
        return cls(serving, key, body) if is_captured(mode, body.store) else None

    async def keep(self, response: Response) -> Response:
        """Keep what `response` answers: now for a JSON body, at the end for a stream."""
        if isinstance(response, SSEResponse):
            response.frames = self._kept_stream(response.frames, response.generation)
        else:
            await self._save(json.loads(bytes(response.body)))
        return response

    async def _kept_stream(self, frames: AsyncIterator[str], generation: Generation
                           ) -> AsyncIterator[str]:
        assembler = StreamAssembler()
        try:
            async for frame in frames:
                if frame == DONE_FRAME:
                    completion = assembler.completion()
                    if completion is not None:
                        completion.setdefault("usage", usage_info(generation.usage)
                                              .model_dump(mode="json"))
                        await self._save(completion)
                elif frame.startswith("data: "):
                    assembler.feed(json.loads(frame[len("data: "):]))
                yield frame
        finally:
            await frames.aclose()  # type: ignore[attr-defined]

    async def _save(self, completion: dict[str, Any]) -> None:
        store = completion_store(self.serving)
        try:
            await self.serving.admission.run(
                store.save, completion_id=completion["id"], tenant_id=self.key.tenant_id,
                key_id=self.key.id, model=completion["model"], request=self.request,
                completion=completion, metadata=self.metadata)
        except Exception:
            logger.exception("could not store completion %s of key %s", completion.get("id"),
                             self.key.id)


class StreamAssembler:
    """Chat completion chunks -> the `chat.completion` object they add up to."""

    def __init__(self) -> None:
        self.envelope: dict[str, Any] = {}
        self.choices: dict[int, dict[str, Any]] = {}
        self.usage: dict[str, Any] | None = None
        self.has_failed = False

    def feed(self, chunk: dict[str, Any]) -> None:
        if "error" in chunk:
            self.has_failed = True
            return
        if not self.envelope:
            self.envelope = {name: value for name, value in chunk.items()
                             if name not in ("choices", "usage", "object")}
        if chunk.get("usage") is not None:
            self.usage = chunk["usage"]
        for delta_choice in chunk.get("choices") or []:
            self._feed_choice(delta_choice)

    def _feed_choice(self, delta_choice: dict[str, Any]) -> None:
        choice = self.choices.setdefault(delta_choice["index"], {
            "index": delta_choice["index"], "content": "", "calls": {}, "logprobs": None,
            "finish_reason": None})
        delta = delta_choice.get("delta") or {}
        choice["content"] += delta.get("content") or ""
        for call in delta.get("tool_calls") or []:
            known = choice["calls"].setdefault(call["index"], {
                "id": None, "type": "function", "function": {"name": None, "arguments": ""}})
            function = call.get("function") or {}
            known["id"] = call.get("id") or known["id"]
            known["function"]["name"] = function.get("name") or known["function"]["name"]
            known["function"]["arguments"] += function.get("arguments") or ""
        logprobs = delta_choice.get("logprobs")
        if logprobs is not None:
            choice["logprobs"] = choice["logprobs"] or {"content": []}
            choice["logprobs"]["content"] += logprobs.get("content") or []
        if delta_choice.get("finish_reason") is not None:
            choice["finish_reason"] = delta_choice["finish_reason"]

    def completion(self) -> dict[str, Any] | None:
        """The whole completion; None if the stream failed or a choice never finished."""
        choices = [self.choices[i] for i in sorted(self.choices)]
        if self.has_failed or not choices or any(c["finish_reason"] is None for c in choices):
            return None
        completion = {**self.envelope, "object": "chat.completion",
                      "choices": [_whole_choice(choice) for choice in choices]}
        if self.usage is not None:
            completion["usage"] = self.usage
        return completion


def _whole_choice(choice: dict[str, Any]) -> dict[str, Any]:
    calls = [choice["calls"][i] for i in sorted(choice["calls"])]
    message = {"role": "assistant", "content": choice["content"] or (None if calls else ""),
               "refusal": None, "tool_calls": calls or None}
    return {"index": choice["index"], "message": message, "logprobs": choice["logprobs"],
            "finish_reason": choice["finish_reason"]}
