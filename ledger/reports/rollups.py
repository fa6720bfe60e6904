"""Spend rollups maintained in the same transaction as the ledger entries they summarise.

Two tables hold, per UTC hour, the sums of the ledger entries (requests, errors,
blocked requests, token buckets, cost in nanos) and a latency histogram:

- ``spend_rollups_hourly`` per team, key, requested model, provider and status;
- ``spend_rollups_team_hourly`` per team, model and provider only: a few rows an hour,
  which is what the monthly report and team or model series read.

The ledger writer calls :func:`apply_entries_to_rollups` inside the transaction that
inserts the entries, so a committed entry is always in its rollups: there is no
unrolled tail to catch up on. Reports read raw entries only where rollups cannot
answer (partial hours at the edges of a range, zones whose offset is not a whole
number of hours, the user and tag dimensions).

:func:`verify_rollups` recomputes rollups from the raw entries and repairs any
difference; :func:`verify_rollups_job` is the scheduled form of it.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Connection,
    Integer,
    Table,
    and_,
    case,
    cast,
    delete,
    func,
    select,
)
from sqlalchemy import text as sql_text
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.sql.elements import TextClause

from ledger.db.tables import LedgerEntryRow, spend_rollups_hourly, spend_rollups_team_hourly
from ledger.reports import histogram
from ledger.reports.timebuckets import HOUR_S, epoch_hour, epoch_seconds, from_epoch_seconds

if TYPE_CHECKING:
    from ledger.db.ledger import LedgerEntry

logger = logging.getLogger("ledger.reports.rollups")

E = LedgerEntryRow

TOKEN_COLUMNS = (
    "input_tokens",
    "cache_read_tokens",
    "cache_write_5m_tokens",
    "cache_write_1h_tokens",
    "output_tokens",
    "reasoning_tokens",
)
LATENCY_COLUMNS = tuple(f"latency_{b:02d}" for b in range(histogram.BUCKETS))
# The stored sums, in the order of every metrics vector in this package.
METRICS = ("entries", "requests", "errors", "blocked", *TOKEN_COLUMNS, "cost_nanos",
           *LATENCY_COLUMNS)  # fmt: skip
_FIRST_LATENCY = METRICS.index(LATENCY_COLUMNS[0])

# Statuses counted as errors in reports; "blocked" is counted on its own.
ERROR_STATUSES = ("upstream_error", "timeout", "invalid_request", "interrupted")

# Every dimension, in the order of a detailed rollup key after the hour.
ALL_DIMENSIONS = ("team_id", "key_id", "model", "provider", "status")


@dataclass(frozen=True, slots=True)
class RollupLevel:
    """One rollup table and the dimensions (after ``epoch_hour``) it keeps."""

    table: Table
    dimensions: tuple[str, ...]

    @property
    def name(self) -> str:
        return self.table.name

    def covers(self, dimensions: Iterable[str]) -> bool:
        """True when every one of ``dimensions`` can be read from this level."""
        return set(dimensions) <= set(self.dimensions)


DETAILED = RollupLevel(spend_rollups_hourly, ALL_DIMENSIONS)
BY_TEAM_MODEL = RollupLevel(spend_rollups_team_hourly, ("team_id", "model", "provider"))
LEVELS = (BY_TEAM_MODEL, DETAILED)  # smallest first: reports use the first that covers

# (epoch_hour, team_id, key_id, model, provider, status)
DetailedKey = tuple[int, int, int, str, str, str]
RollupKey = tuple[Any, ...]


# -- writing ----------------------------------------------------------------------------


def aggregate_entries(entries: Iterable[LedgerEntry]) -> dict[DetailedKey, list[int]]:
    """Sum entries per detailed rollup row, in :data:`METRICS` order."""
    groups: dict[DetailedKey, list[int]] = {}
    for entry in entries:
        key = (
            epoch_hour(entry.started_at),
            entry.team_id or 0,
            entry.key_id or 0,
            entry.requested_model or "",
            entry.provider or "",
            entry.status,
        )
        sums = groups.setdefault(key, [0] * len(METRICS))
        is_request = entry.kind == "request"
        sums[0] += 1
        if is_request:
            sums[1] += 1
            sums[2] += entry.status in ERROR_STATUSES
            sums[3] += entry.status == "blocked"
            sums[_FIRST_LATENCY + histogram.bucket_of(entry.latency_ms)] += 1
        sums[4] += entry.input_tokens
        sums[5] += entry.cache_read_tokens
        sums[6] += entry.cache_write_5m_tokens
        sums[7] += entry.cache_write_1h_tokens
        sums[8] += entry.output_tokens
        sums[9] += entry.reasoning_tokens
        sums[10] += entry.cost_nanos
    return groups


def coarsen(groups: dict[DetailedKey, list[int]], level: RollupLevel) -> dict[RollupKey, list[int]]:
    """Detailed sums added up to the rows of ``level``."""
    if level.dimensions == ALL_DIMENSIONS:
        return dict(groups)
    positions = [1 + ALL_DIMENSIONS.index(name) for name in level.dimensions]
    coarse: dict[RollupKey, list[int]] = {}
    for key, sums in groups.items():
        target = coarse.setdefault((key[0], *(key[p] for p in positions)), [0] * len(METRICS))
        for index, value in enumerate(sums):
            target[index] += value
    return coarse


def apply_entries_to_rollups(connection: Connection, entries: Sequence[LedgerEntry]) -> None:
    """Add ``entries`` to the rollups inside the caller's transaction (the writer's).

    The batch is summed in Python first, then each rollup row gets one upsert that
    adds to it. Entries that belong to a month already closed are also recorded as
    late adjustments for the next open month (see ``ledger.reports.closing``).
    """
    if not entries:
        return
    groups = aggregate_entries(entries)
    for level in LEVELS:
        add_to_rollups(connection, level, coarsen(groups, level))
    # After the upserts on purpose: on PostgreSQL a month close holds a lock on the
    # rollups, so by now any close that could concern this batch is visible.
    from ledger.reports.closing import record_late_entries

    record_late_entries(connection, entries)


def add_to_rollups(
    connection: Connection, level: RollupLevel, groups: dict[RollupKey, list[int]]
) -> None:
    """Upsert rows that add ``groups`` to ``level`` (sorted, so writers never deadlock)."""
    if not groups:
        return
    rows = [_row(level, key, sums) for key, sums in sorted(groups.items())]
    connection.execute(_upsert(level.table.name, level.dimensions), rows)


@functools.cache
def _upsert(table: str, dimensions: tuple[str, ...]) -> TextClause:
    """``INSERT … ON CONFLICT DO UPDATE SET m = m + excluded.m``, built once.

    The same text runs on SQLite and PostgreSQL. Built once and kept as text because
    constructing (and cache-keying) a 53-column upsert expression on every write cost
    milliseconds per batch on the hot path.
    """
    names = ("epoch_hour", *dimensions, *METRICS)
    columns = ", ".join(names)
    values = ", ".join(f":{name}" for name in names)
    keys = ", ".join(("epoch_hour", *dimensions))
    additions = ", ".join(f"{name} = {table}.{name} + excluded.{name}" for name in METRICS)
    return sql_text(
        f"INSERT INTO {table} ({columns}) VALUES ({values}) "  # noqa: S608 (fixed names)
        f"ON CONFLICT ({keys}) DO UPDATE SET {additions}"
    )


def _row(level: RollupLevel, key: RollupKey, sums: Sequence[int]) -> dict[str, Any]:
    names = ("epoch_hour", *level.dimensions)
    return dict(zip(names, key, strict=True)) | dict(zip(METRICS, sums, strict=True))


def _insert(connection: AsyncConnection) -> Any:
    return pg_insert if connection.dialect.name == "postgresql" else sqlite_insert


# -- reading: the same metrics from rollups and from raw entries ------------------------


def rollup_metric_columns(table: Table) -> list[ColumnElement[Any]]:
    """SELECT items summing the rows of a rollup table, labelled as :data:`METRICS`."""
    return [func.sum(table.c[name]).label(name) for name in METRICS]


def raw_metric_columns() -> list[ColumnElement[Any]]:
    """The same SELECT items as :func:`rollup_metric_columns`, computed from ledger entries."""
    is_request = E.kind == "request"
    latency: list[ColumnElement[Any]] = []
    bounds = histogram.LOWER_BOUNDS
    for bucket, name in enumerate(LATENCY_COLUMNS):
        conditions = [is_request]
        if bucket > 0:
            conditions.append(E.latency_ms >= bounds[bucket])
        if bucket < histogram.LAST:
            conditions.append(E.latency_ms < bounds[bucket + 1])
        latency.append(func.sum(case((and_(*conditions), 1), else_=0)).label(name))
    errors = and_(is_request, E.status.in_(ERROR_STATUSES))
    blocked = and_(is_request, E.status == "blocked")
    return [
        func.count().label("entries"),
        func.sum(case((is_request, 1), else_=0)).label("requests"),
        func.sum(case((errors, 1), else_=0)).label("errors"),
        func.sum(case((blocked, 1), else_=0)).label("blocked"),
        *(func.sum(E.__table__.c[name]).label(name) for name in TOKEN_COLUMNS),
        func.sum(E.cost_nanos).label("cost_nanos"),
        *latency,
    ]


def raw_epoch_seconds(dialect: str) -> ColumnElement[int]:
    """An entry's ``started_at`` as whole UTC seconds since 1970, floored, per dialect."""
    if dialect == "postgresql":
        return cast(func.floor(func.extract("epoch", E.started_at)), BigInteger)
    return cast(func.strftime("%s", E.started_at), Integer)


