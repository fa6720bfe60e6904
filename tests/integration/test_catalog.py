"""Today's models, served and priced with only providers configured (genai-prices' catalog)."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import anthropic
import openai
import pytest
from genai_prices import Usage as GenaiUsage
from genai_prices import calc_price

from tests.fake_upstream import FakeUpstream
from tests.live import LiveServer, gateway_settings


def _genai_cost(model: str, provider: str, input_total: int, output: int) -> Decimal:
    usage = GenaiUsage(input_tokens=input_total, output_tokens=output)
    return calc_price(
        usage, model, provider_id=provider, genai_request_timestamp=datetime.now(UTC)
    ).total_price


@pytest.mark.parametrize("model", ["claude-opus-4-8", "claude-sonnet-5"])
def test_claude_codes_default_models_are_served_and_priced_as_genai_prices_says(
    gateway: LiveServer, model: str
) -> None:
    client = anthropic.Anthropic(base_url=gateway.url, api_key=gateway.team_key(), max_retries=0)
    raw = client.messages.with_raw_response.create(
        model=model, max_tokens=64, messages=[{"role": "user", "content": "Hello there"}]
    )
    message = raw.parse()
    entry = gateway.entry(raw.headers["x-ledger-request-id"])
    assert entry["status"] == "ok"
    assert entry["served_model"] == model
    expected = _genai_cost(
        model, "anthropic", message.usage.input_tokens, message.usage.output_tokens
    )
    assert expected > 0
    assert Decimal(entry["cost_usd"]) == expected


@pytest.mark.parametrize(
    "model", ["gpt-6.2-sol", "gpt-5.4-mini", "gpt-5.4-mini-2026-03-17", "openai/gpt-5.5"]
)
def test_codex_and_current_openai_models_are_served_and_priced_as_genai_prices_says(
    gateway: LiveServer, model: str
) -> None:
    client = openai.OpenAI(
        base_url=gateway.openai_base_url, api_key=gateway.team_key(), max_retries=0
    )
    raw = client.chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": "Hello there"}]
    )
    completion = raw.parse()
    entry = gateway.entry(raw.headers["x-ledger-request-id"])
    assert entry["status"] == "ok"
    assert entry["requested_model"] == model
    usage = completion.usage
    bare = model.removeprefix("openai/")  # genai-prices itself does not strip the prefix
    expected = _genai_cost(bare, "openai", usage.prompt_tokens, usage.completion_tokens)
    assert expected > 0
    assert Decimal(entry["cost_usd"]) == expected


def test_models_lists_todays_models_and_nothing_unpriced(gateway: LiveServer) -> None:
    client = openai.OpenAI(
        base_url=gateway.openai_base_url, api_key=gateway.team_key(), max_retries=0
    )
    names = {model.id for model in client.models.list().data}
    assert {"claude-opus-4-8", "claude-sonnet-5", "gpt-6.2-sol", "gpt-5.4-mini"} <= names
    assert "no-such-model-9" not in names


def test_an_unknown_model_is_refused_with_one_entry_never_at_zero(gateway: LiveServer) -> None:
    client = openai.OpenAI(
        base_url=gateway.openai_base_url, api_key=gateway.team_key(), max_retries=0
    )
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(
            model="gpt-imaginary-9", messages=[{"role": "user", "content": "Hi"}]
        )
    entries = gateway.wait_for_entries(1)
    assert [e["requested_model"] for e in entries] == ["gpt-imaginary-9"]
    assert entries[0]["status"] != "ok"
    assert caught.value.status_code == 400
    assert caught.value.code == "model_not_priced"


def _with_unknown_models(settings, rule: str):
    providers = tuple(
        dataclasses.replace(p, unknown_models=rule) if p.kind == "openai" else p
        for p in settings.providers
    )
    return dataclasses.replace(settings, providers=providers)


def test_unknown_models_record_serves_and_records_unpriced_with_usage(
    database_url: str, fake_upstream: FakeUpstream
) -> None:
    settings = _with_unknown_models(gateway_settings(database_url, fake_upstream), "record")
    with LiveServer(settings) as gateway:
        client = openai.OpenAI(
            base_url=gateway.openai_base_url, api_key=gateway.team_key(), max_retries=0
        )
        raw = client.chat.completions.with_raw_response.create(
            model="local-llama-70b", messages=[{"role": "user", "content": "Hello there"}]
        )
        completion = raw.parse()
        entry = gateway.entry(raw.headers["x-ledger-request-id"])
        assert entry["status"] == "unpriced"
        assert entry["usage"]["output_tokens"] == completion.usage.completion_tokens > 0
        assert Decimal(entry["cost_usd"]) == 0
        names = {m.id for m in client.models.list().data}
        assert "local-llama-70b" not in names  # served, but not priced: not listed


def test_unknown_models_record_is_refused_under_a_hard_budget_and_served_under_a_soft_one(
    database_url: str, fake_upstream: FakeUpstream
) -> None:
    # Before: the request reserved and recorded $0, so unpriced spend escaped the budget.
    settings = _with_unknown_models(gateway_settings(database_url, fake_upstream), "record")
    with LiveServer(settings) as gateway:
        capped, relaxed = gateway.team_key("capped"), gateway.team_key("relaxed")
        for team, mode in (("capped", "hard"), ("relaxed", "soft")):
            budget = {"team": team, "limit_usd": "100", "period": "monthly", "mode": mode}
            assert gateway.admin.post("/admin/budgets", json=budget).status_code == 201

        def ask(key: str) -> Any:
            client = openai.OpenAI(base_url=gateway.openai_base_url, api_key=key, max_retries=0)
            return client.chat.completions.with_raw_response.create(
                model="local-llama-70b", messages=[{"role": "user", "content": "Hello there"}]
            )

        with pytest.raises(openai.BadRequestError) as caught:
            ask(capped)
        assert caught.value.code == "model_not_priced"
        assert "hard budget" in caught.value.message and "local-llama-70b" in caught.value.message
        refused = gateway.entry(caught.value.response.headers["x-ledger-request-id"])
        assert (refused["status"], refused["http_status"]) == ("invalid_request", 400)
        assert refused["requested_model"] == "local-llama-70b"

        served = gateway.entry(ask(relaxed).headers["x-ledger-request-id"])
        assert served["status"] == "unpriced"
        assert served["usage"]["output_tokens"] > 0
        assert len(gateway.entries()) == 2  # one entry each


def test_unknown_models_estimate_prices_as_the_named_model(
    database_url: str, fake_upstream: FakeUpstream
) -> None:
    settings = _with_unknown_models(
        gateway_settings(database_url, fake_upstream), "estimate:gpt-5.4-mini"
    )
    with LiveServer(settings) as gateway:
        client = openai.OpenAI(
            base_url=gateway.openai_base_url, api_key=gateway.team_key(), max_retries=0
        )
        raw = client.chat.completions.with_raw_response.create(
            model="local-llama-70b", messages=[{"role": "user", "content": "Hello there"}]
        )
        usage = raw.parse().usage
        entry = gateway.entry(raw.headers["x-ledger-request-id"])
        assert entry["status"] == "ok"
        expected = _genai_cost(
            "gpt-5.4-mini", "openai", usage.prompt_tokens, usage.completion_tokens
        )
        assert Decimal(entry["cost_usd"]) == expected
