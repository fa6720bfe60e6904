"""Integration fixtures beyond the shared ones, and the fault suite's summary table."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from dataclasses import astuple

import pytest

from tests.conftest import BACKENDS, _pg_execute, _postgres_admin_url, _with_database
from tests.integration.fault_support import FIGURES


@pytest.fixture(scope="module", params=BACKENDS)
def module_database_url(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """Like ``database_url``, for a whole module: one server per backend, many scenarios."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path_factory.mktemp('db') / 'ledger.db'}"
        return
    admin_url = _postgres_admin_url()
    if admin_url is None:
        pytest.skip("PostgreSQL tests need LEDGER_TEST_POSTGRES_URL")
    name = f"ledger_test_{uuid.uuid4().hex[:12]}"
    asyncio.run(_pg_execute(admin_url, f'CREATE DATABASE "{name}"'))
    try:
        yield _with_database(admin_url, name).replace("postgresql://", "postgresql+asyncpg://", 1)
    finally:
        asyncio.run(_pg_execute(admin_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """The fault suite's figures: requests sent against entries recorded, per scenario."""
    if not FIGURES:
        return
    columns = (
        "scenario", "db", "sent", "recorded", "lost", "duplicated", "reservations left", "mixed"
    )  # fmt: skip
    rows = [astuple(f) for f in FIGURES]  # the fields in the order of the columns
    widths = [
        max(len(str(v)) for v in (name, *(r[i] for r in rows))) for i, name in enumerate(columns)
    ]
    terminalreporter.write_sep("=", "fault suite: one ledger entry per request")

    def line(values: tuple[object, ...]) -> str:
        return "  ".join(
            str(v).ljust(w) if i < 2 else str(v).rjust(w)
            for i, (v, w) in enumerate(zip(values, widths, strict=True))
        )

    terminalreporter.write_line(line(columns))
    for row in rows:
        terminalreporter.write_line(line(row))
    totals = [sum(int(r[i]) for r in rows) for i in range(2, len(columns))]
    terminalreporter.write_line(line(("total", "", *totals)))
