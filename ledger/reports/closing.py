"""Closing a month: its report is frozen, and whatever reaches it later goes to the next one.

Closing stores the JSON, CSV and XLSX bytes of the month's report with their sha256;
every later read of a closed month returns exactly those bytes. A ledger entry that
is written later with a ``started_at`` inside a closed month (a late entry, or a
correction dated then) is added, by the ledger writer in the same transaction, to
``late_adjustments``; the next open month's report shows it as a ``late`` line and
claims it when that month is closed in turn.

Closing and the ledger writer cannot miss each other: on SQLite the close is one
``BEGIN IMMEDIATE`` transaction (writers wait); on PostgreSQL it locks the rollup
table, which every writer batch updates before it looks for closed months.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, String, bindparam, insert, select, update
from sqlalchemy import text as sql_text
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from ledger.db.tables import ClosedMonth, LateAdjustment, MonthSnapshot, Timestamp
from ledger.errors import Conflict
from ledger.reports import focus, monthly, render
from ledger.reports.months import month_bounds, month_label, parse_month
from ledger.reports.rollups import LOCK_ROLLUPS, verify_rollups
from ledger.reports.timebuckets import zone

if TYPE_CHECKING:
    from ledger.db.ledger import LedgerEntry


@dataclass(frozen=True, slots=True)
class ReportFile:
    """One monthly report file: its bytes, media type and, when closed, stored hash."""

    content: bytes
    media_type: str
    sha256: str
    closed: bool


@dataclass(frozen=True, slots=True)
class ClosedMonthInfo:
    month: str
    timezone: str
    period_start: datetime
    period_end: datetime
    closed_at: datetime
    content_sha256: str


# -- the writer's hook ------------------------------------------------------------------


def record_late_entries(connection: Connection, entries: Sequence[LedgerEntry]) -> None:
    """Add the entries that fall in a closed month to ``late_adjustments`` (pending)."""
    if not entries:
        return
    earliest = min(entry.started_at for entry in entries)
    latest = max(entry.started_at for entry in entries)
    closed = connection.execute(
        _CLOSED_MONTHS_TOUCHED, {"earliest": earliest, "latest": latest}
    ).all()
    if not closed:
        return
    sums: dict[tuple[str, int, str], list[int]] = {}
    for entry in entries:
        month = next(
            (row.month for row in closed if row.period_start <= entry.started_at < row.period_end),
            None,
        )
        if month is None:
            continue
        key = (month, entry.team_id or 0, entry.requested_model or "")
        values = sums.setdefault(key, [0] * len(_LATE_SUMS))
        for index, value in enumerate(_late_values(entry)):
            values[index] += value
    if not sums:
        return
    rows = [
        {"source_month": m, "team_id": t, "model": model, "reported_in": ""}
        | dict(zip(_LATE_SUMS, values, strict=True))
        for (m, t, model), values in sorted(sums.items())
    ]
    upsert = pg_insert if connection.dialect.name == "postgresql" else sqlite_insert
    statement = upsert(LateAdjustment)
    statement = statement.on_conflict_do_update(
        index_elements=["source_month", "team_id", "model", "reported_in"],
        set_={
            name: getattr(LateAdjustment, name) + statement.excluded[name] for name in _LATE_SUMS
        },
    )
    connection.execute(statement, rows)


# Built once: every batch of the ledger writer runs it (see rollups.add_to_rollups).
_CLOSED_MONTHS_TOUCHED = (
    sql_text(
        "SELECT month, period_start, period_end FROM closed_months "
        "WHERE period_end > :earliest AND period_start <= :latest"
    )
    .bindparams(bindparam("earliest", type_=Timestamp()), bindparam("latest", type_=Timestamp()))
    .columns(month=String(), period_start=Timestamp(), period_end=Timestamp())
)

_LATE_SUMS = ("entries", *monthly.LINE_FIELDS)


def _late_values(entry: LedgerEntry) -> list[int]:
    # In the order of _LATE_SUMS.
    return [
        1,
        1 if entry.kind == "request" else 0,
        entry.input_tokens,
        entry.cache_read_tokens,
        entry.cache_write_5m_tokens,
        entry.cache_write_1h_tokens,
        entry.output_tokens,
        entry.reasoning_tokens,
        entry.cost_nanos,
    ]


# -- closing ----------------------------------------------------------------------------


async def close_month(
    engine: AsyncEngine, month: str, timezone: str, *, now: datetime | None = None
) -> ClosedMonthInfo:
    """Freeze ``month`` (``YYYY-MM``) in ``timezone``; raises Conflict if closed or not over.

    The month's rollups are first checked against the raw entries (and repaired), so
    the frozen figures are the ledger's.
    """
    first = parse_month(month)
    label = month_label(first)
    now = now or datetime.now(UTC)
    start, end = month_bounds(first, zone(timezone))
    if end > now:
        raise Conflict(f"{label} has not ended yet in {timezone}; it can be closed from {end}")
    async with engine.connect() as connection:
        if await connection.scalar(select(ClosedMonth.month).where(ClosedMonth.month == label)):
            raise Conflict(f"{label} is already closed")
    await verify_rollups(engine, since=start, until=end, repair=True)
    postgres = engine.dialect.name == "postgresql"
    async with engine.connect() as connection:
        if not postgres:
            connection = await connection.execution_options(sqlite_begin="IMMEDIATE")
        async with connection.begin():
            if postgres:
                await connection.execute(sql_text(LOCK_ROLLUPS))
            if await connection.scalar(select(ClosedMonth.month).where(ClosedMonth.month == label)):
                raise Conflict(f"{label} is already closed")
            late = await monthly.pending_late_adjustments(connection, label)
            document = await monthly.monthly_document(connection, first, timezone, closed_at=now)
            files = {fmt: render.render(document, fmt) for fmt in render.FORMATS}
            # The FOCUS export's rows are frozen with the report, in the same snapshot.
            rows = await focus.focus_rows(connection, label, timezone)
            files |= {focus.SNAPSHOT[fmt]: focus.render(rows, fmt) for fmt in focus.FORMATS}
            digests = {fmt: hashlib.sha256(data).hexdigest() for fmt, data in files.items()}
            await connection.execute(
                insert(ClosedMonth).values(
                    month=label,
                    timezone=timezone,
                    period_start=start,
                    period_end=end,
                    closed_at=now,
                    content_sha256=digests["json"],
                )
            )
            await connection.execute(
                insert(MonthSnapshot),
                [
                    {
                        "month": label,
                        "format": fmt,
                        "media_type": _media_type(fmt),
                        "content": data,
                        "sha256": digests[fmt],
                    }
                    for fmt, data in files.items()
                ],
            )
            for row in late:
                await connection.execute(
                    update(LateAdjustment)
                    .where(
                        LateAdjustment.source_month == row.source_month,
                        LateAdjustment.team_id == row.team_id,
                        LateAdjustment.model == row.model,
                        LateAdjustment.reported_in == "",
                    )
                    .values(reported_in=label)
                )
    return ClosedMonthInfo(label, timezone, start, end, now, digests["json"])


def _media_type(fmt: str) -> str:
    if fmt in render.FORMATS:
        return render.FORMATS[fmt]
    return next(focus.FORMATS[f] for f, name in focus.SNAPSHOT.items() if name == fmt)


async def list_closed_months(connection: AsyncConnection) -> list[ClosedMonthInfo]:
    """Every closed month, most recent first."""
    rows = await connection.execute(
        select(*ClosedMonth.__table__.c).order_by(ClosedMonth.month.desc())
    )
    return [
        ClosedMonthInfo(
            r.month, r.timezone, r.period_start, r.period_end, r.closed_at, r.content_sha256
        )
        for r in rows
    ]


# -- reading ----------------------------------------------------------------------------


async def monthly_report_file(
    connection: AsyncConnection,
    month: str,
    timezone: str,
    fmt: str,
    *,
    team_id: int | None = None,
) -> ReportFile:
    """The report file of ``month``: the frozen bytes once closed, else computed now.

    With ``team_id`` (a team key), only that team's section, rendered from the frozen
    JSON when the month is closed.
    """
    if fmt not in render.FORMATS:
        raise ValueError(f"format must be one of {', '.join(render.FORMATS)}")
    first = parse_month(month)
    label = month_label(first)
    closed = await connection.scalar(select(ClosedMonth.timezone).where(ClosedMonth.month == label))
    if closed is not None:
        wanted = "json" if team_id is not None else fmt
        snapshot = (
            await connection.execute(
                select(MonthSnapshot.content, MonthSnapshot.sha256).where(
                    MonthSnapshot.month == label, MonthSnapshot.format == wanted
                )
            )
        ).one()
        if team_id is None:
            return ReportFile(bytes(snapshot.content), render.FORMATS[fmt], snapshot.sha256, True)
        document: dict[str, Any] = json.loads(bytes(snapshot.content))
    else:
        document = await monthly.monthly_document(connection, first, timezone)
    if team_id is not None:
        document = monthly.filter_team(document, team_id)
    data = render.render(document, fmt)
    return ReportFile(
        data, render.FORMATS[fmt], hashlib.sha256(data).hexdigest(), closed is not None
    )
