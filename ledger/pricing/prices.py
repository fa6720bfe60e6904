"""Prices and what one request costs under them.

A ``Price`` holds integers of nano-USD per million tokens (see ``ledger.money``), so
every published price is exact and every cost is integer arithmetic. Decimal appears
only in ``price_from_mapping``, where prices arrive as text from a catalog, a config
file or an admin request.
"""

from __future__ import annotations

import operator
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime
from decimal import Decimal
from fractions import Fraction
from typing import Any, NamedTuple

from ledger.money import (
    MoneyError,
    Nanos,
    cost_of_tokens,
    cost_of_tokens_scaled,
    format_usd,
    to_decimal,
    usd_to_nanos,
)
from ledger.pricing.dimensions import STANDARD_TIERS, Dimensions, parse_factor, shipped_dimensions
from ledger.usage import Usage

# The longest names the database holds (ledger.db.tables.PriceRow).
_MAX_MODEL_NAME = 200
_MAX_PROVIDER_NAME = 64


class PriceError(ValueError):
    """A price that cannot be used: malformed, negative, ambiguous or finer than a nano."""


@dataclass(frozen=True, slots=True)
class TimeWindow:
    """A time-of-day price: from ``start`` to ``end`` (minutes after midnight UTC; a window
    may wrap past midnight) every token bucket is priced at ``factor`` times its rate."""

    start: int
    end: int
    factor: Fraction

    def contains(self, at: datetime) -> bool:
        at = at.astimezone(UTC)
        minute = at.hour * 60 + at.minute
        if self.start <= self.end:
            return self.start <= minute < self.end
        return minute >= self.start or minute < self.end

    def describe(self) -> str:
        return (
            f"{self.start // 60:02d}:{self.start % 60:02d}-{self.end // 60:02d}:{self.end % 60:02d}"
        )


@dataclass(frozen=True, slots=True)
class Tier:
    """The five token prices that apply once a request's input exceeds ``threshold`` tokens.

    ``threshold`` counts all input as the provider does: uncached, cache reads, cache
    writes and audio together (``Usage.total_input_tokens``).
    """

    threshold: int
    input: Nanos
    cached_input: Nanos
    cache_write_5m: Nanos
    cache_write_1h: Nanos
    output: Nanos

    def __post_init__(self) -> None:
        threshold = self.threshold
        if isinstance(threshold, bool) or not isinstance(threshold, int) or threshold <= 0:
            raise PriceError(
                f"a tier threshold must be a positive number of tokens, not {threshold!r}"
            )
        for name in _BASE_FIELDS:
            _check_nanos(name, getattr(self, name))


