"""Spend and budget reports as JSON documents and CSV files; money as exact decimal strings."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from ledger.money import format_usd
from ledger.reports.budgets import BudgetStatus
from ledger.reports.render import csv_bytes
from ledger.reports.spend import OTHER, Group, SpendReport, Sums

SPEND_FIGURES = (
    "requests",
    "errors",
    "blocked",
    "input_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "output_tokens",
    "reasoning_tokens",
    "cost_usd",
    "latency_p50_ms",
    "latency_p95_ms",
    "provider_cost_usd",
    "provider_cost_difference_usd",
)


def figures(sums: Sums) -> dict[str, Any]:
    """The figures of one row: counts, token buckets, cost and latency percentiles."""
    costed, provider, ours = sums.provider_costed
    return {
        "requests": sums["requests"],
        "errors": sums["errors"],
        "blocked": sums["blocked"],
        "input_tokens": sums["input_tokens"],
        "cache_read_tokens": sums["cache_read_tokens"],
        "cache_write_tokens": sums.cache_write_tokens,
        "output_tokens": sums["output_tokens"],
        "reasoning_tokens": sums["reasoning_tokens"],
        "cost_usd": format_usd(sums["cost_nanos"]),
        "latency_p50_ms": sums.latency_percentile(0.50),
        "latency_p95_ms": sums.latency_percentile(0.95),
        # Over the entries whose provider reported a cost only (null when none did):
        # the provider's sum, and Ledger's cost of those entries minus it.
        "provider_cost_usd": format_usd(provider) if costed else None,
        "provider_cost_difference_usd": format_usd(ours - provider) if costed else None,
    }


def _group(report: SpendReport, group: Group) -> dict[str, Any]:
    shown: dict[str, Any] = {}
    for dimension, value in zip(report.query.group_by, group, strict=True):
        shown[dimension] = report.label(dimension, value)
        if dimension == "key" and value != OTHER:
            shown["key_id"] = value or None
            shown["key_name"] = report.labels["key_name"].get(value)
    return shown


def spend_json(report: SpendReport) -> dict[str, Any]:
    """The spend report as JSON: range, totals, groups by cost, and the series."""
    query = report.query
    body: dict[str, Any] = {
        "since": query.since.isoformat(),
        "until": query.until.isoformat(),
        "timezone": query.timezone,
        "granularity": query.granularity,
        "group_by": list(query.group_by),
        "top": query.top,
        "source": report.source,
        "latency_precision": "p50/p95 within +/-19% (log-spaced histogram)",
        "totals": figures(report.totals),
        "groups": [
            {"group": _group(report, group), "other": group_is_other(group), **figures(sums)}
            for group, sums in report.groups
        ],
    }
    if query.granularity is not None:
        body["buckets"] = [report.bucket_start(key).isoformat() for key in report.buckets]
        body["series"] = [
            {
                "bucket": report.bucket_start(bucket).isoformat(),
                "group": _group(report, group),
                "other": group_is_other(group),
                **figures(sums),
            }
            for bucket, group, sums in report.series
        ]
    return body


def group_is_other(group: Group) -> bool:
    return bool(group) and all(value == OTHER for value in group)


def spend_csv(report: SpendReport) -> bytes:
    """The series (or the groups, without a granularity) as CSV, one row per bucket and group."""
    dimensions = list(report.query.group_by)
    if "key" in dimensions:
        at = dimensions.index("key") + 1
        dimensions[at:at] = ["key_id", "key_name"]
    header = (["bucket"] if report.query.granularity else []) + dimensions + list(SPEND_FIGURES)
    rows: list[Sequence[Any]] = []
    if report.query.granularity:
        for bucket, group, sums in report.series:
            shown = _group(report, group)
            rows.append(
                [report.bucket_start(bucket).isoformat()]
                + [shown.get(d) for d in dimensions]
                + list(figures(sums).values())
            )
    else:
        for group, sums in report.groups:
            shown = _group(report, group)
            rows.append([shown.get(d) for d in dimensions] + list(figures(sums).values()))
    return _csv(header, rows)


def budget_json(status: BudgetStatus, now: datetime) -> dict[str, Any]:
    """One budget in its current period."""
    projected = status.projected_nanos(now)
    percent = status.percent_used
    return {
        "id": status.id,
        "name": status.name,
        "scope": status.scope,
        "team_id": status.team_id,
        "key_id": status.key_id,
        "end_user": status.end_user,
        "model": status.model,
        "tag": status.tag,
        "period": status.period,
        "timezone": status.timezone,
        "mode": status.mode,
        "thresholds": list(status.thresholds),
        "period_start": status.period_start.isoformat(),
        "period_end": status.period_end.isoformat() if status.period_end else None,
        "limit_usd": format_usd(status.limit_nanos),
        "spent_usd": format_usd(status.spent_nanos),
        "reserved_usd": format_usd(status.reserved_nanos),
        "remaining_usd": format_usd(status.remaining_nanos),
        "percent_used": str(percent) if percent is not None else None,
        "projected_usd": format_usd(projected) if projected is not None else None,
        "alerts_sent": status.alerts_sent,
    }


def alert_json(alert: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": alert["id"],
        "budget_id": alert["budget_id"],
        "budget": alert["budget_name"],
        "kind": alert["kind"],
        "threshold": alert["threshold"],
        "message": alert["message"],
        "spent_usd": format_usd(int(alert["spent_nanos"])),
        "limit_usd": format_usd(int(alert["limit_nanos"])),
        "created_at": alert["created_at"].isoformat(),
    }


BUDGET_COLUMNS = (
    "id",
    "name",
    "scope",
    "period",
    "period_start",
    "period_end",
    "limit_usd",
    "spent_usd",
    "reserved_usd",
    "remaining_usd",
    "percent_used",
    "projected_usd",
    "alerts_sent",
)


def budgets_csv(budgets: list[dict[str, Any]]) -> bytes:
    """Budgets as CSV, one row each."""
    return _csv(list(BUDGET_COLUMNS), [[b[name] for name in BUDGET_COLUMNS] for b in budgets])


def _csv(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> bytes:
    return csv_bytes(header, rows)
