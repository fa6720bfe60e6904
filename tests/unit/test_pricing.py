"""Prices and costs: the catalog, exact cost arithmetic, effective dating, imports."""

from __future__ import annotations

import dataclasses
import json
import math
import re
import tomllib
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from fractions import Fraction
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ledger.pricing import (
    CostBreakdown,
    Price,
    PriceBook,
    PriceError,
    diff_prices,
    load_catalog,
    parse_price_map,
    parse_price_map_text,
    price_cost,
    price_from_mapping,
    worst_case_cost,
)
from ledger.usage import Usage

NOW = datetime.now(UTC)
USD = 10**9  # nanos; written out here so the tests do not lean on ledger.money


def _price(**fields: Any) -> Price:
    mapping: dict[str, Any] = {
        "model": "test-model",
        "provider": "openai",
        "effective_from": "2025-01-01",
        "input": "1.00",
        "output": "4.00",
    }
    mapping.update(fields)
    return price_from_mapping(mapping)


def _half_up(value: Fraction) -> int:
    return math.floor(value + Fraction(1, 2))


def _expected_nanos(tokens: int, usd_per_million: str) -> int:
    """The cost of ``tokens`` at a per-million price, computed from the decimal text."""
    return _half_up(Fraction(tokens) * Fraction(Decimal(usd_per_million)) * USD / 10**6)


# --- the shipped catalog ---------------------------------------------------------------

REQUIRED_MODELS = [
    "gpt-4.1",
    "gpt-4.1-mini",
    "gpt-4.1-nano",
    "gpt-4o",
    "gpt-4o-mini",
    "o3",
    "o4-mini",
    "o3-mini",
    "o1",
    "gpt-5",
    "gpt-5-mini",
    "gpt-5-nano",
    "gpt-5.1",
    "gpt-3.5-turbo",
    "gpt-4-turbo",
    "openai-gpt-4.1-mini",
    "claude-opus-4-1",
    "claude-opus-4",
    "claude-opus-4-5",
    "claude-sonnet-4",
    "claude-sonnet-4-5",
    "claude-haiku-4-5",
    "claude-3-5-haiku",
    "claude-3-7-sonnet",
]


def test_catalog_loads_with_a_source_and_a_past_date_for_every_entry() -> None:
    catalog = load_catalog()

    assert catalog
    for price in catalog:
        assert price.provider in {"openai", "anthropic"}
        assert price.source.startswith("https://")
        assert price.effective_from.tzinfo is UTC
        assert price.effective_from < NOW
        assert price.id is None


def test_every_catalog_model_and_alias_has_a_price_today() -> None:
    catalog = load_catalog()
    book = PriceBook(catalog)

    names = {price.model for price in catalog} | {a for p in catalog for a in p.aliases}
    assert set(REQUIRED_MODELS) <= names
    for name in names:
        assert book.price_at(name, NOW) is not None, name


def test_gpt_4_1_mini_is_priced_exactly_as_published() -> None:
    price = PriceBook(load_catalog()).price_at("gpt-4.1-mini", NOW)

    assert price is not None
    assert (price.input, price.cached_input, price.output) == (
        400_000_000,
        100_000_000,
        1_600_000_000,
    )
    # OpenAI does not charge for writing its cache: writes cost plain input.
    assert price.cache_write_5m == price.cache_write_1h == 400_000_000


