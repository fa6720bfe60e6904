"""``ledger prices sync``: genai-prices' catalog refreshed from a data file, run as a user
runs it, with the server before and after it; on both databases."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import openai

from ledger.db.prices import installed_catalog
from ledger.money import cost_of_tokens
from tests.fake_upstream import FakeUpstream
from tests.integration.test_cli import _ledger
from tests.live import LiveServer, gateway_settings

RAISED, LOWERED = "gpt-5.4-mini", "gpt-5.4-nano"


def _installed(model: str) -> Any:
    (price,) = [p for p in installed_catalog().prices if (p.provider, p.model) == ("openai", model)]
    return price


def _mtok(nanos: int) -> str:
    return str(Decimal(nanos) / 10**9)


def _data_file(tmp_path: Path) -> Path:
    """A genai-prices data file: gpt-5.4-mini's input raised by $0.05, gpt-5.4-nano's
    output lowered to $1.00 per million."""
    models = []
    for model, change in ((RAISED, {"input_mtok": "0.8"}), (LOWERED, {"output_mtok": "1"})):
        price = _installed(model)
        prices = {
            "input_mtok": _mtok(price.input),
            "cache_read_mtok": _mtok(price.cached_input),
            "output_mtok": _mtok(price.output),
        } | change
        models.append({"id": model, "match": {"equals": model}, "prices": prices})
    path = tmp_path / "data.json"
    path.write_text(
        json.dumps(
            [
                {
                    "id": "openai",
                    "name": "OpenAI",
                    "api_pattern": r"https://api\.openai\.com",
                    "models": models,
                }
            ]
        )
    )
    return path


def _ask(server: LiveServer, key: str, model: str) -> dict[str, Any]:
    client = openai.OpenAI(base_url=server.openai_base_url, api_key=key, max_retries=0)
    raw = client.chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": "prompt_tokens=1000 hello"}]
    )
    return server.entry(raw.headers["x-ledger-request-id"])


def _nanos(usd: str) -> int:
    return int(Decimal(usd) * 10**9)


def _expected(entry: dict[str, Any], input_nanos: int, output_nanos: int) -> int:
    usage = entry["usage"]
    assert usage["cache_read_tokens"] == 0
    return cost_of_tokens(usage["input_tokens"], input_nanos) + cost_of_tokens(
        usage["output_tokens"], output_nanos
    )


def test_sync_shows_the_diff_refuses_a_lower_price_and_never_reprices_past_entries(
    database_url: str, fake_upstream: FakeUpstream, tmp_path: Path
) -> None:
    mini, nano = _installed(RAISED), _installed(LOWERED)
    with LiveServer(gateway_settings(database_url, fake_upstream)) as server:
        key = server.team_key()
        before = {model: _ask(server, key, model) for model in (RAISED, LOWERED)}
    assert _nanos(before[RAISED]["cost_usd"]) == _expected(before[RAISED], mini.input, mini.output)
    data = _data_file(tmp_path)

    refused = _ledger(database_url, "prices", "sync", "--from", str(data), check=False)
    assert refused.returncode != 0
    assert f"openai/{LOWERED}" in refused.stderr and "--accept-lower" in refused.stderr
    lines = refused.stdout.splitlines()
    assert "openai" in lines
    assert f"  raised   {RAISED}: input $0.75 -> $0.8" in "\n".join(lines)
    assert f"  lowered  {LOWERED}: output $1.25 -> $1.00" in "\n".join(lines)
    # Nothing was written: the same diff again, and the server still charges the old prices.
    again = _ledger(database_url, "prices", "sync", "--from", str(data), "--dry-run")
    assert "1 raised, 1 lowered" in again.stdout

    applied = _ledger(database_url, "prices", "sync", "--from", str(data), "--accept-lower")
    assert "2 price versions written" in applied.stdout
    # Synced: nothing left to change.
    assert (
        "0 raised, 0 lowered" in _ledger(database_url, "prices", "sync", "--from", str(data)).stdout
    )

    with LiveServer(gateway_settings(database_url, fake_upstream)) as server:
        for entry in before.values():
            kept = server.entry(entry["request_id"])
            assert (kept["price_id"], kept["cost_usd"]) == (entry["price_id"], entry["cost_usd"])
        rows = {row["id"]: row for row in server.admin.get("/admin/prices").json()["data"]}
        assert rows[before[RAISED]["price_id"]]["input_per_million_usd"] == "0.750000000"
        key = server.team_key()
        after = {model: _ask(server, key, model) for model in (RAISED, LOWERED)}
    assert after[RAISED]["price_id"] != before[RAISED]["price_id"]
    assert _nanos(after[RAISED]["cost_usd"]) == _expected(after[RAISED], 800_000_000, mini.output)
    assert _nanos(after[LOWERED]["cost_usd"]) == _expected(
        after[LOWERED], nano.input, 1_000_000_000
    )


# -- ledger prices list, and the LiteLLM import's quoted bugs ----------------------------


def _import(database_url: str, tmp_path: Path, price_map: dict[str, Any]) -> list[str]:
    path = tmp_path / "model_prices_and_context_window.json"
    path.write_text(json.dumps(price_map), encoding="utf-8")
    return _ledger(database_url, "prices", "import", str(path)).stdout.splitlines()


def _listed(database_url: str, model: str, origin: str) -> dict[str, str]:
    lines = _ledger(database_url, "prices", "list").stdout.splitlines()
    header = lines[0].split("\t")
    assert header[-3:] == ["source", "tiers", "fees"]
    rows = [dict(zip(header, line.split("\t"), strict=True)) for line in lines[1:]]
    return next(r for r in rows if r["model"] == model and r["origin"] == origin)


def test_prices_list_shows_source_tiers_service_tier_prices_and_fees(
    database_url: str, tmp_path: Path
) -> None:
    _import(
        database_url,
        tmp_path,
        {
            "acme-tiered": {
                "litellm_provider": "openai",
                "mode": "chat",
                "input_cost_per_token": 1e-06,
                "output_cost_per_token": 4e-06,
                "input_cost_per_token_flex": 5e-07,
                "output_cost_per_token_flex": 2e-06,
                "input_cost_per_token_priority": 2e-06,
                "output_cost_per_token_priority": 8e-06,
            }
        },
    )
    acme = _listed(database_url, "acme-tiered", "import")
    assert acme["provider"] == "openai"
    fees = acme["fees"].split("; ")
    assert "flex $0.500000000/$2.000000000" in fees
    assert "priority $2.000000000/$8.000000000" in fees
    assert "web_search $0.010000000/call" in fees  # dimensions.toml's OpenAI tool fee
    assert not any(fee.startswith("service_tier=flex") for fee in fees)  # its own prices win

    sonnet = _listed(database_url, "claude-sonnet-4-5", "catalog")
    assert sonnet["source"].startswith("https://")
    assert sonnet["tiers"] == ">200000: 6.000000000/22.500000000"
    assert "service_tier=batch x1/2" in sonnet["fees"]
    opus = _listed(database_url, "claude-opus-4-6", "genai-prices")  # from 1970: first version
    assert "speed=fast x6" in opus["fees"] and "inference_geo=us x11/10" in opus["fees"]


def _ask_tokens(server: LiveServer, model: str, prompt_tokens: int) -> dict[str, Any]:
    client = openai.OpenAI(
        base_url=server.openai_base_url, api_key=server.team_key(), max_retries=0
    )
    raw = client.chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": f"prompt_tokens={prompt_tokens} hi"}]
    )
    return server.entry(raw.headers["x-ledger-request-id"])


def test_importing_an_untiered_sonnet_4_5_keeps_its_tier_so_250k_tokens_cost_1_50(
    database_url: str, fake_upstream: FakeUpstream, tmp_path: Path
) -> None:
    # Before: the import replaced the tiered price: 250k input tokens cost $0.750.
    report = _import(
        database_url,
        tmp_path,
        {
            "claude-sonnet-4-5": {
                "litellm_provider": "anthropic",
                "mode": "chat",
                "input_cost_per_token": 3e-06,
                "output_cost_per_token": 1.5e-05,
            }
        },
    )
    assert any(line.startswith("refused  claude-sonnet-4-5") for line in report), report
    assert _listed(database_url, "claude-sonnet-4-5", "catalog")["tiers"].startswith(">200000")
    with LiveServer(gateway_settings(database_url, fake_upstream)) as server:
        client = server.team_key()
        entry = _anthropic_entry(server, client, 250_000)
    assert entry["usage"]["input_tokens"] == 250_000
    assert entry["cost_breakdown_usd"]["input"] == "1.500000000"


def _anthropic_entry(server: LiveServer, key: str, prompt_tokens: int) -> dict[str, Any]:
    import anthropic

    client = anthropic.Anthropic(base_url=server.url, api_key=key, max_retries=0)
    raw = client.messages.with_raw_response.create(
        model="claude-sonnet-4-5",
        max_tokens=16,
        messages=[{"role": "user", "content": f"prompt_tokens={prompt_tokens} hi"}],
    )
    return server.entry(raw.headers["x-ledger-request-id"])


def test_a_float_artefact_is_rounded_to_the_nano_per_million_and_said(
    database_url: str, tmp_path: Path
) -> None:
    # Before: refused as "finer than one nano-USD per million tokens".
    report = _import(
        database_url,
        tmp_path,
        {
            "acme-artefact": {
                "litellm_provider": "openai",
                "mode": "chat",
                "input_cost_per_token": 3.6000000000000003e-06,
                "output_cost_per_token": 1.44e-05,
            }
        },
    )
    assert "added    acme-artefact" in report
    assert (
        "rounded  acme-artefact: input 0.0000036000000000000003 per token -> $3.600000000 "
        "per million" in report
    )
    assert not any(line.startswith("refused") for line in report)
    assert _listed(database_url, "acme-artefact", "import")["input/1M"] == "3.600000000"


def test_a_price_tagged_for_another_provider_does_not_price_this_providers_requests(
    database_url: str, fake_upstream: FakeUpstream, tmp_path: Path
) -> None:
    # Before: the map's litellm_provider was ignored, so Anthropic's (made-up, dear)
    # price of gpt-4.1-mini priced the OpenAI provider's requests for it.
    _import(
        database_url,
        tmp_path,
        {
            "gpt-4.1-mini": {
                "litellm_provider": "anthropic",
                "mode": "chat",
                "input_cost_per_token": 1e-03,
                "output_cost_per_token": 1e-03,
            }
        },
    )
    with LiveServer(gateway_settings(database_url, fake_upstream)) as server:  # two providers
        entry = _ask_tokens(server, "gpt-4.1-mini", 1000)
    assert entry["provider"] == "openai"
    assert entry["cost_breakdown_usd"]["input"] == "0.000400000"  # OpenAI's $0.40 per million


def test_every_context_tier_of_the_map_is_imported_and_the_highest_crossed_prices(
    database_url: str, fake_upstream: FakeUpstream, tmp_path: Path
) -> None:
    # Before: only the lowest tier (here 128k) was kept, so 600k input tokens were
    # priced at $2 per million instead of the >512k tier's $4.
    _import(
        database_url,
        tmp_path,
        {
            "acme-long": {
                "litellm_provider": "openai",
                "mode": "chat",
                "input_cost_per_token": 1e-06,
                "output_cost_per_token": 4e-06,
                "input_cost_per_token_above_128k_tokens": 2e-06,
                "output_cost_per_token_above_128k_tokens": 8e-06,
                "input_cost_per_token_above_272k_tokens": 3e-06,
                "input_cost_per_token_above_512k_tokens": 4e-06,
                "output_cost_per_token_above_512k_tokens": 1.6e-05,
            }
        },
    )
    assert _listed(database_url, "acme-long", "import")["tiers"] == (
        ">128000: 2.000000000/8.000000000; >272000: 3.000000000/8.000000000; "
        ">512000: 4.000000000/16.000000000"
    )
    with LiveServer(gateway_settings(database_url, fake_upstream)) as server:
        middle = _ask_tokens(server, "acme-long", 300_000)
        highest = _ask_tokens(server, "acme-long", 600_000)
    # The 272k tier leaves output out: it keeps the 128k tier's $8.
    assert middle["cost_breakdown_usd"]["input"] == "0.900000000"
    assert highest["usage"]["input_tokens"] == 600_000
    assert highest["cost_breakdown_usd"]["input"] == "2.400000000"
    assert highest["usage"]["output_tokens"] > 0
    assert _nanos(highest["cost_breakdown_usd"]["output"]) == cost_of_tokens(
        highest["usage"]["output_tokens"], 16 * 10**9
    )
