"""Scheduled jobs (APScheduler 3), run once per tick however many processes run them.

Every Ledger process may run a scheduler. Before a job runs, its process claims the
tick by inserting ``(job, tick)`` into ``scheduler_runs``; the primary key lets exactly
one process win, on SQLite and PostgreSQL alike. The losers skip that tick.

A run that did nothing is logged at DEBUG, one that did something (alerts sent, budgets
corrected, reservations released) at INFO, a failure at ERROR: an idle server is quiet.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Callable, Sized
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from sqlalchemy import delete
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncEngine

from ledger.budgets.alerts import deliver_pending
from ledger.budgets.checks import check_budgets, release_expired_reservations
from ledger.config import Settings
from ledger.db.partitions import ensure_partitions
from ledger.db.tables import SchedulerRun

logger = logging.getLogger("ledger.scheduler")

_RUN_HISTORY = timedelta(days=2)
# Entries the database refused outright wait for an operator's fix; trying them every
# five minutes writes them soon after it, at the cost of a query on a tiny table.
DEAD_LETTER_RETRY_INTERVAL_S = 300.0


def _what_it_did(result: Any) -> str | None:
    """A job's result for the log: a count, or how many things it returned; None if nothing."""
    if not result:
        return None
    return str(len(result)) if isinstance(result, Sized) else str(result)[:200]


def _dead_letter_retry_did(report: Any) -> str | None:
    written, salvaged, refused = (len(report.written), len(report.salvaged), len(report.refused))
    if not (written or salvaged or refused):
        return None
    return f"dead letters: {written} written, {salvaged} salvaged, {refused} still refused"


@dataclass(frozen=True, slots=True)
class Job:
    name: str
    interval_s: float
    run: Callable[[], Awaitable[object]]
    # What a run's result says it did, for the log; None when it did nothing.
    did: Callable[[Any], str | None] = _what_it_did


def ledger_jobs(engine: AsyncEngine, settings: Settings) -> list[Job]:
    """The jobs every Ledger scheduler runs, with their intervals from the settings."""
    from ledger.db.writer import retry_dead_letters
    from ledger.reports.reconciliation import reconcilable, reconcile_job
    from ledger.reports.rollups import verify_rollups_job

    channels = settings.alert_channels
    jobs = [
        Job("budget_check", settings.budget_check_interval_s,
            lambda: check_budgets(engine, channels), _budget_checks_did),
        Job("release_expired_reservations", settings.reservation_sweep_interval_s,
            lambda: release_expired_reservations(engine),
            lambda n: f"released {n} expired reservation(s)" if n else None),
        Job("deliver_alerts", settings.alert_delivery_interval_s,
            lambda: deliver_pending(engine, channels),
            lambda n: f"delivered {n} alert(s)" if n else None),
        Job("verify_rollups", 300.0, lambda: verify_rollups_job(engine),
            _rollup_check_did),
        Job("retry_dead_letters", DEAD_LETTER_RETRY_INTERVAL_S,
            lambda: retry_dead_letters(engine),
            _dead_letter_retry_did),
        Job("prune_scheduler_runs", 3600.0, lambda: prune_runs(engine),
            lambda n: f"pruned {n} old run record(s)" if n else None),
        Job("ledger_partitions", 6 * 3600.0, lambda: ensure_partitions(engine),
            lambda names: f"created partitions {', '.join(names)}" if names else None),
    ]  # fmt: skip
    if reconcilable(settings):
        # The providers' own reports, pulled once per tick (daily by default) across processes.
        jobs.append(
            Job("reconciliation", settings.reconciliation_interval_s,
                lambda: reconcile_job(engine, settings),
                lambda done: "; ".join(done) or None)
        )  # fmt: skip
    return jobs


def background_poll_job(gateway: Any, settings: Settings) -> Job:
    """Fetch open background responses and record the finished ones (``Gateway.poll_background``).

    Handed the gateway by the serving process: the scheduler sits below it.
    """
    return Job(
        "poll_background_responses",
        settings.background_poll_interval_s,
        gateway.poll_background,
        lambda n: f"recorded {n} finished background response(s)" if n else None,
    )


