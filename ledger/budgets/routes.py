"""Admin API for budgets and alerts."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

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
        self, budget_id: ROW_ID, data: dict[str, Any], admin_principal: Principal,
        engine: AsyncEngine, budgets: BudgetGuard,
    ) -> dict[str, Any]:  # fmt: skip
        async with write_transaction(engine) as connection:
            rule = await admin.update_budget(connection, budget_id, data)
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