def raw_dimension(name: str) -> ColumnElement[Any]:
    """A rollup dimension computed from raw entries, with the same 0 / "" stand-ins."""
    expressions: dict[str, ColumnElement[Any]] = {
        "team_id": func.coalesce(E.team_id, 0),
        "key_id": func.coalesce(E.key_id, 0),
        "model": func.coalesce(E.requested_model, ""),
        "provider": func.coalesce(E.provider, ""),
        "status": E.__table__.c.status,
    }
    return expressions[name]


def metrics_of(row: Any) -> list[int]:
    """A result row's metrics as exact integers (PostgreSQL sums BIGINT into NUMERIC)."""
    mapping = row._mapping
    return [int(mapping[name] or 0) for name in METRICS]


# -- verification and repair ------------------------------------------------------------


@dataclass
class RollupCheck:
    """What :func:`verify_rollups` found: rollup rows missing, extra or different."""

    hours_checked: int = 0
    rows_checked: int = 0
    missing: int = 0
    extra: int = 0
    mismatched: int = 0
    repaired: bool = False
    differences: list[str] = field(default_factory=list)  # the first few, for the log

    @property
    def ok(self) -> bool:
        """True when the rollups equalled the raw entries everywhere checked."""
        return self.missing == self.extra == self.mismatched == 0

    def merged(self, other: RollupCheck) -> RollupCheck:
        """Both checks as one (for a run that checked two ranges)."""
        return RollupCheck(
            hours_checked=self.hours_checked + other.hours_checked,
            rows_checked=self.rows_checked + other.rows_checked,
            missing=self.missing + other.missing,
            extra=self.extra + other.extra,
            mismatched=self.mismatched + other.mismatched,
            repaired=self.repaired or other.repaired,
            differences=(self.differences + other.differences)[:20],
        )

    def _add(self, found: _ChunkDifferences) -> None:
        self.missing += found.missing
        self.extra += found.extra
        self.mismatched += found.mismatched
        self.rows_checked += found.rows
        self.differences.extend(found.details[: 20 - len(self.differences)])


