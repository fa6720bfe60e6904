"""The web dashboard in headless Chromium against a live server with data.

Needs Debian's ``chromium`` at /usr/bin/chromium and the ``playwright`` Python package
(its own browser downloads are never used). The screenshot of each run is saved in
``test-artifacts/``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from ledger.money import format_usd
from tests.integration.reports_support import (
    entry,
    report_server,
    run_with_engine,
    team_with_key,
    write_entries,
)
from tests.live import ADMIN_KEY, LiveServer

CHROMIUM = Path("/usr/bin/chromium")
CHART_JS_SHA256 = "87364cc2b2a76a6684929e7d6b80b18a897794db38400caff1fcf1791c6925d2"  # 4.6.1
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture
def server(database_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[LiveServer]:
    with report_server(database_url, monkeypatch) as live:
        yield live


@pytest.fixture
def browser(server: LiveServer) -> Iterator[Any]:
    # Started after the server (and its database) and stopped before them: Playwright's
    # sync API runs an event loop in this thread while it is open.
    if not CHROMIUM.exists():
        pytest.skip(
            "the dashboard test needs Debian's chromium at /usr/bin/chromium "
            "(apt-get install chromium)"
        )
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="the dashboard test needs `pip install playwright`"
    )
    with sync_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            launched.close()


def _seed(server: LiveServer, database_url: str) -> dict[str, Any]:
    research, research_key_id, research_key = team_with_key(server, "research")
    growth, growth_key_id, _ = team_with_key(server, "growth")
    now = datetime.now(UTC)
    costs = {
        "research": [(1, "claude-sonnet-4-5", 1_234_567_891), (2, "gpt-4.1", 250_000_000)],
        "growth": [(1, "gpt-4.1-mini", 75_500_000), (3, "gpt-4.1-mini", 5)],
    }
    ids = {"research": (research, research_key_id), "growth": (growth, growth_key_id)}
    write_entries(
        database_url,
        [
            entry(now - timedelta(days=days, minutes=5), team_id=ids[team][0],
                  key_id=ids[team][1], model=model, cost_nanos=cost)
            for team, rows in costs.items()
            for days, model, cost in rows
        ]
        + [entry(now - timedelta(days=1), team_id=growth, key_id=growth_key_id,
                 status="blocked", cost_nanos=0)],
    )  # fmt: skip

    async def budget(engine: Any) -> None:
        from sqlalchemy import insert

        from ledger.budgets.periods import period_bounds
        from ledger.db.tables import Alert, Budget, BudgetPeriod

        start, end = period_bounds("monthly", "UTC", now)
        async with engine.begin() as connection:
            await connection.execute(insert(Budget).values(
                id=1, name="research monthly", scope="team", team_id=research, period="monthly",
                timezone="UTC", limit_nanos=2 * 10**9, mode="soft", thresholds="50,80,100",
                clamp_max_tokens=False, fail_open=False, created_at=now, updated_at=now,
            ))  # fmt: skip
            await connection.execute(insert(BudgetPeriod).values(
                budget_id=1, period_start=start, period_end=end, spent_nanos=17 * 10**8,
                reserved_nanos=0, blocked=False, updated_at=now,
            ))  # fmt: skip
            await connection.execute(insert(Alert).values(
                budget_id=1, period_start=start, kind="threshold", threshold=80,
                message="research monthly has used 80% of its limit", spent_nanos=17 * 10**8,
                limit_nanos=2 * 10**9, created_at=now,
            ))  # fmt: skip

    run_with_engine(database_url, budget)
    totals = {team: sum(cost for _, _, cost in rows) for team, rows in costs.items()}
    return {"research_key": research_key, "totals": totals}


def _sign_in(page: Any, key: str) -> None:
    page.fill("#key", key)
    page.click("#sign-in-form button[type=submit]")
    page.wait_for_selector("body[data-state=ready]", timeout=15_000)


def _spend_chart(page: Any) -> dict[str, list[tuple[str, float]]]:
    return page.evaluate(
        """() => Object.fromEntries(Chart.getChart("spend-chart").data.datasets
              .map((d) => [d.label, d.exact.map((value, i) => [value, d.data[i]])]))"""
    )


def test_dashboard_draws_the_spend_budgets_and_alerts_a_key_may_see(
    server: LiveServer, database_url: str, browser: Any, request: pytest.FixtureRequest
) -> None:
    seeded = _seed(server, database_url)
    totals = seeded["totals"]
    page = browser.new_page(viewport={"width": 1280, "height": 1600}, timezone_id="UTC")
    problems: list[str] = []
    page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
    page.on(
        "console",
        lambda message: problems.append(message.text) if message.type == "error" else None,
    )

    response = page.goto(server.url + "/dashboard")
    assert response is not None and response.status == 200
    headers = response.headers
    assert "default-src 'self'" in headers["content-security-policy"]
    assert "frame-ancestors 'none'" in headers["content-security-policy"]
    assert headers["x-frame-options"] == "DENY"

    _sign_in(page, ADMIN_KEY)
    assert "admin" in page.inner_text("#who")

    # Stacked spend by team: every bar's exact amount adds up to the team's entries.
    chart = _spend_chart(page)
    assert set(chart) == {"research", "growth"}
    for team, points in chart.items():
        assert sum(Decimal(exact) for exact, _ in points) == Decimal(format_usd(totals[team]))
        assert all(float(exact) == drawn for exact, drawn in points)
    assert page.get_attribute("#total-cost", "data-exact") == format_usd(sum(totals.values()))
    assert page.inner_text("#total-cost") == "$1.56"
    assert page.inner_text("#total-requests") == "5"
    assert page.inner_text("#total-blocked") == "1"

    models = page.evaluate(
        """() => { const c = Chart.getChart("models-chart");
                   return c.data.labels.map((label, i) => [label, c.data.datasets[0].exact[i]]); }"""
    )
    assert models == [
        ["claude-sonnet-4-5", format_usd(1_234_567_891)],
        ["gpt-4.1", format_usd(250_000_000)],
        ["gpt-4.1-mini", format_usd(75_500_005)],
    ]
    assert page.get_attribute(".budget[data-budget-id='1']", "data-percent") == "85.00"
    assert page.get_attribute(".budget[data-budget-id='1'] .fill", "class") == "fill warn"
    assert "80% of its limit" in page.inner_text("#alerts")

    ARTIFACTS.mkdir(exist_ok=True)
    backend = request.node.callspec.params["database_url"]
    page.screenshot(path=str(ARTIFACTS / f"dashboard-{backend}.png"), full_page=True)

    # The monthly report download carries the key and gets the same bytes as the API.
    with page.expect_download() as download:
        page.click("button.download[data-format='csv']")
    month = page.input_value("#month")
    saved = Path(download.value.path()).read_bytes()
    assert download.value.suggested_filename == f"ledger-{month}.csv"
    assert saved == server.admin.get(f"/api/reports/monthly/{month}?format=csv").content
    assert "is open" in page.inner_text("#month-status")

    # Signed in with a team key, only that team's spend and budgets are drawn.
    page.click("#sign-out")
    page.wait_for_selector("body[data-state=signed-out]")
    _sign_in(page, seeded["research_key"])
    assert page.inner_text("#who") == "Team research"
    assert set(_spend_chart(page)) == {"research"}
    assert page.get_attribute("#total-cost", "data-exact") == format_usd(totals["research"])
    assert page.locator(".budget").count() == 1
    page.screenshot(path=str(ARTIFACTS / f"dashboard-team-{backend}.png"), full_page=True)

    # A wrong key is turned away without drawing anything.
    page.click("#sign-out")
    page.fill("#key", "sk-ledger-wrong")
    page.click("#sign-in-form button[type=submit]")
    page.wait_for_selector("#sign-in-error:has-text('not accepted')")
    assert page.is_hidden("#board")
    page.close()
    # 401 for the wrong key is expected; nothing else may fail (CSP violations included).
    assert [p for p in problems if "401" not in p] == []


def test_dashboard_assets_are_served_by_ledger_itself(server: LiveServer) -> None:
    chart = server.admin.get("/dashboard/static/chart.umd.min.js")
    assert chart.status_code == 200
    # The pinned, unmodified Chart.js build (see ledger/reports/static/README.md).
    assert hashlib.sha256(chart.content).hexdigest() == CHART_JS_SHA256
    assert server.admin.get("/dashboard/static/dashboard.js").status_code == 200
