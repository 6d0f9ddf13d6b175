"""The guard backend: Llama Guard 3's prompt, its output format and the S-code -> OpenAI
category mapping; end to end on flintlm's engine with the embedded SmolLM2 GGUF standing in
for a guard model, its answer forced by the engine's regex structured output."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from typer.testing import CliRunner

from flintlm import cli
from flintlm.config import CacheConfig, FlintConfig, ModelConfig, ModerationConfig
from flintlm.loading.loader import resolve_model_path
from flintlm.safety.llama_guard import (
    CODE_CATEGORIES,
    OUTPUT_REGEX,
    POLICY,
    GuardModerator,
    guard_prompt,
    parse_guard_output,
    verdict_result,
)
from flintlm.safety.moderation import CATEGORIES
from tests.reference import REFERENCE_PATHS


def test_prompt_is_llama_guard_3s() -> None:
    prompt = guard_prompt("How do I bake bread?")
    assert prompt.startswith("<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n"
                             "Task: Check if there is unsafe content in 'User' messages in "
                             "conversations according our safety policy with the below "
                             "categories.\n\n<BEGIN UNSAFE CONTENT CATEGORIES>\nS1: Violent "
                             "Crimes.\nS2: Non-Violent Crimes.\n")
    assert "S14: Code Interpreter Abuse.\n<END UNSAFE CONTENT CATEGORIES>\n\n" in prompt
    assert ("<BEGIN CONVERSATION>\n\nUser: How do I bake bread?\n\n<END CONVERSATION>\n\n"
            "Provide your safety assessment for ONLY THE LAST User message") in prompt
    assert prompt.endswith("categories.<|eot_id|><|start_header_id|>assistant"
                           "<|end_header_id|>\n\n")
    assert [f"S{i}" for i in range(1, 15)] == list(POLICY)
    assert "Agent: hi" in guard_prompt("hi", role="Agent")


@pytest.mark.parametrize(("answer", "is_unsafe", "codes"), [
    ("safe", False, ()),
    ("unsafe\nS1", True, ("S1",)),
    ("unsafe\nS1,S10", True, ("S1", "S10")),
    (" unsafe\nS14 \n", True, ("S14",)),
])
def test_output_format_parses(answer: str, is_unsafe: bool, codes: tuple[str, ...]) -> None:
    verdict = parse_guard_output(answer)
    assert verdict.is_unsafe is is_unsafe and verdict.policy_codes == codes


@pytest.mark.parametrize("answer", ["", "maybe", "unsafe\nS15", "safe\nS1", "unsafe\nS1\nS2"])
def test_malformed_output_is_refused(answer: str) -> None:
    with pytest.raises(ValueError, match="guard model"):
        parse_guard_output(answer)


def test_category_mapping() -> None:
    hate_violent = verdict_result(parse_guard_output("unsafe\nS1,S10"))
    assert hate_violent.flagged
    assert {n for n, on in hate_violent.categories.items() if on} == {
        "violence", "illicit/violent", "hate"}
    assert hate_violent.category_scores["hate"] == 1.0
    assert hate_violent.category_scores["harassment"] == 0.0
    assert hate_violent.policy_codes == ("S1", "S10")
    minors = verdict_result(parse_guard_output("unsafe\nS4"))
    assert {n for n, on in minors.categories.items() if on} == {"sexual", "sexual/minors"}
    # A code with no OpenAI category still flags the text: the guard judged it unsafe.
    privacy = verdict_result(parse_guard_output("unsafe\nS7"))
    assert privacy.flagged and not any(privacy.categories.values())
    safe = verdict_result(parse_guard_output("safe"))
    assert not safe.flagged and set(safe.category_scores.values()) == {0.0}
    assert all(c in CATEGORIES for codes in CODE_CATEGORIES.values() for c in codes)
    # harassment has no S-code: never judged by the guard, so never flagged by it.
    assert "harassment" not in safe.judged_categories


@pytest.fixture(scope="module")
def guard_config() -> FlintConfig:
    """The guard on the reference paths: nothing left to measure (a kernel calibration would
    cost more than these tests; tests/kernels covers it)."""
    return FlintConfig(
        model=ModelConfig(dtype="float32", device="cpu", **REFERENCE_PATHS),
        cache=CacheConfig(kv_cache_memory=64 << 20),
        moderation=ModerationConfig("guard", resolve_model_path("default")))


@pytest.fixture(scope="module")
def forced_guard(guard_config: FlintConfig) -> Iterator[GuardModerator]:
    moderator = GuardModerator.from_config(guard_config, output_regex="unsafe\nS10,S11")
    yield moderator
    moderator.close()


def test_forced_answer_through_the_engine(forced_guard: GuardModerator) -> None:
    results = asyncio.run(forced_guard.classify(["first text", "second text"]))
    assert len(results) == 2
    for result in results:
        assert result.flagged and result.policy_codes == ("S10", "S11")
        assert {n for n, on in result.categories.items() if on} == {"hate", "self-harm"}
    assert forced_guard.model_name == "SmolLM2-135M-Instruct.Q4_1"


def test_unforced_answer_is_always_well_formed(forced_guard: GuardModerator) -> None:
    # The service grammar: whatever the (non-guard) model prefers, the answer parses.
    guard = GuardModerator(forced_guard.llm, "smollm2-as-guard", output_regex=OUTPUT_REGEX)
    try:
        results = asyncio.run(guard.classify(["Tell me a joke about cats.", "I hate you."]))
    finally:
        guard.close()
    assert len(results) == 2
    for result in results:
        assert result.flagged == bool(result.policy_codes)  # "unsafe" always names a code
        assert all(code in POLICY for code in result.policy_codes)


def test_guard_needs_a_model() -> None:
    with pytest.raises(ValueError, match="--guard-model"):
        ModerationConfig("guard")
    with pytest.raises(ValueError, match="classifier, guard"):
        ModerationConfig("nope")
    result = CliRunner().invoke(cli.app, ["serve", "--moderation-backend", "guard"])
    assert result.exit_code == 2 and "--guard-model" in result.output
