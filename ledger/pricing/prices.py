"""Prices and what one request costs under them.

A ``Price`` holds integers of nano-USD per million tokens (see ``ledger.money``), so
every published price is exact and every cost is integer arithmetic. Decimal appears
only in ``price_from_mapping``, where prices arrive as text from a catalog, a config
file or an admin request.
"""

from __future__ import annotations

import operator
from collections.abc import Mapping
from dataclasses import dataclass, replace
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
class Price:
    """The price of one model from ``effective_from`` until a later version replaces it.

    Token prices are nano-USD per million tokens; ``request_fee_nanos`` is a flat
    amount per request. When ``long_context_threshold`` is set, a request whose
    total input exceeds it is priced entirely at the ``long_context_*`` prices, and
    all five of them are then required. A ``free`` model costs nothing whatever its
    prices say (for self-hosted models that still need to be known to the gateway).
    ``id`` is the database id of this price version, ``None`` until it is stored.
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


@dataclass(frozen=True, slots=True)
class CostBreakdown:
    """What one request cost, per bucket, in nano-USD.

    ``cache_write`` is the 5-minute and 1-hour cache writes together (each rounded on
    its own). ``long_context`` says whether the long-context tier priced the request.
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

    When the price has a long-context tier and ``usage.total_input_tokens`` exceeds
    its threshold, every bucket of the request (cached and output tokens included)
    is priced at the tier, as the providers bill it. ``reasoning_tokens`` are already
    part of ``output_tokens`` and are not billed again. Missing cache prices were
    resolved when the ``Price`` was built (see ``price_from_mapping``), so a stored
    price version records exactly what was charged.

    Then what the provider reported about how it served the request, all exact:
    the ``service_tier`` prices the tokens at the price's own rates for that tier
    when it has them, else at the published multiplier of ``dimensions`` (the shipped
    table by default); ``inference_geo``, ``speed`` and ``regional`` multiply every
    token bucket; a time-of-day window of the price in effect ``at`` does too. The
    factors multiply into one exact fraction applied per bucket (one rounding).
    Per-call tool fees (``usage.tool_calls``) are added after, unmultiplied.
    """
    long_context = _is_long_context(usage.total_input_tokens, price)
    if price.free:
        return CostBreakdown(0, 0, 0, 0, 0, long_context=long_context)
    table = shipped_dimensions() if dimensions is None else dimensions
    rates = _rates(price, long_context)
    applied: list[str] = []
    factor = Fraction(1)
    tier = usage.service_tier
    if tier is not None and tier not in STANDARD_TIERS:
        explicit = None if long_context else price.tier_rates(tier)
        published = table.multiplier(price.provider, "service_tier", tier, price.model)
        if explicit is not None:
            rates = _Rates(*explicit)
            applied.append(f"service_tier={tier} prices")
        elif published is not None:
            factor *= published
            applied.append(f"service_tier={tier} x{published}")
        else:
            applied.append(f"service_tier={tier} (no published rate: list price)")
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
    return CostBreakdown(
        input=cost(usage.input_tokens, rates.input),
        cache_read=cost(usage.cache_read_tokens, rates.cached_input),
        cache_write=(
            cost(usage.cache_write_5m_tokens, rates.cache_write_5m)
            + cost(usage.cache_write_1h_tokens, rates.cache_write_1h)
        ),
        output=cost(usage.output_tokens, rates.output),
        request_fee=price.request_fee_nanos,
        long_context=long_context,
        tool_fees=tool_fees,
        service_tier=tier if tier is not None and tier not in STANDARD_TIERS else None,
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
    )


def worst_case_cost(
    estimated_input_tokens: int,
    max_output_tokens: int,
    price: Price,
    *,
    may_write_cache: bool = False,
    factor: Fraction = Fraction(1),
) -> Nanos:
    """The most a request can cost, in nanos, for a budget reservation.

    All input is priced as uncached input (at the long-context tier when the estimate
    exceeds its threshold), plus ``max_output_tokens`` of output and the request fee.
    Cache writes cost more than plain input on Anthropic (1.25x for 5 minutes, 2x for
    1 hour), so a caller that sees cache-control markers in the request should pass
    ``may_write_cache=True`` to price the input at the dearest input-side rate.
    ``factor`` is the dearest multiplier the request asked for (``requested_factor``);
    the token costs are multiplied by it and rounded up, so the reservation covers it.
    """
    if price.free:
        return 0
    rates = _rates(price, _is_long_context(estimated_input_tokens, price))
    input_rate = rates.input
    if may_write_cache:
        input_rate = max(input_rate, rates.cache_write_5m, rates.cache_write_1h)
    tokens_cost = cost_of_tokens(estimated_input_tokens, input_rate) + cost_of_tokens(
        max_output_tokens, rates.output
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
    )


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


def _is_long_context(total_input_tokens: int, price: Price) -> bool:
    threshold = price.long_context_threshold
    return threshold is not None and total_input_tokens > threshold


def _rates(price: Price, long_context: bool) -> _Rates:
    if not long_context:
        return _Rates(*_base_rates(price))
    # Price.__post_init__ guarantees all five tier prices exist with a threshold.
    return _Rates(*_long_context_rates(price))


_base_rates = operator.attrgetter(*_BASE_FIELDS)
_long_context_rates = operator.attrgetter(*_LONG_CONTEXT_FIELDS)


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