def test_the_seed_model_id_costs_the_same_as_gpt_4_1_mini() -> None:
    book = PriceBook(load_catalog())
    seed = book.price_at("openai-gpt-4.1-mini", NOW)
    mini = book.price_at("gpt-4.1-mini", NOW)
    usage = Usage(input_tokens=1234, cache_read_tokens=5678, output_tokens=910)

    assert seed is not None and mini is not None
    assert seed.source == "https://modelslab.com/models/openai/openai-gpt-4.1-mini"
    assert price_cost(usage, seed) == price_cost(usage, mini)


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        # input, cache read, 5m write, 1h write, output; USD per million tokens
        ("gpt-4.1", ("2", "0.5", "2", "2", "8")),
        ("gpt-4.1-nano", ("0.1", "0.025", "0.1", "0.1", "0.4")),
        ("gpt-4o", ("2.5", "1.25", "2.5", "2.5", "10")),
        ("gpt-4o-mini", ("0.15", "0.075", "0.15", "0.15", "0.6")),
        ("o3", ("2", "0.5", "2", "2", "8")),
        ("o4-mini", ("1.1", "0.275", "1.1", "1.1", "4.4")),
        ("gpt-5", ("1.25", "0.125", "1.25", "1.25", "10")),
        ("gpt-5-mini", ("0.25", "0.025", "0.25", "0.25", "2")),
        ("gpt-5-nano", ("0.05", "0.005", "0.05", "0.05", "0.4")),
        ("claude-opus-4-1", ("15", "1.5", "18.75", "30", "75")),
        ("claude-opus-4", ("15", "1.5", "18.75", "30", "75")),
        ("claude-opus-4-5", ("5", "0.5", "6.25", "10", "25")),
        ("claude-sonnet-4", ("3", "0.3", "3.75", "6", "15")),
        ("claude-sonnet-4-5", ("3", "0.3", "3.75", "6", "15")),
        ("claude-haiku-4-5", ("1", "0.1", "1.25", "2", "5")),
        ("claude-3-5-haiku", ("0.8", "0.08", "1", "1.6", "4")),
    ],
)
def test_catalog_prices_match_the_published_list_prices(
    model: str, expected: tuple[str, ...]
) -> None:
    price = PriceBook(load_catalog()).price_at(model, NOW)

    assert price is not None
    actual = (
        price.input,
        price.cached_input,
        price.cache_write_5m,
        price.cache_write_1h,
        price.output,
    )
    assert actual == tuple(int(Decimal(usd) * USD) for usd in expected)


def test_sonnet_long_context_prices_apply_above_200k_input_tokens() -> None:
    price = PriceBook(load_catalog()).price_at("claude-sonnet-4-5-20250929", NOW)

    assert price is not None
    assert price.long_context_threshold == 200_000
    assert (
        price.long_context_input,
        price.long_context_cache_write_5m,
        price.long_context_cache_write_1h,
        price.long_context_cached_input,
        price.long_context_output,
    ) == (6 * USD, 7_500_000_000, 12 * USD, 600_000_000, 22_500_000_000)


def test_o3_price_cut_applies_only_to_requests_after_it() -> None:
    book = PriceBook(load_catalog())

    before = book.price_at("o3-2025-04-16", datetime(2025, 6, 9, 23, 59, tzinfo=UTC))
    after = book.price_at("o3", datetime(2025, 6, 10, tzinfo=UTC))

    assert before is not None and after is not None
    assert (before.input, before.output) == (10 * USD, 40 * USD)
    assert (after.input, after.output) == (2 * USD, 8 * USD)


# --- cost arithmetic -------------------------------------------------------------------

_usd_per_million = st.decimals(min_value=0, max_value=200, places=9).map(str)


@st.composite
def _price_texts(draw: st.DrawFn) -> dict[str, Any]:
    fields: dict[str, Any] = {
        name: draw(_usd_per_million)
        for name in ("input", "cached_input", "cache_write_5m", "cache_write_1h", "output")
    }
    fields["request_fee"] = draw(st.sampled_from(["0", "0.000000001", "0.01", "0.25"]))
    if draw(st.booleans()):
        fields["long_context_threshold"] = draw(st.integers(1, 400_000))
        for name in ("input", "cached_input", "cache_write_5m", "cache_write_1h", "output"):
            fields[f"long_context_{name}"] = draw(_usd_per_million)
    return fields


_token_counts = st.integers(0, 3_000_000)


@st.composite
def _usages(draw: st.DrawFn) -> Usage:
    output_tokens = draw(_token_counts)
    return Usage(
        input_tokens=draw(_token_counts),
        cache_read_tokens=draw(_token_counts),
        cache_write_5m_tokens=draw(_token_counts),
        cache_write_1h_tokens=draw(_token_counts),
        output_tokens=output_tokens,
        reasoning_tokens=draw(st.integers(0, output_tokens)),
    )


