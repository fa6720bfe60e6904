"""The monthly finance report: per team (with its cost centre), per model, and a grand total.

A month is a calendar month in the reporting time zone. The report is built as a
plain document (dicts, lists, integers and decimal strings) from which the JSON, CSV
and XLSX files are rendered (``ledger.reports.render``); a closed month's files are
frozen (``ledger.reports.closing``).

Every figure is an integer sum of ledger entries: a line is the entries of one team
and model, a team subtotal the sum of its lines, the grand total the sum of the
subtotals. Late entries for a closed month appear as ``late`` lines in the next open
month. The chargeback markup is the team's percentage of each line's cost, rounded
half away from zero to the nano per line, and shown in its own column.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from ledger.db.tables import ClosedMonth, LateAdjustment, Team
from ledger.money import format_usd
from ledger.reports.months import month_bounds, month_label, next_label
from ledger.reports.spend import SpendFilters, Sums, aggregate
from ledger.reports.timebuckets import zone

# The sums on every line, in this order.
LINE_FIELDS = (
    "requests",
    "input_tokens",
    "cache_read_tokens",
    "cache_write_5m_tokens",
    "cache_write_1h_tokens",
    "output_tokens",
    "reasoning_tokens",
    "cost_nanos",
)
NO_TEAM = "(no team)"


@dataclass(slots=True)
class _Line:
    kind: str  # "usage" or "late"
    model: str
    source_month: str | None
    sums: list[int] = field(default_factory=lambda: [0] * len(LINE_FIELDS))


async def monthly_document(
    connection: AsyncConnection,
    month: date,
    timezone: str,
    *,
    closed_at: datetime | None = None,
) -> dict[str, Any]:
    """The report of ``month`` as a document, computed from the ledger now.

    ``closed_at`` marks the document as the closing snapshot.
    """
    label = month_label(month)
    start, end = month_bounds(month, zone(timezone))
    sums, _ = await aggregate(
        connection,
        since=start,
        until=end,
        timezone=timezone,
        granularity=None,
        dimensions=("team", "model"),
        filters=SpendFilters(),
    )
    lines: dict[int, list[_Line]] = {}
    for (_, team_id, model), values in sums.items():
        line = _Line("usage", model, None)
        line.sums = _line_sums(Sums(values))
        lines.setdefault(team_id, []).append(line)
    for row in await pending_late_adjustments(connection, label):
        line = _Line("late", row.model, row.source_month)
        line.sums = [int(getattr(row, name)) for name in LINE_FIELDS]
        lines.setdefault(row.team_id, []).append(line)
    teams = {
        row.id: row
        for row in await connection.execute(
            select(Team.id, Team.name, Team.cost_centre, Team.markup_bps)
        )
    }
    sections = [
        _team_section(team_id, teams.get(team_id), team_lines)
        for team_id, team_lines in lines.items()
    ]
    sections.sort(key=lambda section: (section["team"] == NO_TEAM, section["team"]))
    total = [0] * (len(LINE_FIELDS) + 1)
    for section in sections:
        for index, value in enumerate(section.pop("_sums")):
            total[index] += value
    return {
        "report": "monthly",
        "month": label,
        "timezone": timezone,
        "period": {"start": start.isoformat(), "end": end.isoformat()},
        "status": "closed" if closed_at else "open",
        "closed_at": closed_at.isoformat() if closed_at else None,
        "currency": "USD",
        "teams": sections,
        "total": _figures(total[:-1], total[-1]),
    }


def _line_sums(sums: Sums) -> list[int]:
    return [sums[name] for name in LINE_FIELDS]


def _team_section(team_id: int, team: Any, lines: list[_Line]) -> dict[str, Any]:
    markup_bps = int(team.markup_bps) if team is not None else 0
    lines.sort(key=lambda line: (line.kind != "usage", line.source_month or "", line.model))
    subtotal = [0] * (len(LINE_FIELDS) + 1)
    shown = []
    for line in lines:
        markup = markup_nanos(line.sums[-1], markup_bps)
        for index, value in enumerate([*line.sums, markup]):
            subtotal[index] += value
        shown.append(
            {
                "kind": line.kind,
                "model": line.model or None,
                "source_month": line.source_month,
                **_figures(line.sums, markup),
            }
        )
    return {
        "team": team.name if team is not None else NO_TEAM,
        "team_id": team_id or None,
        "cost_centre": team.cost_centre if team is not None else None,
        "markup_percent": bps_to_percent(markup_bps),
        "lines": shown,
        "subtotal": _figures(subtotal[:-1], subtotal[-1]),
        "_sums": subtotal,
    }


def _figures(sums: Sequence[int], markup: int) -> dict[str, Any]:
    values = dict(zip(LINE_FIELDS, sums, strict=True))
    cost = values["cost_nanos"]
    return {
        "requests": values["requests"],
        "input_tokens": values["input_tokens"],
        "cache_read_tokens": values["cache_read_tokens"],
        "cache_write_tokens": values["cache_write_5m_tokens"] + values["cache_write_1h_tokens"],
        "output_tokens": values["output_tokens"],
        "reasoning_tokens": values["reasoning_tokens"],
        "cost_usd": format_usd(cost),
        "markup_usd": format_usd(markup),
        "total_usd": format_usd(cost + markup),
    }


def markup_nanos(cost_nanos: int, markup_bps: int) -> int:
    """The chargeback markup on a cost: ``markup_bps`` basis points, rounded half away from 0."""
    sign = -1 if cost_nanos < 0 else 1
    return sign * ((abs(cost_nanos) * markup_bps + 5_000) // 10_000)


def bps_to_percent(bps: int) -> str:
    """Basis points as a percentage string with two places: 1250 -> ``"12.50"``."""
    return str((Decimal(bps) / 100).quantize(Decimal("0.01")))


def filter_team(document: dict[str, Any], team_id: int) -> dict[str, Any]:
    """The part of a report one team may see: its own section, its subtotal as the total."""
    sections = [s for s in document["teams"] if s["team_id"] == team_id]
    filtered = dict(document)
    filtered["teams"] = sections
    filtered["total"] = sections[0]["subtotal"] if sections else _figures([0] * len(LINE_FIELDS), 0)
    return filtered


# -- late adjustments: which open month shows them --------------------------------------


async def closed_month_labels(connection: AsyncConnection) -> set[str]:
    """Every closed month, ``YYYY-MM``."""
    return set((await connection.scalars(select(ClosedMonth.month))).all())


def next_open_month(source_month: str, closed: set[str]) -> str:
    """The first month after ``source_month`` that is not closed."""
    month = next_label(source_month)
    while month in closed:
        month = next_label(month)
    return month


async def pending_late_adjustments(connection: AsyncConnection, month: str) -> list[Any]:
    """Late adjustments not yet in a closed report that belong in ``month``'s report."""
    closed = await closed_month_labels(connection)
    if month in closed:
        return []
    rows = await connection.execute(
        select(*LateAdjustment.__table__.c).where(LateAdjustment.reported_in == "")
    )
    return [row for row in rows if next_open_month(row.source_month, closed) == month]
