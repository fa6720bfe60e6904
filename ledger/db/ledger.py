"""Ledger entries: the record written once per request, and the queries that read them."""

from __future__ import annotations

import functools
import itertools
import json
import operator
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, Dialect, Select, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from ledger.budgets.model import RequestScope
from ledger.budgets.store import Settlement
from ledger.db.tables import LedgerEntryRow, Timestamp
from ledger.endusers import fit_text

ENTRY_STATUSES = (
    "ok",  # the provider answered and usage was captured
    "upstream_error",  # the provider answered with an error or broke off
    "timeout",  # the provider did not answer in time
    "invalid_request",  # Ledger refused the request before forwarding it
    "blocked",  # a budget refused it
    "client_disconnected",  # the client left before the response was complete
    "interrupted",  # Ledger stopped before the request finished
)


def new_request_id() -> str:
    """A new request id: ``req_``, 12 hex digits of Unix milliseconds, 20 random ones.

    Time first, like a UUIDv7: ids sort by when their request started, and every index
    that leads with the request id is written at its right edge. Random ids (uuid4) put
    each entry of a batch on a different index page, and SQLite's commits of a batch cost
    three times as much.

    The random part comes from the ``random`` module, not ``secrets``: an id is no
    secret (every response carries it), and ``secrets`` asks the kernel for each one.
    ``random`` is seeded from the kernel at start-up and again in every forked worker.
    """
    return f"req_{time.time_ns() // 1_000_000:012x}{random.getrandbits(80):020x}"


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
    end_user: str | None = None  # as ledger.endusers stores it: fits, groups the same
    end_user_session: str | None = None  # e.g. Claude Code's session, apart from its account
    end_user_full: str | None = None  # the end user as sent, when ``end_user`` shortened it
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
    unpriced: bool = False  # no price known, served under unknown_models = "record"
    cost_nanos: int = 0
    input_cost_nanos: int = 0
    cache_read_cost_nanos: int = 0
    cache_write_cost_nanos: int = 0
    output_cost_nanos: int = 0
    request_fee_nanos: int = 0
    tool_fees_nanos: int = 0
    service_tier: str | None = None
    pricing_notes: str | None = None  # JSON list: the multipliers and fees that applied
    provider_cost_nanos: int | None = None
    price_id: int | None = None
    budget_id: int | None = None
    error: str | None = None
    # The provider's usage object as it came, kept when it was not believed (the entry
    # is then priced from Ledger's estimate): JSON, at most 4 KiB.
    raw_usage: str | None = None
    # Not columns: budget changes that commit together with this entry, and what the
    # gateway's metrics need to know about it.
    settlements: list[Settlement] = field(default_factory=list)
    budgets_seen: str | None = None  # the fingerprint of the budgets it was settled among
    # The model the request resolved to (its price's name), which model budgets match on
    # besides the requested name; the ledger has it as the price row's model (price_id).
    priced_model: str | None = None
    team_name: str | None = None
    provider_seconds: float = 0.0

    @property
    def latency_ms(self) -> int:
        if self.ended_at is None:
            return 0
        return int((self.ended_at - self.started_at).total_seconds() * 1000)

    def budget_scope(self) -> RequestScope:
        """What the budgets match this request on, as far as it is known."""
        return RequestScope(
            team_id=self.team_id,
            key_id=self.key_id,
            end_user=self.end_user,
            model=self.requested_model,
            tags=tuple(self.tags),
            priced_model=self.priced_model,
        )

    def as_row(self) -> dict[str, Any]:
        return dict(zip(_INSERT_COLUMNS, self.as_values(), strict=True))

    def as_values(self) -> list[Any]:
        """The row's values in ``_INSERT_COLUMNS`` order, as the table stores them.

        Built from one ``attrgetter`` call: it runs once per entry on the event loop (the
        journal) and again per entry in every ledger batch, so it is kept cheap.
        """
        values = list(_column_values(self))
        values.append(self.latency_ms)
        values[_TAGS] = json.dumps(self.tags) if self.tags else None
        if self.ended_at is None:
            values[_ENDED_AT] = self.started_at
        if self.error is not None and len(self.error) > 2000:
            values[_ERROR] = self.error[:2000]
        for index, limit in _TEXT:
            # PostgreSQL refuses NUL in text and a value longer than its column, and one
            # refused entry would hold back its whole batch: the gateway fits what clients
            # and providers send, and this fits anything that still does not.
            value = values[index]
            if value is not None and (len(value) > limit or "\x00" in value or not value.isascii()):
                values[index] = fit_text(value, limit)
        return values


