"""Reconciliation: Ledger's figures beside the providers' own usage and cost reports.

A pull asks a provider (with its admin key) for a month's reports and stores every page
as sent (``reconciliation_pulls``); the reconciliation reads the latest pull, so it can be
read again without asking. Rows are per UTC day (the providers' buckets are UTC days),
provider and model, the provider's model names (dated snapshots) matched to Ledger's
through the price catalog's aliases. The difference is provider minus Ledger.
"""

from __future__ import annotations

import csv
import io
import json
import zlib
from dataclasses import dataclass
from datetime import UTC, date, datetime, time
from decimal import Decimal
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from ledger.budgets.alerts import raise_alert
from ledger.config import ProviderConfig, Settings
from ledger.db.prices import PriceRegistry, load_registry
from ledger.db.tables import LedgerEntryRow, ReconciliationPull
from ledger.money import Nanos, format_usd, usd_to_nanos_rounded
from ledger.providers.admin_reports import (
    ReportUnavailable,
    admin_transport,
    fetch_reports,
    report_rows,
)
from ledger.providers.http import ResponseLimits
from ledger.reports.months import month_label, next_month, parse_month

ALERT_KIND = "reconciliation"
_FIGURES = ("requests", "input_tokens", "output_tokens", "cost_usd")


@dataclass(frozen=True, slots=True)
class Figures:
    requests: int | None = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost_nanos: Nanos = 0

    def plus(self, other: Figures) -> Figures:
        return Figures(
            None
            if self.requests is None or other.requests is None
            else self.requests + other.requests,
            self.input_tokens + other.input_tokens,
            self.output_tokens + other.output_tokens,
            self.cost_nanos + other.cost_nanos,
        )

    def minus(self, other: Figures) -> Figures:
        return Figures(
            None
            if self.requests is None or other.requests is None
            else self.requests - other.requests,
            self.input_tokens - other.input_tokens,
            self.output_tokens - other.output_tokens,
            self.cost_nanos - other.cost_nanos,
        )

    def as_json(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "cost_usd": format_usd(self.cost_nanos),
        }


def reconcilable(settings: Settings) -> list[ProviderConfig]:
    """The providers with an admin key: those whose reports can be pulled."""
    return [p for p in settings.providers if p.admin_api_key and p.kind in ("openai", "anthropic")]


def month_window(month: str) -> tuple[date, datetime, datetime]:
    first = parse_month(month)
    return (
        first,
        datetime.combine(first, time(), UTC),
        datetime.combine(next_month(first), time(), UTC),
    )


async def refresh(
    engine: AsyncEngine, settings: Settings, month: str, provider: str | None = None
) -> list[str]:
    """Pull the month's reports of each reconcilable provider (or the one named) and store them.

    Returns the names pulled. Raises :class:`ReportUnavailable` (naming the provider, never
    the key) when a provider's reports cannot be had, or ``KeyError`` for an unknown name.
    """
    _, start, end = month_window(month)
    providers = reconcilable(settings)
    if provider is not None:
        providers = [p for p in providers if p.name == provider]
        if not providers:
            raise KeyError(provider)
    limits = ResponseLimits(settings.max_response_bytes, settings.max_decompression_ratio)
    pulled = []
    for config in providers:
        transport = admin_transport(config, limits)
        try:
            content = await fetch_reports(config, transport, start, end)
        finally:
            await transport.aclose()
        async with engine.begin() as connection:
            await connection.execute(
                ReconciliationPull.__table__.insert().values(
                    provider=config.name,
                    month=month,
                    fetched_at=datetime.now(UTC),
                    content=json.dumps(content, separators=(",", ":")),
                )
            )
        pulled.append(config.name)
    return pulled


async def _latest_pulls(
    connection: AsyncConnection, month: str, provider: str | None
) -> dict[str, tuple[datetime, dict[str, Any]]]:
    query = select(
        ReconciliationPull.provider, ReconciliationPull.fetched_at, ReconciliationPull.content
    ).where(ReconciliationPull.month == month)
    if provider is not None:
        query = query.where(ReconciliationPull.provider == provider)
    latest: dict[str, tuple[datetime, dict[str, Any]]] = {}
    for name, fetched_at, content in (
        await connection.execute(query.order_by(ReconciliationPull.id))
    ).all():
        latest[name] = (fetched_at, json.loads(content))  # the last one stays
    return latest


