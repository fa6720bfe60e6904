"""Effective-dated prices through a live gateway: admin API, config file, listing."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import openai
import pytest

from ledger.config import load_settings
from tests.fake_upstream import FakeUpstream
from tests.live import ADMIN_KEY, LiveServer

MODEL = "gpt-4.1-mini"
MILLION = Decimal(1_000_000)


def _client(gateway: LiveServer, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.openai_base_url, api_key=key, max_retries=0)


def _ask(client: openai.OpenAI, text: str, model: str = MODEL) -> tuple[str, Any]:
    raw = client.chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": text}]
    )
    return raw.headers["x-ledger-request-id"], raw.parse().usage


def _cost(usage: Any, input_: str, output: str, cached: str | None = None) -> Decimal:
    cached_tokens = usage.prompt_tokens_details.cached_tokens or 0
    return (
        (usage.prompt_tokens - cached_tokens) * Decimal(input_)
        + cached_tokens * Decimal(cached or input_)
        + usage.completion_tokens * Decimal(output)
    ) / MILLION


def _post_price(gateway: LiveServer, **fields: Any) -> dict[str, Any]:
    response = gateway.admin.post(
        "/admin/prices", json={"model": MODEL, "provider": "openai", **fields}
    )
    assert response.status_code == 201, response.text
    return response.json()


def test_a_new_price_applies_to_later_requests_and_never_to_earlier_ones(
    gateway: LiveServer,
) -> None:
    client = _client(gateway, gateway.team_key())
    first_id, first_usage = _ask(client, "cached=4 before the change")
    first = gateway.entry(first_id)
    assert Decimal(first["cost_usd"]) == _cost(first_usage, "0.40", "1.60", "0.10")

    created = _post_price(gateway, input="0.80", cached_input="0.20", output="3.20")
    assert created["input_per_million_usd"] == "0.800000000"
    assert created["output_per_million_usd"] == "3.200000000"
    assert datetime.fromisoformat(created["effective_from"]) <= datetime.now(UTC)

    second_id, second_usage = _ask(client, "cached=4 after the change")
    second = gateway.entry(second_id)
    assert Decimal(second["cost_usd"]) == _cost(second_usage, "0.80", "3.20", "0.20")
    assert second["price_id"] == created["id"]
    assert second["price_id"] != first["price_id"]

    # The first entry was written once and is read back unchanged.
    assert gateway.entry(first_id) == first


def test_a_price_effective_in_the_future_does_not_change_todays_cost(
    gateway: LiveServer,
) -> None:
    client = _client(gateway, gateway.team_key())
    tomorrow = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    _post_price(gateway, input="100", output="100", effective_from=tomorrow)
    request_id, usage = _ask(client, "still today")
    assert Decimal(gateway.entry(request_id)["cost_usd"]) == _cost(usage, "0.40", "1.60")


def test_a_price_for_a_new_model_makes_it_servable(gateway: LiveServer) -> None:
    client = _client(gateway, gateway.team_key())
    with pytest.raises(openai.BadRequestError) as refused:
        _ask(client, "hello", model="acme-chat-1")
    assert refused.value.code == "model_not_priced"
    _post_price(gateway, model="acme-chat-1", input="2.5", output="7.5")
    request_id, usage = _ask(client, "hello", model="acme-chat-1")
    assert Decimal(gateway.entry(request_id)["cost_usd"]) == _cost(usage, "2.5", "7.5")


INVALID_PRICES: list[dict[str, Any]] = [
    {"input": "-0.40", "output": "1.60"},
    {"input": "0.40", "output": "-1"},
    {"input": "0.4.0", "output": "1.60"},
    {"input": "0.40abc", "output": "1.60"},
    {"input": "1e400x", "output": "1.60"},
    {"input": "NaN", "output": "1.60"},
    {"input": "Infinity", "output": "1.60"},
    {"input": "", "output": "1.60"},
    {"input": "0.0000000001", "output": "1.60"},  # finer than one nano per million tokens
    {"input": True, "output": "1.60"},
    {"input": [], "output": "1.60"},
    {"input": "0.40"},
    {"output": "1.60"},
    {"input": "0.40", "output": "1.60", "colour": "blue"},
    {"input": "0.40", "output": "1.60", "input_per_token": "0.0000004"},
    {"input": "0.40", "output": "1.60", "effective_from": "2026-01-01T00:00:00"},
    {"input": "0.40", "output": "1.60", "effective_from": "next tuesday"},
    {"input": "0.40", "output": "1.60", "effective_from": 1767225600},
    {"input": "0.40", "output": "1.60", "model": ""},
    {"input": "0.40", "output": "1.60", "model": 42},
    {"input": "0.40", "output": "1.60", "model": "m" * 201},
    {"input": "0.40", "output": "1.60", "provider": ""},
    {"input": "0.40", "output": "1.60", "provider": "p" * 65},
    {"input": "0.40", "output": "1.60", "free": "yes"},
    {"input": "0.40", "output": "1.60", "aliases": "gpt-mini"},
    {"input": "0.40", "output": "1.60", "long_context_threshold": "lots"},
    {"input": "0.40", "output": "1.60", "long_context_input": "1"},
]


def test_an_invalid_price_is_refused_with_400_and_changes_nothing(gateway: LiveServer) -> None:
    before = gateway.admin.get("/admin/prices").json()["data"]
    for fields in INVALID_PRICES:
        body = {"model": MODEL, "provider": "openai", **fields}
        response = gateway.admin.post("/admin/prices", json=body)
        assert response.status_code == 400, (fields, response.text)
        error = response.json()["error"]
        assert error["type"] == "invalid_request_error"
        assert error["message"]
    for body in ([], "0.40", None, 42):
        assert gateway.admin.post("/admin/prices", json=body).status_code == 400, body
    assert gateway.admin.get("/admin/prices").json()["data"] == before


def test_the_price_list_shows_the_catalog_and_every_override(gateway: LiveServer) -> None:
    created = _post_price(gateway, input="0.80", output="3.20", source="negotiated discount")
    response = gateway.admin.get("/admin/prices")
    assert response.status_code == 200
    rows = response.json()["data"]
    catalog = [r for r in rows if r["model"] == MODEL and r["origin"] == "catalog"]
    assert len(catalog) == 1
    assert catalog[0]["input_per_million_usd"] == "0.400000000"
    assert catalog[0]["cached_input_per_million_usd"] == "0.100000000"
    assert catalog[0]["output_per_million_usd"] == "1.600000000"
    (admin,) = [r for r in rows if r["origin"] == "admin"]
    assert admin["id"] == created["id"]
    assert admin["model"] == MODEL
    assert admin["source"] == "negotiated discount"
    assert admin["input_per_million_usd"] == "0.800000000"
    # OpenAI charges nothing extra to write its cache: missing cache prices fall back to input.
    assert admin["cached_input_per_million_usd"] == "0.800000000"
    assert {"gpt-4o", "claude-sonnet-4-5"} <= {r["model"] for r in rows}


# -- prices from the config file --------------------------------------------------------


@pytest.fixture
def configured_gateway(
    database_url: str, fake_upstream: FakeUpstream, tmp_path: Path
) -> Iterator[LiveServer]:
    """Ledger started from a TOML file that overrides one price and adds a model."""
    config = tmp_path / "ledger.toml"
    config.write_text(
        f"""
