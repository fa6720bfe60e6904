"""Spend grouped by the model an entry was priced as, and the provider's own cost beside
Ledger's: requests through the gateway to the fake provider, on both databases."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx

from tests.live import LiveServer


def _ask(gateway: LiveServer, key: str, model: str, prompt: str) -> dict[str, Any]:
    body = {"model": model, "messages": [{"role": "user", "content": prompt}]}
    with httpx.Client(timeout=30) as client:
        response = client.post(
            gateway.openai_base_url + "/chat/completions",
            json=body,
            headers={"authorization": f"Bearer {key}"},
        )
    assert response.status_code == 200, response.text
    return gateway.entry(response.headers["x-ledger-request-id"])


def _spend(gateway: LiveServer, group_by: str) -> dict[str, Any]:
    now = datetime.now(UTC)
    params = {
        "since": (now - timedelta(hours=1)).isoformat(),
        "until": (now + timedelta(minutes=1)).isoformat(),
        "group_by": group_by,
        "granularity": "day",
    }
    response = gateway.admin.get("/api/reports/spend", params=params)
    assert response.status_code == 200, response.text
    return response.json()


def _usd(entries: list[dict[str, Any]], key: str = "cost_usd") -> str:
    return f"{sum(Decimal(e[key]) for e in entries):.9f}"


def test_a_dated_snapshot_groups_under_its_model_with_the_snapshot_kept(
    gateway: LiveServer,
) -> None:
    key = gateway.team_key()
    plain = [_ask(gateway, key, "gpt-4.1-mini", f"plain {n}") for n in range(2)]
    dated = [_ask(gateway, key, "gpt-4.1-mini-2025-04-14", "dated")]
    other = [_ask(gateway, key, "gpt-4o", "other")]

    report = _spend(gateway, "priced_model")
    groups = {g["group"]["priced_model"]: g for g in report["groups"]}
    assert set(groups) == {"gpt-4.1-mini", "gpt-4o"}
    assert groups["gpt-4.1-mini"]["requests"] == 3
    assert groups["gpt-4.1-mini"]["cost_usd"] == _usd(plain + dated)
    assert groups["gpt-4o"]["cost_usd"] == _usd(other)
    assert report["totals"]["cost_usd"] == _usd(plain + dated + other)
    # The names as sent stay apart under ``model``, with the same total.
    by_sent = {g["group"]["model"]: g for g in _spend(gateway, "model")["groups"]}
    assert by_sent["gpt-4.1-mini-2025-04-14"]["cost_usd"] == _usd(dated)
    both = _spend(gateway, "priced_model,model")
    assert {(g["group"]["priced_model"], g["group"]["model"]) for g in both["groups"]} == {
        ("gpt-4.1-mini", "gpt-4.1-mini"),
        ("gpt-4.1-mini", "gpt-4.1-mini-2025-04-14"),
        ("gpt-4o", "gpt-4o"),
    }
    assert both["totals"]["cost_usd"] == report["totals"]["cost_usd"]


def test_spend_sums_the_providers_reported_cost_and_the_difference_per_group(
    gateway: LiveServer,
) -> None:
    key = gateway.team_key()
    reported = [
        _ask(gateway, key, "gpt-4.1-mini", "cost=0.0000123456789 prompt_tokens=10 a"),
        _ask(gateway, key, "gpt-4.1-mini", "cost=0.00002 prompt_tokens=10 b"),
    ]
    unreported = _ask(gateway, key, "gpt-4.1-mini", "prompt_tokens=10 c")
    silent = _ask(gateway, key, "gpt-4o", "prompt_tokens=10 d")

    report = _spend(gateway, "model")
    groups = {g["group"]["model"]: g for g in report["groups"]}
    mini = groups["gpt-4.1-mini"]
    assert mini["cost_usd"] == _usd([*reported, unreported])
    assert mini["provider_cost_usd"] == "0.000032346"  # 12,346 + 20,000 nanos
    # Only the entries that had a provider cost count in the difference.
    ours = sum(Decimal(e["cost_usd"]) for e in reported)
    assert Decimal(mini["provider_cost_difference_usd"]) == ours - Decimal("0.000032346")
    assert groups["gpt-4o"]["provider_cost_usd"] is None
    assert groups["gpt-4o"]["cost_usd"] == silent["cost_usd"]
    assert report["totals"]["provider_cost_usd"] == "0.000032346"
    assert report["totals"]["cost_usd"] == _usd([*reported, unreported, silent])
