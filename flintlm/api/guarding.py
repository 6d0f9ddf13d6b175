"""Guardrails at the HTTP edge: the key's policy on a request's input (pre_call), before it is
rendered and admitted; the output side is `Generation`'s (`screen_output`, `screen_stream`).

A blocked input is a 400 `content_policy_violation` naming the rule and gets its ledger row
(rejected, with the decision); a masked input comes back rewritten. Requests under no policy
pass through untouched.
"""

from __future__ import annotations

import asyncio
import dataclasses
from typing import TYPE_CHECKING, Any

from flintlm.api.errors import ContentPolicyViolation, PermissionDenied
from flintlm.api.prompts import checked_token_ids, prompt_batch
from flintlm.engine.request import FinishReason, RequestOutput

if TYPE_CHECKING:
    from flintlm.api.deps import ServingState
    from flintlm.api.generation import ChoiceResult
    from flintlm.api.protocol import ChatCompletionRequest, ChatMessage, CompletionRequest
    from flintlm.loading.tokenizer import Tokenizer
    from flintlm.platform.keys import KeyRecord
    from flintlm.safety.pipeline import RequestGuard, StreamScreen

async def request_guard(serving: ServingState, key: KeyRecord, request_id: str, *,
                        stream: bool) -> RequestGuard | None:
    """The request's guard under the key's policy; None when the key has none.

    Raises:
        PermissionDenied: the key names a policy this server does not define (403).
    """
    try:
        return serving.guardrails.guard(key.guardrail, stream=stream)
    except KeyError:
        await serving.admission.reject(key, request_id, "unknown_guardrail")
        raise PermissionDenied(f"The key {key.id} is assigned the guardrail policy "
                               f"{key.guardrail!r}, which this server does not define; ask "
                               "the operator to fix the key or the guardrails file.",
                               code="unknown_guardrail") from None


async def screen_input(serving: ServingState, key: KeyRecord, request_id: str,
                       guard: RequestGuard, texts: list[str], *, param: str) -> list[str]:
    """pre_call on `texts` under `guard`: the texts, masked where a rule masks.

    Raises:
        ContentPolicyViolation: a rule blocks the input (400, `param` named).
    """
    verdict = await guard.screen_input(texts)
    if verdict.blocked is not None:
        await serving.admission.reject(key, request_id, "content_policy_violation",
                                       guardrail=guard.decisions)
        raise ContentPolicyViolation(f"The input was blocked by {verdict.blocked.describe()}.",
                                     param=param)
    return verdict.texts


async def guard_chat(serving: ServingState, key: KeyRecord, request_id: str,
                     body: ChatCompletionRequest, *, param: str = "messages"
                     ) -> tuple[ChatCompletionRequest, RequestGuard | None]:
    """`screen_input` on each message's text: the request with masked messages (their content
    becomes the masked text) and its guard. `param` names the input in a 400."""
    messages, guard = await guard_messages(serving, key, request_id, body.messages,
                                           stream=body.stream, param=param)
    if messages is body.messages:
        return body, guard
    return body.model_copy(update={"messages": messages}), guard


async def guard_messages(serving: ServingState, key: KeyRecord, request_id: str,
                         messages: list[ChatMessage], *, stream: bool, param: str
                         ) -> tuple[list[ChatMessage], RequestGuard | None]:
    """`screen_input` on each message's text; the same list when nothing was masked, else one
    whose masked messages hold the masked text as their content."""
    guard = await request_guard(serving, key, request_id, stream=stream)
    if guard is None:
        return messages, None
    texts = [message.text() for message in messages]
    screened = await screen_input(serving, key, request_id, guard, texts, param=param)
    if screened == texts:
        return messages, guard
    return [message if new == old else message.model_copy(update={"content": new})
            for message, old, new in zip(messages, texts, screened, strict=True)], guard


async def guard_completion(serving: ServingState, key: KeyRecord, request_id: str,
                           body: CompletionRequest, tokenizer: Tokenizer
                           ) -> tuple[CompletionRequest, RequestGuard | None]:
    """`screen_input` on /v1/completions prompts: the request with masked prompts and its guard.
    Token-id prompts are checked as their text; a masked one is tokenized again. Under no policy
    nothing is decoded: the prompts go on to `completion_prompts` untouched."""
    guard = await request_guard(serving, key, request_id, stream=body.stream)
    if guard is None:
        return body, None
    items: list[Any] = list(prompt_batch(body.prompt))  # texts or token-id lists
    texts = await asyncio.to_thread(_prompt_texts, tokenizer, items)  # as the route tokenizes
    screened = await screen_input(serving, key, request_id, guard, texts, param="prompt")
    if screened == texts:
        return body, guard
    masked = [new if isinstance(item, str) else item if new == old
              else tokenizer.encode(new, add_special_tokens=False)
              for item, old, new in zip(items, texts, screened, strict=True)]
    return body.model_copy(update={"prompt": masked}), guard


def _prompt_texts(tokenizer: Tokenizer, items: list[Any]) -> list[str]:
    """Each completion prompt as text; token-id lists are decoded once checked in the vocabulary."""
    return [item if isinstance(item, str)
            else tokenizer.decode(checked_token_ids(tokenizer, item)) for item in items]


class OutputScreen:
    """The output side of one request's guard, as `Generation` applies it: during_call on
    each streamed output, post_call on each whole choice."""

    def __init__(self, guard: RequestGuard):
        self.guard = guard
        self._streams: dict[int, StreamScreen] = {}

    async def screen_stream(self, index: int, output: RequestOutput) -> RequestOutput:
        """The output as it may be sent: held back, masked, or ended with content_filter."""
        if not self.guard.screens_stream:
            return output
        screen = self._streams.setdefault(index, self.guard.stream())
        text, blocked = await screen.feed(output.new_text, is_final=output.finished)
        if blocked is not None:
            return dataclasses.replace(output, new_text="", new_token_ids=[], new_logprobs=None,
                                       finish_reason=FinishReason.CONTENT_FILTER)
        if text == output.new_text:
            return output
        # NOTE: logprobs carry raw tokens; once text is held or masked they would not match it.
        return dataclasses.replace(output, new_text=text, new_logprobs=None)

    async def screen_choices(self, results: list[ChoiceResult]) -> None:
        """post_call on whole choices: masked in place, or emptied with content_filter."""
        if not self.guard.screens_output:
            return
        for result in results:
            verdict = await self.guard.screen_output(result.text)
            if verdict.text != result.text or verdict.blocked is not None:
                result.text, result.token_ids, result.logprobs = verdict.text, [], []
            if verdict.blocked is not None:
                result.finish_reason = FinishReason.CONTENT_FILTER.value
