"""Spend rollups maintained in the same transaction as the ledger entries they summarise."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from sqlalchemy.ext.asyncio import AsyncConnection

if TYPE_CHECKING:
    from ledger.db.ledger import LedgerEntry


async def apply_entries_to_rollups(
    connection: AsyncConnection, entries: Sequence[LedgerEntry]
) -> None:
    """Add ``entries`` to the rollups inside the caller's transaction (the writer's)."""
    return None


async def verify_rollups_job(engine: object) -> object:
    """The scheduled rollup verification (filled in with the rollups)."""
    return None
