"""The scheduled budget checks. Each is a plain function: the scheduler, the CLI and the
tests call the same code.

``check_budgets`` is the periodic truth-keeping pass: for every active budget it makes
sure the current period exists (period roll-over), recomputes the period's spend from
the ledger and corrects any drift, raises threshold and forecast alerts once, and
blocks or unblocks hard budgets.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from ledger.budgets import store
from ledger.budgets.alerts import raise_alert
from ledger.budgets.model import BudgetRule
from ledger.config import AlertChannelConfig
from ledger.db.tables import BudgetPeriod, LedgerEntryRow, PriceRow
from ledger.money import format_usd

logger = logging.getLogger("ledger.budgets")

# A forecast needs some history: no projection in the first tenth of a period.
FORECAST_MIN_ELAPSED = 0.1


@dataclass(frozen=True, slots=True)
class BudgetCheck:
    """What one check found for one budget (printed by ``ledger budgets check``)."""

    rule: BudgetRule
    period_start: datetime
    period_end: datetime | None
    spent: int
    reserved: int
    drift: int  # ledger minus counter, before correction
    blocked: bool
    alerts: tuple[str, ...]


async def check_budgets(
    engine: AsyncEngine,
    channels: Sequence[AlertChannelConfig] = (),
    *,
    now: datetime | None = None,
) -> list[BudgetCheck]:
    now = now or datetime.now(UTC)
    async with engine.connect() as connection:
        rules = await store.load_rules(connection)
    return [await _check_one(engine, channels, rule, now) for rule in rules]


async def release_expired_reservations(engine: AsyncEngine, *, now: datetime | None = None) -> int:
    """Give back reservations whose process stopped renewing them (crashed or killed)."""
    async with engine.begin() as connection:
        released = await store.expire_reservations(connection, now or datetime.now(UTC))
    if released:
        logger.warning("released %d expired budget reservation(s)", released)
    return released


def ledger_spend_query(rule: BudgetRule, start: datetime, end: datetime | None):  # type: ignore[no-untyped-def]
    """The ledger's total for a budget's scope and period: the source of truth."""
    t = LedgerEntryRow
    query = select(func.coalesce(func.sum(t.cost_nanos), 0)).where(t.started_at >= start)
    if end is not None:
        query = query.where(t.started_at < end)
    if rule.team_id is not None:
        query = query.where(t.team_id == rule.team_id)
    if rule.scope == "key":
        query = query.where(t.key_id == rule.key_id)
    elif rule.scope == "user":
        query = query.where(t.end_user == rule.end_user)
    elif rule.scope == "model":
        # The name sent, or any name priced as the budget's model (a dated snapshot, a
        # provider/ prefix): what the gateway matched when it reserved and settled.
        priced_as = select(PriceRow.id).where(PriceRow.model == rule.model)
        query = query.where(or_(t.requested_model == rule.model, t.price_id.in_(priced_as)))
    elif rule.scope == "tag":
        # Tags are stored as a JSON array of restricted names, so the quoted name is exact.
        query = query.where(t.tags.contains(f'"{rule.tag}"'))
    return query


async def _check_one(
    engine: AsyncEngine, channels: Sequence[AlertChannelConfig], rule: BudgetRule, now: datetime
) -> BudgetCheck:
    start, end = rule.bounds(now)
    alerts: list[str] = []
    async with engine.connect() as connection:
        connection = await connection.execution_options(sqlite_begin="IMMEDIATE")
        async with connection.begin():
            await store.ensure_periods(connection, [(rule.id, start, end)])
            # Lock the counter first, then sum: a writer settling into this period waits,
            # so the sum and the counter describe the same set of entries.
            p = BudgetPeriod
            row = (
                await connection.execute(
                    select(p.spent_nanos, p.reserved_nanos, p.blocked)
                    .where(p.budget_id == rule.id, p.period_start == start)
                    .with_for_update()
                )
            ).one()
            counter, reserved, blocked = int(row[0]), int(row[1]), bool(row[2])
            ledger_total = int(await connection.scalar(ledger_spend_query(rule, start, end)) or 0)
            drift = ledger_total - counter
            spent = ledger_total
            should_block = rule.hard and spent >= rule.limit_nanos
            if drift or should_block != blocked:
                await connection.execute(
                    update(p)
                    .where(p.budget_id == rule.id, p.period_start == start)
                    .values(spent_nanos=spent, blocked=should_block, updated_at=now)
                )
            if drift:
                logger.warning(
                    "budget %d: counter drifted by %s USD from the ledger; corrected",
                    rule.id, format_usd(drift),
                )  # fmt: skip

            async def alert(kind: str, threshold: int, message: str) -> None:
                raised = await raise_alert(
                    connection, channels, budget_id=rule.id, period_start=start, kind=kind,
                    threshold=threshold, message=message, spent=spent, limit=rule.limit_nanos,
                )  # fmt: skip
                if raised:
                    alerts.append(f"{kind}{f' {threshold}%' if threshold else ''}")

            name = f"Budget '{rule.name}' (id {rule.id})"
            used = f"${format_usd(spent)} of ${format_usd(rule.limit_nanos)}"
            for threshold in rule.thresholds:
                if spent * 100 >= threshold * rule.limit_nanos:
                    await alert("threshold", threshold, f"{name} reached {threshold}%: {used}.")
            if end is not None and spent < rule.limit_nanos:
                elapsed = (now - start).total_seconds()
                total = (end - start).total_seconds()
                if elapsed >= FORECAST_MIN_ELAPSED * total:
                    projected = spent * int(total) // max(1, int(elapsed))
                    if projected > rule.limit_nanos:
                        await alert(
                            "forecast", 0,
                            f"{name} is on course to spend ${format_usd(projected)} this period, "
                            f"over its limit of ${format_usd(rule.limit_nanos)}.",
                        )  # fmt: skip
            if should_block and not blocked:
                await alert("blocked", 0, f"{name} is blocked: {used} spent.")
            if blocked and not should_block:
                await alert("unblocked", 0, f"{name} is unblocked: {used} spent.")
    return BudgetCheck(rule, start, end, spent, reserved, drift, should_block, tuple(alerts))
