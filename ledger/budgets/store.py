"""Budget state in the database. Every check-and-change is one conditional statement.

``SELECT … FOR UPDATE`` does nothing on SQLite, so reservations are single
``UPDATE … WHERE spent + reserved + amount <= limit RETURNING`` statements: atomic on
both databases and across any number of Ledger processes.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Boolean, Connection, and_, bindparam, delete, func, or_, select, update
from sqlalchemy import text as sql_text
from sqlalchemy.ext.asyncio import AsyncConnection

from ledger.budgets.model import BudgetRule, parse_thresholds
from ledger.db.tables import Budget, BudgetPeriod, BudgetReservation, Timestamp


@dataclass(frozen=True, slots=True)
class PeriodState:
    spent: int
    reserved: int
    blocked: bool


@dataclass(frozen=True, slots=True)
class Settlement:
    """What one finished request does to one budget period, applied with its ledger entry.

    ``reservation_id`` names the request's own reservation (deleted, releasing its whole
    amount) or the process's lease (shrunk by ``release``). Either may already be gone,
    released by the expiry check; then nothing is released twice.
    """

    budget_id: int
    period_start: datetime
    period_end: datetime | None
    spent: int
    release: int = 0
    reservation_id: str | None = None
    lease: bool = False


def rule_from_row(row: Mapping[str, Any]) -> BudgetRule:
    """A rule from a ``budgets`` row (as a mapping of column name to value)."""
    return BudgetRule(
        id=row["id"],
        name=row["name"],
        scope=row["scope"],
        limit_nanos=row["limit_nanos"],
        mode=row["mode"],
        period=row["period"],
        timezone=row["timezone"],
        team_id=row["team_id"],
        key_id=row["key_id"],
        end_user=row["end_user"],
        model=row["model"],
        tag=row["tag"],
        thresholds=parse_thresholds(row["thresholds"]),
        clamp_max_tokens=row["clamp_max_tokens"],
        fail_open=row["fail_open"],
    )


async def rules_signature(connection: AsyncConnection) -> tuple[object, ...]:
    """Changes whenever a budget is created, changed or retired (a cheap poll)."""
    row = (
        await connection.execute(
            select(func.count(), func.max(Budget.updated_at), func.max(Budget.deleted_at))
        )
    ).one()
    return tuple(row)


_ACTIVE_RULES = select(Budget.__table__).where(Budget.deleted_at.is_(None)).order_by(Budget.id)


async def load_rules(connection: AsyncConnection) -> list[BudgetRule]:
    rows = await connection.execute(_ACTIVE_RULES)
    return [rule_from_row(row) for row in rows.mappings()]


def load_rules_in(connection: Connection) -> list[BudgetRule]:
    """:func:`load_rules` on a synchronous connection (the ledger writer's)."""
    return [rule_from_row(row) for row in connection.execute(_ACTIVE_RULES).mappings()]


def rules_fingerprint(rules: Iterable[BudgetRule]) -> str:
    """The same in every process for the same active budgets, and different when any differs.

    A request settled against budgets whose fingerprint is the ledger writer's (from the
    same rows, in its transaction) was matched against every budget there is, exactly
    as the writer would match it: the writer need not match it again.
    """
    return hashlib.blake2b(repr(list(rules)).encode(), digest_size=12).hexdigest()


async def ensure_periods(
    connection: AsyncConnection, periods: Iterable[tuple[int, datetime, datetime | None]]
) -> None:
    """Create the period rows that do not exist yet, at zero (idempotent)."""
    await connection.run_sync(create_missing_periods, list(periods))


def create_missing_periods(
    connection: Connection, periods: Iterable[tuple[int, datetime, datetime | None]]
) -> None:
    """:func:`ensure_periods` on a synchronous connection (the ledger writer's)."""
    now = datetime.now(UTC)
    values = [
        {"budget_id": budget_id, "start": start, "end": end, "blocked": False, "now": now}
        for budget_id, start, end in sorted(set(periods), key=lambda p: (p[0], p[1]))
    ]
    if values:
        connection.execute(_CREATE_PERIOD, values)


# The writer's statements are built once, as text with typed parameters: building and
# cache-keying expression objects for every batch cost more than running them, and it
# ran on the thread that shares the interpreter with the event loop.
_CREATE_PERIOD = sql_text(
    "INSERT INTO budget_periods (budget_id, period_start, period_end, spent_nanos, "
    "reserved_nanos, blocked, updated_at) VALUES (:budget_id, :start, :end, 0, 0, :blocked, "
    ":now) ON CONFLICT (budget_id, period_start) DO NOTHING"
).bindparams(
    bindparam("start", type_=Timestamp()),
    bindparam("end", type_=Timestamp()),
    bindparam("blocked", type_=Boolean()),
    bindparam("now", type_=Timestamp()),
)
_SHRINK_LEASE = sql_text(
    "UPDATE budget_reservations SET amount_nanos = amount_nanos - :amount "
    "WHERE id = :lease_id AND amount_nanos >= :amount"
)
_SETTLE_PERIOD = sql_text(
    "UPDATE budget_periods SET spent_nanos = spent_nanos + :spent, "
    "reserved_nanos = reserved_nanos - :released, updated_at = :now "
    "WHERE budget_id = :budget_id AND period_start = :start"
).bindparams(bindparam("start", type_=Timestamp()), bindparam("now", type_=Timestamp()))


async def try_reserve(
    connection: AsyncConnection, budget_id: int, start: datetime, amount: int, limit: int
) -> PeriodState | None:
    """Add ``amount`` to the reserved total if it still fits under ``limit``; else None."""
    t = BudgetPeriod
    row = (
        await connection.execute(
            update(t)
            .where(
                t.budget_id == budget_id,
                t.period_start == start,
                t.blocked.is_(False),
                t.spent_nanos + t.reserved_nanos + amount <= limit,
            )
            .values(reserved_nanos=t.reserved_nanos + amount, updated_at=datetime.now(UTC))
            .returning(t.spent_nanos, t.reserved_nanos, t.blocked)
        )
    ).first()
    return PeriodState(row[0], row[1], row[2]) if row else None


async def read_period(connection: AsyncConnection, budget_id: int, start: datetime) -> PeriodState:
    t = BudgetPeriod
    row = (
        await connection.execute(
            select(t.spent_nanos, t.reserved_nanos, t.blocked).where(
                t.budget_id == budget_id, t.period_start == start
            )
        )
    ).first()
    return PeriodState(row[0], row[1], row[2]) if row else PeriodState(0, 0, False)


async def insert_reservation(
    connection: AsyncConnection,
    *,
    reservation_id: str,
    budget_id: int,
    start: datetime,
    kind: str,
    request_id: str | None,
    owner: str,
    amount: int,
    expires_at: datetime,
) -> None:
    now = datetime.now(UTC)
    await connection.execute(
        BudgetReservation.__table__.insert().values(
            id=reservation_id,
            budget_id=budget_id,
            period_start=start,
            kind=kind,
            request_id=request_id,
            owner=owner,
            amount_nanos=amount,
            created_at=now,
            expires_at=expires_at,
        )
    )


async def release_reservations(connection: AsyncConnection, ids: Sequence[str]) -> int:
    """Delete reservations and give their amounts back; ones already gone are skipped."""
    if not ids:
        return 0
    t = BudgetReservation
    rows = (
        await connection.execute(
            delete(t).where(t.id.in_(ids)).returning(t.budget_id, t.period_start, t.amount_nanos)
        )
    ).all()
    await _release(connection, [(r[0], r[1], r[2]) for r in rows])
    return len(rows)


async def expire_reservations(connection: AsyncConnection, now: datetime) -> int:
    """Release every reservation whose owner stopped renewing it (a crashed process)."""
    t = BudgetReservation
    rows = (
        await connection.execute(
            delete(t)
            .where(t.expires_at < now)
            .returning(t.budget_id, t.period_start, t.amount_nanos)
        )
    ).all()
    await _release(connection, [(r[0], r[1], r[2]) for r in rows])
    return len(rows)


async def renew_reservations(
    connection: AsyncConnection, ids: Sequence[str], expires_at: datetime
) -> set[str]:
    """Push out the expiry of live reservations; returns the ids that still exist."""
    if not ids:
        return set()
    t = BudgetReservation
    rows = await connection.execute(
        update(t).where(t.id.in_(ids)).values(expires_at=expires_at).returning(t.id)
    )
    return {row[0] for row in rows}


def apply_settlements(connection: Connection, settlements: Sequence[Settlement]) -> None:
    """Apply finished requests' spend and releases; runs in the ledger writer's transaction.

    Because the entries and these counter changes commit together, a budget's spend
    and the ledger can never disagree, and a settlement cannot be applied twice.
    """
    if not settlements:
        return
    create_missing_periods(
        connection, [(s.budget_id, s.period_start, s.period_end) for s in settlements]
    )
    spent: dict[tuple[int, datetime], int] = defaultdict(int)
    released: dict[tuple[int, datetime], int] = defaultdict(int)
    request_ids: list[str] = []
    lease_release: dict[str, int] = defaultdict(int)
    lease_period: dict[str, tuple[int, datetime]] = {}
    for s in settlements:
        spent[(s.budget_id, s.period_start)] += s.spent
        if s.reservation_id is None:
            continue
        if s.lease:
            lease_release[s.reservation_id] += s.release
            lease_period[s.reservation_id] = (s.budget_id, s.period_start)
        else:
            request_ids.append(s.reservation_id)
    t = BudgetReservation
    if request_ids:
        rows = (
            connection.execute(
                delete(t)
                .where(t.id.in_(request_ids))
                .returning(t.budget_id, t.period_start, t.amount_nanos)
            )
        ).all()
        for budget_id, start, amount in rows:
            released[(budget_id, _utc(start))] += amount
    for lease_id, amount in sorted(lease_release.items()):
        if amount <= 0:
            continue
        result = connection.execute(_SHRINK_LEASE, {"lease_id": lease_id, "amount": amount})
        if result.rowcount:
            released[lease_period[lease_id]] += amount
    now = datetime.now(UTC)
    periods = sorted(set(spent) | set(released))
    if not periods:
        return
    connection.execute(
        _SETTLE_PERIOD,
        [
            {
                "budget_id": budget_id,
                "start": start,
                "spent": spent.get((budget_id, start), 0),
                "released": released.get((budget_id, start), 0),
                "now": now,
            }
            for budget_id, start in periods
        ],
    )


async def _release(
    connection: AsyncConnection, amounts: Iterable[tuple[int, datetime, int]]
) -> None:
    totals: dict[tuple[int, datetime], int] = defaultdict(int)
    for budget_id, start, amount in amounts:
        totals[(budget_id, _utc(start))] += amount
    p = BudgetPeriod
    for (budget_id, start), amount in sorted(totals.items()):
        await connection.execute(
            update(p)
            .where(p.budget_id == budget_id, p.period_start == start)
            .values(reserved_nanos=p.reserved_nanos - amount, updated_at=datetime.now(UTC))
        )


async def period_states(
    connection: AsyncConnection, keys: Iterable[tuple[int, datetime]]
) -> dict[tuple[int, datetime], PeriodState]:
    keys = list(keys)
    if not keys:
        return {}
    p = BudgetPeriod
    condition = or_(*(and_(p.budget_id == b, p.period_start == s) for b, s in keys))
    rows = await connection.execute(
        select(p.budget_id, p.period_start, p.spent_nanos, p.reserved_nanos, p.blocked).where(
            condition
        )
    )
    return {(r[0], _utc(r[1])): PeriodState(r[2], r[3], r[4]) for r in rows}


def _utc(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)
