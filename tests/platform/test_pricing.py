"""Prices from TOML and the cost of usage, exact to the nano-dollar."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

from flintlm.platform.pricing import Pricing, TokenCounts, nanos_to_usd, usd_to_nanos

PRICES = """
[models."*"]
input = 0.05
output = 0.20

[models."big-model"]
input = 1.0
cached_input = 0.5
output = 2.0

[models."llama-*"]
input = 0.15
cached_input = 0.075
output = 0.60
"""


@pytest.fixture
def pricing(tmp_path: Path) -> Pricing:
    path = tmp_path / "prices.toml"
    path.write_text(PRICES)
    return Pricing.from_file(path)


def test_cost_charges_uncached_cached_and_output_tokens_per_million(pricing: Pricing) -> None:
    usage = TokenCounts(prompt_tokens=1000, cached_tokens=400, completion_tokens=500)
    # 600 * $1 + 400 * $0.5 + 500 * $2, per 1M tokens
    assert pricing.cost("big-model", usage) == Decimal("0.0018")


def test_lookup_is_exact_then_glob_then_fallback(pricing: Pricing) -> None:
    assert pricing.price("big-model").output == Decimal("2.0")
    assert pricing.price("llama-3.2-1b").input == Decimal("0.15")
    fallback = pricing.price("smollm2")
    assert fallback.input == Decimal("0.05")
    assert fallback.cached_input == fallback.input  # unset cached price: same as input


def test_costs_are_exact_decimals(pricing: Pricing) -> None:
    one_token = pricing.cost("llama-3", TokenCounts(prompt_tokens=1))
    assert one_token == Decimal("0.00000015")
    assert sum([one_token] * 10) == Decimal("0.0000015")
    assert usd_to_nanos(one_token) == 150 and nanos_to_usd(150) == one_token
    cached = pricing.cost("llama-3", TokenCounts(prompt_tokens=1, cached_tokens=1))
    assert cached == Decimal("0.000000075")


def test_built_in_prices_have_a_fallback() -> None:
    pricing = Pricing.from_file(None)
    assert pricing.cost("anything", TokenCounts(prompt_tokens=1_000_000)) == Decimal("0.05")
    assert "*" in pricing.prices


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ('[models."m"]\ninput = 1\noutput = 1', "fallback"),
        ('[models."*"]\ninput = -1\noutput = 1', "negative"),
        ('[models."*"]\ninput = 1\noutput = 1\nreasoning = 3', "unknown price fields"),
        ('[models."*"]\ninput = 1', "output"),
    ],
)
def test_bad_prices_files_are_refused_naming_the_file(tmp_path: Path, text: str,
                                                       error: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ValueError, match=error) as raised:
        Pricing.from_file(path)
    assert str(path) in str(raised.value)


def test_cached_tokens_beyond_the_prompt_are_refused(pricing: Pricing) -> None:
    with pytest.raises(ValueError, match="cached_tokens"):
        pricing.cost("m", TokenCounts(prompt_tokens=1, cached_tokens=2))
