"""The guardrail pipeline: a policy's checks run on a request's input (`pre_call`), on its
streamed output as it is produced (`during_call`) and on its whole output (`post_call`).

No HTTP here: a verdict says what to do (block naming the rule, or the masked text) and every
decision is kept in `RequestGuard.decisions` for the request's ledger row. A decision names the
mode, rule, action and categories, never the matched text.

Public API:
    Guardrails(policies, moderator): .guard(policy_name, stream=) -> RequestGuard | None
    RequestGuard: .screen_input(texts) -> InputVerdict, .screen_output(text) -> OutputVerdict,
        .stream(index) -> StreamScreen (during_call, one per choice), .decisions
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from flintlm.safety.checks import Check, Finding, compile_rule
from flintlm.safety.pii import ENTITIES, find_pii, mask
from flintlm.safety.policy import Action, Mode, Policy, PolicySet, RuleKind

if TYPE_CHECKING:
    from flintlm.platform.keys import KeyRecord
    from flintlm.safety.moderation import Moderator

LOOKBACK_CHARS = 256
"""Already-sent text a stream check sees again, so a match spanning chunks is found."""


@dataclass(frozen=True)
class Blocked:
    """Why a text is refused: the first blocking finding's rule and categories."""

    policy: str
    rule: str
    categories: tuple[str, ...]

    def describe(self) -> str:
        what = f" ({', '.join(self.categories)})" if self.categories else ""
        return f"the guardrail rule {self.rule!r}{what} of policy {self.policy!r}"


@dataclass(frozen=True)
class InputVerdict:
    texts: list[str]  # the inputs, masked where a rule said mask
    blocked: Blocked | None = None


@dataclass(frozen=True)
class OutputVerdict:
    text: str
    blocked: Blocked | None = None


class Guardrails:
    """The server's policies compiled once; one `RequestGuard` per request that has a policy."""

    def __init__(self, policies: PolicySet, moderator: Moderator | None = None):
        self.policies = policies
        self._checks: dict[str, dict[Mode, list[Check]]] = {}
        for name, policy in policies.policies.items():
            compiled = [(rule, compile_rule(rule, moderator)) for rule in policy.rules]
            self._checks[name] = {mode: [check for rule, check in compiled if mode in rule.modes]
                                  for mode in Mode}

    def redactor(self, key_of: Callable[[str], KeyRecord | None]
                 ) -> Callable[[str, dict[str, Any]], dict[str, Any]]:
        """A `platform.capture.Redactor`: masks, in a document's text fields (`content`,
        `text`, `arguments`), every PII entity the key's policy names, whatever the rule's
        action or modes (nothing stored may hold them). A key whose policy this server lacks
        gets every entity masked.

        Args:
            key_of: the key record of a key id (None: no row, e.g. the static key).
        """
        def redact(key_id: str, document: dict[str, Any]) -> dict[str, Any]:
            record = key_of(key_id)
            try:
                policy = self.policies.resolve(None if record is None else record.guardrail)
            except KeyError:
                return _mask_texts(document, set(ENTITIES))
            entities = {entity for rule in (policy.rules if policy else ())
                        if rule.kind is RuleKind.PII for entity in rule.entity_actions}
            return _mask_texts(document, entities) if entities else document

        return redact

    def guard(self, policy_name: str | None, *, stream: bool) -> RequestGuard | None:
        """The guard of one request under `policy_name` (None: the default policy); None when
        no policy applies.

        Raises:
            KeyError: no policy has that name.
        """
        policy = self.policies.resolve(policy_name)
        if policy is None:
            return None
        return RequestGuard(policy, self._checks[policy.name], stream)


