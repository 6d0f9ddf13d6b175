"""Optional checks on prompts and completions: a phrase blocklist and a prompt length cap.

Off unless configured. A check returns the reason to refuse, or None; the HTTP layer turns a
reason into a 400 with code `content_policy_violation`. Reasons never quote the blocklist.

Public API:
    Guardrails(blocked_phrases=(), max_prompt_chars=None): .is_enabled,
        .check_prompt(text) -> str | None, .check_completion(text) -> str | None
"""

from __future__ import annotations

import re
from collections.abc import Sequence


class Guardrails:
    """Phrases match case-insensitively as whole words, across any run of whitespace."""

    def __init__(self, blocked_phrases: Sequence[str] = (), max_prompt_chars: int | None = None):
        if max_prompt_chars is not None and max_prompt_chars < 1:
            raise ValueError(f"max_prompt_chars={max_prompt_chars} must be positive, or None")
        phrases = [phrase.split() for phrase in blocked_phrases]
        if any(not words for words in phrases):
            raise ValueError("blocked_phrases must not contain empty or blank phrases")
        self._max_prompt_chars = max_prompt_chars
        self._blocked = None
        if phrases:
            alternatives = "|".join(r"\s+".join(map(re.escape, words)) for words in phrases)
            self._blocked = re.compile(rf"(?<!\w)(?:{alternatives})(?!\w)", re.IGNORECASE)

    @property
    def is_enabled(self) -> bool:
        return self._blocked is not None or self._max_prompt_chars is not None

    def check_prompt(self, text: str) -> str | None:
        """Why the prompt (all messages' text) must be refused, or None."""
        if self._max_prompt_chars is not None and len(text) > self._max_prompt_chars:
            return (f"The prompt is {len(text)} characters long; this server accepts at most "
                    f"{self._max_prompt_chars}.")
        if self._blocked is not None and self._blocked.search(text):
            return "The prompt contains a phrase this server's content policy blocks."
        return None

    def check_completion(self, text: str) -> str | None:
        """Why the generated text must be withheld, or None."""
        if self._blocked is not None and self._blocked.search(text):
            return "The completion contains a phrase this server's content policy blocks."
        return None