@dataclass(frozen=True, slots=True)
class Price:
    """The price of one model from ``effective_from`` until a later version replaces it.

    Token prices are nano-USD per million tokens; ``request_fee_nanos`` is a flat
    amount per request. ``tiers`` (ascending thresholds) price a request whose total
    input exceeds a tier's threshold entirely at that tier, every bucket included, as
    the providers bill it; the highest tier crossed wins. ``long_context_*`` is the
    older spelling of a single tier: given, it becomes the first tier; read, it is the
    first tier's prices (``None`` without tiers). ``input_audio``,
    ``cached_audio_input`` and ``output_audio`` price audio tokens; ``None`` prices them
    as text (at the tier's text price when a tier applies). A ``free`` model costs nothing whatever its prices say (for
    self-hosted models that still need to be known to the gateway). ``id`` is the
    database id of this price version, ``None`` until it is stored.
    """

    model: str
    provider: str
    effective_from: datetime
    source: str
    input: Nanos
    cached_input: Nanos
    cache_write_5m: Nanos
    cache_write_1h: Nanos
    output: Nanos
    request_fee_nanos: Nanos = 0
    long_context_threshold: int | None = None
    long_context_input: Nanos | None = None
    long_context_cached_input: Nanos | None = None
    long_context_cache_write_5m: Nanos | None = None
    long_context_cache_write_1h: Nanos | None = None
    long_context_output: Nanos | None = None
    aliases: tuple[str, ...] = ()
    free: bool = False
    service_tier_rates: tuple[tuple[str, tuple[Nanos, Nanos, Nanos, Nanos, Nanos]], ...] = ()
    time_windows: tuple[TimeWindow, ...] = ()
    id: int | None = None
    tiers: tuple[Tier, ...] = ()
    input_audio: Nanos | None = None
    cached_audio_input: Nanos | None = None
    output_audio: Nanos | None = None

    def tier_rates(self, tier: str) -> tuple[Nanos, Nanos, Nanos, Nanos, Nanos] | None:
        for name, rates in self.service_tier_rates:
            if name == tier:
                return rates
        return None

    def __post_init__(self) -> None:
        for name, longest in (("model", _MAX_MODEL_NAME), ("provider", _MAX_PROVIDER_NAME)):
            value = getattr(self, name)
            if not isinstance(value, str) or not value or value != value.strip():
                raise PriceError(f"{name} must be a non-empty name, not {value!r}")
            if len(value) > longest:
                raise PriceError(f"{name} must be at most {longest} characters: {value[:40]!r}…")
        if not isinstance(self.source, str):
            raise PriceError(f"source must be a string, not {self.source!r}")
        # Normalise to UTC here so that comparisons and the database never see
        # two spellings of the same instant.
        object.__setattr__(self, "effective_from", _as_utc(self.effective_from, "effective_from"))
        for name in (*_BASE_FIELDS, "request_fee_nanos"):
            _check_nanos(name, getattr(self, name))
        self._check_long_context()
        self._check_tiers()
        for name in _AUDIO_FIELDS:
            if getattr(self, name) is not None:
                _check_nanos(name, getattr(self, name))
        aliases = tuple(self.aliases)
        for alias in aliases:
            if not isinstance(alias, str) or not alias or alias != alias.strip():
                raise PriceError(f"{self.model}: an alias must be a non-empty name, not {alias!r}")
            if alias == self.model:
                raise PriceError(f"{self.model}: a model cannot be its own alias")
        object.__setattr__(self, "aliases", aliases)
        object.__setattr__(self, "service_tier_rates", tuple(self.service_tier_rates))
        object.__setattr__(self, "time_windows", tuple(self.time_windows))
        for tier, rates in self.service_tier_rates:
            if not isinstance(tier, str) or not tier or len(rates) != len(_BASE_FIELDS):
                raise PriceError(f"{self.model}: service tier {tier!r} needs five rates")
            for name, value in zip(_BASE_FIELDS, rates, strict=True):
                _check_nanos(f"{tier} {name}", value)

    def _check_long_context(self) -> None:
        threshold = self.long_context_threshold
        tier = {name: getattr(self, name) for name in _LONG_CONTEXT_FIELDS}
        if threshold is None:
            given = [name for name, value in tier.items() if value is not None]
            if given:
                raise PriceError(
                    f"{self.model}: {', '.join(given)} given without long_context_threshold"
                )
            return
        if isinstance(threshold, bool) or not isinstance(threshold, int) or threshold <= 0:
            raise PriceError(
                f"{self.model}: long_context_threshold must be a positive number of tokens, "
                f"not {threshold!r}"
            )
        for name, value in tier.items():
            if value is None:
                raise PriceError(f"{self.model}: {name} is required with long_context_threshold")
            _check_nanos(name, value)

    def _check_tiers(self) -> None:
        tiers = tuple(self.tiers)
        if any(not isinstance(tier, Tier) for tier in tiers):
            raise PriceError(f"{self.model}: tiers must be Tier values")
        if self.long_context_threshold is not None:
            legacy = Tier(
                self.long_context_threshold,
                *(getattr(self, name) for name in _LONG_CONTEXT_FIELDS),
            )
            if tiers and tiers[0] != legacy:
                raise PriceError(f"{self.model}: long_context_* disagrees with the first tier")
            tiers = tiers or (legacy,)
        thresholds = [tier.threshold for tier in tiers]
        if thresholds != sorted(set(thresholds)):
            raise PriceError(f"{self.model}: tier thresholds must be distinct and ascending")
        object.__setattr__(self, "tiers", tiers)
        if tiers and self.long_context_threshold is None:
            # The first tier stays readable under its older name (admin, listings).
            first = tiers[0]
            object.__setattr__(self, "long_context_threshold", first.threshold)
            for name, value in zip(_LONG_CONTEXT_FIELDS, _base_rates(first), strict=True):
                object.__setattr__(self, name, value)


