"""Ledger entries the database refused: kept in ``ledger_dead_letters``, never dropped.

An entry can be refused for its data, not for an outage: a value longer than its
column (PostgreSQL's ``varchar(256)``), an integer beyond 64 bits, a constraint an
operator added. Such an entry is kept as ASCII JSON in a TEXT column, which nothing
in an entry can exceed, and — when only its values did not fit — a *salvaged* copy
cut to the columns goes into the ledger at once, so its spend reaches reports and
budgets. The original stays in its dead-letter row; the copy says so in its ``error``.

This module stores and reads those rows and makes the salvaged copy; the ledger writer
(:mod:`ledger.db.writer`) decides when.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
from sqlalchemy import Connection, Integer, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from ledger.db.journal import entry_from_json
from ledger.db.ledger import LedgerEntry
from ledger.db.tables import LedgerDeadLetter, LedgerEntryRow

UNSTORED = "unstored"  # in no ledger row yet: retried until it is written
SALVAGED = "salvaged"  # a copy cut to fit is in the ledger; the row keeps the original
WRITTEN = "written"  # a retry wrote the original, after the operator fixed the cause

SALVAGE_NOTE = "Salvaged: the database refused this entry as it was"
_INT64 = (-(2**63), 2**63 - 1)
_INT32 = (-(2**31), 2**31 - 1)
_IDENTIFIERS = {"request_id", "corrects_request_id"}
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One kept entry, as ``ledger db dead-letters`` lists it."""

    id: int
    request_id: str
    state: str
    error: str
    changes: str | None
    attempts: int
    first_failed_at: datetime
    last_failed_at: datetime
    entry: LedgerEntry


def entry_as_text(entry: LedgerEntry) -> str:
    """The entry as ASCII JSON: NULs, astral characters and lone surrogates escaped."""
    return json.dumps(msgspec.to_builtins(entry), ensure_ascii=True)


def entry_from_text(text: str) -> LedgerEntry:
    return entry_from_json(json.loads(text))


def entry_key(entry: LedgerEntry) -> str:
    """The entry's identity in the ledger (request id and start), at a fixed length."""
    identity = f"{entry.request_id}\n{entry.started_at.isoformat()}"
    return hashlib.sha256(identity.encode("utf-8", "surrogatepass")).hexdigest()


def storable_text(value: str, limit: int = 4000) -> str:
    """``value`` as any TEXT column takes it: no NUL, no lone surrogate, bounded."""
    return _LONE_SURROGATE.sub("\ufffd", value.replace("\x00", "\ufffd"))[:limit]


def salvaged(entry: LedgerEntry) -> tuple[LedgerEntry, list[str]]:
    """A copy of ``entry`` cut to fit the ledger's columns, and what was changed.

    Strings longer than their column are cut (with "…", or a hash suffix for request
    ids, so distinct ids stay distinct); lone surrogates become U+FFFD;
    integers are clamped to their column's range, settlements to 64 bits; a naive time
    is taken as UTC. No changes: the entry's values were not why it was refused.
    """
    table = LedgerEntryRow.__table__
    changes: list[str] = []
    values: dict[str, Any] = {}
    for name in (f.name for f in dataclasses.fields(LedgerEntry)):
        value = getattr(entry, name)
        column = table.c.get(name)
        if isinstance(value, str):
            # NULs are already stored as U+FFFD (LedgerEntry.as_values); a lone surrogate
            # cannot be encoded for the driver at all.
            fixed = _LONE_SURROGATE.sub("\ufffd", value)
            if fixed != value:
                changes.append(f"{name}: unpaired surrogate replaced by U+FFFD")
            length = getattr(column.type, "length", None) if column is not None else None
            if length and len(fixed) > length:
                changes.append(f"{name}: cut from {len(fixed)} to {length} characters")
                fixed = _cut(fixed, length, identifier=name in _IDENTIFIERS)
            values[name] = fixed
        elif isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, datetime) and value.tzinfo is None:
                changes.append(f"{name}: a time without a zone, taken as UTC")
                value = value.replace(tzinfo=UTC)
            values[name] = value
        else:
            # Integer columns hold 32 bits (ids, http_status), BigInteger ones 64.
            bits = _INT32 if column is not None and type(column.type) is Integer else _INT64
            clamped = _clamp(value, bits)
            if clamped != value:
                changes.append(f"{name}: clamped to {clamped} (was {_short(value)})")
            values[name] = clamped
    values["tags"] = list(entry.tags)  # stored as ASCII JSON: any string fits
    copy = LedgerEntry(**values)
    latency_ms = copy.latency_ms
    if not _INT32[0] <= latency_ms <= _INT32[1] and copy.ended_at is not None:
        changes.append(f"ended_at: moved so that latency_ms fits (was {latency_ms})")
        copy.ended_at = copy.started_at + timedelta(milliseconds=_clamp(latency_ms, _INT32))
    copy.settlements = []
    for settlement in entry.settlements:
        spent, release = (_clamp(v, _INT64) for v in (settlement.spent, settlement.release))
        if (spent, release) != (settlement.spent, settlement.release):
            changes.append(f"budget {settlement.budget_id}: settlement clamped to 64 bits")
        copy.settlements.append(dataclasses.replace(settlement, spent=spent, release=release))
    copy.budgets_seen = entry.budgets_seen
    if changes:
        note = f"{SALVAGE_NOTE}: {'; '.join(changes)}. The original is in ledger_dead_letters."
        copy.error = note if not copy.error else f"{note} {copy.error}"
    return copy, changes


