"""Shared fixtures: every database test runs on SQLite and, when its URL is set, PostgreSQL.

Set ``LEDGER_TEST_POSTGRES_URL`` (e.g. ``postgresql://postgres@127.0.0.1:5432/test``) to
run the PostgreSQL half; each test then gets a database of its own, created from a
migrated template and dropped afterwards.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fake_upstream import FakeUpstream
from tests.live import LiveServer, gateway_settings

POSTGRES_URL_ENV = "LEDGER_TEST_POSTGRES_URL"
# LEDGER_TEST_BACKENDS=sqlite or =postgres runs one half only (CI runs each in turn).
BACKENDS = [
    b.strip() for b in os.environ.get("LEDGER_TEST_BACKENDS", "sqlite,postgres").split(",") if b
]


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    return "asyncio"


def _postgres_admin_url() -> str | None:
    return os.environ.get(POSTGRES_URL_ENV) or None


async def _pg_execute(url: str, *statements: str) -> None:
    import asyncpg

    dsn = url.replace("postgresql+asyncpg://", "postgresql://")
    connection = await asyncpg.connect(dsn)
    try:
        for statement in statements:
            await connection.execute(statement)
    finally:
        await connection.close()


def _with_database(url: str, database: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).set(database=database).render_as_string(hide_password=False)


@pytest.fixture(params=BACKENDS)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty database URL on each backend (sqlite file; PostgreSQL database)."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'ledger.db'}"
        return
    admin_url = _postgres_admin_url()
    if admin_url is None:
        pytest.skip(
            f"PostgreSQL tests need {POSTGRES_URL_ENV} (e.g. postgresql://postgres@127.0.0.1:5432/test)"
        )
    name = f"ledger_test_{uuid.uuid4().hex[:12]}"
    asyncio.run(_pg_execute(admin_url, f'CREATE DATABASE "{name}"'))
    try:
        yield _with_database(admin_url, name).replace("postgresql://", "postgresql+asyncpg://", 1)
    finally:
        asyncio.run(_pg_execute(admin_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(scope="session")
def fake_upstream() -> Iterator[FakeUpstream]:
    """One fake provider (both protocols) for the whole session; it keeps no state per test."""
    with FakeUpstream() as fake:
        yield fake


@pytest.fixture
def gateway(database_url: str, fake_upstream: FakeUpstream) -> Iterator[LiveServer]:
    """Ledger served on loopback, proxying to the fake provider, on each database."""
    with LiveServer(gateway_settings(database_url, fake_upstream)) as server:
        yield server


@pytest.fixture
def mock_gateway(database_url: str) -> Iterator[LiveServer]:
    """Ledger with no providers configured: the built-in mock serves every catalog model."""
    from ledger.config import Settings

    settings = Settings(database_url=database_url, admin_key="sk-admin-test-key")
    with LiveServer(settings) as server:
        yield server
