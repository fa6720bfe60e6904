"""Creating, changing and reading budgets (no HTTP here; routes and CLI both call these)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from ledger.budgets import store
from ledger.budgets.model import DEFAULT_THRESHOLDS, MODES, SCOPES, BudgetRule
from ledger.budgets.periods import PERIODS, PeriodError, zone
from ledger.db.tables import Alert, ApiKey, Budget, BudgetPeriod, Team
from ledger.endusers import identify_end_user
from ledger.errors import InvalidRequest, NotFound
from ledger.money import MoneyError, format_usd, usd_to_nanos

_FIELDS = {
    "name", "scope", "team", "key_id", "user", "model", "tag", "limit_usd", "period",
    "timezone", "mode", "thresholds", "clamp_max_tokens", "fail_open",
}  # fmt: skip
_CHANGEABLE = {
    "name", "limit_usd", "period", "timezone", "mode", "thresholds", "clamp_max_tokens",
    "fail_open",
}  # fmt: skip


async def create_budget(connection: AsyncConnection, data: Mapping[str, Any]) -> BudgetRule:
    """Validate and store a budget. ``limit_usd`` is an exact decimal string."""
    _refuse_unknown(data, _FIELDS)
    scope = data.get("scope") or _infer_scope(data)
    if scope not in SCOPES:
        raise InvalidRequest(f"scope must be one of {', '.join(SCOPES)}", param="scope")
    team_id: int | None = None
    key_id: int | None = None
    if data.get("team") is not None:
        team_id = await _team_id(connection, data["team"])
    if scope == "key":
        key_id = _int(data.get("key_id"), "key_id")
        owner = await connection.scalar(select(ApiKey.team_id).where(ApiKey.id == key_id))
        if owner is None:
            raise InvalidRequest(f"no key with id {key_id}", param="key_id")
        team_id = owner
    if scope in ("team", "user", "model") and team_id is None:
        raise InvalidRequest(f"a {scope} budget needs 'team'", param="team")
    values = {
        "scope": scope,
        "team_id": team_id,
        "key_id": key_id,
        "end_user": _end_user(_required_text(data, "user")) if scope == "user" else None,
        "model": _required_text(data, "model") if scope == "model" else None,
        "tag": _required_text(data, "tag") if scope == "tag" else None,
        **_changeable_values(data, creating=True),
    }
    values.setdefault("name", _default_name(scope, data))
    now = datetime.now(UTC)
    budget_id = await connection.scalar(
        Budget.__table__.insert()
        .values(**values, created_at=now, updated_at=now)
        .returning(Budget.id)
    )
    return await get_rule(connection, int(budget_id))


async def update_budget(
    connection: AsyncConnection, budget_id: int, data: Mapping[str, Any]
) -> BudgetRule:
    """Change a budget's limit, mode, period or alerting; a raised limit unblocks it."""
    _refuse_unknown(data, _CHANGEABLE)
    await get_rule(connection, budget_id)
    values = _changeable_values(data, creating=False)
    if values:
        await connection.execute(
            update(Budget)
            .where(Budget.id == budget_id)
            .values(**values, updated_at=datetime.now(UTC))
        )
    rule = await get_rule(connection, budget_id)
    start, _ = rule.bounds(datetime.now(UTC))
    # A limit raised above the spend lifts a block at once; the check would do it later.
    await connection.execute(
        update(BudgetPeriod)
        .where(
            BudgetPeriod.budget_id == budget_id,
            BudgetPeriod.period_start == start,
            BudgetPeriod.blocked.is_(True),
            BudgetPeriod.spent_nanos < rule.limit_nanos,
        )
        .values(blocked=False, updated_at=datetime.now(UTC))
    )
    return rule


async def delete_budget(connection: AsyncConnection, budget_id: int) -> None:
    """Retire a budget; its periods and alerts stay as history."""
    await get_rule(connection, budget_id)
    await connection.execute(
        update(Budget).where(Budget.id == budget_id).values(deleted_at=datetime.now(UTC))
    )


async def get_rule(connection: AsyncConnection, budget_id: int) -> BudgetRule:
    row = (
        (
            await connection.execute(
                select(Budget.__table__).where(Budget.id == budget_id, Budget.deleted_at.is_(None))
            )
        )
        .mappings()
        .first()
    )
    if row is None:
        raise NotFound(f"no budget with id {budget_id}")
    return store.rule_from_row(row)


@dataclass(frozen=True, slots=True)
class BudgetStatus:
    rule: BudgetRule
    period_start: datetime
    period_end: datetime | None
    spent: int
    reserved: int
    blocked: bool
    projected: int | None
    alerts_sent: int

    @property
    def remaining(self) -> int:
        return max(0, self.rule.limit_nanos - self.spent - self.reserved)


async def budget_status(
    connection: AsyncConnection, rule: BudgetRule, now: datetime
) -> BudgetStatus:
    """Spend, reservations and a straight-line projection for the current period."""
    start, end = rule.bounds(now)
    state = await store.read_period(connection, rule.id, start)
    alerts_sent = await connection.scalar(
        select(func.count())
        .select_from(Alert)
        .where(Alert.budget_id == rule.id, Alert.period_start == start)
    )
    return BudgetStatus(
        rule, start, end, state.spent, state.reserved, state.blocked,
        projected_spend(state.spent, start, end, now), int(alerts_sent or 0),
    )  # fmt: skip


def projected_spend(spent: int, start: datetime, end: datetime | None, now: datetime) -> int | None:
    """Spend at the period's end if it goes on at the rate seen so far (None: no end)."""
    if end is None:
        return None
    elapsed = (now - start).total_seconds()
    total = (end - start).total_seconds()
    if elapsed <= 0:
        return spent
    # Integer arithmetic on microseconds keeps money exact.
    elapsed_us = int(elapsed * 1_000_000)
    total_us = int(total * 1_000_000)
    return spent * total_us // max(1, elapsed_us)