admin_key = "{ADMIN_KEY}"

[[providers]]
name = "openai"
kind = "openai"
base_url = "{fake_upstream.openai_base_url}"
api_key_env = "FAKE_OPENAI_KEY"
timeout_s = 5

[[prices]]
model = "{MODEL}"
provider = "openai"
input = "1.00"
cached_input = "0.25"
output = "4.00"

[[prices]]
model = "house-model"
provider = "openai"
effective_from = 2025-01-01
input = "0.125"
output = "0.5"
""",
        encoding="utf-8",
    )
    env = {"LEDGER_DATABASE_URL": database_url, "FAKE_OPENAI_KEY": fake_upstream.api_key}
    settings = load_settings(env=env, config_file=config)
    with LiveServer(settings) as server:
        yield server


def test_a_price_from_the_config_file_is_used(configured_gateway: LiveServer) -> None:
    gateway = configured_gateway
    client = _client(gateway, gateway.team_key())
    request_id, usage = _ask(client, "cached=2 configured")
    assert Decimal(gateway.entry(request_id)["cost_usd"]) == _cost(usage, "1.00", "4.00", "0.25")
    house_id, house_usage = _ask(client, "house", model="house-model")
    assert Decimal(gateway.entry(house_id)["cost_usd"]) == _cost(house_usage, "0.125", "0.5")

    rows = gateway.admin.get("/admin/prices").json()["data"]
    config_rows = {r["model"]: r for r in rows if r["origin"] == "config"}
    assert set(config_rows) == {MODEL, "house-model"}
    assert config_rows[MODEL]["source"] == "config file"
    assert config_rows[MODEL]["input_per_million_usd"] == "1.000000000"
    # An admin price made now still wins over the config file from then on.
    _post_price(gateway, input="0.50", output="2.00")
    later_id, later_usage = _ask(client, "after admin")
    assert Decimal(gateway.entry(later_id)["cost_usd"]) == _cost(later_usage, "0.50", "2.00")


def test_a_new_price_for_a_known_model_keeps_its_provider(gateway: LiveServer) -> None:
    response = gateway.admin.post(
        "/admin/prices", json={"model": MODEL, "input": "0.50", "output": "2.00"}
    )
    assert response.status_code == 201, response.text
    assert response.json()["provider"] == "openai"
