"""Guardrail policies from a TOML file (`--guardrails-file`): which checks run, in which modes,
with which action. Parsing and validation only; `checks.py` runs them.

    default = "standard"            # the policy of keys that name none; omit for none
    [policies.standard]
    max_prompt_chars = 20000        # pre_call: a longer input is refused
    stream_window_chars = 64        # during_call: text held back so a match spanning chunks
                                    #   is caught (and masked) before it is sent
    [[policies.standard.rules]]
    name = "banned-words"           # what a refusal and the ledger call it
    kind = "blocklist"              # blocklist | regex | pii | moderation
    phrases = ["project zeus"]      # whole words, any case and spacing
    modes = ["pre_call", "during_call", "post_call"]
    [[policies.standard.rules]]
    name = "pii"
    kind = "pii"
    entities = { email = "mask", credit_card = "block" }   # per entity: mask | block
    [[policies.standard.rules]]
    name = "abuse"
    kind = "moderation"
    thresholds = { harassment = 0.7 }                      # per category, 0..1

A `regex` rule has `patterns = [...]` and `action` (block | mask). `modes` defaults to all three.
"""

from __future__ import annotations

import enum
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flintlm.safety.moderation import CATEGORIES
from flintlm.safety.pii import ENTITIES


class Mode(enum.StrEnum):
    PRE_CALL = "pre_call"  # the input, before admission to the engine
    DURING_CALL = "during_call"  # streamed output, as it is produced
    POST_CALL = "post_call"  # the whole output of a non-streamed response


class Action(enum.StrEnum):
    BLOCK = "block"
    MASK = "mask"


class RuleKind(enum.StrEnum):
    BLOCKLIST = "blocklist"
    REGEX = "regex"
    PII = "pii"
    MODERATION = "moderation"


@dataclass(frozen=True)
class Rule:
    """One check of a policy. `entity_actions` (pii) and `thresholds` (moderation) are empty for
    the other kinds; `action` is what a blocklist or regex match does."""

    name: str
    kind: RuleKind
    modes: frozenset[Mode]
    action: Action = Action.BLOCK
    phrases: tuple[str, ...] = ()
    patterns: tuple[str, ...] = ()
    entity_actions: dict[str, Action] = field(default_factory=dict)
    thresholds: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Policy:
    name: str
    rules: tuple[Rule, ...] = ()
    max_prompt_chars: int | None = None
    stream_window_chars: int = 64

    def rules_for(self, mode: Mode) -> tuple[Rule, ...]:
        return tuple(rule for rule in self.rules if mode in rule.modes)


@dataclass(frozen=True)
class PolicySet:
    """Every policy of the file; `default` applies to keys without a `guardrail` of their own."""

    policies: dict[str, Policy] = field(default_factory=dict)
    default: str | None = None

    def resolve(self, name: str | None) -> Policy | None:
        """The policy `name` names (None: the default, if any).

        Raises:
            KeyError: no policy has that name.
        """
        name = name or self.default
        if name is None:
            return None
        if name not in self.policies:
            raise KeyError(name)
        return self.policies[name]

    def check_name(self, name: str | None) -> None:
        """Raise ValueError naming the known policies when `name` is not one of them."""
        if name is not None and name not in self.policies:
            known = ", ".join(sorted(self.policies)) or "none"
            raise ValueError(f"unknown guardrail policy {name!r}; the guardrails file defines: "
                             f"{known}")


