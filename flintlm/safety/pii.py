"""PII detectors: where in a text an email, phone number, card number, IBAN, IP address or API
secret sits, and how to mask it. Pure Python, no model.

A detector finds candidates with a regex, then keeps only those that pass a validity check where
the entity has one (Luhn for cards, mod-97 for IBANs, octet ranges for IPv4, entropy for bare
tokens), so digits that merely look like a card number are left alone.

Public API:
    ENTITIES, Span, find_pii(text, entities) -> list[Span], luhn_ok(digits), iban_ok(text),
    mask(text, spans) -> str
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass


@dataclass(frozen=True, order=True)
class Span:
    """A finding: `text[start:end]` is a `kind` (an entity name, or a rule's own name)."""

    start: int
    end: int
    kind: str


def luhn_ok(digits: str) -> bool:
    """The Luhn checksum of a card number (digits only) is valid."""
    total = 0
    for position, char in enumerate(reversed(digits)):
        value = int(char)
        if position % 2:
            value = value * 2 - 9 if value > 4 else value * 2
        total += value
    return len(digits) >= 12 and total % 10 == 0


def iban_ok(text: str) -> bool:
    """An IBAN (spaces allowed) passes ISO 13616's mod-97 check."""
    compact = text.replace(" ", "").upper()
    if not 15 <= len(compact) <= 34 or not compact.isalnum():
        return False
    rearranged = compact[4:] + compact[:4]
    number = "".join(str(int(char, 36)) for char in rearranged)
    return int(number) % 97 == 1


def _entropy_bits_per_char(token: str) -> float:
    counts = Counter(token)
    return -sum(n / len(token) * math.log2(n / len(token)) for n in counts.values())


def _is_secret_like(token: str) -> bool:
    """A long token mixing letters and digits with high per-character entropy (random keys),
    unlike words, hex-free identifiers or long numbers."""
    has_mix = any(c.isdigit() for c in token) and any(c.isalpha() for c in token)
    return has_mix and _entropy_bits_per_char(token) >= 4.0


def _is_ipv4(text: str) -> bool:
    try:
        ipaddress.IPv4Address(text)
    except ValueError:
        return False
    return True


def _is_ipv6(text: str) -> bool:
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return text.count(":") >= 2


@dataclass(frozen=True)
class _Detector:
    pattern: re.Pattern[str]
    is_valid: Callable[[str], bool] = lambda _: True


_DETECTORS: dict[str, _Detector] = {
    "email": _Detector(re.compile(
        r"(?<![\w.+-])[\w.+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}(?![\w-])")),
    # Before phone numbers in ENTITIES, so a card's digit groups are not also a phone number.
    "credit_card": _Detector(re.compile(r"(?<![\d-])\d(?:[ -]?\d){11,18}(?![\d-])"),
                             lambda text: luhn_ok(re.sub(r"\D", "", text))),
    "iban": _Detector(re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]){11,30}\b"), iban_ok),
    "api_key": _Detector(re.compile(
        r"\b(?:sk-(?:proj-|ant-)?[A-Za-z0-9_-]{16,}|AKIA[0-9A-Z]{16}"
        r"|gh[pousr]_[A-Za-z0-9]{30,}|xox[abprs]-[A-Za-z0-9-]{10,}|AIza[0-9A-Za-z_-]{35}"
        r"|flint-sk-[A-Za-z0-9_-]{20,})")),
    "secret": _Detector(re.compile(r"(?<![\w/+=-])[A-Za-z0-9_+/=-]{32,}(?![\w/+=-])"),
                        _is_secret_like),
    "ip_address": _Detector(re.compile(
        r"(?<![\d.])\d{1,3}(?:\.\d{1,3}){3}(?![\d.])|(?<![\w:])[0-9A-Fa-f:]*:[0-9A-Fa-f:]+"
        r"(?![\w:])"), lambda text: _is_ipv4(text) or _is_ipv6(text)),
    "phone": _Detector(re.compile(
        r"(?<![\w+])(?:\+\d{1,3}[ .-]?)?(?:\(\d{1,4}\)[ .-]?)?\d{2,4}(?:[ .-]?\d{2,4}){2,4}"
        r"(?![\w])"), lambda text: 8 <= len(re.sub(r"\D", "", text)) <= 15),
}

ENTITIES: tuple[str, ...] = tuple(_DETECTORS)
"""The entity names a policy may set an action for, in detection order."""


def find_pii(text: str, entities: Iterable[str] = ENTITIES) -> list[Span]:
    """Non-overlapping findings of `entities` in `text`, by position; where two overlap, the
    entity earlier in ENTITIES wins (a card number is not also a phone number)."""
    wanted = set(entities)
    unknown = wanted - set(ENTITIES)
    if unknown:
        raise ValueError(f"unknown PII entities {sorted(unknown)}; known: {', '.join(ENTITIES)}")
    spans: list[Span] = []
    for kind in ENTITIES:
        if kind not in wanted:
            continue
        detector = _DETECTORS[kind]
        for match in detector.pattern.finditer(text):
            start, end = match.span()
            if not detector.is_valid(match.group()):
                continue
            if any(start < other.end and other.start < end for other in spans):
                continue
            spans.append(Span(start, end, kind))
    return sorted(spans)


def mask(text: str, spans: Iterable[Span]) -> str:
    """`text` with each span replaced by `[KIND]` (e.g. `[EMAIL]`); spans must not overlap."""
    pieces, cursor = [], 0
    for span in sorted(spans):
        pieces += [text[cursor:span.start], f"[{span.kind.upper()}]"]
        cursor = span.end
    pieces.append(text[cursor:])
    return "".join(pieces)
