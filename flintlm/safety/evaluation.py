"""Precision and recall of a moderator on a labelled set (`labels<TAB>text` lines, labels a
comma-separated list of categories or "benign"), per category it judges and for `flagged`.

Used by tests/safety and `python -m bench.moderation` (docs/safety.md's figures).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from flintlm.safety.moderation import CATEGORIES, ModerationResult

FLAGGED = "flagged"
"""The row for the overall verdict: positives are every line not labelled benign."""


@dataclass(frozen=True)
class LabelledText:
    labels: frozenset[str]  # empty: benign
    text: str


@dataclass(frozen=True)
class Figures:
    num_true_positives: int
    num_false_positives: int
    num_false_negatives: int

    @property
    def precision(self) -> float:
        predicted = self.num_true_positives + self.num_false_positives
        return self.num_true_positives / predicted if predicted else 0.0

    @property
    def recall(self) -> float:
        actual = self.num_true_positives + self.num_false_negatives
        return self.num_true_positives / actual if actual else 0.0


def load_labelled(path: str | Path) -> list[LabelledText]:
    rows = []
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        labels, sep, text = line.partition("\t")
        names = frozenset() if labels == "benign" else frozenset(labels.split(","))
        if not sep or not text or names - set(CATEGORIES):
            raise ValueError(f"{path}:{number}: expected 'labels<TAB>text' with labels from "
                             f"{CATEGORIES} or 'benign', got {line!r}")
        rows.append(LabelledText(names, text))
    return rows


def score(rows: list[LabelledText], results: list[ModerationResult]) -> dict[str, Figures]:
    """Figures for `flagged` and for each category the results' backend judges."""
    if len(rows) != len(results):
        raise ValueError(f"{len(rows)} labelled texts but {len(results)} results")
    judged = sorted(results[0].judged_categories, key=CATEGORIES.index) if results else []
    pairs = {FLAGGED: [(bool(row.labels), result.flagged)
                       for row, result in zip(rows, results, strict=True)]}
    for category in judged:
        pairs[category] = [(category in row.labels, result.categories[category])
                           for row, result in zip(rows, results, strict=True)]
    return {name: Figures(sum(a and p for a, p in pair), sum(p and not a for a, p in pair),
                          sum(a and not p for a, p in pair))
            for name, pair in pairs.items()}
