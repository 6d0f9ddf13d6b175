"""Stored completions -> fine-tuning data, as JSON Lines in OpenAI's formats.

`openai-chat` (supervised fine-tuning): one `{"messages": [...]}` per finished answer, the
prompt's messages then the assistant's (tool calls kept), with the request's `tools`.
`preference` (DPO): for each prompt answered at least twice with different ratings, the best
rated answer against the worst, as `{"input": {"messages": [...]}, "preferred_output": [...],
"non_preferred_output": [...]}`.

NOTE: answers cut off (`finish_reason` "length" or "content_filter") are left out: trained on, they
would teach the model to stop mid-sentence.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flintlm.platform.capture import Redactor, keep_as_is
from flintlm.platform.completion_store import CompletionFilter, StoredCompletion

if TYPE_CHECKING:
    from flintlm.platform.completion_store import CompletionStore

_FINISHED = ("stop", "tool_calls")
_MESSAGE_FIELDS = ("role", "content", "name", "tool_calls", "tool_call_id")


class ExportFormat(enum.StrEnum):
    OPENAI_CHAT = "openai-chat"
    PREFERENCE = "preference"


@dataclass(frozen=True)
class ExportOptions:
    """What to export: `min_rating` keeps rated completions at or above it (in `preference`,
    the preferred answer must reach it); `selection` narrows by key, model and time."""

    format: ExportFormat = ExportFormat.OPENAI_CHAT
    min_rating: int | None = None
    selection: CompletionFilter = dataclasses.field(default_factory=CompletionFilter)


def export_lines(store: CompletionStore, options: ExportOptions,
                 redact: Redactor = keep_as_is) -> Iterator[dict[str, Any]]:
    """The export's lines, read from the store as they are consumed."""
    completions = (_redacted(stored, redact) for stored in store.select(options.selection))
    if options.format is ExportFormat.PREFERENCE:
        return preference_pairs(completions, options.min_rating)
    return chat_examples(completions, options.min_rating)


def export_jsonl(store: CompletionStore, path: Path, options: ExportOptions,
                 redact: Redactor = keep_as_is) -> int:
    """Write the export to `path` (whole or not at all: written aside, then renamed); returns
    the number of lines."""
    lines = export_lines(store, options, redact)
    partial = path.with_name(path.name + ".part")
    num_lines = 0
    with partial.open("w", encoding="utf-8") as out:
        for line in lines:
            out.write(json.dumps(line, ensure_ascii=False) + "\n")
            num_lines += 1
    os.replace(partial, path)
    return num_lines


def chat_examples(completions: Iterable[StoredCompletion], min_rating: int | None = None
                  ) -> Iterator[dict[str, Any]]:
    """One supervised example per finished answer of each (rated enough) completion."""
    for stored in completions:
        if min_rating is not None and (stored.rating is None or stored.rating < min_rating):
            continue
        prompt = _prompt(stored)
        for answer in _answers(stored):
            yield {**prompt, "messages": [*prompt["messages"], answer]}


def preference_pairs(completions: Iterable[StoredCompletion], min_rating: int | None = None
                     ) -> Iterator[dict[str, Any]]:
    """Per prompt, the best rated answer against the worst; prompts with one rating, or whose
    best and worst answers read the same, give no pair."""
    rated: dict[str, list[tuple[int, dict[str, Any], dict[str, Any]]]] = {}
    for stored in completions:
        if stored.rating is None:
            continue
        prompt = _prompt(stored)
        group = rated.setdefault(json.dumps(prompt, sort_keys=True), [])
        group.extend((stored.rating, prompt, answer) for answer in _answers(stored))
    for group in rated.values():
        best = max(group, key=lambda entry: entry[0])  # the first of equals: the oldest
        worst = min(group, key=lambda entry: entry[0])
        if best[0] == worst[0] or best[2] == worst[2]:
            continue
        if min_rating is not None and best[0] < min_rating:
            continue
        yield {"input": best[1], "preferred_output": [best[2]],
               "non_preferred_output": [worst[2]]}


def _redacted(stored: StoredCompletion, redact: Redactor) -> StoredCompletion:
    return dataclasses.replace(stored, request=redact(stored.key_id, stored.request),
                               completion=redact(stored.key_id, stored.completion))


def _prompt(stored: StoredCompletion) -> dict[str, Any]:
    """The request as fine-tuning input: its messages, and its tools if it had any."""
    prompt: dict[str, Any] = {"messages": [_message(m) for m in stored.request["messages"]]}
    if stored.request.get("tools"):
        prompt["tools"] = stored.request["tools"]
        if stored.request.get("parallel_tool_calls") is not None:
            prompt["parallel_tool_calls"] = stored.request["parallel_tool_calls"]
    return prompt


def _message(message: dict[str, Any]) -> dict[str, Any]:
    """A message in the fine-tuning format: no nulls, text parts joined, and `developer` as
    `system` (the fine-tuning roles are system, user, assistant and tool)."""
    kept = {name: message[name] for name in _MESSAGE_FIELDS if message.get(name) is not None}
    if kept["role"] == "developer":
        kept["role"] = "system"
    if isinstance(kept.get("content"), list):
        kept["content"] = "".join(part.get("text") or "" for part in kept["content"])
    return kept


def _answers(stored: StoredCompletion) -> list[dict[str, Any]]:
    """The assistant messages of the completion's finished choices."""
    return [_message(choice["message"]) for choice in stored.completion.get("choices", [])
            if choice.get("finish_reason") in _FINISHED]