@dataclass
class RequestGuard:
    """One request's guardrails; `decisions` grows as checks fire, for its ledger row."""

    policy: Policy
    checks: dict[Mode, list[Check]]
    is_streaming: bool
    decisions: list[dict[str, Any]] = field(default_factory=list)

    async def scan(self, mode: Mode, text: str) -> list[Finding]:
        findings: list[Finding] = []
        for check in self.checks[mode]:
            findings += await check.find_async(text) if check.is_async else check.find(text)
        return findings

    def record(self, mode: Mode, findings: Sequence[Finding]) -> Blocked | None:
        """Log one decision per rule and action; the first blocking rule, if any."""
        blocked = None
        grouped: dict[tuple[str, Action], list[str]] = {}
        for finding in findings:
            categories = grouped.setdefault((finding.rule, finding.action), [])
            if finding.category and finding.category not in categories:
                categories.append(finding.category)
        for (rule, action), categories in grouped.items():
            self.decisions.append({"mode": mode.value, "rule": rule, "action": action.value,
                                   "categories": categories})
            if action is Action.BLOCK and blocked is None:
                blocked = Blocked(self.policy.name, rule, tuple(categories))
        return blocked

    async def screen_input(self, texts: Sequence[str]) -> InputVerdict:
        """pre_call: the size cap, then every rule on each input text."""
        cap = self.policy.max_prompt_chars
        if cap is not None and sum(len(text) for text in texts) > cap:
            self.decisions.append({"mode": Mode.PRE_CALL.value, "rule": "max_prompt_chars",
                                   "action": Action.BLOCK.value, "categories": []})
            return InputVerdict(list(texts), Blocked(self.policy.name, "max_prompt_chars", ()))
        all_findings: list[Finding] = []
        masked = []
        for text in texts:
            findings = await self.scan(Mode.PRE_CALL, text)
            all_findings += findings
            masked.append(_masked(text, findings))
        return InputVerdict(masked, self.record(Mode.PRE_CALL, all_findings))

    async def screen_output(self, text: str) -> OutputVerdict:
        """post_call: every rule on a whole, non-streamed output."""
        findings = await self.scan(Mode.POST_CALL, text)
        blocked = self.record(Mode.POST_CALL, findings)
        return OutputVerdict("" if blocked else _masked(text, findings), blocked)

    def stream(self) -> StreamScreen:
        return StreamScreen(self)

    @property
    def screens_stream(self) -> bool:
        return self.is_streaming and bool(self.checks[Mode.DURING_CALL])

    @property
    def screens_output(self) -> bool:
        return not self.is_streaming and bool(self.checks[Mode.POST_CALL])


_TEXT_FIELDS = frozenset({"content", "text", "arguments"})


def _mask_texts(document: Any, entities: set[str]) -> Any:
    """A copy of a JSON document with the PII of `entities` masked in its text fields."""
    if isinstance(document, list):
        return [_mask_texts(item, entities) for item in document]
    if not isinstance(document, dict):
        return document
    return {name: mask(value, find_pii(value, entities))
            if name in _TEXT_FIELDS and isinstance(value, str) else _mask_texts(value, entities)
            for name, value in document.items()}


def _masked(text: str, findings: Sequence[Finding]) -> str:
    spans = _disjoint([f for f in findings if f.action is Action.MASK])
    return mask(text, [f.span() for f in spans]) if spans else text


def _disjoint(findings: Sequence[Finding]) -> list[Finding]:
    """The findings by position, dropping any that overlaps one kept before it."""
    kept: list[Finding] = []
    for finding in sorted(findings, key=lambda f: (f.start, -f.end)):
        if not kept or finding.start >= kept[-1].end:
            kept.append(finding)
    return kept


class StreamScreen:
    """during_call for one choice: text is held back `stream_window_chars` so that a match
    spanning chunks is blocked (or masked) before any of it is sent.

    Each `feed` scans the held text plus up to LOOKBACK_CHARS of what was sent; findings that
    end in already-sent text were handled when that text was held, so only newer ones count.

        sent ... [ lookback (sent) ][ pending (held) ] <- new text
                                    ^ offset            ^ release point: pending - window
    """

    def __init__(self, guard: RequestGuard):
        self.guard = guard
        self.window = guard.policy.stream_window_chars
        self.sent_tail = ""
        self.pending = ""

    async def feed(self, text: str, *, is_final: bool) -> tuple[str, Blocked | None]:
        """Text safe to send now (masked), or the violation that ends this choice."""
        self.pending += text
        scanned = self.sent_tail + self.pending
        offset = len(self.sent_tail)
        findings = [f for f in await self.guard.scan(Mode.DURING_CALL, scanned) if f.end > offset]
        blocking = [f for f in findings if f.action is Action.BLOCK]
        if blocking:
            self.pending = ""
            return "", self.guard.record(Mode.DURING_CALL, blocking)
        masks = [_shifted(f, -offset) for f in _disjoint(
            [f for f in findings if f.action is Action.MASK])]
        release = len(self.pending) if is_final else max(0, len(self.pending) - self.window)
        for finding in reversed(masks):  # never split a match that may still grow
            if finding.start < release < finding.end:
                release = finding.start
        released = [f for f in masks if f.end <= release]
        if released:
            self.guard.record(Mode.DURING_CALL, released)
        out = mask(self.pending[:release], [f.span() for f in released])
        self.pending = self.pending[release:]
        self.sent_tail = (self.sent_tail + out)[-LOOKBACK_CHARS:]
        return out, None


def _shifted(finding: Finding, delta: int) -> Finding:
    return Finding(finding.rule, finding.action, max(0, finding.start + delta),
                   finding.end + delta, finding.category)
