"""Price versions in the database: the catalog and overrides, loaded into memory for lookups."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from fractions import Fraction
from functools import cache
from typing import Any

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from ledger.db.tables import PriceRow
from ledger.pricing import Price, PriceBook, load_catalog, price_from_mapping
from ledger.pricing.genai import (
    GENAI_ORIGIN,
    CatalogDiff,
    Materialised,
    ModelResolver,
    diff_catalog,
    installed_version,
    load_providers,
    materialise,
)
from ledger.pricing.prices import Tier, TimeWindow

# Overrides win over the shipped catalog; among overrides with the same start, the
# most deliberate one wins.
_OVERRIDE_RANK = {"config": 1, "import": 2, "admin": 3}
CONFIG_DEFAULT_EFFECTIVE_FROM = "1970-01-01"
# Price provider tags that name no particular provider (as in the gateway's check).
_ANY_PROVIDER = frozenset({"", "unknown", "config", "custom"})


@dataclasses.dataclass(frozen=True, slots=True)
class PriceRegistry:
    """The price in effect for a model at a time.

    Order: overrides (config, import, admin), then our own catalog (``catalog.toml``),
    then genai-prices' catalog of the provider serving the request. A name is tried as
    sent, then as the catalog model genai-prices' match rules make of it (a dated
    snapshot, ``-latest``, ``provider/…``), so every spelling finds one price version.
    """

    overrides: PriceBook
    catalog: PriceBook
    genai: Mapping[str, PriceBook] = dataclasses.field(default_factory=dict)
    resolver: ModelResolver | None = None

    def price_at(self, model: str, at: datetime, provider: str | None = None) -> Price | None:
        """``provider`` is a genai-prices provider id (``openai``, ``groq``, …); ``None``
        lets genai-prices choose from the name, as for the built-in mock provider."""
        price = self._override(model, at, provider) or self.catalog.price_at(model, at)
        if price is not None or self.resolver is None:
            return price
        resolved = self.resolver.resolve(provider, model)
        if resolved is None:
            return None
        owner, canonical = resolved
        if canonical != model:
            price = self._override(canonical, at, provider) or self.catalog.price_at(canonical, at)
            if price is not None:
                return price
        book = self.genai.get(owner)
        return None if book is None else book.price_at(canonical, at)

    def _override(self, model: str, at: datetime, provider: str | None) -> Price | None:
        # An override tagged for another provider (an import's ``litellm_provider``)
        # does not price this provider's requests: they keep their catalog price.
        price = self.overrides.price_at(model, at)
        if price is None or provider is None or price.provider in (_ANY_PROVIDER | {provider}):
            return price
        return None

    def models(self, provider: str | None = None) -> list[str]:
        """Every priced name: ours and overrides, and genai-prices' for ``provider``
        (every provider's with ``None``)."""
        names = {price.model for price in self.catalog} | {price.model for price in self.overrides}
        for owner, book in self.genai.items():
            if provider is None or owner == provider:
                names |= {price.model for price in book}
        return sorted(names)


class LivePrices:
    """The price registry in use, replaced whole when prices change (here or elsewhere)."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self.registry = PriceRegistry(overrides=PriceBook([]), catalog=PriceBook([]))

    async def reload(self) -> None:
        self.registry = await load_registry(self.engine)

    def price_at(self, model: str, at: datetime, provider: str | None = None) -> Price | None:
        return self.registry.price_at(model, at, provider)

    def models(self, provider: str | None = None) -> list[str]:
        return self.registry.models(provider)


async def sync_prices(engine: AsyncEngine, config_overrides: Iterable[Mapping[str, Any]]) -> None:
    """Make sure every catalog price and every config override has its row (idempotent).

    genai-prices' versions are added for models the database has none of yet: a model
    already priced changes only through ``ledger prices sync``, which shows the diff and
    never lowers a price silently.
    """
    prices = [(price, "catalog") for price in load_catalog()]
    for table in config_overrides:
        data = dict(table)
        data.setdefault("effective_from", CONFIG_DEFAULT_EFFECTIVE_FROM)
        data.setdefault("provider", "")
        data.setdefault("source", "config file")
        prices.append((price_from_mapping(data), "config"))
    async with engine.begin() as connection:
        await insert_prices(connection, prices, replace=False)
        known = {
            (row.provider, row.model)
            for row in await connection.execute(
                select(PriceRow.provider, PriceRow.model).where(PriceRow.origin == GENAI_ORIGIN)
            )
        }
        missing = [
            _row(price, GENAI_ORIGIN)
            for price in installed_catalog().prices
            if (price.provider, price.model) not in known
        ]
        if missing:  # one statement for thousands of rows: start-up stays quick
            await connection.execute(PriceRow.__table__.insert(), missing)


async def plan_catalog_refresh(
    engine: AsyncEngine, catalog: Materialised, now: datetime
) -> CatalogDiff:
    """What ``ledger prices sync`` would change: ``catalog`` against the stored versions."""
    async with engine.connect() as connection:
        rows = (
            await connection.execute(select(PriceRow).where(PriceRow.origin == GENAI_ORIGIN))
        ).all()
    return diff_catalog((_price(row) for row in rows), catalog.prices, now)


async def apply_catalog_refresh(engine: AsyncEngine, diff: CatalogDiff) -> int:
    """Write the diff's new versions (one transaction); past versions are never touched."""
    rows = [_row(price, GENAI_ORIGIN) for price in diff.to_write]
    if rows:
        async with engine.begin() as connection:
            await connection.execute(PriceRow.__table__.insert(), rows)
    return len(rows)


@cache
def installed_catalog() -> Materialised:
    """The installed genai-prices catalog as price versions (read once per process)."""
    return materialise(load_providers(), f"genai-prices {installed_version()}")


@cache
def installed_resolver() -> ModelResolver:
    return ModelResolver(load_providers())


async def insert_prices(
    connection: AsyncConnection, prices: Iterable[tuple[Price, str]], *, replace: bool
) -> list[int]:
    """Insert price versions; an existing (model, start, origin) is kept, or replaced if asked."""
    rows = [_row(price, origin) for price, origin in prices]
    if not rows:
        return []
    insert = pg_insert if connection.dialect.name == "postgresql" else sqlite_insert
    ids: list[int] = []
    for row in rows:
        statement = insert(PriceRow).values(**row)
        keys = ["model", "provider", "effective_from", "origin"]
        if replace:
            changes = {k: v for k, v in row.items() if k not in (*keys, "created_at")}
            statement = statement.on_conflict_do_update(index_elements=keys, set_=changes)
        else:
            statement = statement.on_conflict_do_nothing(index_elements=keys)
        result = await connection.execute(statement.returning(PriceRow.id))
        inserted = result.scalar()
        if inserted is not None:
            ids.append(inserted)
    return ids


async def load_registry(engine: AsyncEngine) -> PriceRegistry:
    async with engine.connect() as connection:
        rows = (await connection.execute(select(PriceRow).order_by(PriceRow.id))).all()
    catalog: list[Price] = []
    genai: dict[str, list[Price]] = {}
    overrides: dict[tuple[str, datetime], tuple[int, Price]] = {}
    for row in rows:
        price = _price(row)
        if row.origin == "catalog":
            catalog.append(price)
            continue
        if row.origin == GENAI_ORIGIN:
            genai.setdefault(price.provider, []).append(price)
            continue
        rank = _OVERRIDE_RANK.get(row.origin, 0)
        key = (price.model, price.effective_from)
        if key not in overrides or overrides[key][0] <= rank:
            overrides[key] = (rank, price)
    return PriceRegistry(
        overrides=PriceBook(price for _, price in overrides.values()),
        catalog=PriceBook(catalog),
        genai={provider: PriceBook(prices) for provider, prices in genai.items()},
        resolver=installed_resolver(),
    )


async def list_price_rows(engine: AsyncEngine) -> list[Any]:
    async with engine.connect() as connection:
        return list((await connection.execute(select(PriceRow).order_by(PriceRow.id))).all())


async def list_prices(engine: AsyncEngine) -> list[tuple[str, Price]]:
    """Every stored price version with its origin, in the order they were stored."""
    return [(row.origin, _price(row)) for row in await list_price_rows(engine)]


def _row(price: Price, origin: str) -> dict[str, Any]:
    return {
        "model": price.model,
        "provider": price.provider,
        "effective_from": price.effective_from,
        "origin": origin,
        "source": price.source[:500],
        "input": price.input,
        "cached_input": price.cached_input,
        "cache_write_5m": price.cache_write_5m,
        "cache_write_1h": price.cache_write_1h,
        "output": price.output,
        "request_fee": price.request_fee_nanos,
        "long_context_threshold": price.long_context_threshold,
        "long_context_input": price.long_context_input,
        "long_context_cached_input": price.long_context_cached_input,
        "long_context_cache_write_5m": price.long_context_cache_write_5m,
        "long_context_cache_write_1h": price.long_context_cache_write_1h,
        "long_context_output": price.long_context_output,
        "free": price.free,
        "aliases": ",".join(price.aliases),
        "dimensions": _dimensions_json(price),
        # [[threshold, input, cached_input, cache_write_5m, cache_write_1h, output], …]
        "tiers": json.dumps([list(dataclasses.astuple(tier)) for tier in price.tiers])
        if price.tiers
        else "",
        "input_audio": price.input_audio,
        "cached_audio_input": price.cached_audio_input,
        "output_audio": price.output_audio,
        "created_at": datetime.now(UTC),
    }


def _price(row: Any) -> Price:
    return Price(
        model=row.model,
        provider=row.provider,
        effective_from=row.effective_from,
        source=row.source,
        input=row.input,
        cached_input=row.cached_input,
        cache_write_5m=row.cache_write_5m,
        cache_write_1h=row.cache_write_1h,
        output=row.output,
        request_fee_nanos=row.request_fee,
        long_context_threshold=row.long_context_threshold,
        long_context_input=row.long_context_input,
        long_context_cached_input=row.long_context_cached_input,
        long_context_cache_write_5m=row.long_context_cache_write_5m,
        long_context_cache_write_1h=row.long_context_cache_write_1h,
        long_context_output=row.long_context_output,
        aliases=tuple(a for a in row.aliases.split(",") if a),
        free=row.free,
        id=row.id,
        **_dimensions_from_json(getattr(row, "dimensions", None)),
        # Rows from before tiers were stored carry their one tier in long_context_*.
        tiers=tuple(Tier(*values) for values in json.loads(row.tiers)) if row.tiers else (),
        input_audio=row.input_audio,
        cached_audio_input=row.cached_audio_input,
        output_audio=row.output_audio,
    )


def _dimensions_json(price: Price) -> str | None:
    if not price.service_tier_rates and not price.time_windows:
        return None
    return json.dumps(
        {
            "service_tiers": {tier: list(rates) for tier, rates in price.service_tier_rates},
            "time_of_day": [
                [w.start, w.end, w.factor.numerator, w.factor.denominator]
                for w in price.time_windows
            ],
        },
        sort_keys=True,
    )


def _dimensions_from_json(text: str | None) -> dict[str, Any]:
    if not text:
        return {}
    data = json.loads(text)
    return {
        "service_tier_rates": tuple(
            (tier, tuple(rates)) for tier, rates in data.get("service_tiers", {}).items()
        ),
        "time_windows": tuple(
            TimeWindow(start, end, Fraction(num, den))
            for start, end, num, den in data.get("time_of_day", [])
        ),
    }