def _canonical(registry: PriceRegistry, catalog: str, model: str, at: datetime) -> str:
    # The same resolution the gateway prices with: a dated snapshot finds its model.
    price = registry.price_at(model, at, catalog) if model else None
    return price.model if price is not None else model


async def reconciliation(
    engine: AsyncEngine, settings: Settings, month: str, provider: str | None = None
) -> dict[str, Any]:
    """``{"month", "fetched_at", "rows": [...]}`` for each provider with a stored pull."""
    first, start, end = month_window(month)
    configs = {p.name: p for p in settings.providers}
    registry = await load_registry(engine)
    async with engine.connect() as connection:
        pulls = await _latest_pulls(connection, month, provider)
        names = [n for n in pulls if n in configs or provider is not None]
        entries = (
            await connection.execute(
                select(
                    LedgerEntryRow.provider,
                    LedgerEntryRow.served_model,
                    LedgerEntryRow.requested_model,
                    LedgerEntryRow.started_at,
                    LedgerEntryRow.kind,
                    LedgerEntryRow.usage_source,
                    LedgerEntryRow.input_tokens,
                    LedgerEntryRow.cache_read_tokens,
                    LedgerEntryRow.cache_write_5m_tokens,
                    LedgerEntryRow.cache_write_1h_tokens,
                    LedgerEntryRow.output_tokens,
                    LedgerEntryRow.cost_nanos,
                ).where(
                    LedgerEntryRow.started_at >= start,
                    LedgerEntryRow.started_at < end,
                    LedgerEntryRow.provider.in_(names),
                )
            )
        ).all()
    table: dict[tuple[date, str, str], tuple[Figures, Figures]] = {}

    def add(key: tuple[date, str, str], ledger: Figures, reported: Figures) -> None:
        before = table.get(key, (Figures(), Figures()))
        table[key] = (before[0].plus(ledger), before[1].plus(reported))

    for entry in entries:
        config = configs.get(entry.provider)
        catalog = (config.catalog or config.kind) if config else ""
        model = _canonical(
            registry, catalog, entry.served_model or entry.requested_model or "", entry.started_at
        )
        # A request the provider answered (with usage, or cut and estimated) is one it counts.
        counted = entry.kind == "request" and entry.usage_source != "none"
        add(
            (entry.started_at.astimezone(UTC).date(), entry.provider, model),
            Figures(
                1 if counted else 0,
                entry.input_tokens
                + entry.cache_read_tokens
                + entry.cache_write_5m_tokens
                + entry.cache_write_1h_tokens,
                entry.output_tokens,
                entry.cost_nanos,
            ),
            Figures(),
        )
    fetched: dict[str, str] = {}
    for name in names:
        fetched_at, content = pulls[name]
        fetched[name] = fetched_at.isoformat()
        config = configs.get(name)
        catalog = (config.catalog or config.kind) if config else ""
        for row in report_rows(content):
            if not (first <= row.day < next_month(first)):
                continue
            at = datetime.combine(row.day, time(12), UTC)
            reported = Figures(row.requests, row.input_tokens, row.output_tokens, row.cost_nanos)
            add((row.day, name, _canonical(registry, catalog, row.model, at)), Figures(), reported)
    rows = []
    for (day, name, model), (ledger, reported) in sorted(table.items()):
        rows.append(
            {
                "date": day.isoformat(),
                "provider": name,
                "model": model,
                "ledger": ledger.as_json(),
                "provider_report": reported.as_json(),
                "difference": reported.minus(ledger).as_json(),
            }
        )
    return {"month": month_label(first), "fetched_at": fetched, "rows": rows}


