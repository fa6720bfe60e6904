"""Open background responses: the rows that say a ``background: true`` entry is still owed.

Each is written when its response is created and deleted once its entry is recorded.
Whoever settles one first claims it with a single conditional ``UPDATE … RETURNING``
(atomic on SQLite and PostgreSQL alike), so of two processes that find the same
response finished, one writes its entry; a claim left by a process that died before
deleting its row goes stale and is taken over, and the entry's request id (the ledger
skips an id it already has, with its settlements) keeps that from writing twice.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from ledger.db.tables import OpenBackgroundResponse

# A claim older than this belongs to a process that died while settling: taken over.
CLAIM_STALE_AFTER = timedelta(seconds=60)


@dataclass(frozen=True, slots=True)
class OpenResponse:
    response_id: str
    request_id: str
    provider: str
    estimated_cost_nanos: int
    entry: str  # the entry as it stood at creation, JSON
    holds: str  # its budget reservations, JSON


async def insert_open(engine: AsyncEngine, **values: object) -> None:
    async with engine.begin() as connection:
        await connection.execute(insert(OpenBackgroundResponse).values(**values))


async def due(engine: AsyncEngine, now: datetime, limit: int) -> list[tuple[str, str]]:
    """(response id, provider) of open responses no live process is settling, oldest first."""
    t = OpenBackgroundResponse
    async with engine.connect() as connection:
        rows = await connection.execute(
            select(t.response_id, t.provider)
            .where(or_(t.claimed_at.is_(None), t.claimed_at < now - CLAIM_STALE_AFTER))
            .order_by(t.created_at)
            .limit(limit)
        )
        return [(row[0], row[1]) for row in rows]


async def claim(
    engine: AsyncEngine, response_id: str, owner: str, now: datetime
) -> OpenResponse | None:
    """The open response, now claimed by ``owner``; None if it is not open or is claimed."""
    t = OpenBackgroundResponse
    async with engine.begin() as connection:
        row = (
            await connection.execute(
                update(t)
                .where(
                    t.response_id == response_id,
                    or_(t.claimed_at.is_(None), t.claimed_at < now - CLAIM_STALE_AFTER),
                )
                .values(claimed_by=owner, claimed_at=now)
                .returning(
                    t.response_id,
                    t.request_id,
                    t.provider,
                    t.estimated_cost_nanos,
                    t.entry,
                    t.holds,
                )
            )
        ).first()
    return OpenResponse(*row) if row is not None else None


async def close(engine: AsyncEngine, response_id: str) -> None:
    """Its entry is recorded: the response is no longer open."""
    async with engine.begin() as connection:
        await connection.execute(
            delete(OpenBackgroundResponse).where(OpenBackgroundResponse.response_id == response_id)
        )


async def open_request_ids(engine: AsyncEngine, request_ids: Iterable[str]) -> set[str]:
    """Which of ``request_ids`` are background responses whose entry is still owed."""
    ids = list(request_ids)
    if not ids:
        return set()
    t = OpenBackgroundResponse
    async with engine.connect() as connection:
        rows = await connection.execute(select(t.request_id).where(t.request_id.in_(ids)))
        return {row[0] for row in rows}