def _rollup_check_did(check: Any) -> str | None:
    if check.ok:
        return None
    found = (
        f"{check.missing} missing, {check.extra} extra, {check.mismatched} different rollup rows"
    )
    return found + (", repaired" if check.repaired else "")


def _budget_checks_did(checks: list[Any]) -> str | None:
    done = [
        f"budget {c.rule.id}: "
        + ", ".join([*c.alerts, *(["counter corrected"] if c.drift else [])])
        for c in checks
        if c.alerts or c.drift
    ]
    return "; ".join(done) or None


async def claim_tick(engine: AsyncEngine, job: str, tick: datetime, owner: str) -> bool:
    """True for exactly one caller per (job, tick), across every process."""
    async with engine.begin() as connection:
        insert = pg_insert if connection.dialect.name == "postgresql" else sqlite_insert
        claimed = await connection.scalar(
            insert(SchedulerRun)
            .values(job=job, tick=tick, owner=owner, started_at=datetime.now(UTC))
            .on_conflict_do_nothing(index_elements=["job", "tick"])
            .returning(SchedulerRun.job)
        )
    return claimed is not None


def tick_of(now: datetime, interval_s: float) -> datetime:
    """The start of the interval ``now`` falls in, aligned to the epoch (same in every process)."""
    step = max(1, int(interval_s))
    seconds = int(now.timestamp()) // step * step
    return datetime.fromtimestamp(seconds, UTC)


async def run_once(engine: AsyncEngine, job: Job, owner: str, now: datetime | None = None) -> bool:
    """Claim this tick of ``job`` and run it; returns whether this process ran it."""
    tick = tick_of(now or datetime.now(UTC), job.interval_s)
    if not await claim_tick(engine, job.name, tick, owner):
        logger.debug("scheduled job %s: tick %s ran in another process", job.name, tick)
        return False
    started = time.perf_counter()
    try:
        result = await job.run()
    except Exception:
        logger.exception("scheduled job %s failed", job.name)
        return True
    elapsed_ms = (time.perf_counter() - started) * 1000
    did = job.did(result)
    if did is None:
        logger.debug("scheduled job %s: nothing to do (%.1f ms)", job.name, elapsed_ms)
    else:
        logger.info("scheduled job %s: %s (%.1f ms)", job.name, did, elapsed_ms)
    return True


async def prune_runs(engine: AsyncEngine) -> int:
    async with engine.begin() as connection:
        result = await connection.execute(
            delete(SchedulerRun).where(SchedulerRun.tick < datetime.now(UTC) - _RUN_HISTORY)
        )
    return result.rowcount or 0


class LedgerScheduler:
    """An AsyncIOScheduler with Ledger's jobs, each guarded by :func:`claim_tick`."""

    def __init__(self, engine: AsyncEngine, jobs: list[Job]) -> None:
        self._engine = engine
        self._jobs = jobs
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._scheduler = AsyncIOScheduler(timezone=UTC)
        self._running: set[asyncio.Task[object]] = set()

    def start(self) -> None:
        for job in self._jobs:
            self._scheduler.add_job(
                self._run,
                "interval",
                seconds=job.interval_s,
                args=[job],
                id=job.name,
                max_instances=1,
                coalesce=True,
                misfire_grace_time=max(1, int(job.interval_s)),
            )
        self._scheduler.start()

    def shutdown(self) -> None:
        """Stop at once: APScheduler cancels the jobs that are running. Prefer :meth:`stop`."""
        if self._scheduler.running:
            self._scheduler.shutdown(wait=False)

    async def stop(self, timeout_s: float = 10.0) -> None:
        """Stop scheduling, let the jobs already running finish, then shut down.

        A job cancelled half way can leave work to be done twice: an alert sent but not
        yet marked delivered is sent again by the next run.
        """
        if self._scheduler.running:
            self._scheduler.pause()
            if self._running:
                await asyncio.wait(set(self._running), timeout=timeout_s)
        self.shutdown()

    async def _run(self, job: Job) -> bool:
        task = asyncio.current_task()
        if task is not None:
            self._running.add(task)
        try:
            return await run_once(self._engine, job, self.owner)
        finally:
            if task is not None:
                self._running.discard(task)
