"""The bundled offline backend: alt-profanity-check's scikit-learn model (a linear SVM over
word n-grams, calibrated to a probability), shipped inside its wheel; nothing is downloaded.

It gives one score, the probability that a text is offensive/abusive language. It is mapped to
`harassment` only: that is what it detects (insults and abuse aimed at someone). It cannot tell
threats, hate against groups, self-harm, sexual or violent content apart from other abuse, so
those categories are not judged here (score 0; docs/safety.md has its measured precision and
recall, and where it errs: sexual slang and profanity also score high as "harassment").
"""

from __future__ import annotations

from flintlm.safety.moderation import DEFAULT_THRESHOLD, ModerationResult, Moderator

MODEL_NAME = "flintlm-moderation-profanity-1"


class ProfanityModerator(Moderator):
    model_name = MODEL_NAME
    judged_categories = frozenset({"harassment"})

    def __init__(self, threshold: float = DEFAULT_THRESHOLD) -> None:
        super().__init__()
        # NOTE: the package loads its model at import; importing here fails at start-up, not
        # on the first request, when it is missing.
        from profanity_check import predict_prob

        self._predict_prob = predict_prob
        self.threshold = threshold

    def classify_blocking(self, texts: list[str]) -> list[ModerationResult]:
        if not texts:
            return []
        scores = self._predict_prob(texts)
        return [ModerationResult.from_scores({"harassment": float(score)},
                                             self.judged_categories, threshold=self.threshold)
                for score in scores]