def totals_by_provider(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The month's figures per provider: Ledger's, the provider's, and the difference."""
    sums: dict[str, dict[str, Decimal]] = {}
    for row in report["rows"]:
        mine = sums.setdefault(row["provider"], {"ledger": Decimal(0), "provider": Decimal(0)})
        mine["ledger"] += Decimal(row["ledger"]["cost_usd"])
        mine["provider"] += Decimal(row["provider_report"]["cost_usd"])
    return {
        name: {
            "ledger_cost_usd": format_usd(usd_to_nanos_rounded(s["ledger"])),
            "provider_cost_usd": format_usd(usd_to_nanos_rounded(s["provider"])),
            "difference_usd": format_usd(usd_to_nanos_rounded(s["provider"] - s["ledger"])),
        }
        for name, s in sums.items()
    }


def to_csv(report: dict[str, Any]) -> str:
    """One line per row: date, provider, model, then each figure for ledger, provider, difference."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(
        ["date", "provider", "model"]
        + [f"{side}_{name}" for side in ("ledger", "provider", "difference") for name in _FIGURES]
    )
    for row in report["rows"]:
        writer.writerow(
            [row["date"], row["provider"], row["model"]]
            + [
                "" if row[side][name] is None else row[side][name]
                for side in ("ledger", "provider_report", "difference")
                for name in _FIGURES
            ]
        )
    return out.getvalue()


def to_text(report: dict[str, Any]) -> str:
    """The table for a terminal (``ledger reconcile``)."""
    head = (
        "date",
        "provider",
        "model",
        "ledger $",
        "provider $",
        "diff $",
        "diff req",
        "diff in",
        "diff out",
    )
    lines = [head]
    for row in report["rows"]:
        d = row["difference"]
        lines.append(
            (
                row["date"], row["provider"], row["model"], row["ledger"]["cost_usd"],
                row["provider_report"]["cost_usd"], d["cost_usd"],
                "-" if d["requests"] is None else str(d["requests"]),
                str(d["input_tokens"]), str(d["output_tokens"]),
            )
        )  # fmt: skip
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    text = [
        "  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)) for line in lines
    ]
    for name, total in totals_by_provider(report).items():
        text.append(
            f"{name}: ledger {total['ledger_cost_usd']}, provider {total['provider_cost_usd']}, "
            f"difference {total['difference_usd']}"
        )
    return "\n".join(text) + "\n"


def over_threshold(difference: Nanos, provider_cost: Nanos, settings: Settings) -> bool:
    """Above both the absolute and the percent threshold (of the provider's cost)."""
    absolute = usd_to_nanos_rounded(settings.reconciliation_alert_usd)
    percent = Decimal(settings.reconciliation_alert_percent)
    return abs(difference) > absolute and Decimal(abs(difference)) * 100 > percent * abs(
        provider_cost
    )


async def raise_alerts(
    engine: AsyncEngine, settings: Settings, month: str, report: dict[str, Any]
) -> list[str]:
    """Raise the alert of each provider whose month differs beyond the thresholds, once
    per month and provider (the alerts table's unique key decides, across processes)."""
    _, start, _ = month_window(month)
    raised = []
    async with engine.begin() as connection:
        for name, total in totals_by_provider(report).items():
            diff = usd_to_nanos_rounded(total["difference_usd"])
            provider_cost = usd_to_nanos_rounded(total["provider_cost_usd"])
            if not over_threshold(diff, provider_cost, settings):
                continue
            message = (
                f"Reconciliation {month}, provider {name}: the provider reports "
                f"{total['provider_cost_usd']} USD, Ledger recorded {total['ledger_cost_usd']} "
                f"USD (difference {total['difference_usd']} USD)"
            )
            if await raise_alert(
                connection,
                settings.alert_channels,
                budget_id=0,  # no budget: a reconciliation alert
                period_start=start,
                kind=ALERT_KIND,
                threshold=_provider_slot(name),
                message=message,
                spent=provider_cost,
                limit=usd_to_nanos_rounded(total["ledger_cost_usd"]),
            ):
                raised.append(name)
    return raised


def _provider_slot(name: str) -> int:
    # The alert's unique key is (budget, period, kind, threshold): a stable number per
    # provider in the threshold column makes it once per month *and provider*.
    return zlib.crc32(name.encode()) & 0x7FFFFFFF


def months_to_pull(now: datetime) -> list[str]:
    """The current month and, in its first days, the previous one (late report buckets)."""
    current = date(now.year, now.month, 1)
    months = [month_label(current)]
    if now.day <= 3:
        previous = date(current.year - (current.month == 1), (current.month - 2) % 12 + 1, 1)
        months.insert(0, month_label(previous))
    return months


async def reconcile_job(engine: AsyncEngine, settings: Settings) -> list[str]:
    """The scheduled pull: every reconcilable provider, the recent month(s), then alerts."""
    done: list[str] = []
    for month in months_to_pull(datetime.now(UTC)):
        for config in reconcilable(settings):
            try:
                await refresh(engine, settings, month, config.name)
            except ReportUnavailable as exc:
                done.append(f"{month} {config.name}: {exc}")
                continue
            done.append(f"{month} {config.name} pulled")
        report = await reconciliation(engine, settings, month)
        done.extend(
            f"{month} {name}: alert" for name in await raise_alerts(engine, settings, month, report)
        )
    return done
