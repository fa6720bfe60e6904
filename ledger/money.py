"""Exact money: the only module that knows Ledger's money sub-unit.

Amounts are integers of nano-USD (1 USD = 10**9 nanos) everywhere inside Ledger
and in the database. Prices are integers of nano-USD per million tokens, so a
published price such as $0.0375 / 1M tokens is exact. Decimal appears only at the
edges (configuration, JSON, reports); float never does.
"""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal, InvalidOperation

NANOS_PER_USD = 10**9
TOKENS_PER_PRICE_UNIT = 10**6  # prices are quoted per million tokens

Nanos = int


class MoneyError(ValueError):
    """A value that cannot be an exact amount of money."""


def to_decimal(value: str | int | Decimal) -> Decimal:
    """Parse a decimal amount exactly; floats are refused because they are not exact."""
    if isinstance(value, bool | float):
        raise MoneyError(f"money must be given as a decimal string or integer, not {value!r}")
    try:
        amount = value if isinstance(value, Decimal) else Decimal(str(value).strip())
    except (InvalidOperation, ValueError) as exc:
        raise MoneyError(f"not a decimal amount: {value!r}") from exc
    if not amount.is_finite():
        raise MoneyError(f"not a finite amount: {value!r}")
    return amount


def usd_to_nanos(value: str | int | Decimal) -> Nanos:
    """Convert a USD amount to nanos; amounts finer than one nano are refused, not rounded."""
    amount = to_decimal(value) * NANOS_PER_USD
    if amount != amount.to_integral_value():
        raise MoneyError(f"{value!r} USD is finer than the smallest unit (1e-9 USD)")
    return int(amount)


def usd_to_nanos_rounded(value: str | int | Decimal) -> Nanos:
    """Convert a USD amount to nanos, rounded half up to the nano: for amounts others
    computed (a provider's reported cost), never for prices, which must be exact."""
    amount = to_decimal(value) * NANOS_PER_USD
    return int(amount.to_integral_value(rounding=ROUND_HALF_UP))


def nanos_to_usd(nanos: Nanos) -> Decimal:
    """The exact Decimal value in USD of an amount in nanos."""
    return Decimal(nanos).scaleb(-9)


def format_usd(nanos: Nanos) -> str:
    """A decimal string with all nine places, e.g. ``"0.000123400"``: exact and stable for JSON."""
    sign = "-" if nanos < 0 else ""
    whole, frac = divmod(abs(nanos), NANOS_PER_USD)
    return f"{sign}{whole}.{frac:09d}"


def format_usd_cents(nanos: Nanos) -> str:
    """Rounded to the cent (half up), for human-facing summaries; never used for sums."""
    return str(nanos_to_usd(nanos).quantize(Decimal("0.01"), rounding=ROUND_HALF_UP))


def cost_of_tokens(tokens: int, nanos_per_million: Nanos) -> Nanos:
    """Cost of ``tokens`` at a per-million price, rounded half up to the nearest nano.

    Rounding happens once per bucket of one ledger entry; reports only ever add
    stored integers, so every total equals the sum of its rows exactly.
    """
    if tokens < 0:
        raise MoneyError("token counts cannot be negative")
    quotient, remainder = divmod(tokens * nanos_per_million, TOKENS_PER_PRICE_UNIT)
    if remainder * 2 >= TOKENS_PER_PRICE_UNIT:
        quotient += 1
    return quotient


def cost_of_tokens_scaled(
    tokens: int, nanos_per_million: Nanos, numerator: int, denominator: int
) -> Nanos:
    """Cost of ``tokens`` at a per-million price times the exact ratio
    ``numerator / denominator`` (a service tier's 1/2, data residency's 11/10), rounded
    half up once: the same rounding as :func:`cost_of_tokens`, never a float."""
    if tokens < 0:
        raise MoneyError("token counts cannot be negative")
    if numerator < 0 or denominator <= 0:
        raise MoneyError("a multiplier must be a positive ratio")
    divisor = TOKENS_PER_PRICE_UNIT * denominator
    quotient, remainder = divmod(tokens * nanos_per_million * numerator, divisor)
    if remainder * 2 >= divisor:
        quotient += 1
    return quotient
