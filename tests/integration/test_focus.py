"""The FOCUS 1.2 export: CSV and Parquet rows that add up to the monthly report to the nano,
markups in their own column, closed months' frozen figures, and the CLI."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from sqlalchemy import delete

from ledger.cli import main
from ledger.db.tables import MonthSnapshot
from ledger.money import usd_to_nanos
from tests.integration.reports_support import (
    REPORTING_TIMEZONE,
    entry,
    report_server,
    run_with_engine,
    team_with_key,
    write_entries,
)
from tests.live import LiveServer

OCTOBER = "2025-10"
REQUIRED = (
    "BilledCost", "EffectiveCost", "ListCost", "ContractedCost", "BillingCurrency",
    "BillingPeriodStart", "BillingPeriodEnd", "ChargePeriodStart", "ChargePeriodEnd",
    "ChargeCategory", "ChargeDescription", "ConsumedQuantity", "ConsumedUnit",
    "PricingQuantity", "PricingUnit", "ListUnitPrice", "ProviderName", "PublisherName",
    "InvoiceIssuerName", "ServiceCategory", "ServiceName", "SkuId", "SkuPriceId",
    "SubAccountId", "SubAccountName", "Tags", "x_MarkupCost",
)  # fmt: skip
MONEY = ("BilledCost", "EffectiveCost", "ListCost", "ContractedCost", "x_MarkupCost")


@pytest.fixture
def server(database_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[LiveServer]:
    with report_server(database_url, monkeypatch) as live:
        yield live


def _at(text: str) -> datetime:
    return datetime.fromisoformat(text).astimezone(UTC)


def _seed(server: LiveServer, database_url: str) -> dict[str, int]:
    research, research_key, _ = team_with_key(server, "research", cost_centre="CC-4100")
    growth, growth_key, _ = team_with_key(
        server, "growth", cost_centre="CC-3300", markup_percent="12.5"
    )
    write_entries(
        database_url,
        [
            entry(_at("2025-09-30T22:00:00Z"), team_id=research, key_id=research_key,
                  model="gpt-4.1", cost_nanos=1_000_000_001, input_tokens=10, output_tokens=1,
                  user="alice", tags=["exp-1"]),
            entry(_at("2025-10-26T01:30:00Z"), team_id=research, key_id=research_key,
                  model="gpt-4.1", cost_nanos=2, input_tokens=20, cache_read_tokens=5),
            # Growth's markup of 12.5 % rounds per monthly line, not per FOCUS row:
            # three rows of 3 nanos each round to 0 each, their line (9) to 1.
            *(entry(_at(f"2025-10-0{day}T08:00:00Z"), team_id=growth, key_id=growth_key,
                    model="gpt-4.1-mini", cost_nanos=3, input_tokens=1, output_tokens=0)
              for day in (3, 4, 5)),
            entry(_at("2025-10-31T22:59:59Z"), team_id=growth, key_id=growth_key,
                  model="claude-sonnet-4-5", provider="anthropic", cost_nanos=333_333_333,
                  input_tokens=1, output_tokens=7),
            entry(_at("2025-10-10T10:00:00Z"), team_id=None, model=None, provider=None,
                  status="invalid_request", cost_nanos=0, input_tokens=0, output_tokens=0),
            # November in Berlin: not in October's export.
            entry(_at("2025-10-31T23:00:00Z"), team_id=growth, key_id=growth_key,
                  model="gpt-4.1-mini", cost_nanos=7, input_tokens=1, output_tokens=0),
        ],
    )  # fmt: skip
    return {"research": research, "growth": growth}


def _get(server: LiveServer, path: str, **params: str) -> Any:
    response = server.admin.get(path, params=params)
    assert response.status_code == 200, response.text
    return response


def _monthly_total(server: LiveServer, month: str) -> dict[str, int]:
    total = _get(server, f"/api/reports/monthly/{month}").json()["total"]
    return {"cost": usd_to_nanos(total["cost_usd"]), "markup": usd_to_nanos(total["markup_usd"])}


def _csv_rows(server: LiveServer, month: str) -> list[dict[str, str]]:
    text = _get(server, f"/api/reports/focus/{month}", format="csv").text
    return list(csv.DictReader(io.StringIO(text)))


def _parquet(server: LiveServer, month: str) -> pa.Table:
    content = _get(server, f"/api/reports/focus/{month}", format="parquet").content
    return pq.read_table(io.BytesIO(content))


def _csv_sum(rows: list[dict[str, str]], column: str) -> int:
    return sum(usd_to_nanos(row[column]) for row in rows)


def _parquet_sum(table: pa.Table, column: str) -> int:
    return sum(int(value * 10**9) for value in table.column(column).to_pylist())


def test_focus_csv_and_parquet_add_up_to_the_monthly_total_to_the_nano(
    server: LiveServer, database_url: str
) -> None:
    _seed(server, database_url)
    total = _monthly_total(server, OCTOBER)
    assert total == {"cost": 1_000_000_003 + 9 + 333_333_333, "markup": 1 + 41_666_667}

    rows = _csv_rows(server, OCTOBER)
    for column in ("BilledCost", "EffectiveCost", "ListCost", "ContractedCost"):
        assert _csv_sum(rows, column) == total["cost"]
    assert _csv_sum(rows, "x_MarkupCost") == total["markup"]
    # One row per day, team, key, model, price version: growth's mini has three days.
    mini = [row for row in rows if row["SkuId"] == "gpt-4.1-mini"]
    assert [row["ChargePeriodStart"] for row in mini] == [
        "2025-10-03T00:00:00+02:00", "2025-10-04T00:00:00+02:00", "2025-10-05T00:00:00+02:00",
    ]  # fmt: skip
    assert {row["SubAccountName"] for row in mini} == {"growth"}
    first = next(row for row in rows if row["Tags"] and '"alice"' in row["Tags"])
    assert json.loads(first["Tags"]) == {
        "cost_centre": "CC-4100", "key": "research-bot", "key_id": json.loads(first["Tags"])[
            "key_id"], "tags": ["exp-1"], "user": "alice",
    }  # fmt: skip
    assert first["BilledCost"] == "1.000000001"  # exact decimal string, never a float
    assert first["BillingPeriodStart"] == "2025-10-01T00:00:00+02:00"
    assert first["BillingPeriodEnd"] == "2025-11-01T00:00:00+01:00"
    assert {row["ServiceCategory"] for row in rows} == {"AI and Machine Learning"}
    assert {row["BillingCurrency"] for row in rows} == {"USD"}
    assert {row["ProviderName"] for row in rows} >= {"openai", "anthropic"}
    assert set(REQUIRED) <= set(rows[0])

    table = _parquet(server, OCTOBER)
    assert table.num_rows == len(rows)
    for column in MONEY:
        assert table.schema.field(column).type == pa.decimal128(38, 9)
    for column in ("BillingPeriodStart", "ChargePeriodEnd"):
        assert pa.types.is_timestamp(table.schema.field(column).type)
    assert table.schema.field("ConsumedQuantity").type == pa.int64()
    assert set(REQUIRED) <= set(table.column_names)
    assert _parquet_sum(table, "BilledCost") == total["cost"]
    assert _parquet_sum(table, "x_MarkupCost") == total["markup"]
    assert all(isinstance(v, Decimal) for v in table.column("BilledCost").to_pylist())


def test_a_closed_month_exports_its_frozen_figures_and_late_entries_the_next_month(
    server: LiveServer, database_url: str
) -> None:
    teams = _seed(server, database_url)
    open_csv = _get(server, f"/api/reports/focus/{OCTOBER}", format="csv").content
    assert server.admin.post(f"/admin/months/{OCTOBER}/close").status_code == 200
    frozen = _monthly_total(server, OCTOBER)
    before = _get(server, f"/api/reports/focus/{OCTOBER}", format="csv")
    assert before.headers["x-ledger-month-status"] == "closed"
    assert before.content == open_csv  # frozen at close, day by day as it was

    # A late entry for October changes neither October's report nor its export...
    write_entries(
        database_url,
        [entry(_at("2025-10-20T09:00:00Z"), team_id=teams["growth"], model="gpt-4.1-mini",
               cost_nanos=50, input_tokens=3)],
    )  # fmt: skip
    after = _get(server, f"/api/reports/focus/{OCTOBER}", format="csv")
    assert after.content == before.content
    rows = _csv_rows(server, OCTOBER)
    assert _csv_sum(rows, "BilledCost") == frozen["cost"]
    assert _csv_sum(rows, "x_MarkupCost") == frozen["markup"]
    assert _parquet_sum(_parquet(server, OCTOBER), "BilledCost") == frozen["cost"]

    # A month closed before the export existed has no frozen FOCUS files: its export is
    # its frozen report's lines, which add up the same.
    async def forget_focus_snapshots(engine: Any) -> None:
        async with engine.begin() as connection:
            await connection.execute(
                delete(MonthSnapshot).where(MonthSnapshot.format.in_(["fcsv", "fparquet"]))
            )

    run_with_engine(database_url, forget_focus_snapshots)
    lines = _csv_rows(server, OCTOBER)
    assert _csv_sum(lines, "BilledCost") == frozen["cost"]
    assert _csv_sum(lines, "x_MarkupCost") == frozen["markup"]
    assert {row["ChargePeriodStart"] for row in lines} == {"2025-10-01T00:00:00+02:00"}
    assert _parquet_sum(_parquet(server, OCTOBER), "x_MarkupCost") == frozen["markup"]

    # ...it is an adjustment row of November, which adds up to November's report.
    november = _csv_rows(server, "2025-11")
    late = [row for row in november if row["x_SourceMonth"] == OCTOBER]
    assert [(row["ChargeCategory"], row["BilledCost"]) for row in late] == [
        ("Adjustment", "0.000000050")
    ]
    total = _monthly_total(server, "2025-11")
    assert total["cost"] == 7 + 50
    assert _csv_sum(november, "BilledCost") == total["cost"]
    assert _csv_sum(november, "x_MarkupCost") == total["markup"]
    assert _parquet_sum(_parquet(server, "2025-11"), "BilledCost") == total["cost"]


def test_focus_export_needs_an_admin_key_and_a_known_format(
    server: LiveServer, database_url: str
) -> None:
    _, _, key = team_with_key(server, "research")
    refused = server.admin.get(
        f"/api/reports/focus/{OCTOBER}", headers={"authorization": f"Bearer {key}"}
    )
    assert refused.status_code == 403
    wrong = server.admin.get(f"/api/reports/focus/{OCTOBER}", params={"format": "xlsx"})
    assert wrong.status_code == 400


def test_cli_prints_and_writes_the_same_focus_export(
    server: LiveServer, database_url: str, tmp_path: Any
) -> None:
    _seed(server, database_url)
    runner = CliRunner()
    env = {"LEDGER_REPORTING_TIMEZONE": REPORTING_TIMEZONE}
    base = ["--database-url", database_url]
    printed = runner.invoke(main, [*base, "report", "focus", OCTOBER], env=env)
    assert printed.exit_code == 0, printed.output
    assert printed.stdout_bytes == _get(server, f"/api/reports/focus/{OCTOBER}").content
    target = tmp_path / "focus.parquet"
    written = runner.invoke(
        main, [*base, "report", "focus", OCTOBER, "--format", "parquet", "-o", str(target)], env=env
    )
    assert written.exit_code == 0, written.output
    table = pq.read_table(target)
    assert table.equals(_parquet(server, OCTOBER))
    assert _parquet_sum(table, "BilledCost") == _monthly_total(server, OCTOBER)["cost"]
    refused = runner.invoke(main, [*base, "report", "focus", OCTOBER, "--format", "parquet"])
    assert refused.exit_code == 2 and "--output" in refused.output
