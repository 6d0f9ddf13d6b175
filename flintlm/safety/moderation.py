"""The moderation interface: `Moderator.classify(texts) -> list[ModerationResult]`, one result
per text over OpenAI's categories, with the blocking model work run off the event loop.

A backend judges some categories (`judged_categories`); every other category gets score 0 and
is never flagged, so a score is always the backend's own output, never a filler guess.
"""

from __future__ import annotations

import asyncio
import functools
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from flintlm.config import FlintConfig

CATEGORIES: tuple[str, ...] = (
    "harassment", "harassment/threatening", "hate", "hate/threatening", "illicit",
    "illicit/violent", "self-harm", "self-harm/intent", "self-harm/instructions", "sexual",
    "sexual/minors", "violence", "violence/graphic",
)
"""OpenAI's moderation categories: the eleven classic ones plus omni-moderation's two illicit
ones, which the API schema requires in every result."""

DEFAULT_THRESHOLD = 0.5
"""A category is flagged at a score of at least this, unless a backend says otherwise."""


@dataclass(frozen=True)
class ModerationResult:
    """One text's verdict. `category_scores` and `categories` hold every name in CATEGORIES;
    `judged_categories` are those the backend scored (the rest are 0 / False by construction).
    `flagged` is the backend's overall verdict: any flagged category, or for a guard model its
    "unsafe", which may name a policy with no OpenAI category (see llama_guard.py).
    `policy_codes` are a guard model's own codes (e.g. "S10"); empty for other backends."""

    flagged: bool
    categories: dict[str, bool]
    category_scores: dict[str, float]
    judged_categories: frozenset[str]
    policy_codes: tuple[str, ...] = ()

    @classmethod
    def from_scores(cls, scores: Mapping[str, float], judged: frozenset[str], *,
                    threshold: float = DEFAULT_THRESHOLD, is_unsafe: bool = False,
                    policy_codes: tuple[str, ...] = ()) -> ModerationResult:
        unknown = set(scores) - set(CATEGORIES)
        if unknown:
            raise ValueError(f"unknown moderation categories {sorted(unknown)}")
        category_scores = {name: float(scores.get(name, 0.0)) if name in judged else 0.0
                           for name in CATEGORIES}
        categories = {name: name in judged and category_scores[name] >= threshold
                      for name in CATEGORIES}
        return cls(is_unsafe or any(categories.values()), categories, category_scores, judged,
                   policy_codes)


class Moderator(ABC):
    """A moderation backend. `classify` is safe to await from the event loop: the model runs
    on the backend's one worker thread, so calls are serialized and the loop never blocks.

    Subclasses implement `classify_blocking` (runs on that thread) and set `model_name` (what
    the API reports in `model`) and `judged_categories`.
    """

    model_name: str
    judged_categories: frozenset[str]

    def __init__(self) -> None:
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="flintlm-moderation")

    async def classify(self, texts: Sequence[str]) -> list[ModerationResult]:
        """One result per text, in order."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self._executor, functools.partial(self.classify_blocking, list(texts)))

    @abstractmethod
    def classify_blocking(self, texts: list[str]) -> list[ModerationResult]:
        """The model work, on the calling thread; `classify` is the loop-safe entry point."""

    def close(self) -> None:
        self._executor.shutdown(wait=True)


def build_moderator(config: FlintConfig) -> Moderator:
    """The backend `config.moderation` names, loaded now so a bad setting fails at start-up."""
    backend = config.moderation.moderation_backend
    if backend == "guard":
        from flintlm.safety.llama_guard import GuardModerator

        return GuardModerator.from_config(config)
    from flintlm.safety.classifier import ProfanityModerator

    return ProfanityModerator()
