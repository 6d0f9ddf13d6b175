"""The guard-model backend: any model served by flintlm's own engine, prompted in Llama Guard 3's
format and answering in its output format ("safe", or "unsafe" and a line of S-codes).

The answer is constrained to that format by the engine's regex structured output, so a reply
always parses. Llama Guard's verdict is a decision, not a probability: a category it names
scores 1.0, the rest 0.0. Codes with no OpenAI category (S5 Defamation, S6 Specialized Advice,
S7 Privacy, S8 Intellectual Property, S13 Elections, S14 Code Interpreter Abuse) still make the
result `flagged`; `policy_codes` keeps every code for callers (guardrails) that want them.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING

from flintlm.engine.request import SamplingParams
from flintlm.safety.moderation import ModerationResult, Moderator

if TYPE_CHECKING:
    from flintlm.config import FlintConfig
    from flintlm.llm import LLM

POLICY: dict[str, str] = {
    "S1": "Violent Crimes", "S2": "Non-Violent Crimes", "S3": "Sex Crimes",
    "S4": "Child Sexual Exploitation", "S5": "Defamation", "S6": "Specialized Advice",
    "S7": "Privacy", "S8": "Intellectual Property", "S9": "Indiscriminate Weapons",
    "S10": "Hate", "S11": "Suicide & Self-Harm", "S12": "Sexual Content", "S13": "Elections",
    "S14": "Code Interpreter Abuse",
}
"""Llama Guard 3's hazard taxonomy (MLCommons), in the order and words of its prompt."""

CODE_CATEGORIES: dict[str, tuple[str, ...]] = {
    "S1": ("violence", "illicit/violent"),
    "S2": ("illicit",),
    "S3": ("sexual",),
    "S4": ("sexual", "sexual/minors"),
    "S9": ("violence", "illicit/violent"),
    "S10": ("hate",),
    "S11": ("self-harm",),
    "S12": ("sexual",),
}
"""Each S-code's OpenAI categories; codes not listed have none (see the module docstring)."""

_CODE = r"S(1[0-4]|[1-9])"
OUTPUT_REGEX = rf"safe|unsafe\n{_CODE}(,{_CODE})*"
"""Every well-formed Llama Guard answer; the engine allows no other output."""

_MAX_ANSWER_TOKENS = 64  # "unsafe" + all fourteen codes fits with room to spare


def guard_prompt(text: str, role: str = "User") -> str:
    """Llama Guard 3's prompt judging one message of `role` ("User" for input, "Agent" for a
    model's output), with its special tokens written out as text."""
    categories = "\n".join(f"{code}: {name}." for code, name in POLICY.items())
    return (
        "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n"
        f"Task: Check if there is unsafe content in '{role}' messages in conversations "
        "according our safety policy with the below categories.\n\n"
        f"<BEGIN UNSAFE CONTENT CATEGORIES>\n{categories}\n<END UNSAFE CONTENT CATEGORIES>\n\n"
        f"<BEGIN CONVERSATION>\n\n{role}: {text}\n\n<END CONVERSATION>\n\n"
        f"Provide your safety assessment for ONLY THE LAST {role} message in the above "
        "conversation:\n - First line must read 'safe' or 'unsafe'.\n"
        " - If unsafe, a second line must include a comma-separated list of violated "
        "categories.<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
    )


@dataclasses.dataclass(frozen=True)
class GuardVerdict:
    is_unsafe: bool
    policy_codes: tuple[str, ...]


def parse_guard_output(answer: str) -> GuardVerdict:
    """"safe" or "unsafe\\nS1,S10" -> a verdict; anything else is a ValueError naming it."""
    lines = answer.strip().splitlines()
    if lines == ["safe"]:
        return GuardVerdict(False, ())
    if not lines or lines[0].strip() != "unsafe" or len(lines) > 2:
        raise ValueError(f"the guard model's answer {answer!r} is not in Llama Guard's format")
    codes = [code.strip() for code in lines[1].split(",")] if len(lines) == 2 else []
    unknown = [code for code in codes if code not in POLICY]
    if unknown:
        raise ValueError(f"the guard model named unknown categories {unknown} in {answer!r}")
    return GuardVerdict(True, tuple(dict.fromkeys(codes)))


def verdict_result(verdict: GuardVerdict) -> ModerationResult:
    scores = {category: 1.0 for code in verdict.policy_codes
              for category in CODE_CATEGORIES.get(code, ())}
    return ModerationResult.from_scores(scores, GuardModerator.judged_categories,
                                        is_unsafe=verdict.is_unsafe,
                                        policy_codes=verdict.policy_codes)


class GuardModerator(Moderator):
    """Runs the guard on its own offline `LLM` (one engine, on the moderator's thread), one
    greedy answer per text, all texts of a call in one batch."""

    judged_categories = frozenset(c for codes in CODE_CATEGORIES.values() for c in codes)

    def __init__(self, llm: LLM, model_name: str, *, output_regex: str = OUTPUT_REGEX) -> None:
        """`output_regex` is the grammar the answer must match: OUTPUT_REGEX in service; a test
        narrows it to force one answer, to check the format, parsing and mapping end to end."""
        super().__init__()
        self.llm = llm
        self.model_name = model_name
        self._params = SamplingParams(temperature=0.0, max_tokens=_MAX_ANSWER_TOKENS,
                                      regex=output_regex)

    @classmethod
    def from_config(cls, config: FlintConfig, *, output_regex: str = OUTPUT_REGEX
                    ) -> GuardModerator:
        from flintlm.llm import LLM

        path = config.moderation.guard_model
        if path is None:
            raise ValueError("moderation_backend='guard' needs guard_model (--guard-model PATH)")
        model = dataclasses.replace(config.model, model=path, served_model_name=None,
                                    max_model_len=None)
        llm = LLM(config=config.replace(model=model))
        return cls(llm, Path(path).name.removesuffix(".gguf"), output_regex=output_regex)

    def classify_blocking(self, texts: list[str]) -> list[ModerationResult]:
        if not texts:
            return []
        prompts = [self.llm.tokenizer.encode(guard_prompt(text), add_special_tokens=False)
                   for text in texts]
        outputs = self.llm.generate(prompts, self._params)
        return [verdict_result(parse_guard_output(output.text)) for output in outputs]