async def verify_rollups(
    engine: AsyncEngine,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    repair: bool = True,
    chunk_hours: int = 24,
) -> RollupCheck:
    """Recompute the rollups from raw entries over ``[since, until)`` and fix differences.

    Without bounds the whole ledger is checked. Hours are checked ``chunk_hours`` at a
    time in a consistent snapshot (writers are not blocked); a chunk that differs is
    checked again and rewritten while writers wait (PostgreSQL: a lock on the rollup
    tables; SQLite: ``BEGIN IMMEDIATE``), so a repair never races the ledger writer.
    Stretches without entries or rollups are skipped with two index lookups.
    """
    check = RollupCheck()
    first, last = await _hour_range(engine, since, until)
    if first is None or last is None:
        return check
    async for hour, end in _chunks(engine, first, last, chunk_hours):
        found = await _check_chunk(engine, hour, end, repair=False)
        if found and repair:
            found = await _check_chunk(engine, hour, end, repair=True)
            check.repaired = check.repaired or bool(found)
        check._add(found)
    check.hours_checked = last - first
    if not check.ok:
        logger.warning(
            "rollups differed from the ledger: %d missing, %d extra, %d mismatched rows%s",
            check.missing,
            check.extra,
            check.mismatched,
            " (repaired)" if check.repaired else "",
        )
    return check


