"""Re-rating after a price correction: a price version dated in the past, then one
adjustment entry per entry whose cost changes, the originals untouched, budgets and
reports following, closed months' adjustments in the next open month, unpriced entries
priced, and twice a no-op."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import openai
import pytest
from click.testing import CliRunner

from ledger.cli import main
from ledger.money import format_usd, usd_to_nanos
from tests.conftest import gateway_settings
from tests.fake_upstream import FakeUpstream
from tests.integration.reports_support import (
    REPORTING_TIMEZONE,
    entry,
    report_server,
    team_with_key,
    write_entries,
)
from tests.live import LiveServer

MODEL = "gpt-4.1-mini"
MILLION = Decimal(1_000_000)


def _ask(client: openai.OpenAI, text: str, model: str = MODEL) -> str:
    raw = client.chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": text}]
    )
    return raw.headers["x-ledger-request-id"]


def _nanos_at(usage: dict[str, int], input_: str, cached: str, output: str) -> int:
    # Per bucket, half up to the nano, as the gateway prices (money.cost_of_tokens).
    def cost(tokens: int, rate: str) -> int:
        exact = tokens * Decimal(rate) * 1_000_000_000 / MILLION
        return int(exact + Decimal("0.5"))

    return (
        cost(usage["input_tokens"], input_)
        + cost(usage["cache_read_tokens"], cached)
        + cost(usage["output_tokens"], output)
    )


def _rerate(server: LiveServer, model: str, since: datetime, until: datetime) -> dict[str, Any]:
    response = server.admin.post(
        "/admin/rerate",
        json={"model": model, "since": since.isoformat(), "until": until.isoformat()},
    )
    assert response.status_code == 200, response.text
    return response.json()


def _month_total(server: LiveServer, month: str) -> int:
    response = server.admin.get(f"/api/reports/monthly/{month}")
    assert response.status_code == 200, response.text
    return usd_to_nanos(response.json()["total"]["cost_usd"])


def test_rerating_adds_exactly_the_difference_and_leaves_the_originals_untouched(
    gateway: LiveServer,
) -> None:
    client = openai.OpenAI(
        base_url=gateway.openai_base_url, api_key=gateway.team_key(), max_retries=0
    )
    budget = gateway.admin.post(
        "/admin/budgets", json={"team": "research", "limit_usd": "1000.00", "mode": "soft"}
    )
    assert budget.status_code == 201, budget.text
    before = datetime.now(UTC) - timedelta(seconds=1)
    ids = [_ask(client, "cached=4 first"), _ask(client, "second question")]
    originals = [gateway.entry(request_id) for request_id in ids]
    spent_before = sum(usd_to_nanos(e["cost_usd"]) for e in originals)
    for original in originals:
        assert usd_to_nanos(original["cost_usd"]) == _nanos_at(
            original["usage"], "0.40", "0.10", "1.60"
        )

    # The price was wrong since an hour ago: the correction is dated then.
    corrected = gateway.admin.post(
        "/admin/prices",
        json={
            "model": MODEL, "provider": "openai", "input": "0.80", "cached_input": "0.20",
            "output": "3.20", "effective_from": (before - timedelta(hours=1)).isoformat(),
        },
    )  # fmt: skip
    assert corrected.status_code == 201, corrected.text
    price_id = corrected.json()["id"]
    # Ordinary requests from now on are priced by the version in effect at their time.
    later = gateway.entry(_ask(client, "after the correction"))
    assert later["price_id"] == price_id
    assert usd_to_nanos(later["cost_usd"]) == _nanos_at(later["usage"], "0.80", "0.20", "3.20")

    until = datetime.now(UTC) + timedelta(minutes=1)
    answer = _rerate(gateway, MODEL, before, until)
    differences = {
        e["request_id"]: _nanos_at(e["usage"], "0.80", "0.20", "3.20") - usd_to_nanos(e["cost_usd"])
        for e in originals
    }
    assert answer["entries"] == 2  # the later request is already at the corrected price
    assert answer["unchanged"] == 1
    assert answer["difference_usd"] == format_usd(sum(differences.values()))
    assert sum(differences.values()) > 0

    adjustments = {
        a["corrects_request_id"]: a
        for a in (gateway.entry(request_id) for request_id in answer["adjustment_request_ids"])
    }
    assert set(adjustments) == set(ids)
    for original in originals:
        assert gateway.entry(original["request_id"]) == original  # never rewritten
        adjustment = adjustments[original["request_id"]]
        assert adjustment["price_id"] == price_id
        assert adjustment["kind"] == "adjustment"
        assert adjustment["corrects_request_id"] == original["request_id"]
        assert adjustment["started_at"] == original["started_at"]
        assert usd_to_nanos(adjustment["cost_usd"]) == differences[original["request_id"]]
        assert set(adjustment["usage"].values()) == {0}  # tokens are counted once
        by_bucket = {k: usd_to_nanos(v) for k, v in adjustment["cost_breakdown_usd"].items()}
        old = {k: usd_to_nanos(v) for k, v in original["cost_breakdown_usd"].items()}
        assert by_bucket["input"] == old["input"]  # 0.40 -> 0.80: the input bucket doubles
        assert by_bucket["output"] == old["output"]

    # Budgets' spend and the reports follow.
    total = spent_before + sum(differences.values()) + usd_to_nanos(later["cost_usd"])
    status = gateway.admin.get(f"/admin/budgets/{budget.json()['id']}/status").json()
    assert usd_to_nanos(status["spent_usd"]) == total
    spend = gateway.admin.get(
        "/api/reports/spend", params={"since": before.isoformat(), "until": until.isoformat()}
    ).json()
    assert usd_to_nanos(spend["totals"]["cost_usd"]) == total
    assert _month_total(gateway, before.strftime("%Y-%m")) == total

    # Twice is a no-op.
    again = _rerate(gateway, MODEL, before, until)
    assert (again["entries"], again["difference_usd"]) == (0, format_usd(0))
    assert [e["kind"] for e in gateway.entries()].count("adjustment") == 2


@pytest.fixture
def server(database_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[LiveServer]:
    with report_server(database_url, monkeypatch) as live:
        yield live


def test_a_closed_months_adjustments_land_in_the_next_open_month(
    server: LiveServer, database_url: str
) -> None:
    team, key, _ = team_with_key(server, "research")
    october = datetime(2025, 10, 15, 12, tzinfo=UTC)
    originals = [
        entry(october + timedelta(days=day), team_id=team, key_id=key, model=MODEL,
              input_tokens=1000, output_tokens=100, cost_nanos=560_000)
        for day in (0, 1, 2)
    ]  # fmt: skip
    for original in originals:  # 1000 x 0.40 + 100 x 1.60 per million
        original.input_cost_nanos, original.output_cost_nanos = 400_000, 160_000
    write_entries(database_url, originals)
    assert server.admin.post("/admin/months/2025-10/close").status_code == 200
    frozen = server.admin.get("/api/reports/monthly/2025-10").content

    corrected = server.admin.post(
        "/admin/prices",
        json={"model": MODEL, "provider": "openai", "input": "0.80", "cached_input": "0.20",
              "output": "3.20", "effective_from": "2025-10-01"},
    )  # fmt: skip
    assert corrected.status_code == 201, corrected.text
    since, until = datetime(2025, 10, 1, tzinfo=UTC), datetime(2025, 11, 1, tzinfo=UTC)
    answer = _rerate(server, MODEL, since, until)
    assert answer["entries"] == 3
    assert answer["difference_usd"] == format_usd(3 * 560_000)  # 1_120_000 - 560_000 each

    assert server.admin.get("/api/reports/monthly/2025-10").content == frozen
    november = server.admin.get("/api/reports/monthly/2025-11").json()
    lines = [line for s in november["teams"] for line in s["lines"]]
    assert [(line["kind"], line["source_month"], line["model"], line["cost_usd"])
            for line in lines] == [("late", "2025-10", MODEL, format_usd(3 * 560_000))]  # fmt: skip
    assert lines[0]["requests"] == 0 and lines[0]["input_tokens"] == 0

    # The CLI re-rates too, and a second time nothing moves.
    result = CliRunner().invoke(
        main,
        ["--database-url", database_url, "prices", "rerate", "--model", MODEL,
         "--since", "2025-10-01", "--until", "2025-11-01"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "0 entries re-rated, difference 0.000000000 USD (3 unchanged" in result.output
    assert server.admin.get("/api/reports/monthly/2025-11").json()["total"] == november["total"]


def test_unpriced_entries_are_priced_when_their_price_arrives(
    database_url: str, fake_upstream: FakeUpstream
) -> None:
    settings = gateway_settings(database_url, fake_upstream)
    providers = tuple(
        dataclasses.replace(p, unknown_models="record") if p.kind == "openai" else p
        for p in settings.providers
    )
    with LiveServer(dataclasses.replace(settings, providers=providers)) as gateway:
        client = openai.OpenAI(
            base_url=gateway.openai_base_url, api_key=gateway.team_key(), max_retries=0
        )
        before = datetime.now(UTC) - timedelta(seconds=1)
        original = gateway.entry(_ask(client, "Hello there", model="local-llama-70b"))
        assert original["status"] == "unpriced" and original["cost_usd"] == format_usd(0)

        created = gateway.admin.post(
            "/admin/prices",
            json={"model": "local-llama-70b", "provider": "openai", "input": "1.00",
                  "output": "2.00", "effective_from": "2025-01-01"},
        )  # fmt: skip
        assert created.status_code == 201, created.text
        answer = _rerate(gateway, "local-llama-70b", before, datetime.now(UTC))
        expected = _nanos_at(original["usage"], "1.00", "1.00", "2.00")
        assert expected > 0
        assert (answer["entries"], answer["difference_usd"]) == (1, format_usd(expected))
        adjustment = gateway.entry(answer["adjustment_request_ids"][0])
        assert adjustment["corrects_request_id"] == original["request_id"]
        assert adjustment["price_id"] == created.json()["id"]
        assert gateway.entry(original["request_id"]) == original
        again = _rerate(gateway, "local-llama-70b", before, datetime.now(UTC))
        assert again["entries"] == 0


def test_a_lowered_price_gives_negative_adjustments_that_budgets_and_reports_subtract(
    server: LiveServer, database_url: str
) -> None:
    team, key, _ = team_with_key(server, "research")
    budget = server.admin.post(
        "/admin/budgets", json={"team": "research", "limit_usd": "1000.00", "mode": "soft"}
    )
    assert budget.status_code == 201, budget.text
    started = datetime.now(UTC) - timedelta(minutes=5)
    original = entry(started, team_id=team, key_id=key, model=MODEL, input_tokens=1000,
                     output_tokens=100, cost_nanos=560_000)  # fmt: skip
    original.input_cost_nanos, original.output_cost_nanos = 400_000, 160_000
    write_entries(database_url, [original])
    status = server.admin.get(f"/admin/budgets/{budget.json()['id']}/status").json()
    assert usd_to_nanos(status["spent_usd"]) == 560_000

    lowered = server.admin.post(
        "/admin/prices",
        json={"model": MODEL, "provider": "openai", "input": "0.20", "cached_input": "0.05",
              "output": "0.80", "effective_from": (started - timedelta(days=1)).isoformat()},
    )  # fmt: skip
    assert lowered.status_code == 201, lowered.text
    answer = _rerate(server, MODEL, started - timedelta(hours=1), datetime.now(UTC))
    assert (answer["entries"], answer["difference_usd"]) == (1, format_usd(-280_000))
    status = server.admin.get(f"/admin/budgets/{budget.json()['id']}/status").json()
    assert usd_to_nanos(status["spent_usd"]) == 280_000
    month = started.astimezone(ZoneInfo(REPORTING_TIMEZONE)).strftime("%Y-%m")
    assert _month_total(server, month) == 280_000
    assert _rerate(server, MODEL, started - timedelta(hours=1), datetime.now(UTC))["entries"] == 0
