"""Hard budgets in the request path: reserve the worst case before forwarding, settle after.

How it stays exact and fast
---------------------------
The database is the only arbiter: for every budget period it holds ``spent`` and
``reserved``, and a reservation is one conditional ``UPDATE`` that succeeds only if
``spent + reserved + amount <= limit``. So however many Ledger processes share the
database, admitted worst cases never add up to more than the limit.

Far from its limit, a budget would cost a database round trip per request for
nothing. So a process *leases* a slice of the headroom (at most 1/50 of the limit and
1/4 of what is left) with that same conditional update, and admits requests against
the slice locally, with no round trip. Near the limit, when the slice would be smaller
than four requests' worst case, there are no leases: every request reserves its own
worst case in the database, exactly. Idle leases are handed back within about a
second, so near the limit another process's slice cannot refuse a request for long.

Settlement rides with the ledger entry: the writer deletes the request's reservation
(or shrinks the lease) and adds the actual cost in the same transaction that inserts
the entry, so spend and ledger cannot disagree and nothing is settled twice. Every
reservation carries an expiry that its process keeps renewing; a crashed process's
reservations expire and the scheduled check releases them.

The overspend bound: a hard budget's settled spend exceeds its limit only by what
requests cost beyond their reserved worst case. The worst case prices the estimated
prompt as uncached input (cache writes at their dearer price when the request asks
for caching) plus the output cap, which Ledger sends upstream when the client sent
none. With the provider honouring the cap and the estimate not under-counting the
prompt, the bound is zero.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine

from ledger.budgets import store
from ledger.budgets.model import BudgetRule, RequestScope, RuleIndex
from ledger.budgets.store import PeriodState, Settlement
from ledger.db.engine import bounded_waits
from ledger.errors import BudgetExceeded, ServiceUnavailable
from ledger.money import format_usd

logger = logging.getLogger("ledger.budgets")

LEASE_SHARE_OF_LIMIT = 50  # a lease is at most limit / 50 ...
LEASE_SHARE_OF_HEADROOM = 4  # ... and at most a quarter of what is left
LEASE_MIN_REQUESTS = 4  # smaller than four worst cases: reserve exactly instead
LEASE_IDLE_S = 1.0
# A prompt is counted exactly (Anthropic's count_tokens) only when its local worst case
# is more than 1/10 of what some applicable hard budget has left.
EXACT_ESTIMATE_SHARE_OF_HEADROOM = 10
# A durable reservation (a background response's) is renewed by no process: it lives
# until its entry settles it, or, should nothing ever settle it, this long.
DURABLE_RESERVATION_TTL = timedelta(days=1)

_DATABASE_ERRORS = (OperationalError, DBAPIError, OSError, TimeoutError, ConnectionError)


@dataclass
class Lease:
    id: str
    budget_id: int
    period_start: datetime
    period_end: datetime | None
    capacity: int  # what the lease row holds in the database
    in_flight: int = 0  # worst cases of requests running against it
    last_used: float = field(default_factory=time.monotonic)
    lost: bool = False  # expired or returned: settlements no longer release from it
    granted_limit: int = 0  # the budget's limit when the slice was granted

    def usable_for(self, rule: BudgetRule, amount: int) -> bool:
        """Whether a request may run against this slice (not if the limit changed since)."""
        return not self.lost and self.available >= amount and self.granted_limit == rule.limit_nanos

    @property
    def available(self) -> int:
        return self.capacity - self.in_flight


@dataclass
class Hold:
    """One budget's part of a request's reservation."""

    rule: BudgetRule
    period_start: datetime
    period_end: datetime | None
    amount: int = 0
    reservation_id: str | None = None
    lease: Lease | None = None


@dataclass
class Reservation:
    request_id: str
    amount: int
    holds: list[Hold]
    headers: dict[str, str] = field(default_factory=dict)
    settled: bool = False
    # The budgets ``holds`` were chosen from (``store.rules_fingerprint``).
    rules_fingerprint: str | None = None
    # Set when a budget with clamp_max_tokens cut the output cap instead of refusing.
    clamped_output_tokens: int | None = None


# Given what a budget has left, the largest output cap that still fits and its worst-case
# cost, or None when no useful answer fits.
Clamp = Callable[[int], tuple[int, int] | None]


class BudgetGuard:
    """Reserves and settles against every budget that applies to a request."""

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        owner: str | None = None,
        reservation_ttl_s: float = 30.0,
        sync_interval_s: float = 0.5,
        rules_refresh_s: float = 5.0,
        leases: bool = True,
        db_timeout_s: float = 2.0,
    ) -> None:
        # Budget decisions are on the request path: a locked SQLite file is waited for
        # ``db_timeout_s`` at most, then the request is refused (503, fail closed).
        self._engine = bounded_waits(engine, db_timeout_s)
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._ttl = timedelta(seconds=reservation_ttl_s)
        self._sync_interval_s = sync_interval_s
        self._rules_refresh_s = rules_refresh_s
        self._use_leases = leases
        self._rules = RuleIndex()
        self._rules_fingerprint = store.rules_fingerprint([])
        self._leases: dict[tuple[int, datetime], Lease] = {}
        self._lease_locks: dict[tuple[int, datetime], asyncio.Lock] = {}
        self._live_reservations: set[str] = set()
        self._known: dict[tuple[int, datetime], PeriodState] = {}
        self._task: asyncio.Task[None] | None = None
        self._rules_loaded_at = 0.0
        self._rules_signature: tuple[object, ...] = ()

    # -- lifecycle ----------------------------------------------------------------------

    async def start(self) -> None:
        await self.reload_rules()
        self._task = asyncio.create_task(self._sync_forever(), name="budget-sync")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        with contextlib.suppress(*_DATABASE_ERRORS):
            await self._return_leases(list(self._leases.values()))

    async def reload_rules(self) -> None:
        async with self._engine.connect() as connection:
            self._rules_signature = await store.rules_signature(connection)
            self._rules = RuleIndex(await store.load_rules(connection))
        self._rules_fingerprint = store.rules_fingerprint(self._rules)
        self._rules_loaded_at = time.monotonic()

    @property
    def rules(self) -> list[BudgetRule]:
        return list(self._rules)

    def applicable(self, scope: RequestScope) -> list[BudgetRule]:
        """The budgets that apply to a request, by id."""
        return self._rules.applicable(scope)

    def utilisation(self) -> list[tuple[BudgetRule, float]]:
        """(spent + reserved) / limit per budget, as last seen; for metrics, not for money."""
        now = datetime.now(UTC)
        result = []
        for rule in self._rules:
            state = self._known.get((rule.id, rule.bounds(now)[0]))
            if state is not None and rule.limit_nanos > 0:
                result.append((rule, (state.spent + state.reserved) / rule.limit_nanos))
        return result

    def has_hard_budget(self, scope: RequestScope) -> bool:
        return any(rule.hard for rule in self.applicable(scope))

    def needs_exact_estimate(self, scope: RequestScope, worst_case: int, at: datetime) -> bool:
        """Whether a request whose worst case is ``worst_case`` is near a hard budget's limit.

        True when some applicable hard budget has less than
        ``EXACT_ESTIMATE_SHARE_OF_HEADROOM`` times ``worst_case`` left, as last seen (its
        period's spend and reservations as last read, plus this process's lease), or when
        its state has not been read yet. Then the prompt is worth an exact count before
        reserving. No database round trip: only what this guard already knows.
        """
        threshold = worst_case * EXACT_ESTIMATE_SHARE_OF_HEADROOM
        for rule in self.applicable(scope):
            if not rule.hard:
                continue
            key = (rule.id, rule.bounds(at)[0])
            state = self._known.get(key)
            if state is None or state.blocked:
                return True
            headroom = rule.limit_nanos - state.spent - state.reserved
            lease = self._leases.get(key)
            if lease is not None and not lease.lost:
                headroom += lease.available
            if headroom < threshold:
                return True
        return False

    # -- the hot path -------------------------------------------------------------------

    async def reserve(
        self,
        request_id: str,
        scope: RequestScope,
        amount: int,
        at: datetime,
        *,
        clamp: Clamp | None = None,
        durable: bool = False,
    ) -> Reservation:
        """Set ``amount`` aside on every applicable hard budget, or raise BudgetExceeded.

        If the budget that refuses allows clamping, ``clamp`` is asked for a smaller
        output cap that fits what it has left, and the reservation is made for that.
        ``durable``: the request may outlive this process (a background response), so
        its reservation is exact (no lease), renewed by nobody and kept until settled.
        """
        try:
            return await self._reserve(request_id, scope, amount, at, durable)
        except BudgetExceeded as refused:
            if clamp is None or not refused.clampable or refused.remaining is None:
                raise
            clamped = clamp(refused.remaining)
            if clamped is None or clamped[1] >= amount:
                raise
            reservation = await self._reserve(request_id, scope, clamped[1], at, durable)
            reservation.clamped_output_tokens = clamped[0]
            return reservation

    async def _reserve(
        self, request_id: str, scope: RequestScope, amount: int, at: datetime, durable: bool
    ) -> Reservation:
        holds = [Hold(rule, *rule.bounds(at)) for rule in self.applicable(scope)]
        reservation = Reservation(
            request_id, amount, holds, rules_fingerprint=self._rules_fingerprint
        )
        exact: list[Hold] = []
        try:
            for hold in holds:
                if not hold.rule.hard:
                    continue
                hold.amount = amount
                use_lease = self._use_leases and not durable
                lease = await self._lease_for(hold, amount) if use_lease else None
                if lease is not None:
                    lease.in_flight += amount
                    lease.last_used = time.monotonic()
                    hold.lease = lease
                else:
                    exact.append(hold)
            if exact:
                await self._reserve_exactly(request_id, exact, amount, durable)
        except BudgetExceeded:
            self._undo_leases(holds)
            raise
        except _DATABASE_ERRORS as exc:
            self._undo_leases(holds)
            # Every hard budget, not only those that had reached the exact path: the
            # database may fail while a lease is being taken, before a hold is in `exact`.
            hard = [hold for hold in holds if hold.rule.hard]
            if all(hold.rule.fail_open for hold in hard):
                logger.warning("budget state unavailable; failing open for %s", request_id)
                for hold in hard:
                    hold.amount = 0
                return reservation
            raise ServiceUnavailable(
                "Budget state is unavailable, so a hard budget cannot be checked; the request "
                "was not forwarded. Try again shortly.",
                code="budget_unavailable",
            ) from exc
        reservation.headers = self._headers(holds)
        return reservation

    def settle(self, reservation: Reservation, cost: int) -> list[Settlement]:
        """The budget changes a finished request makes; written with its ledger entry. Once."""
        if reservation.settled:
            return []
        reservation.settled = True
        settlements = []
        for hold in reservation.holds:
            if hold.lease is not None:
                lease = hold.lease
                lease.in_flight -= hold.amount
                release = 0 if lease.lost else min(cost, lease.capacity)
                lease.capacity -= release
                settlements.append(
                    Settlement(
                        hold.rule.id, hold.period_start, hold.period_end, cost,
                        release, lease.id, lease=True,
                    )
                )  # fmt: skip
            elif hold.reservation_id is not None:
                self._live_reservations.discard(hold.reservation_id)
                settlements.append(
                    Settlement(
                        hold.rule.id, hold.period_start, hold.period_end, cost,
                        hold.amount, hold.reservation_id,
                    )
                )  # fmt: skip
            else:
                settlements.append(
                    Settlement(hold.rule.id, hold.period_start, hold.period_end, cost)
                )
        return settlements

    @staticmethod
    def hold_records(reservation: Reservation) -> list[dict[str, object]]:
        """A durable reservation's holds as JSON-ready records, to settle in any process.

        Only a ``durable`` reservation has no lease to depend on this process.
        """
        return [
            {
                "budget_id": hold.rule.id,
                "period_start": hold.period_start.isoformat(),
                "period_end": hold.period_end.isoformat() if hold.period_end else None,
                "amount": hold.amount,
                "reservation_id": hold.reservation_id,
            }
            for hold in reservation.holds
        ]

    # -- leases and exact reservations ----------------------------------------------------

    async def _lease_for(self, hold: Hold, amount: int) -> Lease | None:
        key = (hold.rule.id, hold.period_start)
        lease = self._leases.get(key)
        if lease is not None and lease.usable_for(hold.rule, amount):
            return lease
        lock = self._lease_locks.setdefault(key, asyncio.Lock())
        async with lock:
            lease = self._leases.get(key)
            if lease is not None and lease.usable_for(hold.rule, amount):
                return lease
            if lease is not None and lease.in_flight == 0:
                await self._return_leases([lease])
            return await self._acquire_lease(hold, amount)

    async def _acquire_lease(self, hold: Hold, amount: int) -> Lease | None:
        rule = hold.rule
        key = (rule.id, hold.period_start)
        known = self._known.get(key)
        if known is not None:
            headroom = rule.limit_nanos - known.spent - known.reserved
            if self._lease_size(rule.limit_nanos, headroom) < LEASE_MIN_REQUESTS * amount:
                return None  # near the limit: be exact
        async with self._engine.connect() as connection:
            connection = await connection.execution_options(sqlite_begin="IMMEDIATE")
            async with connection.begin():
                await store.ensure_periods(
                    connection, [(rule.id, hold.period_start, hold.period_end)]
                )
                state = await store.read_period(connection, rule.id, hold.period_start)
                self._known[key] = state
                headroom = rule.limit_nanos - state.spent - state.reserved
                size = self._lease_size(rule.limit_nanos, headroom)
                if state.blocked or size < LEASE_MIN_REQUESTS * amount:
                    return None
                granted = await store.try_reserve(
                    connection, rule.id, hold.period_start, size, rule.limit_nanos
                )
                if granted is None:
                    return None
                lease = Lease(
                    uuid.uuid4().hex, rule.id, hold.period_start, hold.period_end, size,
                    granted_limit=rule.limit_nanos,
                )  # fmt: skip
                await store.insert_reservation(
                    connection,
                    reservation_id=lease.id,
                    budget_id=rule.id,
                    start=hold.period_start,
                    kind="lease",
                    request_id=None,
                    owner=self.owner,
                    amount=size,
                    expires_at=datetime.now(UTC) + self._ttl,
                )
        self._known[key] = granted
        self._leases[key] = lease
        return lease

    @staticmethod
    def _lease_size(limit: int, headroom: int) -> int:
        return max(0, min(limit // LEASE_SHARE_OF_LIMIT, headroom // LEASE_SHARE_OF_HEADROOM))

    async def _reserve_exactly(
        self, request_id: str, holds: Sequence[Hold], amount: int, durable: bool = False
    ) -> None:
        ids = [uuid.uuid4().hex for _ in holds]
        expires_at = datetime.now(UTC) + (DURABLE_RESERVATION_TTL if durable else self._ttl)
        try:
            async with self._engine.begin() as connection:
                await store.ensure_periods(
                    connection, [(h.rule.id, h.period_start, h.period_end) for h in holds]
                )
                for hold, reservation_id in zip(holds, ids, strict=True):
                    state = await store.try_reserve(
                        connection, hold.rule.id, hold.period_start, amount, hold.rule.limit_nanos
                    )
                    if state is None:
                        raise _Refused(hold)  # rolls back every reservation made above
                    self._known[(hold.rule.id, hold.period_start)] = state
                    await store.insert_reservation(
                        connection,
                        reservation_id=reservation_id,
                        budget_id=hold.rule.id,
                        start=hold.period_start,
                        kind="durable" if durable else "request",
                        request_id=request_id,
                        owner=self.owner,
                        amount=amount,
                        expires_at=expires_at,
                    )
        except _Refused as refused:
            await self._refuse(request_id, holds, amount, refused.hold, durable)
            return
        for hold, reservation_id in zip(holds, ids, strict=True):
            hold.reservation_id = reservation_id
            if not durable:  # this process renews it while the request runs
                self._live_reservations.add(reservation_id)

    async def _refuse(
        self, request_id: str, holds: Sequence[Hold], amount: int, failed: Hold, durable: bool
    ) -> None:
        key = (failed.rule.id, failed.period_start)
        own = self._leases.get(key)
        if own is not None and own.in_flight == 0:
            # Our own idle slice may be what is missing: hand it back and try once more.
            await self._return_leases([own])
            await self._reserve_exactly(request_id, holds, amount, durable)
            return
        async with self._engine.connect() as connection:
            state = await store.read_period(connection, failed.rule.id, failed.period_start)
        self._known[key] = state
        raise _exceeded(failed, state, amount)

    def _undo_leases(self, holds: Sequence[Hold]) -> None:
        for hold in holds:
            if hold.lease is not None:
                hold.lease.in_flight -= hold.amount
                hold.lease = None

    async def _return_leases(self, leases: Sequence[Lease]) -> None:
        if not leases:
            return
        for lease in leases:
            lease.lost = True
            key = (lease.budget_id, lease.period_start)
            if self._leases.get(key) is lease:
                del self._leases[key]
        async with self._engine.begin() as connection:
            await store.release_reservations(connection, [lease.id for lease in leases])

    # -- background sync ------------------------------------------------------------------

    async def _sync_forever(self) -> None:
        while True:
            await asyncio.sleep(self._sync_interval_s)
            try:
                await self.sync()
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("budget sync failed")

    async def sync(self) -> None:
        """Renew live reservations, hand back idle or stale leases, refresh rules and state."""
        now = time.monotonic()
        leases = list(self._leases.values())
        ids = [lease.id for lease in leases] + list(self._live_reservations)
        if ids:
            async with self._engine.begin() as connection:
                alive = await store.renew_reservations(
                    connection, ids, datetime.now(UTC) + self._ttl
                )
                states = await store.period_states(
                    connection, [(lease.budget_id, lease.period_start) for lease in leases]
                )
            self._known.update(states)
            for lease in leases:
                if lease.id not in alive:
                    lease.lost = True
                    self._leases.pop((lease.budget_id, lease.period_start), None)
        current = datetime.now(UTC)
        stale = [
            lease
            for lease in self._leases.values()
            if lease.in_flight == 0
            and (
                now - lease.last_used > LEASE_IDLE_S
                or (lease.period_end is not None and lease.period_end <= current)
                or self._known.get((lease.budget_id, lease.period_start), _OPEN).blocked
            )
        ]
        await self._return_leases(stale)
        if now - self._rules_loaded_at > self._rules_refresh_s:
            await self.reload_rules()
        else:
            # Another process may have created or changed a budget: notice within a tick.
            async with self._engine.connect() as connection:
                signature = await store.rules_signature(connection)
            if signature != self._rules_signature:
                await self.reload_rules()

    def _headers(self, holds: Sequence[Hold]) -> dict[str, str]:
        """Remaining budget of the tightest hard budget, as of the last synchronisation."""
        tightest: tuple[int, Hold] | None = None
        for hold in holds:
            if not hold.rule.hard:
                continue
            state = self._known.get((hold.rule.id, hold.period_start), _OPEN)
            remaining = hold.rule.limit_nanos - state.spent - state.reserved
            if hold.lease is not None:
                remaining += hold.lease.available
            if tightest is None or remaining < tightest[0]:
                tightest = (remaining, hold)
        if tightest is None:
            return {}
        remaining, hold = tightest
        return _budget_headers(hold, max(0, remaining))


_OPEN = PeriodState(0, 0, False)


class _Refused(Exception):
    def __init__(self, hold: Hold) -> None:
        self.hold = hold


def settlements_from_records(records: Sequence[dict[str, Any]], cost: int) -> list[Settlement]:
    """What :meth:`BudgetGuard.settle` would return for holds kept by ``hold_records``."""
    settlements = []
    for record in records:
        end = record["period_end"]
        settlements.append(
            Settlement(
                record["budget_id"],
                datetime.fromisoformat(record["period_start"]),
                datetime.fromisoformat(end) if end else None,
                cost,
                record["amount"] if record["reservation_id"] else 0,
                record["reservation_id"],
            )
        )
    return settlements


def _budget_headers(hold: Hold, remaining: int) -> dict[str, str]:
    return {
        "x-ledger-budget-id": str(hold.rule.id),
        "x-ledger-budget-remaining-usd": format_usd(remaining),
        "x-ledger-budget-reset": _reset_header(hold.period_end),
    }


@functools.lru_cache(maxsize=64)
def _reset_header(period_end: datetime | None) -> str:
    # Every request in a period answers with the same end: formatted once, not per request.
    return period_end.isoformat() if period_end else "never"


def _exceeded(hold: Hold, state: PeriodState, amount: int) -> BudgetExceeded:
    rule = hold.rule
    remaining = max(0, rule.limit_nanos - state.spent - state.reserved)
    resets = f"resets at {hold.period_end.isoformat()}" if hold.period_end else "never resets"
    reason = "is blocked" if state.blocked else f"has ${format_usd(remaining)} left"
    message = (
        f"Budget '{rule.name}' (id {rule.id}, {rule.period} {rule.scope} budget of "
        f"${format_usd(rule.limit_nanos)}) {reason}; this request may cost up to "
        f"${format_usd(amount)}. The budget {resets}."
    )
    error = BudgetExceeded(message, budget_id=rule.id, headers=_budget_headers(hold, remaining))
    error.clampable = rule.clamp_max_tokens and not state.blocked
    error.remaining = remaining
    return error
