"""The ledger is partitioned by month on PostgreSQL, with partitions made ahead of time."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import openai
import pytest
from sqlalchemy import text

from ledger.db.engine import create_engine
from ledger.db.partitions import ensure_partitions
from tests.live import LiveServer


async def _partitions(database_url: str) -> dict[str, int]:
    engine = create_engine(database_url, null_pool=True)
    try:
        async with engine.connect() as connection:
            rows = await connection.execute(
                text(
                    "SELECT c.relname, (SELECT count(*) FROM ledger_entries e "
                    "WHERE e.tableoid = c.oid) FROM pg_inherits i "
                    "JOIN pg_class c ON c.oid = i.inhrelid "
                    "JOIN pg_class p ON p.oid = i.inhparent WHERE p.relname = 'ledger_entries'"
                )
            )
            return {name: count for name, count in rows}
    finally:
        await engine.dispose()


async def _ensure(database_url: str, now: datetime) -> list[str]:
    engine = create_engine(database_url, null_pool=True)
    try:
        return await ensure_partitions(engine, now=now)
    finally:
        await engine.dispose()


def test_entries_land_in_their_month_and_future_months_are_ready(
    gateway: LiveServer, database_url: str
) -> None:
    if not database_url.startswith("postgresql"):
        pytest.skip("SQLite has no table partitioning; the ledger is one table there")
    client = openai.OpenAI(
        base_url=gateway.openai_base_url, api_key=gateway.team_key(), max_retries=0
    )
    client.chat.completions.create(
        model="gpt-4.1-mini", messages=[{"role": "user", "content": "partitioned"}]
    )
    assert len(gateway.wait_for_entries(1)) == 1  # committed (acknowledged on the journal)
    now = datetime.now(UTC)
    this_month = f"ledger_entries_{now.year:04d}_{now.month:02d}"
    partitions = asyncio.run(_partitions(database_url))
    assert partitions[this_month] == 1
    assert partitions["ledger_entries_default"] == 0
    assert len([name for name in partitions if name != "ledger_entries_default"]) >= 3

    # The scheduled job keeps two months ahead as time moves on.
    later = datetime(now.year + 1, now.month, 1, tzinfo=UTC)
    created = asyncio.run(_ensure(database_url, later))
    assert f"ledger_entries_{later.year:04d}_{later.month:02d}" in created
    assert len(created) == 3
    assert asyncio.run(_ensure(database_url, later)) == []
