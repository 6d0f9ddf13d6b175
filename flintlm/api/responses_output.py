"""Generated text -> a Responses output: message items with `output_text`, `function_call`
items, and the stream events that build them, each stamped with its `sequence_number`.

`ResponseBuilder` is fed text as it is generated (or all at once for a JSON response) and keeps
the items and the response object; the streamed and the non-streamed response are built by the
same code, so they are the same response. Owns no HTTP and no engine.
"""

from __future__ import annotations

import uuid
from typing import Any, Literal

from flintlm.api.responses_protocol import (
    FunctionCallItem,
    IncompleteDetails,
    InputTokensDetails,
    OutputMessage,
    OutputText,
    ResponseError,
    ResponseObject,
    ResponseUsage,
)
from flintlm.api.tool_calls import ToolCallParser
from flintlm.api.tool_calls import finish_reason as api_finish_reason
from flintlm.engine.request import Usage

Event = dict[str, Any]


def response_usage(usage: Usage) -> ResponseUsage:
    return ResponseUsage(input_tokens=usage.prompt_tokens,
                         input_tokens_details=InputTokensDetails(cached_tokens=usage.cached_tokens),
                         output_tokens=usage.completion_tokens, total_tokens=usage.total_tokens)


class ResponseBuilder:
    """One response: `opening()`, `feed(text)` as text arrives, `close(...)`, then `terminal()`.

    Output items appear in the order their first text did: a message item opens at the first
    content and closes when a call starts; a function_call item opens at a call's header and
    closes when the next call starts or the text ends.
    """

    def __init__(self, response: ResponseObject, *, parses_tool_calls: bool) -> None:
        self.response = response
        self.parser = ToolCallParser() if parses_tool_calls else None
        self.sequence_number = 0
        self._message: OutputMessage | None = None  # the open message item, if any
        self._calls: dict[int, FunctionCallItem] = {}  # parser call index -> item
        self._open_call: int | None = None

    def event(self, kind: str, **fields: Any) -> Event:
        event = {"type": kind, "sequence_number": self.sequence_number, **fields}
        self.sequence_number += 1
        return event

    def _snapshot(self) -> dict[str, Any]:
        return self.response.model_dump(mode="json")

    def opening(self) -> list[Event]:
        return [self.event("response.created", response=self._snapshot()),
                self.event("response.in_progress", response=self._snapshot())]

    def feed(self, text: str) -> list[Event]:
        if self.parser is None:
            return self._content(text)
        parsed = self.parser.feed(text)
        events = self._content(parsed.content)
        for delta in parsed.calls:
            if delta.id is not None:
                events += self._close_open_items()
                events += self._open_call_item(delta.index, delta.id, delta.name or "")
            if delta.arguments:
                item = self._calls[delta.index]
                item.arguments += delta.arguments
                events.append(self.event("response.function_call_arguments.delta",
                                         item_id=item.id, output_index=self._index(item),
                                         delta=delta.arguments))
        return events

    def close(self, finish_reason: str | None, usage: Usage) -> list[Event]:
        """The end of the text: close every open item and settle the response's status."""
        events = self._content(self.parser.finish().content) if self.parser else []
        # complete calls end the response cleanly even where max_output_tokens cut a further one
        has_calls = self.parser is not None and bool(self.parser.calls)
        reason = api_finish_reason(finish_reason, has_calls)
        is_cut = reason in ("length", "content_filter")  # content_filter: a guardrail ended it
        events += self._close_open_items(is_cut)
        self.response.status = "incomplete" if is_cut else "completed"
        if is_cut:
            self.response.incomplete_details = IncompleteDetails(
                reason="content_filter" if reason == "content_filter" else "max_output_tokens")
        self.response.usage = response_usage(usage)
        return events

    def terminal(self) -> Event:
        kind = "response.incomplete" if self.response.status == "incomplete" else (
            "response.completed")
        return self.event(kind, response=self._snapshot())

    def failure(self, code: str, message: str, param: str | None) -> list[Event]:
        """A fault after the first byte: OpenAI's `error` event, then `response.failed`."""
        self.response.status = "failed"
        self.response.error = ResponseError(code=code, message=message)
        return [self.event("error", code=code, message=message, param=param),
                self.event("response.failed", response=self._snapshot())]

    def _index(self, item: OutputMessage | FunctionCallItem) -> int:
        return next(i for i, other in enumerate(self.response.output) if other is item)

    def _content(self, text: str) -> list[Event]:
        if not text:
            return []
        events: list[Event] = []
        if self._message is None:
            events += self._close_open_items()
            self._message = OutputMessage(id=f"msg_{uuid.uuid4().hex}", status="in_progress",
                                          content=[])
            self.response.output.append(self._message)
            index = self._index(self._message)
            events.append(self.event("response.output_item.added", output_index=index,
                                     item=self._message.model_dump(mode="json")))
            self._message.content.append(OutputText(text=""))
            events.append(self.event("response.content_part.added", item_id=self._message.id,
                                     output_index=index, content_index=0,
                                     part=self._message.content[0].model_dump(mode="json")))
        part = self._message.content[0]
        part.text += text
        events.append(self.event("response.output_text.delta", item_id=self._message.id,
                                 output_index=self._index(self._message), content_index=0,
                                 delta=text, logprobs=[]))
        return events

    def _open_call_item(self, call_index: int, call_id: str, name: str) -> list[Event]:
        item = FunctionCallItem(id=f"fc_{uuid.uuid4().hex}", call_id=call_id, name=name,
                                arguments="", status="in_progress")
        self._calls[call_index] = item
        self._open_call = call_index
        self.response.output.append(item)
        return [self.event("response.output_item.added", output_index=self._index(item),
                           item=item.model_dump(mode="json"))]

    def _close_open_items(self, is_cut: bool = False) -> list[Event]:
        events: list[Event] = []
        status: Literal["completed", "incomplete"] = "incomplete" if is_cut else "completed"
        if self._message is not None:
            message, self._message = self._message, None
            index, part = self._index(message), message.content[0]
            message.status = status
            events += [
                self.event("response.output_text.done", item_id=message.id, output_index=index,
                           content_index=0, text=part.text, logprobs=[]),
                self.event("response.content_part.done", item_id=message.id,
                           output_index=index, content_index=0,
                           part=part.model_dump(mode="json")),
                self.event("response.output_item.done", output_index=index,
                           item=message.model_dump(mode="json")),
            ]
        if self._open_call is not None:  # the parser reports complete calls only
            item, self._open_call = self._calls[self._open_call], None
            index = self._index(item)
            item.status = "completed"
            events += [
                self.event("response.function_call_arguments.done", item_id=item.id,
                           output_index=index, name=item.name, arguments=item.arguments),
                self.event("response.output_item.done", output_index=index,
                           item=item.model_dump(mode="json")),
            ]
        return events
