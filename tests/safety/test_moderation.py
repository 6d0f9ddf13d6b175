"""The `Moderator` contract every backend shares: results over every category, unjudged
categories held at 0, and `classify` running the model off the event loop."""

from __future__ import annotations

import asyncio
import threading

import pytest

from flintlm.safety.moderation import CATEGORIES, ModerationResult, Moderator


class EchoModerator(Moderator):
    """Scores `violence` as the text's length / 10 and notes the thread each call ran on."""

    model_name = "echo"
    judged_categories = frozenset({"violence"})

    def __init__(self) -> None:
        super().__init__()
        self.threads: list[str] = []

    def classify_blocking(self, texts: list[str]) -> list[ModerationResult]:
        self.threads.append(threading.current_thread().name)
        return [ModerationResult.from_scores({"violence": len(t) / 10, "hate": 0.9},
                                             self.judged_categories) for t in texts]


def test_classify_runs_off_the_event_loop_one_result_per_text() -> None:
    moderator = EchoModerator()

    async def main() -> tuple[str, list[ModerationResult]]:
        return threading.current_thread().name, await moderator.classify(["abc", "abcdefgh"])

    loop_thread, results = asyncio.run(main())
    moderator.close()
    assert moderator.threads and loop_thread not in moderator.threads
    assert [r.category_scores["violence"] for r in results] == [0.3, 0.8]
    assert [r.flagged for r in results] == [False, True]


def test_unjudged_categories_stay_zero() -> None:
    result = ModerationResult.from_scores({"violence": 0.7, "hate": 0.9},
                                          frozenset({"violence"}))
    assert list(result.category_scores) == list(CATEGORIES) == list(result.categories)
    assert result.category_scores["hate"] == 0.0 and not result.categories["hate"]
    assert result.categories["violence"] and result.flagged
    assert not ModerationResult.from_scores({"violence": 0.7}, frozenset({"violence"}),
                                            threshold=0.8).flagged


def test_unknown_category_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown moderation categories"):
        ModerationResult.from_scores({"spam": 1.0}, frozenset())
