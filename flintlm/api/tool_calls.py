"""Tool calls in generated text: the format the model is asked to write, the xgrammar structural
tag that constrains it, and the incremental parser that turns it back into tool calls.

The wire format (Hermes-style, one block per call) is

    <tool_call>
    {"name": "get_weather", "arguments": {"city": "Paris"}}
    </tool_call>

and `arguments` reaches the client as the exact JSON text the model wrote, so a streamed call and
a non-streamed one reassemble to the same string. Owns no HTTP and no prompt rendering
(prompts.py puts the tool definitions into the prompt).
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass, field
from typing import Any

CALL_BEGIN = "<tool_call>"
CALL_END = "</tool_call>"
# What follows CALL_BEGIN up to the arguments object, with the name captured.
_HEADER = re.compile(r'\s*\{\s*"name"\s*:\s*"((?:[^"\\]|\\.)*)"\s*,\s*"arguments"\s*:\s*')
EMPTY_PARAMETERS: dict[str, Any] = {"type": "object", "properties": {}}


def call_header(name: str) -> str:
    return f'{CALL_BEGIN}\n{{"name": {json.dumps(name)}, "arguments": '


def format_call(name: str, arguments: str) -> str:
    """One call as the model writes it; `arguments` is JSON text (an object)."""
    return f"{call_header(name)}{arguments}}}\n{CALL_END}"


def new_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


# -- constrained decoding --------------------------------------------------------------------


def structural_tag(tools: list[tuple[str, dict[str, Any] | None]], choice: str | None,
                   is_parallel: bool) -> dict[str, Any] | None:
    """The xgrammar structural tag that makes every call parse and match its tool's schema.

    After each complete call the model may only end (EOS, the template's end marker) or, when
    `is_parallel`, start the next call on a new line: nothing else, so a finished call never runs
    on into text until max_tokens.

    Args:
        tools: (name, parameters schema or None) per tool.
        choice: "auto", "required", a tool name (a named tool_choice), or "none"/None.
        is_parallel: whether more than one call may be made (`parallel_tool_calls`).
    Returns:
        None for "none"; for "auto" free text without `<tool_call>`, optionally followed by the
        calls; for "required" one or more calls and nothing else; for a name exactly one call.
    """
    if choice in (None, "none"):
        return None
    tags = {name: _call_tag(name, parameters) for name, parameters in tools}
    calls = {"type": "tags_with_separator", "tags": list(tags.values()), "separator": "\n",
             "at_least_one": True, "stop_after_first": not is_parallel}
    if choice == "auto":
        # NOTE: not xgrammar's "triggered_tags": it lets free text follow a call.
        spec: dict[str, Any] = {"type": "sequence", "elements": [
            {"type": "any_text", "excludes": [CALL_BEGIN]},
            {"type": "optional", "content": calls}]}
    elif choice == "required":
        spec = calls
    else:
        spec = tags[choice]
    return {"type": "structural_tag", "format": spec}


def finish_reason(reason: str | None, has_complete_calls: bool) -> str | None:
    """The API's finish reason for a choice: "tool_calls" whenever complete calls are returned,
    also when max_tokens cut a further call short (that one is dropped, see ToolCallParser)."""
    if has_complete_calls and reason in ("stop", "length"):
        return "tool_calls"
    return reason


def _call_tag(name: str, parameters: dict[str, Any] | None) -> dict[str, Any]:
    # NOTE: at most one whitespace character in a row between JSON tokens: indentation costs
    # tokens, and a small model can otherwise loop on newlines until max_tokens.
    arguments = {"type": "json_schema", "json_schema": parameters or EMPTY_PARAMETERS,
                 "max_whitespace_cnt": 1}
    return {"type": "tag", "begin": call_header(name), "content": arguments,
            "end": f"}}\n{CALL_END}"}


# -- parsing -----------------------------------------------------------------------------------


@dataclass
class ToolCall:
    id: str
    name: str
    arguments: str = ""  # JSON text, as generated


@dataclass
class CallDelta:
    """Call `index` as a stream announces it. The parser sends each call once, whole, when its
    arguments object closes; the fields stay optional for encoders that split it further."""

    index: int
    id: str | None = None
    name: str | None = None
    arguments: str = ""


@dataclass
class ParsedText:
    content: str = ""
    calls: list[CallDelta] = field(default_factory=list)


class ToolCallParser:
    """Splits generated text into content and tool calls, one piece of text at a time.

    Feeding the whole text at once and feeding it token by token yield the same content and
    calls. Text that might still become `<tool_call>` is held back until it is decided, and
    trailing whitespace until something else follows it (so the newlines around calls do not
    end the content). A block whose header does not parse stays content, as written.

    `calls` holds complete calls only. A call is reported (in `feed`'s `ParsedText.calls`) once
    its arguments object closes; one that max_tokens cuts short is dropped, never sent half
    written, so a streamed response and a non-streamed one return the same complete calls.
    """

    def __init__(self) -> None:
        self.calls: list[ToolCall] = []
        self._current = ToolCall("", "")  # the call whose arguments are being read
        self._text = ""
        self._pos = 0  # everything before it is decided
        self._state = "text"  # text -> header -> arguments -> tail -> text
        self._block_start = 0  # where the current block's CALL_BEGIN starts
        self._depth = 0  # JSON nesting inside the arguments object
        self._in_string = False
        self._escaped = False
        self._pending_space = ""

    def feed(self, text: str) -> ParsedText:
        self._text += text
        out = ParsedText()
        while self._step(out):
            pass
        return out

    def finish(self) -> ParsedText:
        """The end of the text: a held-back prefix, or a block whose header never came, is
        content; a call whose arguments never closed is dropped."""
        out = ParsedText()
        if self._state == "text" or self._state == "header":
            start = self._pos if self._state == "text" else self._block_start
            self._content(out, self._text[start:])
        self._pos = len(self._text)
        return out

    def _step(self, out: ParsedText) -> bool:
        """Advance through one state; False when more text is needed."""
        text, pos = self._text, self._pos
        if self._state == "text":
            start = text.find(CALL_BEGIN, pos)
            if start < 0:
                end = len(text) - _held_back(text, pos)
                self._content(out, text[pos:end])
                self._pos = end
                return False
            self._content(out, text[pos:start])
            self._block_start, self._pos, self._state = start, start + len(CALL_BEGIN), "header"
            return True
        if self._state == "header":
            match = _HEADER.match(text, pos)
            is_object = match is not None and match.end() < len(text) and text[match.end()] == "{"
            if match is not None and is_object:
                self._current = ToolCall(new_call_id(), json.loads(f'"{match.group(1)}"'))
                self._pos, self._state = match.end(), "arguments"
                self._depth, self._in_string, self._escaped = 0, False, False
                return True
            end = text.find(CALL_END, pos)
            if end >= 0:  # a complete block that is no call of ours: keep it as content
                self._content(out, text[self._block_start:end + len(CALL_END)])
                self._pos, self._state = end + len(CALL_END), "text"
                return True
            return False
        if self._state == "arguments":
            end = self._scan_arguments(pos)
            piece = text[pos:end]
            call = self._current
            call.arguments += piece
            self._pos = end
            if self._depth == 0 and piece:
                self.calls.append(call)
                out.calls.append(CallDelta(len(self.calls) - 1, call.id, call.name,
                                           call.arguments))
                self._state = "tail"
                return True
            return False
        end = text.find(CALL_END, pos)  # tail: the block's closing `}` and CALL_END
        if end < 0:
            return False
        self._pos, self._state = end + len(CALL_END), "text"
        return True

    def _scan_arguments(self, pos: int) -> int:
        """Index just past the arguments object's closing brace, or the end of the text."""
        text = self._text
        for i in range(pos, len(text)):
            char = text[i]
            if self._in_string:
                if self._escaped:
                    self._escaped = False
                elif char == "\\":
                    self._escaped = True
                elif char == '"':
                    self._in_string = False
            elif char == '"':
                self._in_string = True
            elif char in "{[":
                self._depth += 1
            elif char in "}]":
                self._depth -= 1
                if self._depth == 0:
                    return i + 1
        return len(text)

    def _content(self, out: ParsedText, text: str) -> None:
        # Trailing whitespace waits for what follows; at the end it is dropped. The content is
        # therefore the same however the text was cut into pieces.
        text = self._pending_space + text
        kept = text.rstrip()
        out.content += kept
        self._pending_space = text[len(kept):]


def _held_back(text: str, pos: int) -> int:
    """Length of the longest end of text[pos:] that could be the start of CALL_BEGIN."""
    for length in range(min(len(CALL_BEGIN) - 1, len(text) - pos), 0, -1):
        if CALL_BEGIN.startswith(text[len(text) - length:]):
            return length
    return 0


def parse_all(text: str) -> tuple[str, list[ToolCall]]:
    """Content and calls of a whole generated text."""
    parser = ToolCallParser()
    content = parser.feed(text).content + parser.finish().content
    return content, parser.calls
