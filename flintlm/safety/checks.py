"""The checks a policy rule compiles to: each finds `Finding`s in a text; none decides what the
request does about them (`pipeline.py` does).

Findings carry positions so masks can be applied and stream windows can tell new matches from
old ones, and a category (PII entity, moderation category) for the ledger; never the matched
text, which must not travel further than the request it came from.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from flintlm.safety.pii import Span, find_pii
from flintlm.safety.policy import Action, Rule, RuleKind

if TYPE_CHECKING:
    from flintlm.safety.moderation import Moderator


@dataclass(frozen=True)
class Finding:
    """`rule` matched `text[start:end]` (the whole text for moderation) and wants `action`."""

    rule: str
    action: Action
    start: int
    end: int
    category: str | None = None  # PII entity or moderation category

    def span(self) -> Span:
        return Span(self.start, self.end, self.category or "redacted")


class Check:
    """One compiled rule. `find` is sync and cheap; `is_async` checks run via `find_async`."""

    is_async = False

    def __init__(self, rule: Rule):
        self.rule = rule

    def find(self, text: str) -> list[Finding]:
        raise NotImplementedError

    async def find_async(self, text: str) -> list[Finding]:
        return self.find(text)


class PatternCheck(Check):
    """Blocklist phrases (whole words, any case, any run of whitespace) and regexes."""

    def __init__(self, rule: Rule):
        super().__init__(rule)
        if rule.kind is RuleKind.BLOCKLIST:
            words = [phrase.split() for phrase in rule.phrases]
            alternatives = "|".join(r"\s+".join(map(re.escape, w)) for w in words)
            self._patterns = [re.compile(rf"(?<!\w)(?:{alternatives})(?!\w)", re.IGNORECASE)]
        else:
            self._patterns = [re.compile(pattern) for pattern in rule.patterns]

    def find(self, text: str) -> list[Finding]:
        return [Finding(self.rule.name, self.rule.action, match.start(), match.end())
                for pattern in self._patterns for match in pattern.finditer(text)
                if match.end() > match.start()]


class PiiCheck(Check):
    def find(self, text: str) -> list[Finding]:
        actions = self.rule.entity_actions
        return [Finding(self.rule.name, actions[span.kind], span.start, span.end, span.kind)
                for span in find_pii(text, actions)]


class ModerationCheck(Check):
    """The moderation backend's scores against the rule's per-category thresholds."""

    is_async = True

    def __init__(self, rule: Rule, moderator: Moderator):
        super().__init__(rule)
        self._moderator = moderator
        unjudged = set(rule.thresholds) - moderator.judged_categories
        if unjudged:
            raise ValueError(f"guardrail rule {rule.name!r} sets thresholds for "
                             f"{sorted(unjudged)}, which the moderation backend "
                             f"{moderator.model_name!r} does not judge; it judges "
                             f"{sorted(moderator.judged_categories)}")

    def find(self, text: str) -> list[Finding]:
        raise TypeError("a moderation check runs off the event loop: await find_async")

    async def find_async(self, text: str) -> list[Finding]:
        if not text.strip():
            return []
        [result] = await self._moderator.classify([text])
        return [Finding(self.rule.name, Action.BLOCK, 0, len(text), category)
                for category, threshold in self.rule.thresholds.items()
                if result.category_scores[category] >= threshold]


def compile_rule(rule: Rule, moderator: Moderator | None) -> Check:
    """The check of one rule.

    Raises:
        ValueError: a moderation rule without a moderation backend, or one with thresholds for
            categories the backend does not judge.
    """
    if rule.kind is RuleKind.PII:
        return PiiCheck(rule)
    if rule.kind is RuleKind.MODERATION:
        if moderator is None:
            raise ValueError(f"guardrail rule {rule.name!r} needs a moderation backend")
        return ModerationCheck(rule, moderator)
    return PatternCheck(rule)
