"""Budget utilisation for reports: spent, reserved, remaining, projection and alerts.

Reads the budget tables as the budget engine keeps them: the limit on ``budgets``, the
running totals on the ``budget_periods`` row of the current period, alerts on
``alerts``. The current period comes from ``ledger.budgets.periods.period_bounds`` in
the budget's own time zone.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import func, or_, select
from sqlalchemy.ext.asyncio import AsyncConnection

from ledger.budgets.periods import PeriodError, period_bounds
from ledger.db.tables import Alert, ApiKey, Budget, BudgetPeriod
from ledger.money import Nanos


@dataclass(frozen=True, slots=True)
class BudgetStatus:
    """One budget in its current period. Money in nanos; ``percent_used`` of the limit."""

    id: int
    name: str
    scope: str
    team_id: int | None
    key_id: int | None
    end_user: str | None
    model: str | None
    tag: str | None
    period: str
    timezone: str
    mode: str
    thresholds: tuple[int, ...]
    period_start: datetime
    period_end: datetime | None
    limit_nanos: Nanos
    spent_nanos: Nanos
    reserved_nanos: Nanos
    alerts_sent: int

    @property
    def remaining_nanos(self) -> Nanos:
        """What is left once spent and reserved money are taken off (negative when over)."""
        return self.limit_nanos - self.spent_nanos - self.reserved_nanos

    @property
    def percent_used(self) -> Decimal | None:
        """Spent as a percentage of the limit, two places (None for a zero limit)."""
        if self.limit_nanos <= 0:
            return None
        return (Decimal(self.spent_nanos) * 100 / Decimal(self.limit_nanos)).quantize(
            Decimal("0.01")
        )

    def projected_nanos(self, now: datetime) -> Nanos | None:
        """Spend at the end of the period if it goes on at the rate so far (None if endless)."""
        if self.period_end is None:
            return None
        microsecond = timedelta(microseconds=1)
        elapsed_us = (min(now, self.period_end) - self.period_start) // microsecond
        length_us = (self.period_end - self.period_start) // microsecond
        if elapsed_us <= 0:
            return self.spent_nanos
        return self.spent_nanos * length_us // elapsed_us


async def budget_statuses(
    connection: AsyncConnection, now: datetime, *, team_id: int | None = None
) -> list[BudgetStatus]:
    """Every live budget (only ``team_id``'s, and its keys', when given), by name."""
    query = select(*Budget.__table__.c).where(Budget.deleted_at.is_(None)).order_by(Budget.name)
    if team_id is not None:
        team_keys = select(ApiKey.id).where(ApiKey.team_id == team_id)
        query = query.where(or_(Budget.team_id == team_id, Budget.key_id.in_(team_keys)))
    budgets = (await connection.execute(query)).all()
    statuses = []
    for budget in budgets:
        start, end = await _current_period(connection, budget, now)
        running = (
            await connection.execute(
                select(BudgetPeriod.spent_nanos, BudgetPeriod.reserved_nanos).where(
                    BudgetPeriod.budget_id == budget.id, BudgetPeriod.period_start == start
                )
            )
        ).first()
        alerts = await connection.scalar(
            select(func.count())
            .select_from(Alert)
            .where(Alert.budget_id == budget.id, Alert.period_start == start)
        )
        statuses.append(
            BudgetStatus(
                id=budget.id,
                name=budget.name,
                scope=budget.scope,
                team_id=budget.team_id,
                key_id=budget.key_id,
                end_user=budget.end_user,
                model=budget.model,
                tag=budget.tag,
                period=budget.period,
                timezone=budget.timezone,
                mode=budget.mode,
                thresholds=_thresholds(budget.thresholds),
                period_start=start,
                period_end=end,
                limit_nanos=int(budget.limit_nanos),
                spent_nanos=int(running.spent_nanos) if running else 0,
                reserved_nanos=int(running.reserved_nanos) if running else 0,
                alerts_sent=int(alerts or 0),
            )
        )
    return statuses


async def recent_alerts(
    connection: AsyncConnection, *, team_id: int | None = None, limit: int = 20
) -> list[dict[str, Any]]:
    """The latest alerts (of ``team_id``'s budgets when given), newest first."""
    query = (
        select(
            Alert.id,
            Alert.budget_id,
            Budget.name.label("budget_name"),
            Alert.kind,
            Alert.threshold,
            Alert.message,
            Alert.spent_nanos,
            Alert.limit_nanos,
            Alert.created_at,
        )
        .join(Budget, Budget.id == Alert.budget_id)
        .order_by(Alert.created_at.desc(), Alert.id.desc())
        .limit(limit)
    )
    if team_id is not None:
        team_keys = select(ApiKey.id).where(ApiKey.team_id == team_id)
        query = query.where(or_(Budget.team_id == team_id, Budget.key_id.in_(team_keys)))
    rows = (await connection.execute(query)).all()
    return [dict(row._mapping) for row in rows]


async def _current_period(
    connection: AsyncConnection, budget: Any, now: datetime
) -> tuple[datetime, datetime | None]:
    try:
        return period_bounds(budget.period, budget.timezone, now)
    except PeriodError:
        # An unknown period or zone: fall back to the latest period row the engine wrote.
        row = (
            await connection.execute(
                select(BudgetPeriod.period_start, BudgetPeriod.period_end)
                .where(BudgetPeriod.budget_id == budget.id)
                .order_by(BudgetPeriod.period_start.desc())
                .limit(1)
            )
        ).first()
        if row is None:
            return now, None
        return row.period_start, row.period_end


def _thresholds(text: str) -> tuple[int, ...]:
    values = []
    for part in (text or "").split(","):
        part = part.strip()
        if part.isdigit():
            values.append(int(part))
    return tuple(sorted(values))