@given(texts=_price_texts(), usage=_usages())
def test_cost_equals_an_exact_fraction_rounded_half_up_per_bucket(
    texts: dict[str, Any], usage: Usage
) -> None:
    cost = price_cost(usage, _price(**texts))

    threshold = texts.get("long_context_threshold")
    long_context = threshold is not None and usage.total_input_tokens > threshold
    prefix = "long_context_" if long_context else ""
    expected = CostBreakdown(
        input=_expected_nanos(usage.input_tokens, texts[prefix + "input"]),
        cache_read=_expected_nanos(usage.cache_read_tokens, texts[prefix + "cached_input"]),
        cache_write=(
            _expected_nanos(usage.cache_write_5m_tokens, texts[prefix + "cache_write_5m"])
            + _expected_nanos(usage.cache_write_1h_tokens, texts[prefix + "cache_write_1h"])
        ),
        output=_expected_nanos(usage.output_tokens, texts[prefix + "output"]),
        request_fee=int(Decimal(texts["request_fee"]) * USD),
        long_context=long_context,
    )
    assert cost == expected
    assert cost.total == (
        expected.input
        + expected.cache_read
        + expected.cache_write
        + expected.output
        + expected.request_fee
    )


def test_half_a_nano_rounds_up_and_less_rounds_down() -> None:
    price = _price(input="0.000000001", output="1")  # 1 nano per million tokens

    assert price_cost(Usage(input_tokens=500_000), price).input == 1
    assert price_cost(Usage(input_tokens=499_999), price).input == 0


def test_reasoning_tokens_are_not_billed_twice() -> None:
    price = _price()
    plain = Usage(input_tokens=100, output_tokens=1_000)
    reasoning = Usage(input_tokens=100, output_tokens=1_000, reasoning_tokens=800)

    assert price_cost(reasoning, price) == price_cost(plain, price)
    assert price_cost(reasoning, price).output == 4_000_000


def test_long_context_tier_starts_one_token_above_the_threshold() -> None:
    price = PriceBook(load_catalog()).price_at("claude-sonnet-4-5", NOW)
    assert price is not None
    at_threshold = Usage(input_tokens=150_000, cache_read_tokens=50_000, output_tokens=1_000)
    above = Usage(input_tokens=150_001, cache_read_tokens=50_000, output_tokens=1_000)

    base = price_cost(at_threshold, price)
    tier = price_cost(above, price)

    assert not base.long_context
    assert (base.input, base.cache_read, base.output) == (450_000_000, 15_000_000, 15_000_000)
    assert tier.long_context
    # The whole request moves to the tier, cache reads and output included.
    assert (tier.input, tier.cache_read, tier.output) == (900_006_000, 30_000_000, 22_500_000)


def test_a_free_model_costs_nothing() -> None:
    price = _price(free=True, input=None, output=None, request_fee="0.01")
    usage = Usage(input_tokens=10**6, output_tokens=10**6)

    assert price_cost(usage, price).total == 0
    assert worst_case_cost(10**6, 10**6, price) == 0


def test_worst_case_prices_all_input_as_uncached_plus_full_output_and_fee() -> None:
    price = _price(cached_input="0.10", cache_write_1h="2.00", request_fee="0.001")

    assert worst_case_cost(1_000, 500, price) == 1_000_000 + 2_000_000 + 1_000_000
    # Cache writes can cost more than plain input; the caller says when they may happen.
    assert worst_case_cost(1_000, 500, price, may_write_cache=True) == 2_000_000 + 3_000_000


def test_worst_case_uses_the_long_context_tier_above_the_threshold() -> None:
    price = PriceBook(load_catalog()).price_at("claude-sonnet-4", NOW)
    assert price is not None

    assert worst_case_cost(200_000, 1_000, price) == 600_000_000 + 15_000_000
    assert worst_case_cost(200_001, 1_000, price) == 1_200_006_000 + 22_500_000


# --- parsing prices --------------------------------------------------------------------


@given(nanos=st.integers(0, 10**15))
def test_any_whole_nano_price_parses_exactly(nanos: int) -> None:
    text = f"{nanos // USD}.{nanos % USD:09d}"

    assert _price(input=text).input == nanos


