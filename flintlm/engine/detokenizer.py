"""Incremental detokenization of one request's output, and its stop strings.

Decodes only a short window of recent tokens per step (never the whole output), holds back
incomplete UTF-8 characters and text that could still become a stop string, and reports the
first stop string matched. Knows nothing of scheduling or sampling.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from flintlm.loading.tokenizer import Tokenizer

# Prompt tokens decoded ahead of the output, so the first output token gets its real leading
# space (SentencePiece decoders strip the space of a sequence's first token).
_PROMPT_CONTEXT_TOKENS = 5
_REPLACEMENT_CHAR = "\ufffd"  # what a decoder writes for bytes that are not (yet) a character


class IncrementalDetokenizer:
    """Turns a request's new token ids into text that is safe to stream.

    Invariants: `output_text` only grows and never ends in half a character. Without a stop
    match, `output_text` after `flush()` is the text the output adds after the prompt: for
    byte-level BPE exactly `tokenizer.decode(output ids)`; for SentencePiece it keeps the
    leading space a lone decode would strip. With stop strings, no emitted text contains a
    stop string (it ends right before the first match, or right after it with
    `include_stop_str_in_output`).
    """

    def __init__(
        self,
        tokenizer: Tokenizer,
        prompt_token_ids: list[int],
        *,
        stop: Sequence[str] = (),
        include_stop_str_in_output: bool = False,
        skip_special_tokens: bool = True,
    ) -> None:
        self._tokenizer = tokenizer
        self._skip_special_tokens = skip_special_tokens
        self._stop = [s for s in stop if s]
        self._include_stop = include_stop_str_in_output
        # Longest suffix a match can start in: hold back that much (or nothing when the stop
        # string is emitted anyway), and search that far back into earlier text.
        self._max_stop_len = max((len(s) for s in self._stop), default=0)
        context = list(prompt_token_ids[-_PROMPT_CONTEXT_TOKENS:])
        # _token_ids[_prefix_offset:_read_offset] is decoded text already counted;
        # _token_ids[_read_offset:] is not yet turned into text.
        self._token_ids = context
        self._prefix_offset = 0
        self._read_offset = len(context)
        self._pieces: list[str] = []  # emitted text, joined on demand
        self._output_text: str | None = ""
        self._tail = ""  # the last _max_stop_len - 1 emitted chars, for matches that span them
        self._held = ""  # decoded text not emitted yet: a possible start of a stop string
        self._is_stopped = False

    @property
    def output_text(self) -> str:
        """Everything emitted so far."""
        if self._output_text is None:
            self._output_text = "".join(self._pieces)
        return self._output_text

    def append(self, new_token_ids: list[int]) -> tuple[str, str | None]:
        """Add sampled ids; returns (text safe to emit now, the stop string matched or None).

        After a match the caller finishes the request; further calls raise `RuntimeError`.
        """
        if self._is_stopped:
            raise RuntimeError("append() after a stop string matched; the request is finished")
        self._token_ids.extend(new_token_ids)
        text = self._held + self._decode_ready()
        if not self._stop:
            self._held = ""
            return self._emit(text), None
        window = self._tail + text
        match_at, matched = self._find_stop(window)
        if matched is not None:
            self._is_stopped = True
            end = match_at + (len(matched) if self._include_stop else 0) - len(self._tail)
            self._held = ""
            return self._emit(text[: max(end, 0)]), matched
        hold = 0 if self._include_stop else _longest_stop_prefix(window, self._stop)
        hold = min(hold, len(text))
        self._held = text[len(text) - hold :]
        return self._emit(text[: len(text) - hold]), None

    def flush(self) -> str:
        """Emit what is held back, for a request ending for a reason other than a stop string.

        Bytes that never completed a character are emitted as U+FFFD, as a full decode shows them.
        """
        if self._is_stopped:
            return ""
        prefix_text, full_text = self._decode_window()
        rest = self._held + full_text[len(prefix_text) :]
        self._held = ""
        self._prefix_offset = self._read_offset = len(self._token_ids)
        return self._emit(rest)

    def _decode_ready(self) -> str:
        """Text of the tokens since `_read_offset`, if it ends on a whole character, else ""."""
        prefix_text, full_text = self._decode_window()
        if len(full_text) <= len(prefix_text) or full_text.endswith(_REPLACEMENT_CHAR):
            return ""  # nothing new, or a character is still missing bytes: wait for more tokens
        self._prefix_offset = self._read_offset
        self._read_offset = len(self._token_ids)
        return full_text[len(prefix_text) :]

    def _decode_window(self) -> tuple[str, str]:
        ids = self._token_ids
        skip = self._skip_special_tokens
        prefix_text = self._tokenizer.decode(ids[self._prefix_offset : self._read_offset], skip)
        full_text = self._tokenizer.decode(ids[self._prefix_offset :], skip)
        return prefix_text, full_text

    def _find_stop(self, window: str) -> tuple[int, str | None]:
        """The earliest stop string in `window` (the longest one when several start there)."""
        best_at, best = len(window), None
        for stop in self._stop:
            at = window.find(stop)
            if at != -1 and (at < best_at or (at == best_at and best and len(stop) > len(best))):
                best_at, best = at, stop
        return best_at, best

    def _emit(self, text: str) -> str:
        if text:
            self._pieces.append(text)
            self._output_text = None
            if self._max_stop_len > 1:
                self._tail = (self._tail + text)[-(self._max_stop_len - 1) :]
        return text


def _longest_stop_prefix(text: str, stops: list[str]) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of some stop string."""
    longest = 0
    for stop in stops:
        for length in range(min(len(stop) - 1, len(text)), longest, -1):
            if text.endswith(stop[:length]):
                longest = length
                break
    return longest