@dataclass(frozen=True, slots=True)
class CostBreakdown:
    """What one request cost, per bucket, in nano-USD.

    ``cache_write`` is the 5-minute and 1-hour cache writes together (each rounded on
    its own). ``long_context`` says whether a tier priced the request, and ``tier``
    which one (its threshold), ``None`` at the base prices.
    ``tool_fees`` is what per-call tool fees added (web searches); ``service_tier`` the
    tier that priced it (``None``: the list price); ``applied`` says, one short phrase
    each, which tier prices, multipliers and fees applied (``"service_tier=flex x1/2"``).
    """

    input: Nanos
    cache_read: Nanos
    cache_write: Nanos
    output: Nanos
    request_fee: Nanos
    long_context: bool = False
    tool_fees: Nanos = 0
    service_tier: str | None = None
    applied: tuple[str, ...] = ()
    tier: int | None = field(default=None, compare=False)  # detail beside long_context

    @property
    def total(self) -> Nanos:
        """The sum of every bucket: the amount the ledger records for the request."""
        return (
            self.input
            + self.cache_read
            + self.cache_write
            + self.output
            + self.request_fee
            + self.tool_fees
        )


def price_cost(
    usage: Usage,
    price: Price,
    *,
    at: datetime | None = None,
    dimensions: Dimensions | None = None,
) -> CostBreakdown:
    """The exact cost of ``usage`` under ``price``, rounded half up once per bucket.

    When ``usage.total_input_tokens`` exceeds a tier's threshold, every bucket of the
    request (cached and output tokens included) is priced at the highest such tier,
    as the providers bill it. Audio tokens are priced at the audio prices (audio input
    and cache reads in the input and cache-read buckets, audio output in output).
    ``reasoning_tokens`` are already part of ``output_tokens`` and are not billed
    again. Missing cache prices were resolved when the ``Price`` was built (see
    ``price_from_mapping``), so a stored price version records exactly what was charged.

    Then what the provider reported about how it served the request, all exact:
    the ``service_tier`` prices the tokens at the price's own rates for that tier
    when it has them, else at the published multiplier of ``dimensions`` (the shipped
    table by default); ``inference_geo``, ``speed`` and ``regional`` multiply every
    token bucket; a time-of-day window of the price in effect ``at`` does too. The
    factors multiply into one exact fraction applied per bucket (one rounding).
    Per-call tool fees (``usage.tool_calls``) are added after, unmultiplied.
    """
    tier = _tier_for(usage.total_input_tokens, price)
    threshold = None if tier is None else tier.threshold
    if price.free:
        return CostBreakdown(0, 0, 0, 0, 0, long_context=tier is not None, tier=threshold)
    table = shipped_dimensions() if dimensions is None else dimensions
    rates = _Rates(*(_base_rates(price) if tier is None else _base_rates(tier)))
    applied: list[str] = []
    factor = Fraction(1)
    service_tier = usage.service_tier
    if service_tier is not None and service_tier not in STANDARD_TIERS:
        # A service tier's own prices are list prices; past a long-context tier the
        # published multiplier applies to the tier's prices instead.
        explicit = None if tier is not None else price.tier_rates(service_tier)
        published = table.multiplier(price.provider, "service_tier", service_tier, price.model)
        if explicit is not None:
            rates = _Rates(*explicit)
            applied.append(f"service_tier={service_tier} prices")
        elif published is not None:
            factor *= published
            applied.append(f"service_tier={service_tier} x{published}")
        else:
            applied.append(f"service_tier={service_tier} (no published rate: list price)")
    for dimension, value in (
        ("inference_geo", usage.inference_geo),
        ("speed", usage.speed),
        ("regional", "true" if usage.regional else None),
    ):
        if value is None:
            continue
        published = table.multiplier(price.provider, dimension, value, price.model)
        if published is not None and published != 1:
            factor *= published
            applied.append(f"{dimension}={value} x{published}")
    if at is not None:
        for window in price.time_windows:
            if window.contains(at):
                factor *= window.factor
                applied.append(f"time_of_day {window.describe()} UTC x{window.factor}")
                break

    def cost(tokens: int, rate: Nanos) -> Nanos:
        if factor == 1:
            return cost_of_tokens(tokens, rate)
        return cost_of_tokens_scaled(tokens, rate, factor.numerator, factor.denominator)

    tool_fees = 0
    calls = dict(usage.tool_calls)
    for fee in table.per_request_tools(price.provider, price.model):
        calls[fee.tool] = max(calls.get(fee.tool, 0), 1)
    for tool, count in sorted(calls.items()):
        fee = table.tool_fee(price.provider, tool, price.model)
        if fee is None or count <= 0:
            continue
        tool_fees += count * fee.nanos_per_call
        applied.append(f"{tool} {count} x ${format_usd(fee.nanos_per_call)}")
    audio_in, audio_cached, audio_out = _audio_rates(
        price, rates.input, rates.cached_input, rates.output
    )
    return CostBreakdown(
        input=cost(usage.input_tokens, rates.input) + cost(usage.input_audio_tokens, audio_in),
        cache_read=cost(usage.cache_read_tokens, rates.cached_input)
        + cost(usage.cache_read_audio_tokens, audio_cached),
        cache_write=(
            cost(usage.cache_write_5m_tokens, rates.cache_write_5m)
            + cost(usage.cache_write_1h_tokens, rates.cache_write_1h)
        ),
        output=cost(usage.output_tokens, rates.output) + cost(usage.output_audio_tokens, audio_out),
        request_fee=price.request_fee_nanos,
        long_context=tier is not None,
        tier=threshold,
        tool_fees=tool_fees,
        service_tier=service_tier
        if service_tier is not None and service_tier not in STANDARD_TIERS
        else None,
        applied=tuple(applied),
    )


