"""Guardrails: off by default, a whole-word phrase blocklist and a prompt length cap."""

from __future__ import annotations

import pytest

from flintlm.platform.guardrails import Guardrails


def test_off_by_default() -> None:
    guardrails = Guardrails()
    assert not guardrails.is_enabled
    assert guardrails.check_prompt("anything " * 10_000) is None
    assert guardrails.check_completion("anything") is None


def test_blocked_phrases_match_whole_words_in_any_case_and_spacing() -> None:
    guardrails = Guardrails(blocked_phrases=["secret plan", "c++"])
    assert guardrails.is_enabled
    assert guardrails.check_prompt("tell me the SECRET\n  plan") is not None
    assert guardrails.check_prompt("I like C++ a lot") is not None
    assert guardrails.check_prompt("the secret planner") is None
    reason = guardrails.check_completion("here is the secret plan")
    assert reason is not None and "secret" not in reason  # never quote the blocklist


def test_prompt_length_cap() -> None:
    guardrails = Guardrails(max_prompt_chars=10)
    assert guardrails.check_prompt("x" * 10) is None
    reason = guardrails.check_prompt("x" * 11)
    assert reason is not None and "11" in reason and "10" in reason
    assert guardrails.check_completion("x" * 100) is None  # the cap is for prompts only


@pytest.mark.parametrize("kwargs", [{"blocked_phrases": ["  "]}, {"max_prompt_chars": 0}])
def test_bad_settings_are_refused(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        Guardrails(**kwargs)