def _cut(value: str, length: int, *, identifier: bool) -> str:
    if identifier:
        digest = hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()[:12]
        return f"{value[: length - 13]}~{digest}"
    return value[: length - 1] + "…"


def _clamp(value: int, bounds: tuple[int, int]) -> int:
    return min(max(value, bounds[0]), bounds[1])


def _short(value: int) -> str:
    text = str(value)
    return text if len(text) <= 40 else f"{text[:20]}…({len(text)} digits)"


# -- the table --------------------------------------------------------------------------


def keep_in(
    connection: Connection,
    entry: LedgerEntry,
    error: str,
    *,
    state: str,
    changes: Sequence[str] = (),
    now: datetime | None = None,
) -> None:
    """Insert or update ``entry``'s dead-letter row in ``connection``'s transaction."""
    now = now or datetime.now(UTC)
    key = entry_key(entry)
    error = storable_text(error)
    described = storable_text("; ".join(changes)) if changes else None
    updated = connection.execute(
        update(LedgerDeadLetter)
        .where(LedgerDeadLetter.entry_key == key)
        .values(
            state=state,
            error=error,
            changes=described,
            attempts=LedgerDeadLetter.attempts + 1,
            last_failed_at=now,
        )
    )
    if updated.rowcount:
        return
    connection.execute(
        insert(LedgerDeadLetter).values(
            entry_key=key,
            request_id=storable_text(entry.request_id),
            state=state,
            entry=entry_as_text(entry),
            error=error,
            changes=described,
            attempts=1,
            first_failed_at=now,
            last_failed_at=now,
        )
    )


def resolve_in(connection: Connection, row_id: int, now: datetime | None = None) -> bool:
    """Mark an unstored row written; False if another process got there first."""
    result = connection.execute(
        update(LedgerDeadLetter)
        .where(LedgerDeadLetter.id == row_id, LedgerDeadLetter.state == UNSTORED)
        .values(state=WRITTEN, resolved_at=now or datetime.now(UTC))
    )
    return bool(result.rowcount)


def refused_again_in(connection: Connection, row_id: int, error: str) -> None:
    connection.execute(
        update(LedgerDeadLetter)
        .where(LedgerDeadLetter.id == row_id)
        .values(
            error=storable_text(error),
            attempts=LedgerDeadLetter.attempts + 1,
            last_failed_at=datetime.now(UTC),
        )
    )


async def counts(engine: AsyncEngine) -> dict[str, int]:
    """Dead-letter rows per state (``unstored``, ``salvaged``, ``written``)."""
    async with engine.connect() as connection:
        rows = await connection.execute(
            select(LedgerDeadLetter.state, func.count()).group_by(LedgerDeadLetter.state)
        )
        return {state: int(count) for state, count in rows}


async def list_dead_letters(
    engine: AsyncEngine, *, states: Sequence[str] = (UNSTORED, SALVAGED), limit: int = 1000
) -> list[DeadLetter]:
    async with engine.connect() as connection:
        rows = await connection.execute(
            select(LedgerDeadLetter)
            .where(LedgerDeadLetter.state.in_(states))
            .order_by(LedgerDeadLetter.id)
            .limit(limit)
        )
        return [
            DeadLetter(
                id=row.id,
                request_id=row.request_id,
                state=row.state,
                error=row.error,
                changes=row.changes,
                attempts=row.attempts,
                first_failed_at=row.first_failed_at,
                last_failed_at=row.last_failed_at,
                entry=entry_from_text(row.entry),
            )
            for row in rows
        ]


__all__ = [
    "SALVAGED",
    "UNSTORED",
    "WRITTEN",
    "DeadLetter",
    "counts",
    "entry_as_text",
    "entry_from_text",
    "keep_in",
    "list_dead_letters",
    "salvaged",
]