def requested_factor(
    price: Price,
    *,
    service_tier: object = None,
    speed: object = None,
    inference_geo: object = None,
    dimensions: Dimensions | None = None,
) -> Fraction:
    """The dearest multiplier a request asked for (``service_tier: "priority"``, fast
    mode, US-only inference), for its worst-case reservation; at least 1.

    The response decides what is billed; this only keeps the overspend bound when the
    provider does serve what was asked. A tier with explicit prices counts as the
    ratio of its dearest rate to the list rate.
    """
    table = shipped_dimensions() if dimensions is None else dimensions
    factor = Fraction(1)
    if isinstance(service_tier, str) and service_tier not in STANDARD_TIERS:
        explicit = price.tier_rates(service_tier)
        published = table.multiplier(price.provider, "service_tier", service_tier, price.model)
        if explicit is not None:
            base = _base_rates(price)
            ratios = [Fraction(e, b) for e, b in zip(explicit, base, strict=True) if b]
            factor *= max([Fraction(1), *ratios])
        elif published is not None:
            factor *= max(Fraction(1), published)
    for dimension, value in (("speed", speed), ("inference_geo", inference_geo)):
        if isinstance(value, str):
            published = table.multiplier(price.provider, dimension, value, price.model)
            if published is not None:
                factor *= max(Fraction(1), published)
    return factor


def batch_price(price: Price, *, dimensions: Dimensions | None = None) -> Price | None:
    """The batch price of this model: its own batch rates, else its list rates times the
    published batch multiplier; ``None`` when neither is known.

    For the Batches API: ``price_cost(replace(usage, service_tier="batch"), price)``
    prices a batch result exactly; this gives the rates themselves (to list or show),
    each rounded half up to the nano per million where the multiplier does not divide it.
    """
    explicit = price.tier_rates("batch")
    if explicit is None:
        table = shipped_dimensions() if dimensions is None else dimensions
        factor = table.multiplier(price.provider, "service_tier", "batch", price.model)
        if factor is None:
            return None
        explicit = tuple(  # type: ignore[assignment]
            cost_of_tokens_scaled(10**6, rate, factor.numerator, factor.denominator)
            for rate in _base_rates(price)
        )
    assert explicit is not None
    return replace(
        price,
        input=explicit[0],
        cached_input=explicit[1],
        cache_write_5m=explicit[2],
        cache_write_1h=explicit[3],
        output=explicit[4],
        long_context_threshold=None,
        long_context_input=None,
        long_context_cached_input=None,
        long_context_cache_write_5m=None,
        long_context_cache_write_1h=None,
        long_context_output=None,
        source=f"{price.source} (batch)".strip(),
        id=None,
        tiers=(),
    )