def test_prices_accept_strings_integers_decimals_and_toml_floats_alike() -> None:
    toml = tomllib.loads("input = 0.4\noutput = 1.6\ncached_input = 0.1\n")

    from_strings = _price(input="0.40", output="1.60", cached_input="0.10")
    assert _price(**toml) == from_strings
    assert _price(input=Decimal("0.4"), output=Decimal("1.6"), cached_input="0.1") == from_strings
    assert _price(input=2, output=8).input == 2 * USD


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"input": "0.0000000001"}, "finer than one nano-USD"),
        ({"output": "-1"}, "cannot be negative"),
        ({"input": True}, "must be a decimal string"),
        ({"input": "NaN"}, "not a finite amount"),
        ({"ouput": "1"}, "unknown price field(s): ouput"),
        ({"input": None}, "input price is required"),
        ({"long_context_input": "2"}, "without long_context_threshold"),
        ({"long_context_threshold": 1000}, "without long-context prices"),
        ({"effective_from": "2025-01-01T00:00:00"}, "UTC offset"),
        ({"effective_from": "January"}, "not an ISO date"),
        ({"model": ""}, "model must be a non-empty name"),
        ({"aliases": "gpt"}, "aliases must be a list"),
    ],
)
def test_malformed_prices_are_refused_with_a_clear_message(
    fields: dict[str, Any], message: str
) -> None:
    with pytest.raises(PriceError, match=re.escape(message)):
        _price(**fields)


def test_missing_cache_prices_fall_back_to_never_cheaper_buckets() -> None:
    price = _price(
        input="3",
        cache_write_5m="3.75",
        long_context_threshold=200_000,
        long_context_input="6",
        long_context_cache_write_5m="7.50",
    )

    assert price.cached_input == 3 * USD  # no cache discount unless one is published
    assert price.cache_write_1h == 3_750_000_000  # the 5-minute write
    assert price.long_context_cached_input == price.cached_input  # the ordinary price
    assert price.long_context_cache_write_1h == 7_500_000_000  # not below the tier's 5m
    assert price.long_context_output == price.output


def test_effective_dates_are_stored_in_utc() -> None:
    price = _price(effective_from="2025-06-01T02:00:00+02:00")

    assert price.effective_from == datetime(2025, 6, 1, tzinfo=UTC)
    assert price.effective_from.tzinfo is UTC


# --- effective dating ------------------------------------------------------------------

JUNE_1 = datetime(2025, 6, 1, tzinfo=UTC)


def _two_versions() -> tuple[Price, Price]:
    old = _price(effective_from="2025-01-01", input="1.00", aliases=["test-model-2025"])
    new = _price(effective_from="2025-06-01", input="2.00")
    return old, new


def test_price_at_picks_the_version_in_effect_at_the_request_time() -> None:
    old, new = _two_versions()
    book = PriceBook([new, old])

    assert book.price_at("test-model", datetime(2024, 12, 31, tzinfo=UTC)) is None
    assert book.price_at("test-model", JUNE_1 - timedelta(microseconds=1)) == old
    assert book.price_at("test-model", JUNE_1) == new
    assert book.price_at("test-model", JUNE_1.astimezone(timezone(timedelta(hours=2)))) == new


def test_a_new_price_never_changes_the_cost_of_an_earlier_request() -> None:
    old, new = _two_versions()
    usage = Usage(input_tokens=10_000, output_tokens=1_000)
    request_time = datetime(2025, 3, 1, tzinfo=UTC)

    before_change = PriceBook([old]).price_at("test-model", request_time)
    after_change = PriceBook([old, new]).price_at("test-model", request_time)

    assert before_change is not None and after_change is not None
    assert price_cost(usage, after_change) == price_cost(usage, before_change)


def test_an_alias_follows_its_model_to_later_versions() -> None:
    old, new = _two_versions()  # only the old version declares the alias
    book = PriceBook([old, new])

    assert book.price_at("test-model-2025", JUNE_1) == new


def test_a_provider_prefix_is_stripped_when_the_full_name_is_unknown() -> None:
    book = PriceBook(load_catalog())

    price = book.price_at("anthropic/claude-haiku-4-5-20251001", NOW)

    assert price is not None and price.model == "claude-haiku-4-5"
    assert book.price_at("GPT-4.1", NOW) is None  # names are case-sensitive
    assert book.price_at("no-such-model", NOW) is None


def test_lookups_with_a_naive_time_are_refused() -> None:
    with pytest.raises(PriceError, match="aware datetime"):
        PriceBook(load_catalog()).price_at("gpt-4.1", datetime(2025, 6, 1))


def test_two_versions_from_the_same_instant_are_refused() -> None:
    with pytest.raises(PriceError, match="two prices effective from"):
        PriceBook([_price(input="1"), _price(input="2")])


