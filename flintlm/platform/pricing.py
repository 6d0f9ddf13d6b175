"""Prices per model per token kind, and the one function that turns token usage into USD.

Prices are USD per 1M tokens, read from TOML (`default_prices.toml` unless `prices_file` is
set). Money is `Decimal` USD in the API and integer nano-USD in storage (`usd_to_nanos`).

Public API:
    ModelPrice(input, cached_input, output)
    Pricing(prices) / Pricing.from_file(path | None); .price(model), .cost(model, usage), .prices
    TokenUsage (protocol: prompt_tokens, cached_tokens, completion_tokens), TokenCounts,
    usd_to_nanos, nanos_to_usd
"""

from __future__ import annotations

import fnmatch
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any, Protocol

DEFAULT_PRICES_FILE = Path(__file__).resolve().parent / "default_prices.toml"
FALLBACK_MODEL = "*"
NANOS_PER_USD = 1_000_000_000
_TOKENS_PER_PRICE_UNIT = 1_000_000
_NANO = Decimal(1) / NANOS_PER_USD


class TokenUsage(Protocol):
    """What pricing needs of a request's usage; `flintlm.engine.request.Usage` fits it.

    `cached_tokens` is the part of `prompt_tokens` served from the prefix cache (OpenAI's
    `prompt_tokens_details.cached_tokens`), not an addition to it.
    """

    @property
    def prompt_tokens(self) -> int: ...
    @property
    def cached_tokens(self) -> int: ...
    @property
    def completion_tokens(self) -> int: ...


@dataclass(frozen=True)
class TokenCounts:
    """A plain `TokenUsage`, for callers that have counts but no engine `Usage`."""

    prompt_tokens: int = 0
    cached_tokens: int = 0
    completion_tokens: int = 0


@dataclass(frozen=True)
class ModelPrice:
    """USD per 1M tokens of each kind."""

    input: Decimal
    cached_input: Decimal
    output: Decimal

    def __post_init__(self) -> None:
        for kind in ("input", "cached_input", "output"):
            if getattr(self, kind) < 0:
                raise ValueError(f"price {kind}={getattr(self, kind)} must not be negative")


def usd_to_nanos(usd: Decimal) -> int:
    """USD as a whole number of nano-USD, rounded half up."""
    return int((usd * NANOS_PER_USD).to_integral_value(rounding=ROUND_HALF_UP))


def nanos_to_usd(nanos: int) -> Decimal:
    return (Decimal(nanos) / NANOS_PER_USD).quantize(_NANO)


class Pricing:
    """Looks up a model's price: exact name first, then glob patterns in file order, then "*"."""

    def __init__(self, prices: Mapping[str, ModelPrice]) -> None:
        if FALLBACK_MODEL not in prices:
            raise ValueError(f'prices name no fallback model "{FALLBACK_MODEL}"; add [models."*"]')
        self._prices = dict(prices)
        self._patterns = [name for name in prices if name != FALLBACK_MODEL and _is_glob(name)]

    @classmethod
    def from_file(cls, path: str | Path | None = None) -> Pricing:
        """Read a prices TOML file (see `default_prices.toml`); None reads the built-in one."""
        path = Path(path) if path is not None else DEFAULT_PRICES_FILE
        with path.open("rb") as file:
            # parse_float=Decimal keeps "0.15" exact instead of the nearest binary float.
            document = tomllib.load(file, parse_float=Decimal)
        try:
            return cls({name: _parse_price(table) for name, table in document["models"].items()})
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(f"{path}: {error}; see {DEFAULT_PRICES_FILE} for the format") from None

    @property
    def prices(self) -> dict[str, ModelPrice]:
        return dict(self._prices)

    def price(self, model: str) -> ModelPrice:
        if model in self._prices:
            return self._prices[model]
        for pattern in self._patterns:
            if fnmatch.fnmatchcase(model, pattern):
                return self._prices[pattern]
        return self._prices[FALLBACK_MODEL]

    def cost(self, model: str, usage: TokenUsage) -> Decimal:
        """USD for `usage` on `model`, exact to the nano-dollar (rounded half up)."""
        if min(usage.prompt_tokens, usage.cached_tokens, usage.completion_tokens) < 0:
            raise ValueError(f"token counts must not be negative, got {usage}")
        if usage.cached_tokens > usage.prompt_tokens:
            raise ValueError(f"cached_tokens={usage.cached_tokens} exceeds "
                             f"prompt_tokens={usage.prompt_tokens}; cached tokens are part of it")
        price = self.price(model)
        micro_usd = (
            (usage.prompt_tokens - usage.cached_tokens) * price.input
            + usage.cached_tokens * price.cached_input
            + usage.completion_tokens * price.output
        )
        return (micro_usd / _TOKENS_PER_PRICE_UNIT).quantize(_NANO, rounding=ROUND_HALF_UP)


def _parse_price(table: Any) -> ModelPrice:
    if not isinstance(table, dict):
        raise TypeError(f"a model's prices must be a table, got {table!r}")
    unknown = set(table) - {"input", "cached_input", "output"}
    if unknown:
        raise ValueError(f"unknown price fields {sorted(unknown)}")
    input_price = Decimal(table["input"])
    return ModelPrice(
        input=input_price,
        cached_input=Decimal(table.get("cached_input", input_price)),
        output=Decimal(table["output"]),
    )


def _is_glob(name: str) -> bool:
    return any(char in name for char in "*?[")
