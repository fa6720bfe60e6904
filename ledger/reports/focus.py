"""The month's spend as FinOps FOCUS 1.2 rows, in CSV or Parquet.

One row per day (in the reporting time zone), team, key, end user, tags, model,
provider, price version, kind of entry, from the ledger entries of the month, plus
one row per ``late`` line of the monthly report (entries of closed months reported
here). Σ BilledCost is the monthly report's ``cost_usd`` total exactly, and
Σ x_MarkupCost its ``markup_usd``: the monthly report rounds a markup per team and
model line, so each line's markup is spread over its rows and the rounding rest given
to the line's last row. Closing a month freezes these files with its report; a month
closed before the export existed exports one row per line of its frozen report.

BilledCost, EffectiveCost, ListCost and ContractedCost are the same figure: Ledger
prices at list price and knows no discounts. Money is a decimal string in CSV and a
``decimal128(38, 9)`` in Parquet (dollars with nine places: exact nanos).
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from ledger.db.tables import ApiKey, ClosedMonth, LedgerEntryRow, MonthSnapshot, Team
from ledger.money import format_usd
from ledger.reports import monthly
from ledger.reports.months import local_midnight, month_bounds, month_label, parse_month
from ledger.reports.timebuckets import zone

FORMATS = {"csv": "text/csv; charset=utf-8", "parquet": "application/vnd.apache.parquet"}
# The formats' names among a closed month's snapshots (``month_snapshots.format``).
SNAPSHOT = {"csv": "fcsv", "parquet": "fparquet"}
MONEY_COLUMNS = (
    "BilledCost",
    "EffectiveCost",
    "ListCost",
    "ContractedCost",
    "ListUnitPrice",
    "x_MarkupCost",
)
COLUMNS = (
    "BillingAccountId",
    "BillingCurrency",
    "BillingPeriodStart",
    "BillingPeriodEnd",
    "ChargePeriodStart",
    "ChargePeriodEnd",
    "ChargeCategory",
    "ChargeDescription",
    "BilledCost",
    "EffectiveCost",
    "ListCost",
    "ContractedCost",
    "ConsumedQuantity",
    "ConsumedUnit",
    "PricingQuantity",
    "PricingUnit",
    "ListUnitPrice",
    "ProviderName",
    "PublisherName",
    "InvoiceIssuerName",
    "ServiceCategory",
    "ServiceName",
    "SkuId",
    "SkuPriceId",
    "SubAccountId",
    "SubAccountName",
    "Tags",
    "x_MarkupCost",
    "x_Requests",
    "x_InputTokens",
    "x_CacheReadTokens",
    "x_CacheWriteTokens",
    "x_OutputTokens",
    "x_SourceMonth",
)
INTEGER_COLUMNS = (
    "ConsumedQuantity",
    "x_Requests",
    "x_InputTokens",
    "x_CacheReadTokens",
    "x_CacheWriteTokens",
    "x_OutputTokens",
)
TIME_COLUMNS = ("BillingPeriodStart", "BillingPeriodEnd", "ChargePeriodStart", "ChargePeriodEnd")
_NANO = Decimal("0.000000001")


@dataclass(frozen=True, slots=True)
class FocusExport:
    """One export file: its bytes, media type, and whether the month is closed."""

    content: bytes
    media_type: str
    closed: bool


async def focus_rows(
    connection: AsyncConnection, month: str, timezone: str
) -> list[dict[str, Any]]:
    """The FOCUS rows of ``month`` (``YYYY-MM``): money in nanos, times aware, tags JSON.

    Closing a month freezes its FOCUS files with its report (``focus_file`` reads them);
    for a month closed before the export existed, the rows are its frozen report's lines,
    one per team and model over the whole month.
    """
    first = parse_month(month)
    label = month_label(first)
    closed = await connection.scalar(select(ClosedMonth.timezone).where(ClosedMonth.month == label))
    if closed is not None:
        return await _frozen_rows(connection, label, closed)
    return await _open_rows(connection, first, timezone)


async def focus_file(
    connection: AsyncConnection, month: str, timezone: str, fmt: str
) -> FocusExport:
    """The FOCUS export of ``month`` as ``csv`` or ``parquet``; a closed month's frozen bytes."""
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}")
    label = month_label(parse_month(month))
    closed = await connection.scalar(select(ClosedMonth.month).where(ClosedMonth.month == label))
    if closed is not None:
        frozen = await connection.scalar(
            select(MonthSnapshot.content).where(
                MonthSnapshot.month == label, MonthSnapshot.format == SNAPSHOT[fmt]
            )
        )
        if frozen is not None:
            return FocusExport(bytes(frozen), FORMATS[fmt], True)
    rows = await focus_rows(connection, month, timezone)
    return FocusExport(render(rows, fmt), FORMATS[fmt], closed is not None)


def render(rows: list[dict[str, Any]], fmt: str) -> bytes:
    """The rows as a ``csv`` or ``parquet`` file."""
    return to_csv(rows) if fmt == "csv" else to_parquet(rows)


# -- rows of an open month --------------------------------------------------------------


