"""Ledger entries: the record written once per request, and the queries that read them."""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Dialect, Select, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from ledger.budgets.store import Settlement
from ledger.db.tables import LedgerEntryRow

ENTRY_STATUSES = (
    "ok",  # the provider answered and usage was captured
    "upstream_error",  # the provider answered with an error or broke off
    "timeout",  # the provider did not answer in time
    "invalid_request",  # Ledger refused the request before forwarding it
    "blocked",  # a budget refused it
    "client_disconnected",  # the client left before the response was complete
    "interrupted",  # Ledger stopped before the request finished
)


@dataclass(slots=True)
class LedgerEntry:
    """The final record of one request. Built up by the gateway, written once."""

    request_id: str
    started_at: datetime
    endpoint: str
    ended_at: datetime | None = None
    first_token_at: datetime | None = None
    kind: str = "request"
    corrects_request_id: str | None = None
    team_id: int | None = None
    key_id: int | None = None
    end_user: str | None = None
    tags: list[str] = field(default_factory=list)
    requested_model: str | None = None
    served_model: str | None = None
    provider: str | None = None
    stream: bool = False
    status: str = "interrupted"
    http_status: int = 500
    input_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_5m_tokens: int = 0
    cache_write_1h_tokens: int = 0
    output_tokens: int = 0
    reasoning_tokens: int = 0
    estimated_input_tokens: int | None = None
    usage_source: str = "none"
    cost_nanos: int = 0
    input_cost_nanos: int = 0
    cache_read_cost_nanos: int = 0
    cache_write_cost_nanos: int = 0
    output_cost_nanos: int = 0
    request_fee_nanos: int = 0
    price_id: int | None = None
    budget_id: int | None = None
    error: str | None = None
    # Not columns: budget changes that commit together with this entry, and what the
    # gateway's metrics need to know about it.
    settlements: list[Settlement] = field(default_factory=list)
    team_name: str | None = None
    provider_seconds: float = 0.0

    @property
    def latency_ms(self) -> int:
        if self.ended_at is None:
            return 0
        return int((self.ended_at - self.started_at).total_seconds() * 1000)

    def as_row(self) -> dict[str, Any]:
        row = {name: getattr(self, name) for name in _COLUMNS}
        row["tags"] = json.dumps(self.tags) if self.tags else None
        row["latency_ms"] = self.latency_ms
        row["ended_at"] = self.ended_at or self.started_at
        if row["error"] is not None:
            row["error"] = row["error"][:2000]
        for name, value in row.items():
            # PostgreSQL text cannot hold NUL, and one refused entry would hold back its
            # whole batch: a client's or provider's NUL is kept as U+FFFD instead.
            if isinstance(value, str) and "\x00" in value:
                row[name] = value.replace("\x00", "\ufffd")
        return row


_TRANSIENT = {"settlements", "team_name", "provider_seconds"}
_COLUMNS = tuple(f.name for f in fields(LedgerEntry) if f.name not in _TRANSIENT)


def insert_entries(connection: Connection, entries: Sequence[LedgerEntry]) -> list[str]:
    """Insert entries, skipping request ids already in the ledger; returns those inserted.

    The caller owns the transaction. Rows go to the driver as they are, converted by the
    columns' own types, in one multi-row ``INSERT … ON CONFLICT DO NOTHING RETURNING``
    per chunk: the ledger writer's thread shares the interpreter with the event loop, and
    SQLAlchemy's per-row parameter handling was most of the Python it ran per batch.
    """
    inserted: list[str] = []
    dialect = connection.dialect
    converters = _converters(dialect)
    rows = [entry.as_row() for entry in entries]
    start = 0
    while start < len(rows):
        size = _chunk_size(len(rows) - start)
        chunk = rows[start : start + size]
        start += size
        parameters = tuple(
            convert(row[name]) if convert is not None else row[name]
            for row in chunk
            for name, convert in converters
        )
        result = connection.exec_driver_sql(_insert_sql(dialect.paramstyle, size), parameters)
        inserted.extend(row[0] for row in result)
    return inserted


_INSERT_COLUMNS = (*_COLUMNS, "latency_ms")


def _chunk_size(remaining: int) -> int:
    # Powers of two: a handful of statement texts, each prepared once per connection.
    size = 1
    while size * 2 <= min(remaining, 256):
        size *= 2
    return size


def _converters(dialect: Dialect) -> tuple[tuple[str, Any], ...]:
    """Each column with its type's bind processor for ``dialect`` (timestamps, booleans)."""
    converters = _CONVERTERS.get(type(dialect))
    if converters is None:
        table = LedgerEntryRow.__table__
        converters = tuple(
            (name, table.c[name].type.dialect_impl(dialect).bind_processor(dialect))
            for name in _INSERT_COLUMNS
        )
        _CONVERTERS[type(dialect)] = converters
    return converters


# Per dialect class (SQLite's sync and async dialects store alike), not per engine.
_CONVERTERS: dict[type[Dialect], tuple[tuple[str, Any], ...]] = {}


@functools.cache
def _insert_sql(paramstyle: str, rows: int) -> str:
    width = len(_INSERT_COLUMNS)
    if paramstyle == "qmark":
        values = ", ".join("(" + ", ".join("?" * width) + ")" for _ in range(rows))
    elif paramstyle == "numeric_dollar":
        values = ", ".join(
            "(" + ", ".join(f"${row * width + column + 1}" for column in range(width)) + ")"
            for row in range(rows)
        )
    else:  # every driver Ledger installs uses one of the two above
        raise NotImplementedError(f"parameter style {paramstyle!r}")
    return (
        f"INSERT INTO {LedgerEntryRow.__tablename__} ({', '.join(_INSERT_COLUMNS)}) "  # noqa: S608
        f"VALUES {values} ON CONFLICT (request_id, started_at) DO NOTHING RETURNING request_id"
    )


@dataclass(frozen=True, slots=True)
class EntryFilter:
    request_id: str | None = None
    team_id: int | None = None
    key_id: int | None = None
    model: str | None = None
    status: str | None = None
    since: datetime | None = None
    until: datetime | None = None


def _filtered(query: Select[Any], where: EntryFilter) -> Select[Any]:
    t = LedgerEntryRow
    if where.request_id is not None:
        query = query.where(t.request_id == where.request_id)
    if where.team_id is not None:
        query = query.where(t.team_id == where.team_id)
    if where.key_id is not None:
        query = query.where(t.key_id == where.key_id)
    if where.model is not None:
        query = query.where(t.requested_model == where.model)
    if where.status is not None:
        query = query.where(t.status == where.status)
    if where.since is not None:
        query = query.where(t.started_at >= where.since)
    if where.until is not None:
        query = query.where(t.started_at < where.until)
    return query


async def list_entries(
    session: AsyncSession, where: EntryFilter, *, limit: int, after_id: int | None = None
) -> list[LedgerEntryRow]:
    """Newest first; ``after_id`` continues a previous page (keyset pagination)."""
    query = _filtered(select(LedgerEntryRow), where)
    if after_id is not None:
        query = query.where(LedgerEntryRow.id < after_id)
    query = query.order_by(LedgerEntryRow.id.desc()).limit(limit)
    return list((await session.scalars(query)).all())


async def count_entries(session: AsyncSession, where: EntryFilter) -> int:
    query = _filtered(select(func.count()).select_from(LedgerEntryRow), where)
    return int((await session.scalar(query)) or 0)


async def get_entry(session: AsyncSession, request_id: str) -> LedgerEntryRow | None:
    return await session.scalar(
        select(LedgerEntryRow).where(LedgerEntryRow.request_id == request_id)
    )
