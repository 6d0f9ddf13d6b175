"""The bundled offline backend: alt-profanity-check's scikit-learn model (a linear SVM over
word n-grams, calibrated to a probability), shipped inside its wheel; nothing is downloaded.

It gives one score, the probability that a text is offensive/abusive language. It is mapped to
`harassment` only: that is what it detects (insults and abuse aimed at someone). It cannot tell
threats, hate against groups, self-harm, sexual or violent content apart from other abuse, so
those categories are not judged here (score 0; docs/safety.md has its measured precision and
recall, and where it errs: sexual slang and profanity also score high as "harassment").
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from typing import Any

from flintlm.safety.moderation import DEFAULT_THRESHOLD, ModerationResult, Moderator

MODEL_NAME = "flintlm-moderation-profanity-1"


class ProfanityModerator(Moderator):
    model_name = MODEL_NAME
    judged_categories = frozenset({"harassment"})

    def __init__(self, threshold: float = DEFAULT_THRESHOLD) -> None:
        super().__init__()
        # A missing package fails start-up, not the first request.
        if importlib.util.find_spec("profanity_check") is None:
            raise ModuleNotFoundError("the moderation classifier needs alt-profanity-check")
        # NOTE: the package unpickles its scikit-learn model at import (~1.5 s of one core):
        # done by the first classification, on the moderation thread, so a server that never
        # moderates never pays it, and neither does its start-up nor its shutdown (a warm-up
        # queued at start held every stop ~1.6 s, waiting for an import nobody needed).
        self._predict_prob: Callable[[list[str]], Any] | None = None
        self.threshold = threshold

    def classify_blocking(self, texts: list[str]) -> list[ModerationResult]:
        if not texts:
            return []
        if self._predict_prob is None:  # only ever on the one moderation thread
            self._predict_prob = _load_predict_prob()
        scores = self._predict_prob(texts)
        return [ModerationResult.from_scores({"harassment": float(score)},
                                             self.judged_categories, threshold=self.threshold)
                for score in scores]


def _load_predict_prob() -> Callable[[list[str]], Any]:
    from profanity_check import predict_prob

    return predict_prob