async def _open_rows(
    connection: AsyncConnection, first: date, timezone: str
) -> list[dict[str, Any]]:
    tz = zone(timezone)
    start, end = month_bounds(first, tz)
    teams = {r.id: r for r in await connection.execute(select(*Team.__table__.c))}
    keys = {r.id: r.name for r in await connection.execute(select(ApiKey.id, ApiKey.name))}
    e = LedgerEntryRow
    result = await connection.execute(
        select(
            e.started_at,
            e.kind,
            e.team_id,
            e.key_id,
            e.end_user,
            e.tags,
            e.requested_model,
            e.provider,
            e.price_id,
            e.input_tokens,
            e.cache_read_tokens,
            e.cache_write_5m_tokens,
            e.cache_write_1h_tokens,
            e.output_tokens,
            e.cost_nanos,
        ).where(e.started_at >= start, e.started_at < end)
    )
    groups: dict[tuple[Any, ...], list[int]] = {}
    for r in result:
        day = r.started_at.astimezone(tz).date()
        key = (
            day,
            r.team_id or 0,
            r.key_id,
            r.end_user,
            r.tags,
            r.requested_model or "",
            r.provider,
            r.price_id,
            r.kind,
        )
        sums = groups.setdefault(key, [0] * 6)
        sums[0] += 1 if r.kind == "request" else 0
        sums[1] += r.input_tokens
        sums[2] += r.cache_read_tokens
        sums[3] += r.cache_write_5m_tokens + r.cache_write_1h_tokens
        sums[4] += r.output_tokens
        sums[5] += r.cost_nanos
    rows: list[dict[str, Any]] = []
    for key in sorted(groups, key=_sort_key):
        day, team_id, key_id, end_user, tags, model, provider, price_id, kind = key
        requests, inp, cached, written, output, cost = groups[key]
        team = teams.get(team_id)
        charge_start = max(local_midnight(day, tz), start)
        charge_end = min(local_midnight(day + timedelta(days=1), tz), end)
        rows.append(
            _row(
                start,
                end,
                charge_start,
                charge_end,
                category="Adjustment" if kind == "adjustment" else "Usage",
                description=f"{model or 'unknown model'} ({kind})",
                cost=cost,
                tokens=(requests, inp, cached, written, output),
                provider=provider,
                model=model,
                price_id=price_id,
                team_id=team_id,
                team=team,
                tags={
                    "cost_centre": team.cost_centre if team is not None else None,
                    "key": keys.get(key_id) if key_id is not None else None,
                    "key_id": key_id,
                    "user": end_user,
                    "tags": json.loads(tags) if tags else [],
                },
                source_month=None,
            )
        )
    for late in await monthly.pending_late_adjustments(connection, month_label(first)):
        team = teams.get(late.team_id)
        rows.append(
            _row(
                start,
                end,
                start,
                end,
                category="Adjustment",
                description=f"{late.model or 'unknown model'} (late entries of {late.source_month})",
                cost=int(late.cost_nanos),
                tokens=(
                    int(late.requests),
                    int(late.input_tokens),
                    int(late.cache_read_tokens),
                    int(late.cache_write_5m_tokens) + int(late.cache_write_1h_tokens),
                    int(late.output_tokens),
                ),
                provider=None,
                model=late.model,
                price_id=None,
                team_id=late.team_id,
                team=team,
                tags={"cost_centre": team.cost_centre if team is not None else None},
                source_month=late.source_month,
            )
        )
    _spread_markups(rows, {tid: int(t.markup_bps) for tid, t in teams.items()})
    return rows


def _sort_key(key: tuple[Any, ...]) -> tuple[Any, ...]:
    return tuple("" if part is None else str(part) for part in key)


def _spread_markups(rows: list[dict[str, Any]], markup_bps: dict[int, int]) -> None:
    """Give each row its share of its monthly line's markup, the line's rounding rest last."""
    lines: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for row in rows:
        line = (row["_team_id"], row["_model"], row["x_SourceMonth"])
        lines.setdefault(line, []).append(row)
    for (team_id, _, _), members in lines.items():
        bps = markup_bps.get(team_id, 0)
        total = monthly.markup_nanos(sum(row["BilledCost"] for row in members), bps)
        for row in members:
            row["x_MarkupCost"] = monthly.markup_nanos(row["BilledCost"], bps)
        members[-1]["x_MarkupCost"] += total - sum(row["x_MarkupCost"] for row in members)


# -- rows of a closed month -------------------------------------------------------------


