"""Report and usage reads go to the replica named by LEDGER_REPORTS_DATABASE_URL."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
from sqlalchemy import func, select

from ledger.db.engine import create_engine
from ledger.db.migrate import upgrade
from ledger.db.tables import LedgerEntryRow
from tests.conftest import _pg_execute, _postgres_admin_url, _with_database
from tests.fake_upstream import FakeUpstream
from tests.live import LiveServer, gateway_settings


@pytest.fixture
def replica_url(database_url: str, tmp_path: Path) -> Iterator[str]:
    """A second, migrated database standing in for a read replica."""
    if database_url.startswith("sqlite"):
        url = f"sqlite+aiosqlite:///{tmp_path / 'replica.db'}"
        asyncio.run(_migrate(url))
        yield url
        return
    admin_url = _postgres_admin_url()
    assert admin_url is not None
    name = f"ledger_replica_{uuid.uuid4().hex[:12]}"
    asyncio.run(_pg_execute(admin_url, f'CREATE DATABASE "{name}"'))
    url = _with_database(admin_url, name).replace("postgresql://", "postgresql+asyncpg://", 1)
    asyncio.run(_migrate(url))
    try:
        yield url
    finally:
        asyncio.run(_pg_execute(admin_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


async def _migrate(url: str) -> None:
    engine = create_engine(url, null_pool=True)
    try:
        await upgrade(engine)
    finally:
        await engine.dispose()


async def _count(url: str) -> int:
    engine = create_engine(url, null_pool=True)
    try:
        async with engine.connect() as connection:
            return int(
                await connection.scalar(select(func.count()).select_from(LedgerEntryRow)) or 0
            )
    finally:
        await engine.dispose()


def test_usage_and_reports_are_read_from_the_replica_while_writes_go_to_the_primary(
    database_url: str, replica_url: str, fake_upstream: FakeUpstream
) -> None:
    settings = gateway_settings(database_url, fake_upstream, reports_database_url=replica_url)
    with LiveServer(settings) as gateway:
        client = openai.OpenAI(
            base_url=gateway.openai_base_url, api_key=gateway.team_key(), max_retries=0
        )
        client.chat.completions.create(
            model="gpt-4.1-mini", messages=[{"role": "user", "content": "to the primary"}]
        )
        # The stand-in replica never receives the primary's changes, so reads from it
        # show nothing: proof that the read went there.
        assert gateway.entries() == []
        spend = gateway.admin.get("/api/reports/spend", params={"group_by": "team"})
        assert spend.status_code == 200, spend.text
    assert asyncio.run(_count(database_url)) == 1
    assert asyncio.run(_count(replica_url)) == 0