async def verify_rollups_job(engine: AsyncEngine, *, now: datetime | None = None) -> RollupCheck:
    """The scheduled check: the last three hours on every run, and one older UTC day in turn.

    Each run costs about a day of entries, however large the ledger; the older day
    moves on by one every run (by the 5-minute tick), so the whole history is swept
    every ``days of history`` runs, i.e. about 288 days of history per day.
    """
    now = now or datetime.now(UTC)
    check = await verify_rollups(
        engine, since=now - timedelta(hours=3), until=now + timedelta(hours=1)
    )
    first, last = await _hour_range(engine, None, None)
    if first is None or last is None:
        return check
    days = max(1, -(-(last - first) // 24))
    day_start = first + (epoch_seconds(now) // 300 % days) * 24
    older = await verify_rollups(
        engine,
        since=from_epoch_seconds(day_start * HOUR_S),
        until=from_epoch_seconds((day_start + 24) * HOUR_S),
    )
    return check.merged(older)


async def rebuild_rollups(engine: AsyncEngine, *, chunk_hours: int = 24) -> RollupCheck:
    """Rewrite every rollup row that differs from the raw entries, a chunk at a time.

    For a bulk load that bypassed the writer: unlike :func:`verify_rollups` it does not
    look first without locking, so each chunk is read once. ``missing`` counts the rows
    written.
    """
    check = RollupCheck()
    first, last = await _hour_range(engine, None, None)
    if first is None or last is None:
        return check
    async for hour, end in _chunks(engine, first, last, chunk_hours):
        found = await _check_chunk(engine, hour, end, repair=True)
        check.repaired = check.repaired or bool(found)
        check._add(found)
    check.hours_checked = last - first
    return check


@dataclass
class _ChunkDifferences:
    rows: int = 0
    missing: int = 0
    extra: int = 0
    mismatched: int = 0
    details: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.missing or self.extra or self.mismatched)


async def _chunks(engine: AsyncEngine, first: int, last: int, size: int) -> Any:
    """``(start, end)`` hour ranges of at most ``size`` hours that may hold data."""
    hour = first
    while hour < last:
        following = await _next_hour_with_data(engine, hour)
        if following is None or following >= last:
            return
        hour = max(hour, following)
        end = min(hour + size, last)
        yield hour, end
        hour = end


async def _check_chunk(
    engine: AsyncEngine, first_hour: int, end_hour: int, *, repair: bool
) -> _ChunkDifferences:
    postgres = engine.dialect.name == "postgresql"
    options: dict[str, Any] = {}
    if postgres and not repair:
        options["isolation_level"] = "REPEATABLE READ"
    if not postgres and repair:
        options["sqlite_begin"] = "IMMEDIATE"
    found = _ChunkDifferences()
    async with engine.connect() as connection:
        connection = await connection.execution_options(**options)
        async with connection.begin():
            if postgres and repair:
                await connection.execute(sql_text(LOCK_ROLLUPS))
            raw = await _raw_rollups(connection, first_hour, end_hour)
            for level in LEVELS:
                expected = coarsen(raw, level)
                stored = await _stored_rollups(connection, level, first_hour, end_hour)
                level_found = _compare(level, expected, stored)
                if repair and level_found:
                    await _rewrite(connection, level, expected, stored)
                found.rows += level_found.rows
                found.missing += level_found.missing
                found.extra += level_found.extra
                found.mismatched += level_found.mismatched
                found.details.extend(level_found.details)
    return found


# Taken by a month close and by a rollup repair: ledger writers (which update the
# rollups in every batch) wait until it is released.
LOCK_ROLLUPS = (
    "LOCK TABLE spend_rollups_hourly, spend_rollups_team_hourly IN SHARE ROW EXCLUSIVE MODE"
)


async def _raw_rollups(
    connection: AsyncConnection, first_hour: int, end_hour: int
) -> dict[DetailedKey, list[int]]:
    hour = raw_epoch_seconds(connection.dialect.name) // HOUR_S
    dimensions = [hour, *(raw_dimension(name) for name in ALL_DIMENSIONS)]
    query = (
        select(*dimensions, *raw_metric_columns())
        .where(E.started_at >= from_epoch_seconds(first_hour * HOUR_S))
        .where(E.started_at < from_epoch_seconds(end_hour * HOUR_S))
        .group_by(*dimensions)
    )
    result = await connection.execute(query)
    return {
        (int(r[0]), int(r[1]), int(r[2]), str(r[3]), str(r[4]), str(r[5])): metrics_of(r)
        for r in result
    }


async def _stored_rollups(
    connection: AsyncConnection, level: RollupLevel, first_hour: int, end_hour: int
) -> dict[RollupKey, list[int]]:
    table = level.table
    names = ("epoch_hour", *level.dimensions)
    query = select(*(table.c[name] for name in (*names, *METRICS))).where(
        table.c.epoch_hour >= first_hour, table.c.epoch_hour < end_hour
    )
    result = await connection.execute(query)
    return {tuple(row[: len(names)]): [int(value) for value in row[len(names) :]] for row in result}


def _compare(
    level: RollupLevel, expected: dict[RollupKey, list[int]], stored: dict[RollupKey, list[int]]
) -> _ChunkDifferences:
    found = _ChunkDifferences(rows=len(expected))
    for key, sums in expected.items():
        if key not in stored:
            found.missing += 1
            found.details.append(f"{level.name}: missing {key}")
        elif stored[key] != sums:
            found.mismatched += 1
            found.details.append(f"{level.name}: different {key}")
    for key in stored.keys() - expected.keys():
        found.extra += 1
        found.details.append(f"{level.name}: extra {key}")
    return found


async def _rewrite(
    connection: AsyncConnection,
    level: RollupLevel,
    expected: dict[RollupKey, list[int]],
    stored: dict[RollupKey, list[int]],
) -> None:
    table = level.table
    names = ("epoch_hour", *level.dimensions)
    for key in sorted(key for key in stored if expected.get(key) != stored[key]):
        await connection.execute(
            delete(table).where(*(table.c[n] == v for n, v in zip(names, key, strict=True)))
        )
    absent = {key: sums for key, sums in expected.items() if stored.get(key) != sums}
    if absent:
        await connection.execute(
            _insert(connection)(table),
            [_row(level, key, sums) for key, sums in sorted(absent.items())],
        )


async def _next_hour_with_data(engine: AsyncEngine, hour: int) -> int | None:
    """The first hour at or after ``hour`` with a ledger entry or a rollup row."""
    async with engine.connect() as connection:
        hours = []
        for level in LEVELS:
            table = level.table
            hours.append(
                await connection.scalar(
                    select(func.min(table.c.epoch_hour)).where(table.c.epoch_hour >= hour)
                )
            )
        started = await connection.scalar(
            select(func.min(E.started_at)).where(E.started_at >= from_epoch_seconds(hour * HOUR_S))
        )
    hours.append(epoch_hour(started) if started else None)
    present = [h for h in hours if h is not None]
    return min(present) if present else None


async def _hour_range(
    engine: AsyncEngine, since: datetime | None, until: datetime | None
) -> tuple[int | None, int | None]:
    first = epoch_hour(since) if since is not None else None
    last = epoch_hour_ceiling(until) if until is not None else None
    if first is not None and last is not None:
        return first, last
    lows: list[int] = []
    highs: list[int] = []
    async with engine.connect() as connection:
        bounds = (
            await connection.execute(select(func.min(E.started_at), func.max(E.started_at)))
        ).one()
        if bounds[0] is not None:
            lows.append(epoch_hour(bounds[0]))
            highs.append(epoch_hour(bounds[1]))
        for level in LEVELS:
            table = level.table
            hours = (
                await connection.execute(
                    select(func.min(table.c.epoch_hour), func.max(table.c.epoch_hour))
                )
            ).one()
            if hours[0] is not None:
                lows.append(int(hours[0]))
                highs.append(int(hours[1]))
    if first is None:
        first = min(lows) if lows else None
    if last is None:
        last = max(highs) + 1 if highs else None
    return first, last


def epoch_hour_ceiling(at: datetime) -> int:
    """The first whole UTC hour at or after ``at``."""
    hour = epoch_hour(at)
    return hour if from_epoch_seconds(hour * HOUR_S) == at else hour + 1
