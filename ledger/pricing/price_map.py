"""Import of the community price map (LiteLLM's ``model_prices_and_context_window.json``).

That file prices per token in JSON numbers. Read through ``parse_price_map_text`` the
numbers become ``Decimal`` straight from their text, so no float ever holds a price;
per-token prices times one million are the per-million prices Ledger stores.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Context, Decimal, Inexact
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
    # Prices read as float artefacts (3.6000000000000003e-06) and rounded to the nano
    # per million tokens: (name, field, as written, as kept).
    rounded: list[tuple[str, str, str, str]] = field(default_factory=list)
    # Every context tier of every entry, lowest threshold first, as (threshold, prices in
    # USD per million by Ledger field), as written in the map; each Price holds them all.
    tiers: dict[str, list[tuple[int, dict[str, Decimal]]]] = field(default_factory=dict)


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
    ``anthropic``. Every ``_above_Nk_tokens`` (or ``_above_Nm_tokens``) price makes a
    context tier above that many input tokens, all of them kept (``Price.tiers``).

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
    rounded: list[tuple[str, str, str, str]] = []
    tiers: dict[str, list[tuple[int, dict[str, Decimal]]]] = {}
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
            price, entry_tiers = _price_from_entry(name, entry, effective_from, source, rounded)
        except PriceError as exc:
            refused.append((name, str(exc)))
            continue
        prices.append(price)
        if entry_tiers:
            tiers[name] = entry_tiers
    return ImportResult(prices, skipped, refused, rounded, tiers)


_TOKEN_PRICED_MODES = frozenset({"chat", "responses", "completion"})
_PROVIDERS = {"openai": "openai", "text-completion-openai": "openai", "anthropic": "anthropic"}
# A context tier: "_above_200k_tokens", "_above_272k_tokens", "_above_1m_tokens"…
_TIER_SUFFIX = re.compile(r"(_above_(\d+)(k|m)?_tokens)$")
# Service-tier prices: the map's suffix and the service_tier the response reports.
_SERVICE_TIERS = {"_flex": "flex", "_priority": "priority", "_batches": "batch"}
_NANO_PER_MILLION = Decimal("1e-15")  # one nano-USD per million tokens, per token

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
    name: str,
    entry: Mapping[str, Any],
    effective_from: datetime,
    source: str,
    rounded: list[tuple[str, str, str, str]],
) -> tuple[Price, list[tuple[int, dict[str, Decimal]]]]:
    mapping: dict[str, Any] = {
        "model": name,
        "provider": _provider(name, entry.get("litellm_provider")),
        "effective_from": effective_from,
        "source": source,
    }
    per_token: dict[str, Decimal] = {}
    for map_field, ledger_field in _FIELDS.items():
        if entry.get(map_field) is not None:
            per_token[ledger_field] = _per_token(map_field, entry[map_field])

    # Every context tier, whatever its threshold (200k, 128k, 272k, 100k, 256k, 512k…).
    by_threshold: dict[int, dict[str, Decimal]] = {}
    for key, value in entry.items():
        match = _TIER_SUFFIX.search(key)
        if match is None or value is None:
            continue
        base_field = key[: match.start()]
        if base_field not in _FIELDS:
            continue
        number, unit = int(match.group(2)), match.group(3)
        threshold = number * (1_000_000 if unit == "m" else 1_000 if unit == "k" else 1)
        by_threshold.setdefault(threshold, {})[_FIELDS[base_field]] = _per_token(key, value)
    tiers = sorted(by_threshold.items())

    if "input" not in per_token or "output" not in per_token:
        raise PriceError("no input or output price")
    _check_units(
        per_token
        | {
            f"{ledger_field} above {threshold} tokens": value
            for threshold, tier_prices in tiers
            for ledger_field, value in tier_prices.items()
        }
    )
    for ledger_field, value in per_token.items():
        mapping[ledger_field] = _per_million(name, ledger_field, value, rounded)
    if tiers:
        mapping["tiers"] = _tier_tables(name, mapping, tiers, rounded)

    service_tiers: dict[str, dict[str, Decimal]] = {}
    for suffix, tier in _SERVICE_TIERS.items():
        prices: dict[str, Decimal] = {}
        for map_field, ledger_field in _FIELDS.items():
            value = entry.get(map_field + suffix)
            if value is not None:
                prices[ledger_field] = _per_million(
                    name, f"{tier} {ledger_field}", _per_token(map_field + suffix, value), rounded
                )
        if "input" in prices:
            service_tiers[tier] = prices
    if service_tiers:
        mapping["service_tiers"] = service_tiers
    per_million_tiers = [
        (threshold, {k: v.scaleb(6) for k, v in tier_prices.items()})
        for threshold, tier_prices in tiers
    ]
    return price_from_mapping(mapping), per_million_tiers


def _tier_tables(
    name: str,
    mapping: Mapping[str, Any],
    tiers: list[tuple[int, dict[str, Decimal]]],
    rounded: list[tuple[str, str, str, str]],
) -> list[dict[str, Any]]:
    """Every context tier as a ``price_from_mapping`` tier table (USD per million).

    A price a tier leaves out keeps the tier below's (``_tiers_from_mapping``), except
    the 1-hour write, which is never below the tier's own 5-minute write: the map
    rarely prices a 1-hour write above a threshold, and the tier's dearer 5-minute
    write is the nearer floor."""
    # The 1-hour write below the first tier, with price_from_mapping's fallbacks.
    below_1h = mapping.get("cache_write_1h", mapping.get("cache_write_5m", mapping["input"]))
    tables: list[dict[str, Any]] = []
    for threshold, tier_prices in tiers:
        table: dict[str, Any] = {"threshold": threshold}
        for ledger_field, value in tier_prices.items():
            label = f"{ledger_field} above {threshold} tokens"
            table[ledger_field] = _per_million(name, label, value, rounded)
        if "cache_write_1h" not in table and "cache_write_5m" in table:
            table["cache_write_1h"] = max(below_1h, table["cache_write_5m"])
        below_1h = table.get("cache_write_1h", below_1h)
        tables.append(table)
    return tables


def _per_million(
    name: str, ledger_field: str, value: Decimal, rounded: list[tuple[str, str, str, str]]
) -> Decimal:
    """A per-token price as USD per million, exact when it is; a float artefact finer
    than one nano per million (3.6000000000000003e-06) is rounded to it, and noted."""
    try:
        per_million = value.scaleb(6, context=_EXACT)
    except Inexact:
        raise PriceError(f"{ledger_field} has more digits than can be held exactly") from None
    kept = per_million.quantize(Decimal("1e-9"), rounding=ROUND_HALF_UP)
    if kept != per_million:
        rounded.append((name, ledger_field, str(value), str(kept)))
    return kept


def refuse_untiered_replacements(
    changed: list[tuple[Price, Price]],
) -> tuple[list[tuple[Price, Price]], list[tuple[str, str]]]:
    """Split ``changed`` (current, incoming) pairs: an incoming price without a context
    tier never replaces one that has it (a 250k-token claude-sonnet-4-5 request would
    be priced at half); those are returned as refused, with the reason."""
    kept: list[tuple[Price, Price]] = []
    refused: list[tuple[str, str]] = []
    for current, incoming in changed:
        if current.long_context_threshold is not None and incoming.long_context_threshold is None:
            refused.append(
                (
                    incoming.model,
                    f"has no context tier, and would replace {current.model}'s tier above "
                    f"{current.long_context_threshold} tokens",
                )
            )
        else:
            kept.append((current, incoming))
    return kept, refused


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
    for name, value in per_token.items():
        if value > _MAX_PER_TOKEN:
            raise PriceError(
                f"{name} of ${value} per token is over $1000 per million tokens: "
                "a per-million price in a per-token field?"
            )
    for name in ("input", "output"):
        if 0 < per_token[name] < _MIN_PER_TOKEN:
            raise PriceError(f"{name} of ${per_token[name]} per token is implausibly small")
    if per_token["output"] < per_token["input"] * _MIN_OUTPUT_TO_INPUT:
        raise PriceError("output is under a hundredth of input: swapped or mis-scaled fields?")
