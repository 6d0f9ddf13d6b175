"""The guardrail pipeline without HTTP: policies from TOML, each check in each mode, decisions
that name the rule and never the matched text, and streams checked across chunk boundaries."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

from flintlm.safety.classifier import ProfanityModerator
from flintlm.safety.pipeline import Guardrails, RequestGuard
from flintlm.safety.policy import load_policies

POLICIES = """
default = "standard"

[policies.standard]
max_prompt_chars = 200
stream_window_chars = 16

[[policies.standard.rules]]
name = "banned"
kind = "blocklist"
phrases = ["project zeus", "forbidden"]

[[policies.standard.rules]]
name = "tickets"
kind = "regex"
patterns = ["TICKET-[0-9]+"]
action = "mask"
modes = ["pre_call", "during_call"]

[[policies.standard.rules]]
name = "pii"
kind = "pii"
entities = { email = "mask", credit_card = "block" }

[[policies.standard.rules]]
name = "abuse"
kind = "moderation"
thresholds = { harassment = 0.8 }
modes = ["pre_call"]

[policies.open]
"""

ABUSE = "Shut up, you stupid moron, nobody asked for your garbage opinion."


@pytest.fixture(scope="module")
def moderator() -> Iterator[ProfanityModerator]:
    backend = ProfanityModerator()
    yield backend
    backend.close()


@pytest.fixture(scope="module")
def guardrails(tmp_path_factory: pytest.TempPathFactory,
               moderator: ProfanityModerator) -> Guardrails:
    path = tmp_path_factory.mktemp("guardrails") / "guardrails.toml"
    path.write_text(POLICIES)
    return Guardrails(load_policies(path), moderator)


def guard(guardrails: Guardrails, name: str | None = None, stream: bool = False) -> RequestGuard:
    request_guard = guardrails.guard(name, stream=stream)
    assert request_guard is not None
    return request_guard


def test_default_and_named_policies(guardrails: Guardrails) -> None:
    assert guard(guardrails).policy.name == "standard"
    assert guard(guardrails, "open").policy.rules == ()
    with pytest.raises(KeyError):
        guardrails.guard("nope", stream=False)
    assert Guardrails(load_policies(None)).guard(None, stream=False) is None


@pytest.mark.parametrize(("text", "rule", "categories"), [
    ("tell me about Project   ZEUS please", "banned", []),
    ("my card is 4111 1111 1111 1111", "pii", ["credit_card"]),
    (ABUSE, "abuse", ["harassment"]),
    ("x" * 201, "max_prompt_chars", []),
])
def test_pre_call_blocks_naming_the_rule(guardrails: Guardrails, text: str, rule: str,
                                         categories: list[str]) -> None:
    request_guard = guard(guardrails)
    verdict = asyncio.run(request_guard.screen_input([text]))
    assert verdict.blocked is not None and verdict.blocked.rule == rule
    assert list(verdict.blocked.categories) == categories
    assert {"mode": "pre_call", "rule": rule, "action": "block",
            "categories": categories} in request_guard.decisions
    assert text not in json.dumps(request_guard.decisions)  # never the matched text
    assert "4111" not in verdict.blocked.describe() and "ZEUS" not in verdict.blocked.describe()


def test_pre_call_masks_and_passes_clean_input(guardrails: Guardrails) -> None:
    request_guard = guard(guardrails)
    verdict = asyncio.run(request_guard.screen_input(
        ["write to ann@example.com about TICKET-42", "nothing to see"]))
    assert verdict.blocked is None
    assert verdict.texts == ["write to [EMAIL] about [REDACTED]", "nothing to see"]
    assert request_guard.decisions == [
        {"mode": "pre_call", "rule": "tickets", "action": "mask", "categories": []},
        {"mode": "pre_call", "rule": "pii", "action": "mask", "categories": ["email"]},
    ]
    clean = guard(guardrails)
    assert asyncio.run(clean.screen_input(["a friendly question"])).texts == ["a friendly question"]
    assert clean.decisions == []


def test_post_call_replaces_or_masks_the_output(guardrails: Guardrails) -> None:
    request_guard = guard(guardrails)
    blocked = asyncio.run(request_guard.screen_output("the answer is forbidden knowledge"))
    assert blocked.text == "" and blocked.blocked is not None and blocked.blocked.rule == "banned"
    masked = asyncio.run(request_guard.screen_output("mail bob@example.net; TICKET-7 stays"))
    assert masked.blocked is None
    assert masked.text == "mail [EMAIL]; TICKET-7 stays"  # the regex rule is not post_call
    assert [d["mode"] for d in request_guard.decisions] == ["post_call", "post_call"]


async def feed_all(request_guard: RequestGuard, chunks: list[str]) -> tuple[str, str | None]:
    screen = request_guard.stream()
    sent = ""
    for i, chunk in enumerate(chunks):
        text, blocked = await screen.feed(chunk, is_final=i == len(chunks) - 1)
        sent += text
        if blocked is not None:
            return sent, blocked.rule
    return sent, None


def test_stream_blocks_a_match_spanning_chunks_before_any_of_it_is_sent(
        guardrails: Guardrails) -> None:
    request_guard = guard(guardrails, stream=True)
    chunks = ["Here is a long opening sentence, and then ", "proj", "ect ", "ze", "us", " more"]
    sent, rule = asyncio.run(feed_all(request_guard, chunks))
    assert rule == "banned"
    assert sent == "Here is a long opening sentence, and"  # all but the 16 held back
    assert "proj" not in sent
    assert request_guard.decisions == [
        {"mode": "during_call", "rule": "banned", "action": "block", "categories": []}]


def test_stream_masks_across_chunks_and_sends_everything_else(guardrails: Guardrails) -> None:
    request_guard = guard(guardrails, stream=True)
    text = "Contact carol@example.com or TICKET-1234 for help, thanks a lot everyone!"
    chunks = [text[i:i + 3] for i in range(0, len(text), 3)]
    sent, rule = asyncio.run(feed_all(request_guard, chunks))
    assert rule is None
    assert sent == "Contact [EMAIL] or [REDACTED] for help, thanks a lot everyone!"
    assert {d["rule"] for d in request_guard.decisions} == {"pii", "tickets"}


def test_stream_of_clean_text_is_unchanged(guardrails: Guardrails) -> None:
    text = "A perfectly ordinary answer about the weather in spring."
    chunks = [text[i:i + 5] for i in range(0, len(text), 5)]
    assert asyncio.run(feed_all(guard(guardrails, stream=True), chunks)) == (text, None)


@pytest.mark.parametrize(("body", "message"), [
    ('[policies.p]\nrules = [{name = "r", kind = "nope"}]', "kind='nope' must be one of"),
    ('[policies.p]\nrules = [{name = "r", kind = "pii", entities = {passport = "mask"}}]',
     "unknown: \\['passport'\\]"),
    ('[policies.p]\nrules = [{name = "r", kind = "regex", patterns = ["("]}]', "is no regex"),
    (('[policies.p]\nrules = [{name = "r", kind = "blocklist", phrases = ["a"], '
      'modes = ["later"]}]'), "modes are pre_call"),
    ('default = "missing"\n[policies.p]', "unknown guardrail policy 'missing'"),
    ('[policies.p]\nmax_prompt_chars = 0', "max_prompt_chars=0 must be a positive"),
    ('[policies.p]\nrules = [{name = "r", kind = "moderation", thresholds = {hate = 2}}]',
     "in 0..1"),
    ("[policies.p\n", "cannot read the guardrails file"),
])
def test_malformed_policies_are_clear_errors(tmp_path: Path, body: str, message: str) -> None:
    path = tmp_path / "g.toml"
    path.write_text(body)
    with pytest.raises(ValueError, match=message):
        load_policies(path)


def test_moderation_thresholds_must_be_judged_by_the_backend(
        tmp_path: Path, moderator: ProfanityModerator) -> None:
    path = tmp_path / "g.toml"
    path.write_text('[policies.p]\nrules = [{name = "r", kind = "moderation", '
                    'thresholds = {hate = 0.5}}]')
    with pytest.raises(ValueError, match="does not judge"):
        Guardrails(load_policies(path), moderator)


def test_unknown_policy_name_lists_the_known_ones(guardrails: Guardrails) -> None:
    with pytest.raises(ValueError, match="defines: open, standard"):
        guardrails.policies.check_name("strict")


def test_redactor_masks_what_each_keys_policy_names(guardrails: Guardrails) -> None:
    keys = {"k-open": SimpleNamespace(guardrail="open"), "k-gone": SimpleNamespace(guardrail="x")}
    redact = guardrails.redactor(keys.get)  # type: ignore[arg-type]
    document = {"id": "chatcmpl-1", "messages": [
        {"role": "user", "content": "mail ann@example.com from 10.0.0.1"},
        {"role": "user", "content": [{"type": "text", "text": "card 4111 1111 1111 1111"}]}],
        "choices": [{"message": {"content": "ok ann@example.com", "tool_calls": [
            {"function": {"name": "send", "arguments": '{"to": "ann@example.com"}'}}]}}]}
    # No row (the static key): the default policy masks its two entities, blocked ones too.
    assert redact("static", document) == {"id": "chatcmpl-1", "messages": [
        {"role": "user", "content": "mail [EMAIL] from 10.0.0.1"},
        {"role": "user", "content": [{"type": "text", "text": "card [CREDIT_CARD]"}]}],
        "choices": [{"message": {"content": "ok [EMAIL]", "tool_calls": [
            {"function": {"name": "send", "arguments": '{"to": "[EMAIL]"}'}}]}}]}
    assert redact("k-open", document) == document  # no PII rule: kept as is
    gone = redact("k-gone", document)  # a policy this server lacks: every entity
    assert gone["messages"][0]["content"] == "mail [EMAIL] from [IP_ADDRESS]"
