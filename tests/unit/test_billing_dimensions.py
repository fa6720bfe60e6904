"""Each billing rule of ``price_cost`` with exact integer expectations, and the worst-case
reservation bounding the actual cost under the multiplier a request asked for."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from fractions import Fraction

from hypothesis import given
from hypothesis import strategies as st

from ledger.pricing import Price, batch_price, price_cost, requested_factor, worst_case_cost
from ledger.pricing.prices import TimeWindow
from ledger.usage import Usage

AT = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
M = 1_000_000


def _price(model: str, provider: str, **extra: object) -> Price:
    # $3 input, $0.30 cache read, $3.75 / $6 writes, $15 output per million.
    return Price(
        model=model, provider=provider, effective_from=datetime(2025, 1, 1, tzinfo=UTC),
        source="test", input=3_000_000_000, cached_input=300_000_000,
        cache_write_5m=3_750_000_000, cache_write_1h=6_000_000_000, output=15_000_000_000,
        **extra,  # type: ignore[arg-type]
    )  # fmt: skip


OPUS = _price("claude-opus-4-6", "anthropic")
GPT = _price("gpt-5.4", "openai")
USAGE = Usage(input_tokens=1_000, output_tokens=100)  # 3,000,000 + 1,500,000 nanos


def test_us_only_inference_costs_eleven_tenths() -> None:
    cost = price_cost(replace(USAGE, inference_geo="us"), OPUS)
    assert (cost.input, cost.output, cost.total) == (3_300_000, 1_650_000, 4_950_000)
    assert cost.applied == ("inference_geo=us x11/10",)
    assert price_cost(replace(USAGE, inference_geo="global"), OPUS).total == 4_500_000


def test_fast_mode_costs_six_times() -> None:
    assert price_cost(replace(USAGE, speed="fast"), OPUS).total == 27_000_000


def test_openai_regional_processing_costs_eleven_tenths() -> None:
    assert price_cost(replace(USAGE, regional=True), GPT).total == 4_950_000
    assert price_cost(replace(USAGE, regional=True), _price("gpt-4o", "openai")).total == 4_500_000


def test_a_time_of_day_window_applies_inside_it_even_past_midnight() -> None:
    night = _price(
        "night-model", "acme", time_windows=(TimeWindow(22 * 60, 6 * 60, Fraction(1, 2)),)
    )
    at = lambda h, m=0: datetime(2026, 12, 1, h, m, tzinfo=UTC)  # noqa: E731
    assert price_cost(USAGE, night, at=at(23)).total == 2_250_000
    assert price_cost(USAGE, night, at=at(5, 59)).total == 2_250_000
    assert price_cost(USAGE, night, at=at(6)).total == 4_500_000
    assert price_cost(USAGE, night, at=at(21, 59)).total == 4_500_000
    assert price_cost(USAGE, night, at=at(22)).applied == ("time_of_day 22:00-06:00 UTC x1/2",)


def test_batch_price_halves_every_rate_or_uses_the_models_own() -> None:
    batch = batch_price(OPUS)
    assert batch is not None
    assert (batch.input, batch.cached_input, batch.output) == (
        1_500_000_000,
        150_000_000,
        7_500_000_000,
    )
    own = _price("own-batch", "anthropic", service_tier_rates=(("batch", (1, 2, 3, 4, 5)),))
    assert batch_price(own).output == 5  # type: ignore[union-attr]
    assert batch_price(_price("x", "acme")) is None  # no published batch rate for acme


def test_requested_factor_is_the_dearest_ask_and_never_below_one() -> None:
    assert requested_factor(GPT, service_tier="priority") == 2
    assert requested_factor(GPT, service_tier="flex") == 1
    assert requested_factor(OPUS, speed="fast", inference_geo="us") == Fraction(66, 10)
    assert requested_factor(OPUS) == 1


tokens = st.integers(min_value=0, max_value=3_000_000)


@given(
    uncached=tokens, cache_read=tokens, write_5m=tokens, write_1h=tokens, output=tokens,
    ask=st.sampled_from([
        {}, {"speed": "fast"}, {"inference_geo": "us"}, {"speed": "fast", "inference_geo": "us"},
    ]),
)  # fmt: skip
def test_the_worst_case_covers_the_actual_cost_under_the_asked_factor(
    uncached: int, cache_read: int, write_5m: int, write_1h: int, output: int, ask: dict[str, str]
) -> None:
    tiered = replace(OPUS, long_context_threshold=200_000, long_context_input=6_000_000_000,
                     long_context_cached_input=600_000_000, long_context_cache_write_5m=7_500_000_000,
                     long_context_cache_write_1h=12_000_000_000, long_context_output=22_500_000_000)  # fmt: skip
    usage = Usage(
        input_tokens=uncached, cache_read_tokens=cache_read, cache_write_5m_tokens=write_5m,
        cache_write_1h_tokens=write_1h, output_tokens=output, **ask,  # type: ignore[arg-type]
    )  # fmt: skip
    factor = requested_factor(tiered, **ask)  # type: ignore[arg-type]
    prompt = uncached + cache_read + write_5m + write_1h
    bound = worst_case_cost(prompt, output, tiered, may_write_cache=True, factor=factor)
    assert bound >= price_cost(usage, tiered).total
