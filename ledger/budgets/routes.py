"""Admin API for budgets and alerts."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal
from zoneinfo import available_timezones

import msgspec
from litestar import Controller, delete, get, patch, post
from litestar.di import Provide
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from ledger.admin.identity import Principal
from ledger.auth import provide_admin, read_your_writes
from ledger.budgets import admin
from ledger.budgets.guard import BudgetGuard
from ledger.db.engine import write_transaction
from ledger.db.tables import Alert, AlertDelivery
from ledger.money import format_usd
from ledger.openapi import ROW_ID, admin_errors

# A limit is exact USD above zero, at most nine decimals (a nano) and nine whole digits.
_LIMIT_PATTERN = r"^(?!0+(\.0+)?$)(0|[1-9][0-9]{0,8})(\.[0-9]{1,9})?$"
Limit = Annotated[str, msgspec.Meta(pattern=_LIMIT_PATTERN, description='e.g. "500.00"')]
Text = Annotated[str, msgspec.Meta(pattern=r"\S")]
TimeZone = Literal[tuple(sorted(available_timezones() | {"UTC"}))]  # type: ignore[valid-type]
Threshold = Annotated[int, msgspec.Meta(ge=1, le=1000)]

FIELD_HINTS = {
    "limit_usd": 'limit_usd is required as a decimal string above zero, e.g. "500.00" (at '
    "most nine decimals and nine whole digits)",
    "thresholds": "thresholds must be a list of whole percentages from 1 to 1000",
    "timezone": "timezone must be an IANA time zone name, e.g. Europe/Berlin",
}


class BudgetChange(msgspec.Struct, forbid_unknown_fields=True):
    """What PATCH may change; a field left out keeps its value."""

    name: Text | msgspec.UnsetType = msgspec.UNSET
    limit_usd: Limit | msgspec.UnsetType = msgspec.UNSET
    period: Literal["daily", "weekly", "monthly", "quarterly", "none"] | msgspec.UnsetType = (
        msgspec.UNSET
    )
    timezone: TimeZone | msgspec.UnsetType | None = msgspec.UNSET  # null: UTC
    mode: Literal["hard", "soft"] | msgspec.UnsetType = msgspec.UNSET
    thresholds: list[Threshold] | msgspec.UnsetType = msgspec.UNSET
    clamp_max_tokens: bool | msgspec.UnsetType = msgspec.UNSET
    fail_open: bool | msgspec.UnsetType = msgspec.UNSET


def _given(data: msgspec.Struct) -> dict[str, Any]:
    """The fields the body named (the domain functions tell "left out" from a value)."""
    return {
        name: getattr(data, name)
        for name in data.__struct_fields__
        if getattr(data, name) is not msgspec.UNSET
    }


class BudgetController(Controller):
    before_request = read_your_writes
    path = "/admin"
    tags = ["budgets"]
    dependencies = {"admin_principal": Provide(provide_admin)}

    @post("/budgets", operation_id="createBudget", responses=admin_errors(400, 413))
    async def create_budget(
        self, data: dict[str, Any], admin_principal: Principal, engine: AsyncEngine,
        budgets: BudgetGuard,
    ) -> dict[str, Any]:  # fmt: skip
        """Create a budget: scope, limit (decimal USD string), period, time zone, mode."""
        async with write_transaction(engine) as connection:
            rule = await admin.create_budget(connection, data)
        await budgets.reload_rules()
        return admin.rule_out(rule)

    @get("/budgets", operation_id="listBudgets", responses=admin_errors())
    async def list_budgets(
        self, admin_principal: Principal, engine: AsyncEngine, budgets: BudgetGuard
    ) -> dict[str, Any]:
        now = datetime.now(UTC)
        async with engine.connect() as connection:
            from ledger.budgets.store import load_rules

            rules = await load_rules(connection)
            statuses = [await admin.budget_status(connection, rule, now) for rule in rules]
        return {"data": [admin.status_out(status) for status in statuses]}

    @get(
        "/budgets/{budget_id:int}",
        operation_id="getBudget",
        responses=admin_errors(400, 404),
    )
    async def get_budget(
        self, budget_id: ROW_ID, admin_principal: Principal, engine: AsyncEngine
    ) -> dict[str, Any]:
        async with engine.connect() as connection:
            return admin.rule_out(await admin.get_rule(connection, budget_id))

    @patch(
        "/budgets/{budget_id:int}",
        operation_id="updateBudget",
        responses=admin_errors(400, 404, 413),
    )
    async def update_budget(
        self, budget_id: ROW_ID, data: BudgetChange, admin_principal: Principal,
        engine: AsyncEngine, budgets: BudgetGuard,
    ) -> dict[str, Any]:  # fmt: skip
        async with write_transaction(engine) as connection:
            rule = await admin.update_budget(connection, budget_id, _given(data))
        await budgets.reload_rules()
        return admin.rule_out(rule)

    @delete(
        "/budgets/{budget_id:int}",
        operation_id="deleteBudget",
        status_code=200,
        responses=admin_errors(400, 404),
    )
    async def delete_budget(
        self, budget_id: ROW_ID, admin_principal: Principal, engine: AsyncEngine,
        budgets: BudgetGuard,
    ) -> dict[str, Any]:  # fmt: skip
        async with write_transaction(engine) as connection:
            await admin.delete_budget(connection, budget_id)
        await budgets.reload_rules()
        return {"id": budget_id, "deleted": True}

    @get(
        "/budgets/{budget_id:int}/status",
        operation_id="getBudgetStatus",
        responses=admin_errors(400, 404),
    )
    async def budget_status(
        self, budget_id: ROW_ID, admin_principal: Principal, engine: AsyncEngine
    ) -> dict[str, Any]:
        """Spent, reserved, remaining, period bounds and projected end-of-period spend."""
        async with engine.connect() as connection:
            rule = await admin.get_rule(connection, budget_id)
            status = await admin.budget_status(connection, rule, datetime.now(UTC))
        return admin.status_out(status)

    @get("/alerts", operation_id="listAlerts", responses=admin_errors(400))
    async def list_alerts(
        self, admin_principal: Principal, engine: AsyncEngine, limit: int = 100
    ) -> dict[str, Any]:
        """Budget alerts, newest first, with their delivery state per channel."""
        limit = max(1, min(limit, 1000))
        async with engine.connect() as connection:
            alerts = (
                (
                    await connection.execute(
                        select(Alert.__table__).order_by(Alert.id.desc()).limit(limit)
                    )
                )
                .mappings()
                .all()
            )
            ids = [a["id"] for a in alerts]
            deliveries = (
                await connection.execute(
                    select(AlertDelivery.__table__).where(AlertDelivery.alert_id.in_(ids))
                )
            ).mappings().all() if ids else []  # fmt: skip
        by_alert: dict[int, list[dict[str, Any]]] = {}
        for d in deliveries:
            by_alert.setdefault(d["alert_id"], []).append(
                {
                    "channel": d["channel"],
                    "status": d["status"],
                    "attempts": d["attempts"],
                    "last_error": d["last_error"],
                    "delivered_at": d["delivered_at"].isoformat() if d["delivered_at"] else None,
                }
            )
        return {
            "data": [
                {
                    "id": a["id"],
                    "budget_id": a["budget_id"],
                    "kind": a["kind"],
                    "threshold": a["threshold"] or None,
                    "period_start": a["period_start"].isoformat(),
                    "message": a["message"],
                    "spent_usd": format_usd(a["spent_nanos"]),
                    "limit_usd": format_usd(a["limit_nanos"]),
                    "created_at": a["created_at"].isoformat(),
                    "deliveries": by_alert.get(a["id"], []),
                }
                for a in alerts
            ]
        }