async def _frozen_rows(
    connection: AsyncConnection, label: str, timezone: str
) -> list[dict[str, Any]]:
    content = await connection.scalar(
        select(MonthSnapshot.content).where(
            MonthSnapshot.month == label, MonthSnapshot.format == "json"
        )
    )
    document = json.loads(bytes(content))
    start = datetime.fromisoformat(document["period"]["start"])
    end = datetime.fromisoformat(document["period"]["end"])
    rows = []
    for section in document["teams"]:
        team = _FrozenTeam(section["team"], section["cost_centre"])
        for line in section["lines"]:
            late = line["kind"] == "late"
            model = line["model"] or ""
            row = _row(
                start,
                end,
                start,
                end,
                category="Adjustment" if late else "Usage",
                description=(
                    f"{model or 'unknown model'} (late entries of {line['source_month']})"
                    if late
                    else f"{model or 'unknown model'} (closed month)"
                ),
                cost=_nanos(line["cost_usd"]),
                tokens=(
                    line["requests"],
                    line["input_tokens"],
                    line["cache_read_tokens"],
                    line["cache_write_tokens"],
                    line["output_tokens"],
                ),
                provider=None,
                model=model,
                price_id=None,
                team_id=section["team_id"] or 0,
                team=team if section["team_id"] else None,
                tags={"cost_centre": section["cost_centre"]},
                source_month=line["source_month"],
            )
            row["x_MarkupCost"] = _nanos(line["markup_usd"])
            rows.append(row)
    return rows


@dataclass(frozen=True, slots=True)
class _FrozenTeam:
    name: str
    cost_centre: str | None


def _nanos(usd: str) -> int:
    return int(Decimal(usd) / _NANO)


# -- one row ----------------------------------------------------------------------------


def _row(
    billing_start: datetime,
    billing_end: datetime,
    charge_start: datetime,
    charge_end: datetime,
    *,
    category: str,
    description: str,
    cost: int,
    tokens: tuple[int, int, int, int, int],
    provider: str | None,
    model: str,
    price_id: int | None,
    team_id: int,
    team: Any,
    tags: dict[str, Any],
    source_month: str | None,
) -> dict[str, Any]:
    requests, inp, cached, written, output = tokens
    consumed = inp + cached + written + output
    # A blended price per million tokens, to the nano: ListCost / PricingQuantity.
    unit = (cost * 1_000_000) // consumed if consumed and cost >= 0 else None
    return {
        "BillingAccountId": "ledger",
        "BillingCurrency": "USD",
        "BillingPeriodStart": billing_start,
        "BillingPeriodEnd": billing_end,
        "ChargePeriodStart": charge_start,
        "ChargePeriodEnd": charge_end,
        "ChargeCategory": category,
        "ChargeDescription": description,
        "BilledCost": cost,
        "EffectiveCost": cost,
        "ListCost": cost,
        "ContractedCost": cost,
        "ConsumedQuantity": consumed,
        "ConsumedUnit": "Tokens",
        "PricingQuantity": str(Decimal(consumed) / 1_000_000),
        "PricingUnit": "1M Tokens",
        "ListUnitPrice": unit,
        "ProviderName": provider,
        "PublisherName": provider,
        "InvoiceIssuerName": provider,
        "ServiceCategory": "AI and Machine Learning",
        "ServiceName": f"{provider} API" if provider else "LLM API",
        "SkuId": model or None,
        "SkuPriceId": str(price_id) if price_id is not None else None,
        "SubAccountId": str(team_id) if team_id else None,
        "SubAccountName": team.name if team is not None else monthly.NO_TEAM,
        "Tags": json.dumps(tags, sort_keys=True, separators=(",", ":")),
        "x_MarkupCost": 0,
        "x_Requests": requests,
        "x_InputTokens": inp,
        "x_CacheReadTokens": cached,
        "x_CacheWriteTokens": written,
        "x_OutputTokens": output,
        "x_SourceMonth": source_month,
        "_team_id": team_id,
        "_model": model,
    }


# -- files ------------------------------------------------------------------------------


def to_csv(rows: Iterable[dict[str, Any]]) -> bytes:
    """The rows as CSV: money as exact decimal dollars, times as ISO 8601, empty for null."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(COLUMNS)
    for row in rows:
        writer.writerow([_csv_value(name, row[name]) for name in COLUMNS])
    return out.getvalue().encode()


def _csv_value(name: str, value: Any) -> str:
    if value is None:
        return ""
    if name in MONEY_COLUMNS:
        return format_usd(value)
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value)


def to_parquet(rows: Iterable[dict[str, Any]]) -> bytes:
    """The rows as Parquet: money ``decimal128(38, 9)``, times UTC timestamps, counts int64."""
    import pyarrow as pa  # only the export needs it
    import pyarrow.parquet as pq

    money = pa.decimal128(38, 9)
    fields = []
    for name in COLUMNS:
        if name in MONEY_COLUMNS:
            kind = money
        elif name in INTEGER_COLUMNS:
            kind = pa.int64()
        elif name in TIME_COLUMNS:
            kind = pa.timestamp("us", tz="UTC")
        else:
            kind = pa.string()
        fields.append(pa.field(name, kind))
    schema = pa.schema(fields)
    rows = list(rows)
    columns = {}
    for name in COLUMNS:
        values = [row[name] for row in rows]
        if name in MONEY_COLUMNS:
            values = [None if v is None else Decimal(v).scaleb(-9) for v in values]
        columns[name] = values
    table = pa.table(columns, schema=schema)
    sink = io.BytesIO()
    pq.write_table(table, sink)
    return sink.getvalue()
