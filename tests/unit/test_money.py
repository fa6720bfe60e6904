"""ledger.money: exact conversions between USD and nanos, formatting and token costs."""

from __future__ import annotations

import math
from decimal import Decimal
from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ledger.money import (
    MoneyError,
    cost_of_tokens,
    format_usd,
    format_usd_cents,
    nanos_to_usd,
    to_decimal,
    usd_to_nanos,
)


@pytest.mark.parametrize(
    ("value", "nanos"),
    [
        ("0", 0),
        ("1", 10**9),
        (1, 10**9),
        ("0.000000001", 1),
        ("1e-9", 1),
        ("0.40", 400_000_000),
        ("0.0375", 37_500_000),
        (" 2.5 ", 2_500_000_000),
        ("-0.25", -250_000_000),
        (Decimal("123456789.123456789"), 123_456_789_123_456_789),
        ("0.100000000000", 100_000_000),  # trailing zeros beyond nine places are still exact
    ],
)
def test_usd_amounts_convert_to_nanos_exactly(value: str | int | Decimal, nanos: int) -> None:
    assert usd_to_nanos(value) == nanos


@pytest.mark.parametrize("value", [0.1, 0.5, 1.0, float("nan"), True, False])
def test_floats_and_booleans_are_refused_as_money(value: object) -> None:
    with pytest.raises(MoneyError, match="decimal string or integer"):
        usd_to_nanos(value)  # type: ignore[arg-type]


@pytest.mark.parametrize("value", ["0.0000000001", "1e-10", "0.1234567891", "-0.0000000005"])
def test_amounts_finer_than_one_nano_are_refused_not_rounded(value: str) -> None:
    with pytest.raises(MoneyError, match="finer than the smallest unit"):
        usd_to_nanos(value)


@pytest.mark.parametrize("value", ["", "abc", "0.4.0", "1,50", "$1", "NaN", "Infinity", "-inf"])
def test_text_that_is_not_a_finite_amount_is_refused(value: str) -> None:
    with pytest.raises(MoneyError):
        to_decimal(value)
    with pytest.raises(MoneyError):
        usd_to_nanos(value)


@pytest.mark.parametrize(
    ("nanos", "text"),
    [
        (0, "0.000000000"),
        (1, "0.000000001"),
        (123_400, "0.000123400"),
        (10**9, "1.000000000"),
        (1_234_567_890_123, "1234.567890123"),
        (-1, "-0.000000001"),
        (-2_500_000_000, "-2.500000000"),
    ],
)
def test_format_usd_always_has_nine_places(nanos: int, text: str) -> None:
    assert format_usd(nanos) == text


@given(st.integers(min_value=-(10**20), max_value=10**20))
def test_formatting_and_parsing_round_trip_exactly(nanos: int) -> None:
    text = format_usd(nanos)
    assert usd_to_nanos(text) == nanos
    assert Decimal(text) == nanos_to_usd(nanos)
    assert nanos_to_usd(nanos) * 10**9 == nanos


@pytest.mark.parametrize(
    ("nanos", "text"),
    [(4_999_999, "0.00"), (5_000_000, "0.01"), (1_005_000_000, "1.01"), (-5_000_000, "-0.01")],
)
def test_cents_are_rounded_half_up_for_people(nanos: int, text: str) -> None:
    assert format_usd_cents(nanos) == text


@pytest.mark.parametrize(
    ("tokens", "per_million", "nanos"),
    [
        (0, 400_000_000, 0),
        (1, 400_000_000, 400),  # $0.40 / 1M is 400 nanos a token
        (1_000_000, 400_000_000, 400_000_000),
        (1, 500_000, 1),  # exactly half a nano rounds up
        (1, 499_999, 0),  # just under half rounds down
        (3, 166_667, 1),  # 0.500001 nano
        (1, 37_500_000, 38),  # $0.0375 / 1M: 37.5 nanos a token → 38
        (2, 37_500_000, 75),
        (7, 0, 0),
    ],
)
def test_cost_of_tokens_rounds_half_up_to_the_nano(
    tokens: int, per_million: int, nanos: int
) -> None:
    assert cost_of_tokens(tokens, per_million) == nanos


@given(st.integers(0, 10**9), st.integers(0, 10**12))
def test_cost_of_tokens_is_the_exact_value_rounded_half_up(tokens: int, per_million: int) -> None:
    exact = Fraction(tokens * per_million, 10**6)
    assert cost_of_tokens(tokens, per_million) == math.floor(exact + Fraction(1, 2))


def test_negative_token_counts_are_refused() -> None:
    with pytest.raises(MoneyError):
        cost_of_tokens(-1, 400_000_000)
