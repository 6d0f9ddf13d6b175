"""The bundled classifier backend, through the `Moderator` interface: shape, the labelled
set's figures (the ones docs/safety.md states)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from flintlm.safety.classifier import ProfanityModerator
from flintlm.safety.evaluation import FLAGGED, load_labelled, score
from flintlm.safety.moderation import CATEGORIES

LABELLED = Path(__file__).parent / "data" / "labelled.tsv"


@pytest.fixture(scope="module")
def moderator() -> ProfanityModerator:
    return ProfanityModerator()


def test_one_result_per_text_over_every_category(moderator: ProfanityModerator) -> None:
    texts = ["You are a worthless idiot and a pathetic loser.",
             "Could you help me write a polite email to my landlord?", ""]
    results = asyncio.run(moderator.classify(texts))
    assert len(results) == 3
    for result in results:
        assert list(result.category_scores) == list(CATEGORIES)
        assert list(result.categories) == list(CATEGORIES)
        assert result.judged_categories == {"harassment"}
        # NOTE: what the classifier cannot judge is 0, never a guess.
        assert all(score == 0.0 for name, score in result.category_scores.items()
                   if name != "harassment")
        assert 0.0 <= result.category_scores["harassment"] <= 1.0
    abusive, benign, empty = results
    assert abusive.flagged and abusive.categories["harassment"]
    assert abusive.category_scores["harassment"] > 0.9
    assert not benign.flagged and benign.category_scores["harassment"] < 0.1
    assert not empty.flagged


def test_no_texts_no_results(moderator: ProfanityModerator) -> None:
    assert asyncio.run(moderator.classify([])) == []


def test_labelled_set_figures_as_documented(moderator: ProfanityModerator) -> None:
    rows = load_labelled(LABELLED)
    assert len(rows) >= 60 and sum(not row.labels for row in rows) >= 20
    figures = score(rows, asyncio.run(moderator.classify([row.text for row in rows])))
    assert set(figures) == {FLAGGED, "harassment"}
    harassment, flagged = figures["harassment"], figures[FLAGGED]
    # docs/safety.md: harassment P 0.58 R 0.85 (11/8/2); flagged P 0.95 R 0.50 (18/1/18).
    assert (harassment.num_true_positives, harassment.num_false_positives,
            harassment.num_false_negatives) == (11, 8, 2)
    assert (flagged.num_true_positives, flagged.num_false_positives,
            flagged.num_false_negatives) == (18, 1, 18)
    assert round(harassment.precision, 2) == 0.58 and round(harassment.recall, 2) == 0.85