def rule_out(rule: BudgetRule) -> dict[str, Any]:
    return {
        "id": rule.id,
        "name": rule.name,
        "scope": rule.scope,
        "team_id": rule.team_id,
        "key_id": rule.key_id,
        "user": rule.end_user,
        "model": rule.model,
        "tag": rule.tag,
        "limit_usd": format_usd(rule.limit_nanos),
        "period": rule.period,
        "timezone": rule.timezone,
        "mode": rule.mode,
        "thresholds": list(rule.thresholds),
        "clamp_max_tokens": rule.clamp_max_tokens,
        "fail_open": rule.fail_open,
    }


def status_out(status: BudgetStatus) -> dict[str, Any]:
    limit = status.rule.limit_nanos
    return {
        "budget": rule_out(status.rule),
        "period_start": status.period_start.isoformat(),
        "period_end": status.period_end.isoformat() if status.period_end else None,
        "spent_usd": format_usd(status.spent),
        "reserved_usd": format_usd(status.reserved),
        "remaining_usd": format_usd(status.remaining),
        "percent_used": _percent(status.spent, limit),
        "projected_usd": format_usd(status.projected) if status.projected is not None else None,
        "blocked": status.blocked,
        "alerts_sent": status.alerts_sent,
    }


def _percent(part: int, whole: int) -> str:
    if whole <= 0:
        return "0.00"
    hundredths = part * 10_000 // whole
    return f"{hundredths // 100}.{hundredths % 100:02d}"


def _changeable_values(data: Mapping[str, Any], *, creating: bool) -> dict[str, Any]:
    values: dict[str, Any] = {}
    if "name" in data:
        values["name"] = _required_text(data, "name")[:100]
    if "limit_usd" in data or creating:
        raw = data.get("limit_usd")
        if isinstance(raw, float) or raw is None:
            raise InvalidRequest(
                'limit_usd is required as a decimal string, e.g. "500.00"', param="limit_usd"
            )
        try:
            limit = usd_to_nanos(raw)
        except MoneyError as exc:
            raise InvalidRequest(f"limit_usd: {exc}", param="limit_usd") from exc
        if limit <= 0:
            raise InvalidRequest("limit_usd must be greater than zero", param="limit_usd")
        values["limit_nanos"] = limit
    if "period" in data or creating:
        period = data.get("period", "monthly")
        if period not in PERIODS:
            raise InvalidRequest(f"period must be one of {', '.join(PERIODS)}", param="period")
        values["period"] = period
    if "timezone" in data or creating:
        tz = data.get("timezone") or "UTC"
        try:
            zone(str(tz))
        except PeriodError as exc:
            raise InvalidRequest(str(exc), param="timezone") from exc
        values["timezone"] = str(tz)
    if "mode" in data or creating:
        mode = data.get("mode", "hard")
        if mode not in MODES:
            raise InvalidRequest("mode must be hard or soft", param="mode")
        values["mode"] = mode
    if "thresholds" in data or creating:
        thresholds = data.get("thresholds", list(DEFAULT_THRESHOLDS))
        if not isinstance(thresholds, list) or not all(
            isinstance(t, int) and not isinstance(t, bool) and 1 <= t <= 1000 for t in thresholds
        ):
            raise InvalidRequest(
                "thresholds must be a list of whole percentages from 1 to 1000",
                param="thresholds",
            )
        values["thresholds"] = ",".join(str(t) for t in sorted(set(thresholds)))
    for flag in ("clamp_max_tokens", "fail_open"):
        if flag in data or creating:
            value = data.get(flag, False)
            if not isinstance(value, bool):
                raise InvalidRequest(f"{flag} must be true or false", param=flag)
            values[flag] = value
    return values


def _infer_scope(data: Mapping[str, Any]) -> str:
    for field, scope in (("key_id", "key"), ("user", "user"), ("model", "model"), ("tag", "tag")):
        if data.get(field) is not None:
            return scope
    return "team" if data.get("team") is not None else "org"


def _default_name(scope: str, data: Mapping[str, Any]) -> str:
    parts = [str(data.get("period", "monthly")), scope]
    for field in ("team", "key_id", "user", "model", "tag"):
        if data.get(field) is not None:
            parts.append(str(data[field]))
    return " ".join(parts)[:100]


async def _team_id(connection: AsyncConnection, name: Any) -> int:
    if not isinstance(name, str):
        raise InvalidRequest("team must be a team name", param="team")
    team_id = await connection.scalar(select(Team.id).where(Team.name == name))
    if team_id is None:
        # The body names something that is not there: a bad request, not a missing route.
        raise InvalidRequest(f"no team named {name!r}", param="team")
    return int(team_id)


def _required_text(data: Mapping[str, Any], field: str) -> str:
    value = data.get(field)
    if not isinstance(value, str) or not value.strip():
        raise InvalidRequest(f"{field} must be a non-empty string", param=field)
    return value.strip()


def _end_user(named: str) -> str:
    """The end user as the gateway stores it (a Claude Code id's account, a long name
    shortened), so that the budget matches the requests that name it."""
    end_user = identify_end_user(named)
    assert end_user is not None  # a non-empty name always identifies someone
    return end_user.id


def _int(value: Any, field: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidRequest(f"{field} must be an integer", param=field)
    return value


def _refuse_unknown(data: Mapping[str, Any], allowed: set[str]) -> None:
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise InvalidRequest(f"unknown field(s): {', '.join(unknown)}")
