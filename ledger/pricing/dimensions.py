"""What providers bill beyond per-token list prices, from ``dimensions.toml``.

Published multipliers (service tiers, data residency, speed) as exact fractions, and
per-call tool fees in nanos. ``ledger.pricing.prices.price_cost`` is the one place that
applies them; this module only says which apply to a model.
"""

from __future__ import annotations

import functools
import tomllib
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from fractions import Fraction
from importlib import resources
from typing import Any

from ledger.money import Nanos, usd_to_nanos

_FILE = "dimensions.toml"
# Tiers that mean "the list price": recorded as they are, priced at no multiplier.
STANDARD_TIERS = frozenset({"default", "standard", "auto", "standard_only"})


@dataclass(frozen=True, slots=True)
class Multiplier:
    provider: str
    dimension: str  # service_tier | inference_geo | speed | regional
    value: str
    factor: Fraction
    models: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ToolFee:
    provider: str
    tool: str
    nanos_per_call: Nanos
    models: tuple[str, ...]
    per_request: bool = False  # the model makes one call on every request


@dataclass(frozen=True, slots=True)
class Dimensions:
    """The shipped table; ``as_of`` is the date its sources were read."""

    as_of: str
    multipliers: tuple[Multiplier, ...]
    tool_fees: tuple[ToolFee, ...]
    # Answers by their question: every priced request asks, and the table never changes
    # (the keys are priced model names, as many as the catalog has).
    _answers: dict[tuple[str, ...], Any] = field(default_factory=dict, compare=False, repr=False)

    def multiplier(self, provider: str, dimension: str, value: str, model: str) -> Fraction | None:
        """The factor for ``dimension == value`` on ``model``; the last matching row wins."""
        key = ("multiplier", provider, dimension, value, model)
        if key not in self._answers:
            self._answers[key] = self._multiplier(provider, dimension, value, model)
        return self._answers[key]  # type: ignore[no-any-return]

    def _multiplier(self, provider: str, dimension: str, value: str, model: str) -> Fraction | None:
        for row in reversed(self.multipliers):
            if (row.provider, row.dimension, row.value) == (provider, dimension, value) and (
                _matches(model, row.models)
            ):
                return row.factor
        return None

    def tool_fee(self, provider: str, tool: str, model: str) -> ToolFee | None:
        key = ("tool_fee", provider, tool, model)
        if key not in self._answers:
            self._answers[key] = self._tool_fee(provider, tool, model)
        return self._answers[key]  # type: ignore[no-any-return]

    def _tool_fee(self, provider: str, tool: str, model: str) -> ToolFee | None:
        for row in reversed(self.tool_fees):
            if (row.provider, row.tool) == (provider, tool) and _matches(model, row.models):
                return row
        return None

    def per_request_tools(self, provider: str, model: str) -> list[ToolFee]:
        """Tools a model calls on every request (OpenAI's search-preview models)."""
        key = ("per_request_tools", provider, model)
        if key not in self._answers:
            tools = {row.tool for row in self.tool_fees if row.provider == provider}
            fees = (self.tool_fee(provider, tool, model) for tool in sorted(tools))
            self._answers[key] = tuple(fee for fee in fees if fee is not None and fee.per_request)
        return list(self._answers[key])


def parse_factor(value: object) -> Fraction:
    """An exact, positive multiplier from text such as ``"11/10"``, ``"2"`` or ``"0.5"``."""
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise ValueError(f"a multiplier must be text like '11/10', not {value!r}")
    factor = Fraction(str(value))
    if factor <= 0:
        raise ValueError(f"a multiplier must be positive, not {value!r}")
    return factor


def parse_dimensions(data: dict[str, Any]) -> Dimensions:
    multipliers = tuple(
        Multiplier(
            provider=row["provider"],
            dimension=row["dimension"],
            value=str(row["value"]),
            factor=parse_factor(row["factor"]),
            models=tuple(row.get("models", ["*"])),
        )
        for row in data.get("multiplier", [])
    )
    fees = tuple(
        ToolFee(
            provider=row["provider"],
            tool=row["tool"],
            nanos_per_call=usd_to_nanos(str(row["usd_per_call"])),
            models=tuple(row.get("models", ["*"])),
            per_request=bool(row.get("per_request", False)),
        )
        for row in data.get("tool_fee", [])
    )
    return Dimensions(as_of=str(data.get("as_of", "")), multipliers=multipliers, tool_fees=fees)


@functools.cache
def shipped_dimensions() -> Dimensions:
    """The table shipped next to this module, read once."""
    text = resources.files("ledger.pricing").joinpath(_FILE).read_text(encoding="utf-8")
    return parse_dimensions(tomllib.loads(text))


def _matches(model: str, patterns: tuple[str, ...]) -> bool:
    return any(fnmatchcase(model, pattern) for pattern in patterns)