def describe_fees(price: Price, *, dimensions: Dimensions | None = None) -> list[str]:
    """What beyond its token prices can apply to ``price``, one short phrase each: its own
    service-tier prices (input/output per million), the published multipliers and per-call
    tool fees of ``dimensions`` (the shipped table by default) for its provider and model,
    and its time-of-day windows. For ``ledger prices list``."""
    table = shipped_dimensions() if dimensions is None else dimensions
    shown = [
        f"{tier} ${format_usd(rates[0])}/${format_usd(rates[4])}"
        for tier, rates in price.service_tier_rates
    ]
    own = {tier for tier, _ in price.service_tier_rates}
    seen: set[tuple[str, str]] = set()
    for row in reversed(table.multipliers):  # the last matching row wins, as in pricing
        key = (row.dimension, row.value)
        if row.provider != price.provider or key in seen:
            continue
        factor = table.multiplier(price.provider, row.dimension, row.value, price.model)
        seen.add(key)
        if factor is None or (row.dimension == "service_tier" and row.value in own):
            continue
        shown.append(f"{row.dimension}={row.value} x{factor}")
    for tool in sorted({row.tool for row in table.tool_fees if row.provider == price.provider}):
        fee = table.tool_fee(price.provider, tool, price.model)
        if fee is not None and fee.nanos_per_call:
            each = "request" if fee.per_request else "call"
            shown.append(f"{tool} ${format_usd(fee.nanos_per_call)}/{each}")
    shown.extend(
        f"time_of_day {window.describe()} UTC x{window.factor}" for window in price.time_windows
    )
    return shown


