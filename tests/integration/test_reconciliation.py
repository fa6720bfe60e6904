"""Reconciliation against a fake provider whose admin reports count what it really served."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime

import openai
import pytest

from ledger.db.engine import create_engine
from ledger.reports.reconciliation import raise_alerts, reconciliation
from tests.fake_admin_reports import FakeAdminReports
from tests.fake_upstream import FakeUpstream
from tests.live import LiveServer, gateway_settings

ADMIN_REPORTS_KEY = "sk-admin-reports-0123456789abcdef"
GPT_4O_MINI = (150_000_000, 600_000_000)  # the catalog's $0.15 / $0.60 per 1M, in nanos


@pytest.fixture
def reporting_fake() -> Iterator[tuple[FakeUpstream, FakeAdminReports]]:
    fake = FakeUpstream()
    reports = FakeAdminReports(
        fake,
        admin_key=ADMIN_REPORTS_KEY,
        prices={"gpt-4o-mini": GPT_4O_MINI},
        snapshots={"gpt-4o-mini": "gpt-4o-mini-2024-07-18"},
    ).install()
    with fake:
        yield fake, reports


def _settings(database_url: str, fake: FakeUpstream):  # type: ignore[no-untyped-def]
    settings = gateway_settings(database_url, fake, reconciliation_alert_usd="0.000000001")
    openai_provider = replace(
        settings.providers[0], admin_api_key_env="OPENAI_ADMIN_KEY", admin_api_key=ADMIN_REPORTS_KEY
    )
    return replace(settings, providers=(openai_provider, *settings.providers[1:]))


def test_reconciliation_shows_exactly_the_request_that_bypassed_ledger(
    database_url: str,
    reporting_fake: tuple[FakeUpstream, FakeAdminReports],
    caplog: pytest.LogCaptureFixture,
) -> None:
    fake, reports = reporting_fake
    caplog.set_level(logging.DEBUG)
    settings = _settings(database_url, fake)
    month = datetime.now(UTC).strftime("%Y-%m")
    with LiveServer(settings) as server:
        client = openai.OpenAI(base_url=server.openai_base_url, api_key=server.team_key())
        for text in ("hello there", "count these words please", "one more"):
            client.chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": text}]
            )
        # Traffic that did not go through Ledger: straight to the provider.
        direct = openai.OpenAI(base_url=fake.openai_base_url, api_key=fake.api_key)
        bypass = direct.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "sent around ledger"}]
        )
        server.wait_for_entries(3)

        refreshed = server.admin.post(
            f"/admin/reconciliation/{month}/refresh", params={"provider": "openai"}
        )
        assert refreshed.status_code == 200, refreshed.text
        assert refreshed.json()["pulled"] == ["openai"]
        assert refreshed.json()["alerts"] == ["openai"]
        # Paging was followed: one result per page, every page asked for.
        assert any("page=" in asked for asked in reports.asked)

        answer = server.admin.get(f"/api/reports/reconciliation/{month}")
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert body["month"] == month
        (row,) = body["rows"]  # the dated snapshot matched Ledger's model
        assert (row["provider"], row["model"]) == ("openai", "gpt-4o-mini")
        usage = bypass.usage
        assert usage is not None
        assert row["difference"]["requests"] == 1
        assert row["difference"]["input_tokens"] == usage.prompt_tokens
        assert row["difference"]["output_tokens"] == usage.completion_tokens
        from ledger.money import cost_of_tokens, format_usd

        assert row["difference"]["cost_usd"] == format_usd(
            cost_of_tokens(usage.prompt_tokens, GPT_4O_MINI[0])
            + cost_of_tokens(usage.completion_tokens, GPT_4O_MINI[1])
        )
        assert row["ledger"]["requests"] == 3

        csv_answer = server.admin.get(
            f"/api/reports/reconciliation/{month}", params={"format": "csv", "provider": "openai"}
        )
        assert csv_answer.status_code == 200
        assert csv_answer.text.splitlines()[1].startswith(f"{row['date']},openai,gpt-4o-mini,")

        # Asked again (a second pull), the alert is not raised twice.
        again = server.admin.post(f"/admin/reconciliation/{month}/refresh")
        assert again.status_code == 200, again.text
        assert again.json()["alerts"] == []

        for response in (refreshed, answer, csv_answer, again):
            assert ADMIN_REPORTS_KEY not in response.text
    assert ADMIN_REPORTS_KEY not in caplog.text

    async def stored_alerts() -> int:
        engine = create_engine(database_url)
        try:
            async with engine.connect() as connection:
                from sqlalchemy import func, select

                from ledger.db.tables import Alert

                return int(
                    await connection.scalar(
                        select(func.count())
                        .select_from(Alert)
                        .where(Alert.kind == "reconciliation")
                    )
                    or 0
                )
        finally:
            await engine.dispose()

    assert asyncio.run(stored_alerts()) == 1


def test_reconciliation_without_bypass_differs_by_zero(
    database_url: str, reporting_fake: tuple[FakeUpstream, FakeAdminReports]
) -> None:
    fake, _ = reporting_fake
    settings = _settings(database_url, fake)
    month = datetime.now(UTC).strftime("%Y-%m")
    with LiveServer(settings) as server:
        client = openai.OpenAI(base_url=server.openai_base_url, api_key=server.team_key())
        for text in ("alpha beta", "gamma"):
            client.chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": text}]
            )
        server.wait_for_entries(2)
        assert server.admin.post(f"/admin/reconciliation/{month}/refresh").status_code == 200

    async def read() -> dict:  # type: ignore[type-arg]
        engine = create_engine(database_url)
        try:
            report = await reconciliation(engine, settings, month)
            assert await raise_alerts(engine, settings, month, report) == []
            return report
        finally:
            await engine.dispose()

    (row,) = asyncio.run(read())["rows"]  # re-read from the stored pull, no provider asked
    assert row["difference"] == {
        "requests": 0,
        "input_tokens": 0,
        "output_tokens": 0,
        "cost_usd": "0.000000000",
    }
    assert row["ledger"]["requests"] == 2


def test_refresh_of_a_provider_without_admin_key_is_404(gateway: LiveServer) -> None:
    answer = gateway.admin.post("/admin/reconciliation/2026-01/refresh", params={"provider": "x"})
    assert answer.status_code == 404
    bad = gateway.admin.get("/api/reports/reconciliation/2026-13")
    assert bad.status_code == 400