def test_an_alias_claimed_by_two_models_is_refused() -> None:
    first = _price(model="a", aliases=["shared"])
    second = _price(model="b", aliases=["shared"])

    with pytest.raises(PriceError, match="alias shared is declared by both a and b"):
        PriceBook([first, second])


# --- the community price map -----------------------------------------------------------

PRICE_MAP = """
{
  "sample_spec": {
    "max_tokens": "LEGACY parameter. set to max_output_tokens if provider specifies it.",
    "input_cost_per_token": 0.0,
    "output_cost_per_token": 0.0,
    "litellm_provider": "one of https://docs.litellm.ai/docs/providers",
    "mode": "one of: chat, embedding, completion, image_generation, audio_transcription"
  },
  "gpt-4.1-mini": {
    "max_input_tokens": 1047576,
    "max_output_tokens": 32768,
    "input_cost_per_token": 4e-07,
    "output_cost_per_token": 1.6e-06,
    "cache_read_input_token_cost": 1e-07,
    "litellm_provider": "openai",
    "mode": "chat",
    "supports_prompt_caching": true
  },
  "claude-sonnet-4-5-20250929": {
    "input_cost_per_token": 3e-06,
    "output_cost_per_token": 1.5e-05,
    "cache_read_input_token_cost": 3e-07,
    "cache_creation_input_token_cost": 3.75e-06,
    "cache_creation_input_token_cost_above_1hr": 6e-06,
    "input_cost_per_token_above_200k_tokens": 6e-06,
    "output_cost_per_token_above_200k_tokens": 2.25e-05,
    "cache_read_input_token_cost_above_200k_tokens": 6e-07,
    "cache_creation_input_token_cost_above_200k_tokens": 7.5e-06,
    "litellm_provider": "anthropic",
    "mode": "chat"
  },
  "gemini-1.5-pro": {
    "input_cost_per_token": 1.25e-06,
    "input_cost_per_token_above_128k_tokens": 2.5e-06,
    "output_cost_per_token": 5e-06,
    "output_cost_per_token_above_128k_tokens": 1e-05,
    "litellm_provider": "vertex_ai-language-models",
    "mode": "chat"
  },
  "gpt-3.5-turbo-instruct": {
    "input_cost_per_token": 1.5e-06,
    "output_cost_per_token": 2e-06,
    "litellm_provider": "text-completion-openai",
    "mode": "completion"
  },
  "azure/gpt-4o": {
    "input_cost_per_token": 2.5e-06,
    "output_cost_per_token": 1e-05,
    "cache_read_input_token_cost": 1.25e-06,
    "litellm_provider": "azure",
    "mode": "chat"
  },
  "text-embedding-3-small": {
    "input_cost_per_token": 2e-08,
    "output_cost_per_token": 0.0,
    "litellm_provider": "openai",
    "mode": "embedding"
  },
  "mixup/gpt-4o": {
    "input_cost_per_token": 2.5,
    "output_cost_per_token": 10.0,
    "litellm_provider": "openai",
    "mode": "chat"
  },
  "swapped/model": {
    "input_cost_per_token": 1e-05,
    "output_cost_per_token": 1e-08,
    "litellm_provider": "openai",
    "mode": "chat"
  },
  "too-fine/model": {
    "input_cost_per_token": 1.6666666666666667e-07,
    "output_cost_per_token": 1e-06,
    "litellm_provider": "openai",
    "mode": "chat"
  },
  "no-output/model": {
    "input_cost_per_token": 1e-06,
    "litellm_provider": "openai",
    "mode": "chat"
  }
}
"""

IMPORTED_AT = datetime(2025, 12, 1, tzinfo=UTC)


def _imported() -> dict[str, Price]:
    result = parse_price_map_text(PRICE_MAP, effective_from=IMPORTED_AT)
    return {price.model: price for price in result.prices}


def test_price_map_reads_chat_and_completion_models_exactly() -> None:
    prices = _imported()

    assert set(prices) == {
        "gpt-4.1-mini",
        "claude-sonnet-4-5-20250929",
        "gemini-1.5-pro",
        "gpt-3.5-turbo-instruct",
        "azure/gpt-4o",
        "too-fine/model",  # a float artefact, rounded to the nano per million and said so
    }
    mini = prices["gpt-4.1-mini"]
    assert (mini.provider, mini.input, mini.cached_input, mini.output) == (
        "openai",
        400_000_000,
        100_000_000,
        1_600_000_000,
    )
    assert mini.effective_from == IMPORTED_AT
    assert prices["gpt-3.5-turbo-instruct"].provider == "openai"
    assert prices["azure/gpt-4o"].provider == "azure"


