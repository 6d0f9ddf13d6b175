"""PII detection: each entity found and masked; validity checks (Luhn, mod-97, IP ranges,
entropy) keep look-alikes out."""

from __future__ import annotations

import pytest

from flintlm.safety.pii import ENTITIES, find_pii, iban_ok, luhn_ok, mask


def kinds(text: str) -> list[tuple[str, str]]:
    return [(span.kind, text[span.start:span.end]) for span in find_pii(text)]


@pytest.mark.parametrize(("number", "is_valid"), [
    ("4111111111111111", True),  # Visa test number
    ("5500005555555559", True),  # Mastercard test number
    ("378282246310005", True),  # Amex test number
    ("4111111111111112", False),  # one digit off
    ("1234567812345678", False),
])
def test_luhn(number: str, is_valid: bool) -> None:
    assert luhn_ok(number) is is_valid


@pytest.mark.parametrize(("iban", "is_valid"), [
    ("GB82 WEST 1234 5698 7654 32", True),
    ("DE89370400440532013000", True),
    ("FR1420041010050500013M02606", True),
    ("DE89370400440532013001", False),  # check digits no longer match
    ("GB82 WEST 1234", False),  # too short
])
def test_iban_mod_97(iban: str, is_valid: bool) -> None:
    assert iban_ok(iban) is is_valid


def test_each_entity_is_found() -> None:
    text = ("write to jane.roe@example.org, call +44 20 7946 0958, pay with 4111 1111 1111 1111 "
            "or to DE89 3704 0044 0532 0130 00 from 203.0.113.7 or 2001:db8::42; "
            "keys sk-proj-Ab12Cd34Ef56Gh78Ij90 AKIAIOSFODNN7EXAMPLE "
            "ghp_0123456789abcdefghijABCDEFGHIJ0123 and Zx9Qp2Lm7Rt4Vb8Nc1Kd6Hf3Js5Wg0Ya")
    assert kinds(text) == [
        ("email", "jane.roe@example.org"),
        ("phone", "+44 20 7946 0958"),
        ("credit_card", "4111 1111 1111 1111"),
        ("iban", "DE89 3704 0044 0532 0130 00"),
        ("ip_address", "203.0.113.7"),
        ("ip_address", "2001:db8::42"),
        ("api_key", "sk-proj-Ab12Cd34Ef56Gh78Ij90"),
        ("api_key", "AKIAIOSFODNN7EXAMPLE"),
        ("api_key", "ghp_0123456789abcdefghijABCDEFGHIJ0123"),
        ("secret", "Zx9Qp2Lm7Rt4Vb8Nc1Kd6Hf3Js5Wg0Ya"),
    ]


@pytest.mark.parametrize("text", [
    "order 4111 1111 1111 1112 shipped",  # fails Luhn, too long for a phone number
    "the IBAN DE89370400440532013001 is mistyped",  # fails mod-97
    "version 999.1.2.3 and the time 12:30",  # no such IPv4 address; a time is no IPv6
    "an identifier like internationalization_and_localization_helpers",  # low entropy
    "a plain sentence with no personal data at all.",
])
def test_look_alikes_are_not_pii(text: str) -> None:
    assert find_pii(text) == []


def test_mask_replaces_each_span_with_its_kind() -> None:
    text = "mail a@b.io or c@d.io, card 4111-1111-1111-1111."
    assert mask(text, find_pii(text)) == "mail [EMAIL] or [EMAIL], card [CREDIT_CARD]."


def test_only_the_asked_entities_are_found() -> None:
    text = "a@b.io at 10.0.0.1"
    assert kinds(text) == [("email", "a@b.io"), ("ip_address", "10.0.0.1")]
    assert [s.kind for s in find_pii(text, ["ip_address"])] == ["ip_address"]


def test_unknown_entity_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="unknown PII entities \\['passport'\\]"):
        find_pii("x", ["passport"])
    assert "email" in ENTITIES