def worst_case_cost(
    estimated_input_tokens: int,
    max_output_tokens: int,
    price: Price,
    *,
    may_write_cache: bool = False,
    factor: Fraction = Fraction(1),
) -> Nanos:
    """The most a request can cost, in nanos, for a budget reservation.

    All input is priced as uncached input (at the tier the estimate crosses, if any), plus ``max_output_tokens`` of output and the request fee.
    Cache writes cost more than plain input on Anthropic (1.25x for 5 minutes, 2x for
    1 hour), so a caller that sees cache-control markers in the request should pass
    ``may_write_cache=True`` to price the input at the dearest input-side rate.
    ``factor`` is the dearest multiplier the request asked for (``requested_factor``);
    the token costs are multiplied by it and rounded up, so the reservation covers it.
    """
    if price.free:
        return 0
    tier = _tier_for(estimated_input_tokens, price)
    rates = _Rates(*(_base_rates(price) if tier is None else _base_rates(tier)))
    # The prompt may be audio and so may the answer: reserve at the dearer of each.
    audio_in, _cached, audio_out = _audio_rates(
        price, rates.input, rates.cached_input, rates.output
    )
    input_rate = max(rates.input, audio_in)
    if may_write_cache:
        input_rate = max(input_rate, rates.cache_write_5m, rates.cache_write_1h)
    tokens_cost = cost_of_tokens(estimated_input_tokens, input_rate) + cost_of_tokens(
        max_output_tokens, max(rates.output, audio_out)
    )
    if factor != 1:
        # Ceiling, and one nano per bucket for the rounding of the actual cost.
        tokens_cost = -((-tokens_cost * factor.numerator) // factor.denominator) + 2
    return tokens_cost + price.request_fee_nanos


def price_from_mapping(data: Mapping[str, Any]) -> Price:
    """Build a ``Price`` from a catalog entry, a config table or a JSON object.

    Keys: ``model``, ``provider``, ``effective_from`` (an ISO date or a datetime
    with a UTC offset; a date means midnight UTC), optional ``source``, and prices in
    USD per million tokens: ``input``, ``output``, ``cached_input``,
    ``cache_write_5m``, ``cache_write_1h``; ``request_fee`` in USD per request;
    ``long_context_threshold`` (input tokens) with ``long_context_input``,
    ``long_context_cached_input``, ``long_context_cache_write_5m``,
    ``long_context_cache_write_1h``, ``long_context_output``; ``aliases`` (a list of
    names) and ``free`` (a boolean; ``input`` and ``output`` may then be omitted);
    ``service_tiers``, a table of tier name to prices (``{flex = {input = "0.625",
    output = "5"}}``; a missing cache price follows the tier's input, as below, and a
    missing output keeps the list price); ``time_of_day``, a list of
    ``{start = "16:30", end = "00:30", multiplier = "1/2"}`` in UTC.
    ``tiers``, a list of tables with a ``threshold`` and any of the five token prices
    (a missing one keeps the price of the tier below); ``input_audio``,
    ``cached_audio_input`` and ``output_audio`` (defaulting to the text prices).
    Unknown keys are refused, so a typo cannot silently leave a price at its default.

    Prices are decimal strings (``"0.40"``), integers or ``Decimal``. A float, which is
    what TOML makes of an unquoted ``input = 0.4``, is accepted through ``str(value)``:
    Python prints a float as the shortest text that reads back as the same float, which
    is the literal the user typed for any price with fewer than 16 digits. Catalogs
    and overrides should still quote their prices. A negative price, or one finer than
    one nano-USD per million tokens, raises ``PriceError``.

    Missing prices fall back so that no bucket is ever free by accident:
    ``cached_input`` and ``cache_write_5m`` to ``input`` (OpenAI charges nothing extra
    to write its cache), ``cache_write_1h`` to ``cache_write_5m``. In the long-context
    tier a missing price keeps the ordinary price of its bucket, except that the
    1-hour write is never below the tier's 5-minute write.
    """
    unknown = sorted(set(data) - _MAPPING_KEYS)
    if unknown:
        raise PriceError(f"unknown price field(s): {', '.join(unknown)}")
    # Missing names become "" so that Price refuses them with its own message.
    model = data.get("model", "")
    free = data.get("free", False)
    if not isinstance(free, bool):
        raise PriceError(f"{model}: free must be true or false, not {free!r}")

    input_ = _required_rate(data, model, "input", free)
    output = _required_rate(data, model, "output", free)
    cached_input = _optional_rate(data, model, "cached_input", input_)
    cache_write_5m = _optional_rate(data, model, "cache_write_5m", input_)
    cache_write_1h = _optional_rate(data, model, "cache_write_1h", cache_write_5m)

    threshold = data.get("long_context_threshold")
    given_tier = [name for name in _LONG_CONTEXT_FIELDS if data.get(name) is not None]
    if threshold is None and given_tier:
        raise PriceError(f"{model}: {', '.join(given_tier)} given without long_context_threshold")
    if threshold is not None and not given_tier:
        raise PriceError(f"{model}: long_context_threshold given without long-context prices")
    tier_input = tier_cached = tier_5m = tier_1h = tier_output = None
    if threshold is not None:
        tier_input = _optional_rate(data, model, "long_context_input", input_)
        tier_cached = _optional_rate(data, model, "long_context_cached_input", cached_input)
        tier_5m = _optional_rate(data, model, "long_context_cache_write_5m", cache_write_5m)
        tier_1h = _optional_rate(
            data, model, "long_context_cache_write_1h", max(cache_write_1h, tier_5m)
        )
        tier_output = _optional_rate(data, model, "long_context_output", output)

    tiers = _tiers_from_mapping(
        model, data.get("tiers", ()), (input_, cached_input, cache_write_5m, cache_write_1h, output)
    )
    request_fee = data.get("request_fee")
    aliases = data.get("aliases", ())
    if isinstance(aliases, str) or not isinstance(aliases, list | tuple):
        raise PriceError(f"{model}: aliases must be a list of names, not {aliases!r}")
    return Price(
        service_tier_rates=_tier_rates(
            data, model, (input_, cached_input, cache_write_5m, cache_write_1h, output)
        ),
        time_windows=_time_windows(data.get("time_of_day"), model),
        model=model,
        provider=data.get("provider", ""),
        effective_from=_parse_effective_from(model, data.get("effective_from")),
        source=data.get("source", ""),
        input=input_,
        cached_input=cached_input,
        cache_write_5m=cache_write_5m,
        cache_write_1h=cache_write_1h,
        output=output,
        request_fee_nanos=0 if request_fee is None else _nanos(model, "request_fee", request_fee),
        long_context_threshold=threshold,
        long_context_input=tier_input,
        long_context_cached_input=tier_cached,
        long_context_cache_write_5m=tier_5m,
        long_context_cache_write_1h=tier_1h,
        long_context_output=tier_output,
        aliases=tuple(aliases),
        free=free,
        tiers=tiers,
        input_audio=_audio_rate(data, model, "input_audio"),
        cached_audio_input=_audio_rate(data, model, "cached_audio_input"),
        output_audio=_audio_rate(data, model, "output_audio"),
    )


def _tiers_from_mapping(
    model: object, tables: object, base: tuple[Nanos, Nanos, Nanos, Nanos, Nanos]
) -> tuple[Tier, ...]:
    # Each tier is a table with ``threshold`` and any of the five token prices; a price
    # a tier leaves out keeps the price of the tier below it (or the base price).
    if isinstance(tables, str) or not isinstance(tables, list | tuple):
        raise PriceError(f"{model}: tiers must be a list of tables, not {tables!r}")
    tiers: list[Tier] = []
    below = base
    for table in sorted(
        tables, key=lambda t: t.get("threshold", 0) if isinstance(t, Mapping) else 0
    ):
        if not isinstance(table, Mapping):
            raise PriceError(f"{model}: a tier must be a table, not {table!r}")
        unknown = sorted(set(table) - {"threshold", *_BASE_FIELDS})
        if unknown:
            raise PriceError(f"{model}: unknown tier field(s): {', '.join(unknown)}")
        rates = tuple(
            _optional_rate(table, model, name, default)
            for name, default in zip(_BASE_FIELDS, below, strict=True)
        )
        try:
            tiers.append(Tier(table.get("threshold"), *rates))  # type: ignore[arg-type]
        except PriceError as exc:
            raise PriceError(f"{model}: {exc}") from None
        below = rates  # type: ignore[assignment]
    return tuple(tiers)


class _Rates(NamedTuple):
    input: Nanos
    cached_input: Nanos
    cache_write_5m: Nanos
    cache_write_1h: Nanos
    output: Nanos


_BASE_FIELDS = ("input", "cached_input", "cache_write_5m", "cache_write_1h", "output")
_LONG_CONTEXT_FIELDS = tuple(f"long_context_{name}" for name in _BASE_FIELDS)
_MAPPING_KEYS = frozenset(
    {"model", "provider", "effective_from", "source", "request_fee", "long_context_threshold"}
    | {"aliases", "free", "service_tiers", "time_of_day"}
    | {"tiers", "input_audio", "cached_audio_input", "output_audio"}
    | set(_BASE_FIELDS)
    | set(_LONG_CONTEXT_FIELDS)
)


def _tier_rates(
    data: Mapping[str, Any], model: object, base: tuple[Nanos, ...]
) -> tuple[tuple[str, tuple[Nanos, Nanos, Nanos, Nanos, Nanos]], ...]:
    tiers = data.get("service_tiers")
    if tiers is None:
        return ()
    if not isinstance(tiers, Mapping):
        raise PriceError(f"{model}: service_tiers must be a table of tier names")
    out = []
    for tier, prices in tiers.items():
        if not isinstance(prices, Mapping) or set(prices) - set(_BASE_FIELDS):
            raise PriceError(f"{model}: service_tiers.{tier} must hold only {_BASE_FIELDS}")
        if prices.get("input") is None:
            raise PriceError(f"{model}: service_tiers.{tier} needs an input price")
        tier_input = _nanos(model, f"{tier} input", prices["input"], unit="USD per million tokens")
        cached = _optional_rate(prices, model, "cached_input", tier_input)
        write_5m = _optional_rate(prices, model, "cache_write_5m", tier_input)
        write_1h = _optional_rate(prices, model, "cache_write_1h", write_5m)
        tier_output = _optional_rate(prices, model, "output", base[4])
        out.append((str(tier), (tier_input, cached, write_5m, write_1h, tier_output)))
    return tuple(out)


def _time_windows(value: object, model: object) -> tuple[TimeWindow, ...]:
    if value is None:
        return ()
    if not isinstance(value, list | tuple):
        raise PriceError(f"{model}: time_of_day must be a list of windows")
    windows = []
    for window in value:
        try:
            start, end = (_minute(window[key]) for key in ("start", "end"))
            factor = parse_factor(window["multiplier"])
        except (KeyError, TypeError, ValueError, ZeroDivisionError) as exc:
            raise PriceError(
                f"{model}: a time_of_day window needs start, end (HH:MM UTC) and an exact "
                f"multiplier such as '1/2': {window!r} ({exc})"
            ) from None
        windows.append(TimeWindow(start, end, factor))
    return tuple(windows)


def _minute(text: str) -> int:
    hours, _, minutes = text.partition(":")
    value = int(hours) * 60 + int(minutes)
    if not 0 <= value < 24 * 60:
        raise ValueError(f"{text!r} is not a time of day")
    return value


def _tier_for(total_input_tokens: int, price: Price) -> Tier | None:
    # Few tiers (at most two today): a reversed scan beats a bisect.
    for tier in reversed(price.tiers):
        if total_input_tokens > tier.threshold:
            return tier
    return None


_base_rates = operator.attrgetter(*_BASE_FIELDS)
_AUDIO_FIELDS = ("input_audio", "cached_audio_input", "output_audio")


def _audio_rates(
    price: Price, input_rate: Nanos, cached_rate: Nanos, output_rate: Nanos
) -> tuple[Nanos, Nanos, Nanos]:
    audio_in, audio_cached, audio_out = (
        price.input_audio,
        price.cached_audio_input,
        price.output_audio,
    )
    return (
        input_rate if audio_in is None else audio_in,
        cached_rate if audio_cached is None else audio_cached,
        output_rate if audio_out is None else audio_out,
    )


def _check_nanos(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise PriceError(f"{name} must be an integer of nanos, not {value!r}")
    if value < 0:
        raise PriceError(f"{name} cannot be negative ({value})")


def _as_utc(value: object, name: str) -> datetime:
    if not isinstance(value, datetime):
        raise PriceError(f"{name} must be a datetime, not {value!r}")
    if value.tzinfo is None or value.utcoffset() is None:
        raise PriceError(f"{name} must carry a UTC offset, not the naive {value.isoformat()}")
    return value.astimezone(UTC)


def _parse_effective_from(model: object, value: object) -> datetime:
    if value is None:
        raise PriceError(f"{model}: effective_from is required")
    if isinstance(value, str):
        try:
            # A bare date is midnight UTC; datetime.fromisoformat would make it naive.
            is_date = len(value) == len("2025-01-01")
            value = date.fromisoformat(value) if is_date else datetime.fromisoformat(value)
        except ValueError as exc:
            raise PriceError(f"{model}: effective_from is not an ISO date: {value!r}") from exc
    if isinstance(value, date) and not isinstance(value, datetime):
        return datetime(value.year, value.month, value.day, tzinfo=UTC)
    try:
        return _as_utc(value, "effective_from")
    except PriceError as exc:
        raise PriceError(f"{model}: {exc}") from None


def _decimal(model: object, name: str, value: object) -> Decimal:
    if isinstance(value, float):
        # See price_from_mapping: str() of a float is the literal that produced it.
        value = str(value)
    if isinstance(value, bool) or not isinstance(value, str | int | Decimal):
        raise PriceError(f"{model}: {name} must be a decimal string, not {value!r}")
    try:
        amount = to_decimal(value)
    except MoneyError as exc:
        raise PriceError(f"{model}: {name}: {exc}") from None
    if amount < 0:
        raise PriceError(f"{model}: {name} cannot be negative ({value!r})")
    return amount


def _required_rate(data: Mapping[str, Any], model: object, name: str, free: bool) -> Nanos:
    value = data.get(name)
    if value is None:
        if free:
            return 0
        raise PriceError(f"{model}: {name} price is required")
    return _nanos(model, name, value, unit="USD per million tokens")


def _optional_rate(data: Mapping[str, Any], model: object, name: str, default: Nanos) -> Nanos:
    value = data.get(name)
    if value is None:
        return default
    return _nanos(model, name, value, unit="USD per million tokens")


def _audio_rate(data: Mapping[str, Any], model: object, name: str) -> Nanos | None:
    value = data.get(name)
    return None if value is None else _nanos(model, name, value, unit="USD per million tokens")


def _nanos(model: object, name: str, value: object, *, unit: str = "USD") -> Nanos:
    amount = _decimal(model, name, value)
    try:
        return usd_to_nanos(amount)
    except MoneyError:
        # Rounding here would silently change a published price; refuse instead.
        raise PriceError(
            f"{model}: {name} = {value!r} {unit} is finer than one nano-USD "
            "(at most 9 decimal places)"
        ) from None