def test_price_map_long_context_tiers_get_their_threshold() -> None:
    prices = _imported()
    sonnet = prices["claude-sonnet-4-5-20250929"]
    gemini = prices["gemini-1.5-pro"]

    assert sonnet.provider == "anthropic"
    assert sonnet.long_context_threshold == 200_000
    assert (sonnet.long_context_input, sonnet.long_context_output) == (6 * USD, 22_500_000_000)
    assert sonnet.long_context_cached_input == 600_000_000
    # The map has no 1-hour write above 200k: it falls back to the tier's 5-minute write.
    assert sonnet.long_context_cache_write_1h == 7_500_000_000
    assert gemini.long_context_threshold == 128_000
    assert (gemini.long_context_input, gemini.long_context_output) == (2_500_000_000, 10 * USD)


def test_price_map_skips_non_chat_entries_and_refuses_implausible_units() -> None:
    result = parse_price_map_text(PRICE_MAP, effective_from=IMPORTED_AT)
    skipped = dict(result.skipped)
    refused = dict(result.refused)

    assert set(skipped) == {"sample_spec", "text-embedding-3-small"}
    assert "embedding" in skipped["text-embedding-3-small"]
    assert set(refused) == {"mixup/gpt-4o", "swapped/model", "no-output/model"}
    assert "per-million price in a per-token field" in refused["mixup/gpt-4o"]
    assert "under a hundredth of input" in refused["swapped/model"]
    assert result.rounded == [("too-fine/model", "input", "1.6666666666666667E-7", "0.166666667")]
    assert "no input or output price" in refused["no-output/model"]


def test_no_float_survives_into_a_parsed_price() -> None:
    imported = parse_price_map_text(PRICE_MAP, effective_from=IMPORTED_AT).prices
    numeric = {
        field.name
        for field in dataclasses.fields(Price)
        if field.name not in {"model", "provider", "effective_from", "source", "aliases"}
        and field.name not in {"free", "id", "service_tier_rates", "time_windows", "tiers"}
    }

    for price in [*imported, *load_catalog()]:
        for name in numeric:
            value = getattr(price, name)
            assert value is None or type(value) is int, (price.model, name, value)
        for _tier, rates in price.service_tier_rates:
            assert all(type(rate) is int for rate in rates), (price.model, rates)
        for tier in price.tiers:  # each tier's threshold and five prices
            assert all(type(value) is int for value in dataclasses.astuple(tier)), price.model


def test_a_price_map_of_python_floats_reads_the_same_as_its_text() -> None:
    as_floats = json.loads(PRICE_MAP)

    from_floats = parse_price_map(as_floats, effective_from=IMPORTED_AT)
    from_text = parse_price_map_text(PRICE_MAP, effective_from=IMPORTED_AT)

    assert from_floats.prices == from_text.prices
    assert from_floats.skipped == from_text.skipped
    assert [name for name, _ in from_floats.refused] == [name for name, _ in from_text.refused]


def test_a_price_map_that_is_not_a_json_object_is_refused() -> None:
    with pytest.raises(PriceError, match="not valid JSON"):
        parse_price_map_text("{")
    with pytest.raises(PriceError, match="JSON object"):
        parse_price_map_text("[]")


def test_diff_reports_what_an_import_adds_changes_and_leaves_alone() -> None:
    book = PriceBook(load_catalog())
    incoming = parse_price_map_text(PRICE_MAP, effective_from=IMPORTED_AT).prices

    diff = diff_prices(book, incoming, IMPORTED_AT)

    assert [price.model for price in diff.unchanged] == ["gpt-4.1-mini"]
    # Found through its alias; the map lacks the $12 long-context 1-hour write.
    [(current, changed)] = diff.changed
    assert (current.model, changed.model) == ("claude-sonnet-4-5", "claude-sonnet-4-5-20250929")
    # A provider prefix marks another offer, not a change to the catalog's gpt-4o.
    assert {price.model for price in diff.added} == {
        "gemini-1.5-pro",
        "gpt-3.5-turbo-instruct",
        "azure/gpt-4o",
        "too-fine/model",
    }