_TRANSIENT = {
    "settlements", "budgets_seen", "priced_model", "team_name", "provider_seconds", "unpriced"
}  # fmt: skip
_COLUMNS = tuple(f.name for f in fields(LedgerEntry) if f.name not in _TRANSIENT)
_INSERT_COLUMNS = (*_COLUMNS, "latency_ms")
_column_values = operator.attrgetter(*_COLUMNS)
_TAGS, _ENDED_AT, _ERROR = (_COLUMNS.index(name) for name in ("tags", "ended_at", "error"))


def _text_limit(name: str) -> int:
    length = getattr(LedgerEntryRow.__table__.c[name].type, "length", None)
    return length if length is not None else 1 << 62  # TEXT: no limit but NUL


# Columns that hold text (``tags`` once it is JSON), with their length in characters.
_TEXT = tuple(
    (_COLUMNS.index(f.name), _text_limit(f.name))
    for f in fields(LedgerEntry)
    if f.name in _COLUMNS and (str(f.type).startswith("str") or f.name == "tags")
)


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
    rows = [entry.as_values() for entry in entries]
    for values in rows:
        for index, convert in converters:
            values[index] = convert(values[index])
    start = 0
    while start < len(rows):
        size = _chunk_size(len(rows) - start)
        parameters = tuple(itertools.chain.from_iterable(rows[start : start + size]))
        start += size
        result = connection.exec_driver_sql(_insert_sql(dialect.paramstyle, size), parameters)
        inserted.extend(row[0] for row in result)
    return inserted


def _chunk_size(remaining: int) -> int:
    # Powers of two: a handful of statement texts, each prepared once per connection
    # (asyncpg and sqlite3 keep a hundred). One statement per batch size, as SQLite once
    # had, kept up to a hundred prepared INSERTs of up to 256 rows of parameters each:
    # 237 against 170 MB resident after a 60 s soak, for no faster group commit.
    size = 1
    while size * 2 <= min(remaining, 256):
        size *= 2
    return size


def _converters(dialect: Dialect) -> tuple[tuple[int, Any], ...]:
    """The columns whose type converts values for ``dialect``, by position, with how."""
    converters = _CONVERTERS.get(type(dialect))
    if converters is None:
        table = LedgerEntryRow.__table__
        processors = (
            _sqlite_timestamp
            if dialect.name == "sqlite" and isinstance(table.c[name].type, Timestamp)
            else table.c[name].type.dialect_impl(dialect).bind_processor(dialect)
            for name in _INSERT_COLUMNS
        )
        converters = tuple(
            (index, process) for index, process in enumerate(processors) if process is not None
        )
        _CONVERTERS[type(dialect)] = converters
    return converters


# Per dialect class (SQLite's sync and async dialects store alike), not per engine.
_CONVERTERS: dict[type[Dialect], tuple[tuple[int, Any], ...]] = {}


def _sqlite_timestamp(value: datetime | None) -> str | None:
    """What :class:`Timestamp` binds on SQLite, in one call per value, not four.

    Three timestamps per entry went through ``Timestamp``, its ``DateTime`` and a
    ``%``-format of a dict: a fifth of the writer process's time per batch. The text is
    byte for byte what SQLAlchemy stores (``tests/unit/test_ledger_rows.py``).
    """
    if value is None:
        return None
    if value.tzinfo is None:
        raise ValueError("naive datetimes are ambiguous; pass an aware one")
    # "YYYY-MM-DD HH:MM:SS.ffffff" and the "+00:00" cut off: SQLAlchemy's storage format.
    return value.astimezone(UTC).isoformat(" ", "microseconds")[:26]


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
