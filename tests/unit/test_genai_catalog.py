"""genai-prices' catalog materialised as Ledger prices: exact, tiered, resolved by name."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal

import pytest
from genai_prices import Usage as GenaiUsage
from genai_prices.types import TimeOfDateConstraint
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ledger.pricing import price_cost
from ledger.pricing.genai import ModelResolver, catalog_provider_for, load_providers, materialise
from ledger.usage import Usage

PROVIDERS = load_providers()
CATALOG = materialise(PROVIDERS, "genai-prices test")
RESOLVER = ModelResolver(PROVIDERS)
_MODELS = {(p.id, m.id): m for p in PROVIDERS for m in p.models}
_PROVIDER = {p.id: p for p in PROVIDERS}
_NOW = datetime(2026, 6, 1, 12, tzinfo=UTC)


def _current(prices):
    """The version of each (provider, model) in effect at _NOW."""
    latest = {}
    for price in prices:
        key = (price.provider, price.model)
        if price.effective_from <= _NOW and (
            key not in latest or latest[key].effective_from < price.effective_from
        ):
            latest[key] = price
    return sorted(latest.values(), key=lambda p: (p.provider, p.model))


def _has_time_of_day(provider_id: str, model_id: str) -> bool:
    model = _MODELS[(provider_id, model_id)]
    return isinstance(model.prices, list) and any(
        isinstance(c.constraint, TimeOfDateConstraint) for c in model.prices
    )


CURRENT = [p for p in _current(CATALOG.prices) if not _has_time_of_day(p.provider, p.model)]


def _nanos(usd: Decimal) -> int:
    return int((usd * 10**9).to_integral_value(rounding=ROUND_HALF_UP))


def test_the_whole_catalog_is_materialised_with_every_provider():
    assert len({p.provider for p in CATALOG.prices}) >= 40
    assert len({(p.provider, p.model) for p in CATALOG.prices}) > 2000
    # Prices stored as float artefacts are rounded to the nano and said so, not refused.
    assert all("rounded to" in note for note in CATALOG.rounded)
    assert CATALOG.rounded
    # A true fraction of a nano (1/12 of a cent) is refused with why, never rounded.
    reasons = {why.split(" = ")[0] if " = " in why else why for _, why in CATALOG.refused}
    assert reasons <= {"not priced per token", "cache_write_mtok"}
    assert (
        "openrouter/google/gemini-2.5-flash",
        "cache_write_mtok = 0.0833333333333333 is finer than one nano-USD per million tokens",
    ) in CATALOG.refused


_ROUNDED = {note.split(":")[0] for note in CATALOG.rounded}
# Every price in the catalog is a whole number of micro-dollars per million tokens (checked
# below), so token counts in thousands make every bucket a whole number of nanos: Ledger's
# per-bucket rounding then has nothing to round and the totals must be equal exactly.
EXACT = [p for p in CURRENT if f"{p.provider}/{p.model}" not in _ROUNDED]
thousands = st.integers(min_value=0, max_value=400).map(lambda k: k * 1000)


def test_every_materialised_price_is_whole_micro_dollars_per_million():
    rates = [
        rate
        for p in CATALOG.prices
        for rate in (p.input, p.cached_input, p.cache_write_5m, p.cache_write_1h, p.output)
    ]
    assert rates and all(rate % 1000 == 0 for rate in rates)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    price=st.sampled_from(EXACT),
    uncached=thousands,
    read=thousands,
    write_5m=thousands,
    write_1h=thousands,
    output=thousands,
    audio_in=thousands,
    audio_read=thousands,
    audio_out=thousands,
)
def test_recorded_cost_equals_genai_prices_calc_price_to_the_nano(
    price, uncached, read, write_5m, write_1h, output, audio_in, audio_read, audio_out
):
    model_price = _MODELS[(price.provider, price.model)].get_prices(_NOW)
    if model_price.cache_audio_read_mtok is None:
        audio_read = 0  # genai-prices has no bucket of its own for it (it counts it twice)
    ours = Usage(
        input_tokens=uncached,
        cache_read_tokens=read,
        cache_write_5m_tokens=write_5m,
        cache_write_1h_tokens=write_1h,
        output_tokens=output,
        input_audio_tokens=audio_in,
        cache_read_audio_tokens=audio_read,
        output_audio_tokens=audio_out,
    )
    # genai-prices' usage: totals include their parts (input includes cache and audio).
    theirs = GenaiUsage(
        input_tokens=ours.total_input_tokens,
        cache_read_tokens=read + audio_read,
        cache_write_tokens=write_5m + write_1h,
        cache_write_1h_tokens=write_1h,
        output_tokens=output + audio_out,
        input_audio_tokens=audio_in + audio_read,
        cache_audio_read_tokens=audio_read,
        output_audio_tokens=audio_out,
    )
    # The model's own calc_price (some ids do not match their own match rules by name).
    model = _MODELS[(price.provider, price.model)]
    calc = model.calc_price(theirs, _PROVIDER[price.provider], genai_request_timestamp=_NOW)
    assert price_cost(ours, price).total * Decimal(1) == calc.total_price * 10**9


@pytest.mark.parametrize(
    ("provider", "name", "model"),
    [
        ("anthropic", "claude-opus-4-8", "claude-opus-4-8"),
        ("anthropic", "claude-sonnet-5", "claude-sonnet-5"),
        ("anthropic", "claude-haiku-4-5-20251001", "claude-haiku-4-5"),
        ("anthropic", "claude-3-5-sonnet-latest", "claude-3-5-sonnet"),
        ("anthropic", "claude-sonnet-4@20250514", "claude-sonnet-4-0"),
        ("anthropic", "claude-sonnet-4.5", "claude-sonnet-4-5"),
        ("anthropic", "anthropic/claude-sonnet-4-6", "claude-sonnet-4-6"),
        ("openai", "gpt-6.2-sol", "gpt-6.2-sol"),
        ("openai", "gpt-5.4-mini", "gpt-5.4-mini"),
        ("openai", "gpt-4.1-mini-2025-04-14", "gpt-4.1-mini"),
        ("openai", "openai/gpt-5.5", "gpt-5.5"),
        ("openrouter", "anthropic/claude-sonnet-4.5", "anthropic/claude-sonnet-4.5"),
    ],
)
def test_names_as_clients_send_them_resolve_to_their_catalog_model(provider, name, model):
    assert RESOLVER.resolve(provider, name) == (provider, model)


def test_a_name_no_provider_knows_resolves_to_nothing():
    assert RESOLVER.resolve("openai", "gpt-imaginary-9") is None
    assert RESOLVER.resolve(None, "gpt-imaginary-9") is None
    assert RESOLVER.resolve("anthropic", "gpt-4.1") is None  # the provider matters


def test_the_same_model_id_is_priced_per_provider():
    by_model = {}
    for price in CURRENT:
        by_model.setdefault(price.model, {})[price.provider] = (price.input, price.output)
    differing = [m for m, offers in by_model.items() if len(set(offers.values())) > 1]
    assert len(differing) > 10
    assert {"anthropic", "google"} <= set(by_model["claude-sonnet-4-5"])


def test_a_tier_prices_every_token_once_the_request_crosses_it():
    price = next(p for p in CURRENT if p.provider == "openai" and p.model == "gpt-5.4")
    (tier,) = price.tiers
    assert tier.threshold == 272_000
    # Cache reads count toward the threshold, as OpenAI counts them.
    under = Usage(input_tokens=172_000, cache_read_tokens=100_000, output_tokens=1000)
    over = Usage(input_tokens=172_001, cache_read_tokens=100_000, output_tokens=1000)
    assert price_cost(under, price).tier is None
    assert price_cost(over, price).tier == 272_000
    assert price_cost(over, price).input == -(-172_001 * tier.input // 10**6)
    assert price_cost(over, price).output == 1000 * tier.output // 10**6


def test_catalog_provider_follows_the_base_url_then_the_kind():
    assert catalog_provider_for("openai", "https://api.groq.com/openai/v1", PROVIDERS) == "groq"
    assert catalog_provider_for("openai", "https://openrouter.ai/api/v1", PROVIDERS) == "openrouter"
    assert catalog_provider_for("anthropic", "http://127.0.0.1:9999", PROVIDERS) == "anthropic"
