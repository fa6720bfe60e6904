"""The monthly finance report: calendar months in the reporting zone, JSON/CSV/XLSX that
agree to the nano, markup, month close with frozen bytes, late entries, and the CLI."""

from __future__ import annotations

import csv
import hashlib
import io
import json
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from click.testing import CliRunner
from openpyxl import load_workbook  # type: ignore[import-untyped]

from ledger.cli import main
from ledger.money import format_usd, usd_to_nanos
from ledger.reports.monthly import markup_nanos
from ledger.reports.months import month_bounds, parse_month
from ledger.reports.rollups import verify_rollups
from ledger.reports.spend import SpendQuery, spend_report
from ledger.reports.timebuckets import zone
from tests.integration.reports_support import (
    REPORTING_TIMEZONE,
    entry,
    report_server,
    run_with_engine,
    team_with_key,
    write_entries,
)
from tests.live import LiveServer

OCTOBER = "2025-10"  # Europe/Berlin: 2025-09-30T22:00Z to 2025-10-31T23:00Z (DST ends Oct 26)


@pytest.fixture
def server(database_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[LiveServer]:
    with report_server(database_url, monkeypatch) as live:
        yield live


def _at(text: str) -> datetime:
    return datetime.fromisoformat(text).astimezone(UTC)


def _month(server: LiveServer, month: str, fmt: str = "json", key: str | None = None) -> Any:
    headers = {"authorization": f"Bearer {key}"} if key else {}
    response = server.admin.get(
        f"/api/reports/monthly/{month}", params={"format": fmt}, headers=headers
    )
    assert response.status_code == 200, response.text
    return response


def _seed_october(server: LiveServer, database_url: str) -> dict[str, int]:
    research, research_key, _ = team_with_key(server, "research", cost_centre="CC-4100")
    growth, growth_key, _ = team_with_key(
        server, "growth", cost_centre="CC-3300", markup_percent="12.5"
    )
    write_entries(
        database_url,
        [
            # September in Berlin (23:59:59 CEST): not in October.
            entry(_at("2025-09-30T21:59:59Z"), team_id=research, key_id=research_key,
                  model="gpt-4.1", cost_nanos=10**12),
            # The first instant of October in Berlin.
            entry(_at("2025-09-30T22:00:00Z"), team_id=research, key_id=research_key,
                  model="gpt-4.1", cost_nanos=1_000_000_001, input_tokens=10, output_tokens=1),
            # The night the clocks go back.
            entry(_at("2025-10-26T01:30:00Z"), team_id=research, key_id=research_key,
                  model="gpt-4.1", cost_nanos=2, input_tokens=20, cache_read_tokens=5,
                  cache_write_5m_tokens=3, cache_write_1h_tokens=1, output_tokens=2,
                  reasoning_tokens=1),
            entry(_at("2025-10-15T12:34:56.789Z"), team_id=research, key_id=research_key,
                  model="claude-sonnet-4-5", cost_nanos=123_456_789, input_tokens=7),
            entry(_at("2025-10-03T08:00:00Z"), team_id=growth, key_id=growth_key,
                  model="gpt-4.1-mini", cost_nanos=333_333_333, input_tokens=1, output_tokens=0),
            # The last instant of October in Berlin (23:59:59 CET).
            entry(_at("2025-10-31T22:59:59Z"), team_id=growth, key_id=growth_key,
                  model="gpt-4.1-mini", cost_nanos=333_333_333, input_tokens=1, output_tokens=0),
            entry(_at("2025-10-10T10:00:00Z"), team_id=None, model=None, provider=None,
                  status="invalid_request", cost_nanos=0, input_tokens=0, output_tokens=0),
            # November in Berlin.
            entry(_at("2025-10-31T23:00:00Z"), team_id=growth, key_id=growth_key,
                  model="gpt-4.1-mini", cost_nanos=7, input_tokens=1, output_tokens=0),
        ],
    )  # fmt: skip
    return {"research": research, "growth": growth}


def test_monthly_report_is_per_team_and_model_with_markup_in_json_csv_and_xlsx(
    server: LiveServer, database_url: str
) -> None:
    _seed_october(server, database_url)
    document = _month(server, OCTOBER).json()
    assert document["period"] == {
        "start": "2025-10-01T00:00:00+02:00",
        "end": "2025-11-01T00:00:00+01:00",
    }
    assert (document["timezone"], document["status"]) == (REPORTING_TIMEZONE, "open")
    sections = {s["team"]: s for s in document["teams"]}
    assert list(sections) == ["growth", "research", "(no team)"]

    research = sections["research"]
    assert (research["cost_centre"], research["markup_percent"]) == ("CC-4100", "0.00")
    assert [(line["model"], line["requests"], line["cost_usd"]) for line in research["lines"]] == [
        ("claude-sonnet-4-5", 1, "0.123456789"),
        ("gpt-4.1", 2, "1.000000003"),
    ]
    gpt = research["lines"][1]
    assert (gpt["input_tokens"], gpt["cache_read_tokens"], gpt["cache_write_tokens"]) == (30, 5, 4)
    assert (gpt["output_tokens"], gpt["reasoning_tokens"]) == (3, 1)
    assert research["subtotal"]["cost_usd"] == "1.123456792"

    growth = sections["growth"]
    assert growth["markup_percent"] == "12.50"
    [line] = growth["lines"]
    # 12.5 % of 0.666666666 is 0.08333333325, rounded half away from zero to the nano.
    assert (line["cost_usd"], line["markup_usd"], line["total_usd"]) == (
        "0.666666666", "0.083333333", "0.749999999",
    )  # fmt: skip
    assert markup_nanos(-666_666_666, 1250) == -83_333_333

    assert sections["(no team)"]["subtotal"]["requests"] == 1
    total = document["total"]
    assert total["cost_usd"] == format_usd(1_123_456_792 + 666_666_666)
    assert total["markup_usd"] == "0.083333333"
    assert total["requests"] == 6

    rows = list(csv.DictReader(io.StringIO(_month(server, OCTOBER, "csv").text)))
    assert [(r["line"], r["team"], r["cost_centre"], r["model"], r["cost_usd"]) for r in rows] == [
        ("usage", "growth", "CC-3300", "gpt-4.1-mini", "0.666666666"),
        ("team_total", "growth", "CC-3300", "", "0.666666666"),
        ("usage", "research", "CC-4100", "claude-sonnet-4-5", "0.123456789"),
        ("usage", "research", "CC-4100", "gpt-4.1", "1.000000003"),
        ("team_total", "research", "CC-4100", "", "1.123456792"),
        ("usage", "(no team)", "", "", "0.000000000"),
        ("team_total", "(no team)", "", "", "0.000000000"),
        ("grand_total", "", "", "", "1.790123458"),
    ]
    assert rows[0]["markup_usd"] == "0.083333333" and rows[0]["markup_percent"] == "12.50"

    xlsx = _month(server, OCTOBER, "xlsx")
    assert xlsx.headers["content-type"].startswith("application/vnd.openxmlformats")
    sheet = load_workbook(io.BytesIO(xlsx.content))["Report"]
    table = [list(row) for row in sheet.iter_rows(values_only=True)]
    assert table[0][:6] == ["month", "line", "team", "cost_centre", "model", "source_month"]
    header = table[0]
    for csv_row, xlsx_row in zip(rows, table[1:], strict=True):
        cells = dict(zip(header, xlsx_row, strict=True))
        for money in ("cost_usd", "markup_usd", "total_usd"):
            assert f"{cells[money]:.9f}" == csv_row[money]
        assert str(cells["requests"]) == csv_row["requests"]


def test_closing_a_month_freezes_its_bytes_and_late_entries_go_to_the_next_open_month(
    server: LiveServer, database_url: str
) -> None:
    teams = _seed_october(server, database_url)
    open_bytes = {fmt: _month(server, OCTOBER, fmt).content for fmt in ("json", "csv")}

    closed = server.admin.post(f"/admin/months/{OCTOBER}/close")
    assert closed.status_code == 200, closed.text
    info = closed.json()
    assert info["period_start"] == "2025-10-01T00:00:00+02:00"

    frozen = {fmt: _month(server, OCTOBER, fmt) for fmt in ("json", "csv", "xlsx")}
    for fmt, response in frozen.items():
        assert response.headers["x-ledger-month-status"] == "closed"
        assert response.headers["x-content-sha256"] == hashlib.sha256(response.content).hexdigest()
        assert _month(server, OCTOBER, fmt).content == response.content  # identical bytes
    assert info["content_sha256"] == hashlib.sha256(frozen["json"].content).hexdigest()
    document = json.loads(frozen["json"].content)
    assert document["status"] == "closed" and document["closed_at"] == info["closed_at"]
    # The figures are those of the open report; only the status changed.
    assert frozen["csv"].content == open_bytes["csv"]

    assert server.admin.post(f"/admin/months/{OCTOBER}/close").status_code == 409
    this_month = datetime.now(UTC).strftime("%Y-%m")
    refused = server.admin.post(f"/admin/months/{this_month}/close")
    assert refused.status_code == 409 and "not ended" in refused.json()["error"]["message"]

    # A late entry for October, and a correction dated in October.
    write_entries(
        database_url,
        [
            entry(_at("2025-10-20T09:00:00Z"), team_id=teams["growth"], model="gpt-4.1-mini",
                  cost_nanos=5, input_tokens=3),
            entry(_at("2025-10-21T09:00:00Z"), team_id=teams["research"], model="gpt-4.1",
                  cost_nanos=-2, input_tokens=0, output_tokens=0, kind="adjustment"),
        ],
    )  # fmt: skip
    for fmt, response in frozen.items():
        assert _month(server, OCTOBER, fmt).content == response.content

    november = _month(server, "2025-11").json()
    late = [
        (s["team"], line["model"], line["source_month"], line["requests"], line["cost_usd"])
        for s in november["teams"]
        for line in s["lines"]
        if line["kind"] == "late"
    ]
    assert late == [
        ("growth", "gpt-4.1-mini", OCTOBER, 1, format_usd(5)),
        ("research", "gpt-4.1", OCTOBER, 0, format_usd(-2)),
    ]
    growth = next(s for s in november["teams"] if s["team"] == "growth")
    assert growth["subtotal"]["cost_usd"] == format_usd(7 + 5)
    assert november["total"]["cost_usd"] == format_usd(7 + 5 - 2)

    # October's entries now add up to its frozen total plus the late lines, to the nano.
    async def october_total(engine: Any) -> int:
        start, end = month_bounds(parse_month(OCTOBER), zone(REPORTING_TIMEZONE))
        async with engine.connect() as connection:
            report = await spend_report(
                connection, SpendQuery(since=start, until=end, granularity=None)
            )
        return report.totals["cost_nanos"]

    frozen_total = usd_to_nanos(document["total"]["cost_usd"])
    assert run_with_engine(database_url, october_total) == frozen_total + 5 - 2

    # Closing November claims the late lines; the next late entry goes to December.
    november_bytes = _month(server, "2025-11").content
    assert server.admin.post("/admin/months/2025-11/close").status_code == 200
    closed_november = _month(server, "2025-11")
    assert json.loads(closed_november.content)["total"] == json.loads(november_bytes)["total"]
    assert _month(server, "2025-12").json()["teams"] == []
    write_entries(
        database_url,
        [entry(_at("2025-10-22T09:00:00Z"), team_id=teams["growth"], model="gpt-4.1-mini",
               cost_nanos=11)],
    )  # fmt: skip
    december = _month(server, "2025-12").json()
    assert [(line["kind"], line["source_month"], line["cost_usd"])
            for s in december["teams"] for line in s["lines"]] == [
        ("late", OCTOBER, format_usd(11)),
    ]  # fmt: skip
    assert _month(server, "2025-11").content == closed_november.content
    months = server.admin.get("/api/reports/months").json()["data"]
    assert [m["month"] for m in months] == ["2025-11", OCTOBER]


def test_a_team_key_reads_only_its_own_section_of_a_closed_month(
    server: LiveServer, database_url: str
) -> None:
    _seed_october(server, database_url)
    _, _, growth_key = team_with_key(server, "growth-two")
    assert server.admin.post(f"/admin/months/{OCTOBER}/close").status_code == 200
    research_key = server.create_key("research")
    mine = _month(server, OCTOBER, key=research_key).json()
    assert [s["team"] for s in mine["teams"]] == ["research"]
    assert mine["total"]["cost_usd"] == "1.123456792"
    assert _month(server, OCTOBER, key=growth_key).json()["teams"] == []
    rows = list(csv.DictReader(io.StringIO(_month(server, OCTOBER, "csv", research_key).text)))
    assert {r["team"] for r in rows if r["team"]} == {"research"}


def test_cli_prints_the_report_closes_months_verifies_rollups_and_fills_a_demo(
    server: LiveServer, database_url: str, tmp_path: Any
) -> None:
    _seed_october(server, database_url)
    runner = CliRunner()
    env = {"LEDGER_REPORTING_TIMEZONE": REPORTING_TIMEZONE}
    base = ["--database-url", database_url]

    printed = runner.invoke(main, [*base, "report", "monthly", OCTOBER, "--format", "csv"], env=env)
    assert printed.exit_code == 0, printed.output
    assert printed.stdout_bytes == _month(server, OCTOBER, "csv").content

    closed = runner.invoke(main, [*base, "month", "close", OCTOBER], env=env)
    assert closed.exit_code == 0, closed.output
    sha = hashlib.sha256(_month(server, OCTOBER).content).hexdigest()
    assert sha in closed.output
    again = runner.invoke(main, [*base, "month", "close", OCTOBER], env=env)
    assert again.exit_code == 1 and "already closed" in again.output

    target = tmp_path / "october.xlsx"
    saved = runner.invoke(
        main, [*base, "report", "monthly", OCTOBER, "--format", "xlsx", "-o", str(target)], env=env
    )
    assert saved.exit_code == 0, saved.output
    assert target.read_bytes() == _month(server, OCTOBER, "xlsx").content

    demo = runner.invoke(main, [*base, "demo", "--entries", "1500", "--months", "2"], env=env)
    assert demo.exit_code == 0, demo.output
    assert "1500 requests" in demo.output
    verified = runner.invoke(main, [*base, "report", "verify-rollups", "--no-repair"], env=env)
    assert verified.exit_code == 0, verified.output
    assert "0 missing, 0 extra, 0 different" in verified.output
    check = run_with_engine(database_url, lambda engine: verify_rollups(engine, repair=False))
    assert check.ok
    budgets = server.admin.get("/api/reports/budgets").json()["data"]
    assert len(budgets) == 5


def test_names_from_clients_never_become_spreadsheet_formulas(
    server: LiveServer, database_url: str
) -> None:
    team_id, key_id, _ = team_with_key(server, "research")
    formula = '=HYPERLINK("http://evil.example","x")'
    write_entries(
        database_url,
        [entry(_at("2025-10-10T10:00:00Z"), team_id=team_id, key_id=key_id, model=formula,
               status="invalid_request", cost_nanos=0, user="@sum(A1)", tags=["+tag"])],
    )  # fmt: skip
    rows = list(csv.DictReader(io.StringIO(_month(server, OCTOBER, "csv").text)))
    assert rows[0]["model"] == "'" + formula
    sheet = load_workbook(io.BytesIO(_month(server, OCTOBER, "xlsx").content))["Report"]
    cell = sheet.cell(2, 5)
    assert (cell.value, cell.data_type) == (formula, "s")
    assert _month(server, OCTOBER).json()["teams"][0]["lines"][0]["model"] == formula

    spend = server.admin.get(
        "/api/reports/spend",
        params={"group_by": "user,tag", "format": "csv", "since": "2025-10-10T00:00:00Z",
                "until": "2025-10-11T00:00:00Z"},
    )  # fmt: skip
    [row] = list(csv.DictReader(io.StringIO(spend.text)))
    assert (row["user"], row["tag"]) == ("'@sum(A1)", "'+tag")
