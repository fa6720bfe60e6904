"""genai-prices' catalog as Ledger price versions, and names resolved the way it resolves them.

genai-prices (PyPI, MIT) ships its data inside the package: providers, their models with
match rules for dated snapshots and aliases, tiered prices and dated price changes, as
``Decimal`` USD per million tokens. ``materialise`` turns every provider's models into
``Price`` versions of integer nanos (a start-date condition becomes a version), so every
ledger entry can point at the version it used. ``ModelResolver`` answers "which catalog
model is this name?" with genai-prices' own match rules, cached per name. Nothing here
downloads anything: the data is the installed package's, or a data file given by path.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal
from functools import lru_cache
from pathlib import Path
from typing import Any

from ledger.pricing.prices import Price, PriceError, Tier

GENAI_ORIGIN = "genai-prices"
# Before the first dated price of a model, its first price applies (genai-prices' rule).
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# A name cache per resolver: bounded, since clients choose the names.
_RESOLVE_CACHE_SIZE = 4096
# A Decimal within this many nanos of a whole nano is a float artefact (3.6000000000000003).
_ARTEFACT = Decimal("1e-6")
_NANOS_PER_USD = Decimal(10**9)

# genai-prices price keys Ledger bills. Their fallbacks follow genai-prices' own leaves: a
# bucket without a price of its own is priced as the more general bucket it belongs to.
_TEXT_KEYS = ("input_mtok", "cache_read_mtok", "cache_write_mtok", "cache_write_1h_mtok")
_KNOWN_KEYS = frozenset(
    {*_TEXT_KEYS, "output_mtok", "input_audio_mtok", "cache_audio_read_mtok"}
    | {"output_audio_mtok", "requests_kcount"}
)


@dataclass(frozen=True, slots=True)
class Materialised:
    """What ``materialise`` made of a catalog: prices, and what it said about them."""

    version: str
    prices: list[Price]
    rounded: list[str] = field(default_factory=list)  # float artefacts rounded to the nano
    refused: list[tuple[str, str]] = field(default_factory=list)  # (provider/model, why)
    unbilled: dict[str, int] = field(default_factory=dict)  # price key -> models carrying it


def installed_version() -> str:
    """The installed genai-prices version (its data is what ``materialise`` reads)."""
    from importlib.metadata import version

    return version("genai-prices")


def load_providers(path: str | Path | None = None) -> list[Any]:
    """genai-prices' providers: the installed package's snapshot, or a data file's.

    ``path`` is a genai-prices ``data.json`` (a list of providers), e.g. one downloaded
    by hand from the project's repository; Ledger never fetches it.
    """
    if path is None:
        from genai_prices.data_snapshot import get_snapshot

        return list(get_snapshot().providers)
    from genai_prices.types import _providers_from_raw

    try:
        raw = json.loads(Path(path).read_text(encoding="utf-8"))
        return list(_providers_from_raw(raw))
    except (OSError, ValueError) as exc:
        raise PriceError(f"{path}: not a genai-prices data file: {exc}") from None


def materialise(providers: Sequence[Any], source: str) -> Materialised:
    """Every token price of every provider's model as ``Price`` versions in nanos.

    A model's first price is effective from 1970 (genai-prices uses it before any dated
    price); each later start-date condition is a new version from that date. Time-of-day
    conditions are left out (off-peak rates are another dimension). ``Price.provider`` is
    the genai-prices provider id: the same model id is priced per provider. A model
    priced in no unit Ledger bills (images only, audio hours, …) is refused, with why.
    """
    result = Materialised(version=source, prices=[])
    for provider in providers:
        seen: set[str] = set()
        for model in provider.models:
            if model.id in seen:
                continue  # genai-prices matches the first of two same ids
            seen.add(model.id)
            name = f"{provider.id}/{model.id}"
            try:
                result.prices.extend(_versions(provider.id, model, source, result))
            except PriceError as exc:
                result.refused.append((name, str(exc)))
    return result


def _versions(provider_id: str, model: Any, source: str, result: Materialised) -> list[Price]:
    from genai_prices.types import ModelPrice, StartDateConstraint, TimeOfDateConstraint

    if isinstance(model.prices, ModelPrice):
        dated = [(EPOCH, model.prices)]
    else:
        dated = []
        for number, conditional in enumerate(model.prices):
            constraint = conditional.constraint
            if isinstance(constraint, TimeOfDateConstraint):
                continue
            start = EPOCH
            if isinstance(constraint, StartDateConstraint) and number > 0:
                day = constraint.start_date
                start = datetime(day.year, day.month, day.day, tzinfo=UTC)
            if dated and start <= dated[-1][0]:
                raise PriceError("dated prices out of order")
            dated.append((start, conditional.prices))
    return [
        _price(provider_id, model.id, start, source, model_price, result)
        for start, model_price in dated
    ]


def _price(
    provider_id: str, model_id: str, start: datetime, source: str, prices: Any, result: Materialised
) -> Price:
    from genai_prices.types import TieredPrices

    values = {k: v for k, v in prices.__dict__.items() if not k.startswith("_") and v is not None}
    for key in values.keys() - _KNOWN_KEYS:
        result.unbilled[key] = result.unbilled.get(key, 0) + 1
    if "input_mtok" not in values and "output_mtok" not in values:
        raise PriceError("not priced per token")
    label = f"{provider_id}/{model_id}"

    def nanos(key: str, amount: Decimal, per: int = 1) -> int:
        return _to_nanos(label, key, amount / per, result)

    def flat(key: str) -> Decimal | None:
        value = values.get(key)
        if isinstance(value, TieredPrices):
            raise PriceError(f"{key} is tiered, which Ledger does not support for it")
        return value

    def at(key: str, threshold: int | None) -> Decimal | None:
        # The price of ``key`` for a request just over ``threshold`` (None: the base).
        value = values.get(key)
        if not isinstance(value, TieredPrices):
            return value
        applicable = value.base
        if threshold is not None:
            for tier in value.tiers:
                if threshold >= tier.start:
                    applicable = tier.price
        return applicable

    def rates(threshold: int | None) -> tuple[int, int, int, int, int]:
        input_ = at("input_mtok", threshold) or Decimal(0)
        cached = at("cache_read_mtok", threshold)
        write_5m = at("cache_write_mtok", threshold)
        write_1h = at("cache_write_1h_mtok", threshold)
        output = at("output_mtok", threshold) or Decimal(0)
        write_5m = input_ if write_5m is None else write_5m
        return (
            nanos("input_mtok", input_),
            nanos("cache_read_mtok", input_ if cached is None else cached),
            nanos("cache_write_mtok", write_5m),
            nanos("cache_write_1h_mtok", write_5m if write_1h is None else write_1h),
            nanos("output_mtok", output),
        )

    # One Ledger tier per distinct threshold of any key: at each, every key takes the
    # price it has there, which is exactly genai-prices' per-key choice.
    thresholds = sorted(
        {
            tier.start
            for key in (*_TEXT_KEYS, "output_mtok")
            if isinstance(values.get(key), TieredPrices)
            for tier in values[key].tiers
        }
    )
    if thresholds and thresholds[0] <= 0:
        raise PriceError("a tier starts at 0 tokens")
    base = rates(None)
    audio_in, audio_cached, audio_out = (
        flat("input_audio_mtok"),
        flat("cache_audio_read_mtok"),
        flat("output_audio_mtok"),
    )
    requests = flat("requests_kcount")
    return Price(
        model=model_id,
        provider=provider_id,
        effective_from=start,
        source=source,
        input=base[0],
        cached_input=base[1],
        cache_write_5m=base[2],
        cache_write_1h=base[3],
        output=base[4],
        request_fee_nanos=0 if requests is None else nanos("requests_kcount", requests, 1000),
        tiers=tuple(Tier(threshold, *rates(threshold)) for threshold in thresholds),
        input_audio=None if audio_in is None else nanos("input_audio_mtok", audio_in),
        # Without a cached-audio price, cached audio is a cache read (genai-prices' leaf).
        cached_audio_input=(
            None if audio_cached is None else nanos("cache_audio_read_mtok", audio_cached)
        ),
        output_audio=None if audio_out is None else nanos("output_audio_mtok", audio_out),
    )


def _to_nanos(label: str, key: str, amount: Decimal, result: Materialised) -> int:
    scaled = amount * _NANOS_PER_USD
    whole = scaled.to_integral_value(rounding=ROUND_HALF_UP)
    if whole == scaled:
        return int(whole)
    if abs(scaled - whole) < _ARTEFACT:
        result.rounded.append(f"{label}: {key} {amount} rounded to {whole} nanos per million")
        return int(whole)
    raise PriceError(f"{key} = {amount} is finer than one nano-USD per million tokens")


# -- names ------------------------------------------------------------------------------


class ModelResolver:
    """The catalog model a name means, per genai-prices provider, by its match rules.

    Dated snapshots (``claude-haiku-4-5-20251001``), ``-latest``, ``@version``, dotted or
    dashed spellings resolve as genai-prices resolves them; a ``provider/`` prefix is
    tried without it too. Answers (misses included) are cached per name in a bounded
    LRU, so a lookup on the hot path is one dictionary hit after the first request.
    """

    def __init__(self, providers: Iterable[Any]) -> None:
        self._providers = {provider.id: provider for provider in providers}
        self._all = list(self._providers.values())
        self.resolve: Callable[[str | None, str], tuple[str, str] | None] = lru_cache(
            maxsize=_RESOLVE_CACHE_SIZE
        )(self._resolve)

    @classmethod
    def installed(cls) -> ModelResolver:
        return cls(load_providers())

    def provider_ids(self) -> list[str]:
        return list(self._providers)

    def _resolve(self, provider_id: str | None, name: str) -> tuple[str, str] | None:
        """``(provider id, model id)`` for ``name``, or ``None``.

        With ``provider_id`` the name is looked up among that provider's models (and the
        providers it falls back to, e.g. Azure to OpenAI); without, genai-prices' own
        choice of provider from the name, then every provider in order.
        """
        names = [name]
        prefix, slash, rest = name.partition("/")
        if slash and rest:
            names.append(rest)
        if provider_id is not None:
            provider = self._providers.get(provider_id)
            if provider is None:
                return None
            for candidate in names:
                model = provider.find_model(candidate, all_providers=self._all)
                if model is not None:
                    return _owner(self._all, provider, model), model.id
            return None
        preferred = [p for p in self._all if p.model_match and p.model_match.is_match(name.lower())]
        if slash and prefix.lower() in self._providers:
            preferred.insert(0, self._providers[prefix.lower()])
        for provider in [*preferred, *self._all]:
            for candidate in names:
                model = provider.find_model(candidate)
                if model is not None:
                    return provider.id, model.id
        return None


def _owner(providers: list[Any], provider: Any, model: Any) -> str:
    # A fallback match (Azure serving OpenAI's model) is priced at the owner's price.
    if any(m is model for m in provider.models):
        return provider.id
    for other in providers:
        if any(m is model for m in other.models):
            return other.id
    return provider.id


def catalog_provider_for(kind: str, base_url: str, providers: Iterable[Any]) -> str:
    """The genai-prices provider whose prices a Ledger provider bills at.

    The provider whose API pattern matches ``base_url`` (Groq, OpenRouter, Together, …),
    else the one named like the provider's kind (``openai``, ``anthropic``).
    """
    url = base_url.rstrip("/")
    if url:
        for provider in providers:
            if provider.api_pattern and re.match(provider.api_pattern, url):
                return str(provider.id)
    return kind


# -- refreshing the catalog --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CatalogChange:
    """One model's price in a refreshed catalog against the database's.

    ``kind``: ``added`` (a model the database has no version of), ``raised`` (some rate
    higher, none lower), ``lowered`` (any rate lower: it needs ``--accept-lower``) or
    ``removed`` (gone from the data; its versions stay and keep pricing it). ``new`` is
    the version to write (``None`` for ``removed``); an added model brings every dated
    version of the data, a changed one a single version from ``max(now, its start)``.
    """

    kind: str
    provider: str
    model: str
    old: Price | None
    new: tuple[Price, ...]

    def rates(self) -> list[tuple[str, int, int]]:
        """``(rate name, old, new)`` for every rate that differs, nanos per million."""
        if self.old is None or not self.new:
            return []
        old, new = _rate_vector(self.old, self.new[0]), _rate_vector(self.new[0], self.old)
        return [(name, old[name], new[name]) for name in old if old[name] != new[name]]


@dataclass(frozen=True, slots=True)
class CatalogDiff:
    changes: list[CatalogChange]
    unchanged: int
    absent_providers: dict[str, int]  # providers the data lacks -> models of theirs kept

    def of(self, kind: str) -> list[CatalogChange]:
        return [change for change in self.changes if change.kind == kind]

    @property
    def to_write(self) -> list[Price]:
        return [price for change in self.changes for price in change.new]


def diff_catalog(current: Iterable[Price], incoming: Iterable[Price], now: datetime) -> CatalogDiff:
    """What refreshing genai-prices' versions ``current`` with ``incoming`` would change.

    Compared per (provider, model): the incoming version in effect ``now`` and every
    later-dated one, each against the current version in effect at the later of ``now``
    and its start. A change becomes a new version from that instant, never a rewrite of
    a past one, so every ledger entry keeps the version (and the cost) it was priced at.
    """
    if now.tzinfo is None or now.utcoffset() is None:
        raise PriceError(f"price lookups need an aware datetime, not {now.isoformat()}")
    have = _by_model(current)
    want = _by_model(incoming)
    changes: list[CatalogChange] = []
    unchanged = 0
    for key, versions in sorted(want.items()):
        provider, model = key
        existing = have.get(key)
        if not existing:
            changes.append(CatalogChange("added", provider, model, None, tuple(versions)))
            continue
        in_effect = [v for v in versions if v.effective_from <= now][-1:]
        for version in in_effect + [v for v in versions if v.effective_from > now]:
            at = max(now, version.effective_from)
            old = _version_at(existing, at)
            if old is not None and _rate_vector(old, version) == _rate_vector(version, old):
                unchanged += 1
                continue
            new = dataclasses.replace(version, effective_from=at, id=None)
            if old is None:
                kind = "added"
            else:
                old_rates, new_rates = _rate_vector(old, version), _rate_vector(version, old)
                lower = any(new_rates[name] < old_rates[name] for name in old_rates)
                kind = "lowered" if lower else "raised"
            changes.append(CatalogChange(kind, provider, model, old, (new,)))
    present = {provider for provider, _ in want}
    absent: dict[str, int] = {}
    for provider, model in sorted(have):
        if (provider, model) in want:
            continue
        if provider in present:
            old = _version_at(have[(provider, model)], now)
            changes.append(CatalogChange("removed", provider, model, old, ()))
        else:
            absent[provider] = absent.get(provider, 0) + 1
    return CatalogDiff(changes, unchanged, absent)


def _by_model(prices: Iterable[Price]) -> dict[tuple[str, str], list[Price]]:
    grouped: dict[tuple[str, str], list[Price]] = {}
    for price in prices:
        grouped.setdefault((price.provider, price.model), []).append(price)
    for versions in grouped.values():
        versions.sort(key=lambda price: price.effective_from)
    return grouped


def _version_at(versions: list[Price], at: datetime) -> Price | None:
    found = None
    for version in versions:
        if version.effective_from <= at:
            found = version
    return found


_BASE_RATES = ("input", "cached_input", "cache_write_5m", "cache_write_1h", "output")


def _rate_vector(price: Price, other: Price) -> dict[str, int]:
    """Every rate ``price`` charges, by name, at its base and just above each tier
    threshold of either price: two versions compare rate by rate, so a dropped tier or
    a cheaper audio price is seen as the lower price it is."""
    rates: dict[str, int] = {}

    def put(prefix: str, values: tuple[int, ...], audio: bool) -> None:
        for name, value in zip(_BASE_RATES, values, strict=True):
            rates[f"{prefix}{name}"] = value
        if audio:
            input_, cached, output = values[0], values[1], values[4]
            rates[f"{prefix}input_audio"] = (
                input_ if price.input_audio is None else price.input_audio
            )
            rates[f"{prefix}cached_audio_input"] = (
                cached if price.cached_audio_input is None else price.cached_audio_input
            )
            rates[f"{prefix}output_audio"] = (
                output if price.output_audio is None else price.output_audio
            )

    base = tuple(getattr(price, name) for name in _BASE_RATES)
    # Audio follows the text rates unless either version prices it on its own.
    audio = any(
        getattr(p, name) is not None
        for p in (price, other)
        for name in ("input_audio", "cached_audio_input", "output_audio")
    )
    put("", base, audio=audio)
    rates["request_fee"] = price.request_fee_nanos
    rates["charged"] = int(not price.free)  # free -> charged is a raise
    thresholds = sorted({t.threshold for t in (*price.tiers, *other.tiers)})
    for threshold in thresholds:
        tier = None
        for candidate in price.tiers:
            if candidate.threshold <= threshold:
                tier = candidate
        values = base if tier is None else tuple(getattr(tier, name) for name in _BASE_RATES)
        put(f">{threshold} ", values, audio=False)
    return rates