def load_policies(path: str | Path | None) -> PolicySet:
    """The policies of a TOML file; an empty set (no guardrails) for None.

    Raises:
        ValueError: the file is unreadable or a policy is malformed; the message names where.
    """
    if path is None:
        return PolicySet()
    try:
        data = tomllib.loads(Path(path).read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ValueError(f"cannot read the guardrails file {path}: {exc}") from None
    _only(data, {"default", "policies"}, f"{path}")
    policies = {name: _policy(name, body) for name, body in data.get("policies", {}).items()}
    default = data.get("default")
    result = PolicySet(policies, default)
    if default is not None:
        try:
            result.check_name(default)
        except ValueError as exc:
            raise ValueError(f"{path}: default: {exc}") from None
    return result


def _only(table: Any, allowed: set[str], where: str) -> None:
    if not isinstance(table, dict):
        raise ValueError(f"{where} must be a table")
    unknown = set(table) - allowed
    if unknown:
        raise ValueError(f"{where}: unknown keys {sorted(unknown)}; allowed: {sorted(allowed)}")


def _policy(name: str, body: Any) -> Policy:
    where = f"policies.{name}"
    _only(body, {"rules", "max_prompt_chars", "stream_window_chars"}, where)
    rules = tuple(_rule(f"{where}.rules[{i}]", rule)
                  for i, rule in enumerate(body.get("rules", [])))
    names = [rule.name for rule in rules]
    if len(set(names)) != len(names):
        raise ValueError(f"{where}: rule names must be unique, got {names}")
    max_chars = body.get("max_prompt_chars")
    window = body.get("stream_window_chars", 64)
    if max_chars is not None and (not isinstance(max_chars, int) or max_chars < 1):
        raise ValueError(f"{where}.max_prompt_chars={max_chars!r} must be a positive integer")
    if not isinstance(window, int) or not 0 <= window <= 4096:
        raise ValueError(f"{where}.stream_window_chars={window!r} must be in 0..4096")
    return Policy(name, rules, max_chars, window)


def _rule(where: str, body: Any) -> Rule:
    _only(body, {"name", "kind", "modes", "action", "phrases", "patterns", "entities",
                 "thresholds"}, where)
    name, kind = body.get("name"), body.get("kind")
    if not isinstance(name, str) or not name:
        raise ValueError(f"{where}.name must be a non-empty string")
    kinds = [k.value for k in RuleKind]
    if kind not in kinds:
        raise ValueError(f"{where}.kind={kind!r} must be one of {', '.join(kinds)}")
    modes = body.get("modes", [m.value for m in Mode])
    try:
        mode_set = frozenset(Mode(mode) for mode in modes)
        action = Action(body.get("action", "block"))
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}; modes are pre_call, during_call, post_call and "
                         "actions block, mask") from None
    rule = Rule(name, RuleKind(kind), mode_set, action)
    if rule.kind is RuleKind.BLOCKLIST:
        phrases = tuple(body.get("phrases", ()))
        if not phrases or any(not isinstance(p, str) or not p.split() for p in phrases):
            raise ValueError(f"{where}.phrases must be a non-empty list of non-blank strings")
        return Rule(name, rule.kind, mode_set, action, phrases=phrases)
    if rule.kind is RuleKind.REGEX:
        patterns = tuple(body.get("patterns", ()))
        for pattern in patterns:
            try:
                re.compile(pattern)
            except (re.error, TypeError) as exc:
                raise ValueError(f"{where}.patterns: {pattern!r} is no regex: {exc}") from None
        if not patterns:
            raise ValueError(f"{where}.patterns must be a non-empty list of regexes")
        return Rule(name, rule.kind, mode_set, action, patterns=patterns)
    if rule.kind is RuleKind.PII:
        entities = body.get("entities", {})
        unknown = set(entities) - set(ENTITIES)
        if not entities or unknown:
            raise ValueError(f"{where}.entities must map some of {', '.join(ENTITIES)} to "
                             f"block or mask (unknown: {sorted(unknown)})")
        try:
            actions = {entity: Action(value) for entity, value in entities.items()}
        except ValueError as exc:
            raise ValueError(f"{where}.entities: {exc}; use block or mask") from None
        return Rule(name, rule.kind, mode_set, entity_actions=actions)
    thresholds = body.get("thresholds", {})
    unknown = set(thresholds) - set(CATEGORIES)
    if not thresholds or unknown:
        raise ValueError(f"{where}.thresholds must map some of OpenAI's moderation categories "
                         f"to a score in 0..1 (unknown: {sorted(unknown)})")
    if any(not isinstance(v, int | float) or not 0 <= v <= 1 for v in thresholds.values()):
        raise ValueError(f"{where}.thresholds: every threshold must be a number in 0..1")
    if action is Action.MASK:
        raise ValueError(f"{where}: a moderation rule can only block")
    return Rule(name, rule.kind, mode_set, thresholds={k: float(v) for k, v in thresholds.items()})
