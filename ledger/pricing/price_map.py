"""Import of the community price map (LiteLLM's ``model_prices_and_context_window.json``).

That file prices per token in JSON numbers. Read through ``parse_price_map_text`` the
numbers become ``Decimal`` straight from their text, so no float ever holds a price;
per-token prices times one million are the per-million prices Ledger stores.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Context, Decimal, Inexact
from typing import Any

from ledger.pricing.prices import Price, PriceError, price_from_mapping

LITELLM_SOURCE = "https://github.com/BerriAI/litellm/blob/main/model_prices_and_context_window.json"


@dataclass(frozen=True, slots=True)
class ImportResult:
    """The outcome of reading a price map, entry by entry.

    ``skipped`` holds entries that are not token-priced chat models (embeddings,
    images, the documentation entry) and ``refused`` holds chat entries whose prices
    cannot be trusted; both as ``(name, reason)``.
    """

    prices: list[Price]
    skipped: list[tuple[str, str]]
    refused: list[tuple[str, str]]


def parse_price_map_text(
    text: str, *, effective_from: datetime | None = None, source: str = LITELLM_SOURCE
) -> ImportResult:
    """Parse the text of a price map exactly; see ``parse_price_map``.

    Raises ``PriceError`` if the text is not a JSON object.
    """
    try:
        # parse_constant catches NaN and Infinity, which json would make floats.
        data = json.loads(text, parse_float=Decimal, parse_constant=Decimal)
    except json.JSONDecodeError as exc:
        raise PriceError(f"the price map is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise PriceError("the price map must be a JSON object of model names")
    return parse_price_map(data, effective_from=effective_from, source=source)


def parse_price_map(
    data: Mapping[str, Any],
    *,
    effective_from: datetime | None = None,
    source: str = LITELLM_SOURCE,
) -> ImportResult:
    """Turn a price map into ``Price`` versions effective from ``effective_from`` (now).

    Only ``chat``, ``responses`` and ``completion`` entries are read; others are
    skipped. Numbers should be ``Decimal`` (use ``parse_price_map_text``); floats are
    read through ``str()`` as in ``price_from_mapping``. ``litellm_provider`` becomes
    the provider, with OpenAI's and Anthropic's spellings mapped to ``openai`` and
    ``anthropic``. An ``_above_200k_tokens`` (or ``_above_128k_tokens``) price makes
    a long-context tier above that many input tokens.

    An entry is refused, with the reason, when its input or output price is missing,
    negative or finer than Ledger can hold, or when it fails these unit checks:

    - a price above $0.001 per token ($1000 per million): a per-million price was
      written in a per-token field;
    - an input or output price above zero but below $1e-12 per token: another unit;
    - output cheaper than a hundredth of input: the fields are swapped or mis-scaled.
    """
    if effective_from is None:
        effective_from = datetime.now(UTC)
    prices: list[Price] = []
    skipped: list[tuple[str, str]] = []
    refused: list[tuple[str, str]] = []
    for name, entry in data.items():
        if name == "sample_spec":
            skipped.append((name, "the format's documentation entry"))
            continue
        if not isinstance(entry, Mapping):
            refused.append((name, "not an object"))
            continue
        mode = entry.get("mode")
        if mode not in _TOKEN_PRICED_MODES:
            skipped.append((name, f"mode {mode!r} is not priced per chat token"))
            continue
        try:
            prices.append(_price_from_entry(name, entry, effective_from, source))
        except PriceError as exc:
            refused.append((name, str(exc)))
    return ImportResult(prices, skipped, refused)


_TOKEN_PRICED_MODES = frozenset({"chat", "responses", "completion"})
_PROVIDERS = {"openai": "openai", "text-completion-openai": "openai", "anthropic": "anthropic"}
_TIERS = {"_above_200k_tokens": 200_000, "_above_128k_tokens": 128_000}

# Ledger's price field for each of the price map's per-token fields (before a tier suffix).
_FIELDS = {
    "input_cost_per_token": "input",
    "output_cost_per_token": "output",
    "cache_read_input_token_cost": "cached_input",
    "cache_creation_input_token_cost": "cache_write_5m",
    "cache_creation_input_token_cost_above_1hr": "cache_write_1h",
}

_MAX_PER_TOKEN = Decimal("0.001")
_MIN_PER_TOKEN = Decimal("1e-12")
_MIN_OUTPUT_TO_INPUT = Decimal("0.01")
# Moving the decimal point is exact below 28 digits; beyond, refuse rather than round.
_EXACT = Context(traps=[Inexact])


def _price_from_entry(
    name: str, entry: Mapping[str, Any], effective_from: datetime, source: str
) -> Price:
    mapping: dict[str, Any] = {
        "model": name,
        "provider": _provider(name, entry.get("litellm_provider")),
        "effective_from": effective_from,
        "source": source,
    }
    per_token: dict[str, Decimal] = {}
    for field, ledger_field in _FIELDS.items():
        if entry.get(field) is not None:
            per_token[ledger_field] = _per_token(field, entry[field])

    tiers = [suffix for suffix in _TIERS if any(field + suffix in entry for field in _FIELDS)]
    if len(tiers) > 1:
        raise PriceError(f"more than one long-context tier ({', '.join(tiers)})")
    if tiers:
        suffix = tiers[0]
        mapping["long_context_threshold"] = _TIERS[suffix]
        for field, ledger_field in _FIELDS.items():
            if entry.get(field + suffix) is not None:
                value = _per_token(field + suffix, entry[field + suffix])
                per_token[f"long_context_{ledger_field}"] = value

    if "input" not in per_token or "output" not in per_token:
        raise PriceError("no input or output price")
    _check_units(per_token)
    for ledger_field, value in per_token.items():
        try:
            mapping[ledger_field] = value.scaleb(6, context=_EXACT)
        except Inexact:
            raise PriceError(f"{ledger_field} has more digits than can be held exactly") from None
    return price_from_mapping(mapping)


def _provider(name: str, litellm_provider: object) -> str:
    if isinstance(litellm_provider, str) and litellm_provider:
        return _PROVIDERS.get(litellm_provider, litellm_provider)
    prefix, slash, _rest = name.partition("/")
    return prefix if slash else "unknown"


def _per_token(field: str, value: object) -> Decimal:
    if isinstance(value, float):
        value = Decimal(str(value))  # see price_from_mapping on floats
    if isinstance(value, bool) or not isinstance(value, Decimal | int):
        raise PriceError(f"{field} is not a number: {value!r}")
    amount = Decimal(value)
    if not amount.is_finite():
        raise PriceError(f"{field} is not a finite number: {value!r}")
    if amount < 0:
        raise PriceError(f"{field} is negative: {value!r}")
    return amount


def _check_units(per_token: Mapping[str, Decimal]) -> None:
    for field, value in per_token.items():
        if value > _MAX_PER_TOKEN:
            raise PriceError(
                f"{field} of ${value} per token is over $1000 per million tokens: "
                "a per-million price in a per-token field?"
            )
    for field in ("input", "output"):
        if 0 < per_token[field] < _MIN_PER_TOKEN:
            raise PriceError(f"{field} of ${per_token[field]} per token is implausibly small")
    if per_token["output"] < per_token["input"] * _MIN_OUTPUT_TO_INPUT:
        raise PriceError("output is under a hundredth of input: swapped or mis-scaled fields?")
