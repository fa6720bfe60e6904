"""Monthly partitions of the ledger on PostgreSQL (SQLite keeps one table).

Reports over a month read one partition, and retention is ``DROP TABLE`` of an old
month instead of a long ``DELETE``. Partitions are created ahead of time — the
migration makes them, and a daily job keeps two months ahead — and a default partition
catches anything outside them so that no write can ever fail for want of one.
"""

from __future__ import annotations

import logging
from datetime import UTC, date, datetime

from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

logger = logging.getLogger("ledger.partitions")

MONTHS_AHEAD = 2


def month_start(day: date) -> date:
    return day.replace(day=1)


def add_months(first: date, months: int) -> date:
    index = first.month - 1 + months
    return date(first.year + index // 12, index % 12 + 1, 1)


def partition_name(first: date) -> str:
    return f"ledger_entries_{first.year:04d}_{first.month:02d}"


def partition_ddl(first: date) -> str:
    """DDL for the partition of the month starting ``first`` (UTC bounds)."""
    end = add_months(first, 1)
    return (
        f"CREATE TABLE IF NOT EXISTS {partition_name(first)} PARTITION OF ledger_entries "
        f"FOR VALUES FROM ('{first.isoformat()} 00:00:00+00') TO ('{end.isoformat()} 00:00:00+00')"
    )


async def is_partitioned(connection: AsyncConnection) -> bool:
    if connection.dialect.name != "postgresql":
        return False
    found = await connection.scalar(
        text(
            "SELECT 1 FROM pg_partitioned_table p JOIN pg_class c ON c.oid = p.partrelid "
            "WHERE c.relname = 'ledger_entries'"
        )
    )
    return found is not None


async def ensure_partitions(
    engine: AsyncEngine, *, now: datetime | None = None, months_ahead: int = MONTHS_AHEAD
) -> list[str]:
    """Create this month's and the next ``months_ahead`` months' partitions if missing."""
    if engine.dialect.name != "postgresql":
        return []
    first = month_start((now or datetime.now(UTC)).date())
    created: list[str] = []
    async with engine.connect() as connection:
        if not await is_partitioned(connection):
            return []
        existing = set(
            (
                await connection.execute(
                    text(
                        "SELECT c.relname FROM pg_inherits i "
                        "JOIN pg_class c ON c.oid = i.inhrelid "
                        "JOIN pg_class p ON p.oid = i.inhparent WHERE p.relname = 'ledger_entries'"
                    )
                )
            ).scalars()
        )
    for offset in range(months_ahead + 1):
        month = add_months(first, offset)
        if partition_name(month) in existing:
            continue
        try:
            async with engine.begin() as connection:
                await connection.execute(text(partition_ddl(month)))
            created.append(partition_name(month))
        except DBAPIError:
            # Rows for that month already sit in the default partition; they stay there.
            logger.warning("could not create partition %s", partition_name(month), exc_info=True)
    if created:
        logger.info("created ledger partitions %s", ", ".join(created))
    return created
