"""The price in effect at time t: an effective-dated index of price versions."""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterable, Iterator
from datetime import datetime
from itertools import pairwise
from typing import NamedTuple

from ledger.pricing.prices import Price, PriceError


class PriceBook:
    """Every known version of every price, looked up by model name and request time.

    A model is found by its exact (case-sensitive) name, then by an alias declared on
    any of its versions, then the same again with a ``provider/`` prefix stripped
    (``openai/gpt-4.1`` finds ``gpt-4.1``). A model's own name wins over another
    model's alias. Because lookups take the request time, adding a new version never
    changes the cost of a request made before it took effect.
    """

    def __init__(self, prices: Iterable[Price]) -> None:
        versions: dict[str, list[Price]] = {}
        for price in prices:
            versions.setdefault(price.model, []).append(price)
        for model, model_versions in versions.items():
            model_versions.sort(key=lambda price: price.effective_from)
            for earlier, later in pairwise(model_versions):
                if earlier.effective_from == later.effective_from:
                    raise PriceError(
                        f"{model} has two prices effective from "
                        f"{later.effective_from.isoformat()}: keep one"
                    )
        self._versions = versions
        self._starts = {
            model: [price.effective_from for price in model_versions]
            for model, model_versions in versions.items()
        }
        self._aliases = _alias_index(versions)

    def price_at(self, model: str, at: datetime) -> Price | None:
        """The price of ``model`` for a request made at ``at``, or ``None`` if unknown.

        That is the version with the latest ``effective_from`` not after ``at``.
        ``at`` must carry a UTC offset, as every stored time does.
        """
        if at.tzinfo is None or at.utcoffset() is None:
            raise PriceError(f"price lookups need an aware datetime, not {at.isoformat()}")
        for name in _candidate_names(model):
            canonical = self._canonical(name)
            if canonical is not None:
                return self._version_at(canonical, at)
        return None

    def __iter__(self) -> Iterator[Price]:
        """Every price version, grouped by model and oldest first."""
        for model_versions in self._versions.values():
            yield from model_versions

    def __len__(self) -> int:
        return sum(len(model_versions) for model_versions in self._versions.values())

    def _canonical(self, name: str) -> str | None:
        if name in self._versions:
            return name
        return self._aliases.get(name)

    def _version_at(self, model: str, at: datetime) -> Price | None:
        index = bisect_right(self._starts[model], at) - 1
        return self._versions[model][index] if index >= 0 else None


class PriceDiff(NamedTuple):
    """What importing some prices would do to a ``PriceBook``.

    ``changed`` pairs each current price with the incoming one that differs from it.
    """

    added: list[Price]
    changed: list[tuple[Price, Price]]
    unchanged: list[Price]


def diff_prices(current: PriceBook, incoming: list[Price], at: datetime) -> PriceDiff:
    """Compare ``incoming`` prices with the prices ``current`` has in effect at ``at``.

    An incoming price is matched by its exact name or an alias, without stripping a
    ``provider/`` prefix: ``azure/gpt-4o`` is a different offer from ``gpt-4o``, so it
    is reported as added rather than as a change. Only what is charged is compared
    (the token prices, request fee, tier and ``free``), not the source or aliases.
    """
    if at.tzinfo is None or at.utcoffset() is None:
        raise PriceError(f"price lookups need an aware datetime, not {at.isoformat()}")
    added: list[Price] = []
    changed: list[tuple[Price, Price]] = []
    unchanged: list[Price] = []
    for price in incoming:
        canonical = current._canonical(price.model)
        existing = None if canonical is None else current._version_at(canonical, at)
        if existing is None:
            added.append(price)
        elif _charged(existing) == _charged(price):
            unchanged.append(price)
        else:
            changed.append((existing, price))
    return PriceDiff(added, changed, unchanged)


def _alias_index(versions: dict[str, list[Price]]) -> dict[str, str]:
    # An alias declared on any version of a model points at the model, not at that
    # version, so a later version without the alias list still prices the alias.
    aliases: dict[str, str] = {}
    for model, model_versions in versions.items():
        for price in model_versions:
            for alias in price.aliases:
                if alias in versions:
                    continue  # a model priced under its own name wins over an alias
                other = aliases.setdefault(alias, model)
                if other != model:
                    raise PriceError(f"alias {alias} is declared by both {other} and {model}")
    return aliases


def _candidate_names(model: str) -> list[str]:
    names = [model]
    _prefix, slash, rest = model.partition("/")
    if slash and rest:
        names.append(rest)
    return names


def _charged(price: Price) -> tuple[object, ...]:
    return (
        price.input,
        price.cached_input,
        price.cache_write_5m,
        price.cache_write_1h,
        price.output,
        price.request_fee_nanos,
        price.long_context_threshold,
        price.long_context_input,
        price.long_context_cached_input,
        price.long_context_cache_write_5m,
        price.long_context_cache_write_1h,
        price.long_context_output,
        price.free,
        price.service_tier_rates,
        price.time_windows,
    )
