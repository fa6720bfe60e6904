"""Scheduled jobs run once per tick, however many Ledger processes run a scheduler."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import openai
import pytest
from sqlalchemy import select

from ledger.db.engine import create_engine, is_sqlite
from ledger.db.migrate import upgrade
from ledger.db.tables import Alert, AlertDelivery, SchedulerRun
from ledger.scheduler import Job, LedgerScheduler, claim_tick, run_once, tick_of
from tests.fake_upstream import FakeUpstream
from tests.live import LiveServer, gateway_settings
from tests.webhook_receiver import WebhookReceiver

SECRET = "whsec-scheduler-test"
CLAIMS = 20


def test_of_twenty_concurrent_claims_of_one_tick_exactly_one_wins(database_url: str) -> None:
    async def scenario() -> None:
        engine = create_engine(database_url, pool_size=CLAIMS)
        try:
            await upgrade(engine)
            tick = tick_of(datetime.now(UTC), 30)
            claims = [claim_tick(engine, "budget_check", tick, f"owner-{i}") for i in range(CLAIMS)]
            won = await asyncio.gather(*claims)
            assert won.count(True) == 1
            # The same tick of another job, and the next tick of this one, are separate claims.
            assert await claim_tick(engine, "deliver_alerts", tick, "late-owner")
            next_tick = tick_of(datetime.fromtimestamp(tick.timestamp() + 30, UTC), 30)
            assert await claim_tick(engine, "budget_check", next_tick, "late-owner")
            assert not await claim_tick(engine, "budget_check", tick, "late-owner")

            async with engine.connect() as connection:
                rows = (
                    await connection.execute(
                        select(SchedulerRun.job, SchedulerRun.tick, SchedulerRun.owner)
                    )
                ).all()
            winner = f"owner-{won.index(True)}"
            assert sorted((job, t, owner) for job, t, owner in rows) == sorted(
                [
                    ("budget_check", tick, winner),
                    ("budget_check", next_tick, "late-owner"),
                    ("deliver_alerts", tick, "late-owner"),
                ]
            )
        finally:
            await engine.dispose()

    asyncio.run(scenario())


def test_a_job_started_by_many_schedulers_in_one_tick_runs_once(database_url: str) -> None:
    runs: list[int] = []

    async def job_body() -> None:
        runs.append(1)
        await asyncio.sleep(0.01)

    async def scenario() -> list[bool]:
        engine = create_engine(database_url, pool_size=10)
        try:
            await upgrade(engine)
            job = Job("budget_check", 60.0, job_body)
            now = datetime.now(UTC)
            return await asyncio.gather(*(run_once(engine, job, f"p{i}", now) for i in range(10)))
        finally:
            await engine.dispose()

    assert asyncio.run(scenario()).count(True) == 1
    assert len(runs) == 1


def test_stopping_a_scheduler_lets_the_job_it_is_running_finish(database_url: str) -> None:
    events: list[str] = []

    async def slow_job() -> None:
        events.append("started")
        await asyncio.sleep(0.3)
        events.append("finished")  # e.g. an alert marked delivered after it was sent

    async def scenario() -> None:
        engine = create_engine(database_url)
        try:
            await upgrade(engine)
            scheduler = LedgerScheduler(engine, [Job("deliver_alerts", 1.0, slow_job)])
            scheduler.start()
            while not events:
                await asyncio.sleep(0.02)
            await scheduler.stop()
        finally:
            await engine.dispose()

    asyncio.run(scenario())
    assert events == ["started", "finished"]


# -- two real `ledger scheduler` processes on one PostgreSQL database ---------------------------


def _spend_then_budget(gateway: LiveServer) -> Decimal:
    """Some spend, then a soft lifetime budget it has already used up: three alerts due."""
    key = gateway.team_key("research")
    client = openai.OpenAI(base_url=gateway.openai_base_url, api_key=key, max_retries=0)
    for _ in range(2):
        client.chat.completions.create(
            model="gpt-4.1-mini", messages=[{"role": "user", "content": "spend for the check"}]
        )
    spent = sum((Decimal(e["cost_usd"]) for e in gateway.entries()), Decimal(0))
    response = gateway.admin.post(
        "/admin/budgets",
        json={"team": "research", "limit_usd": f"{spent:.9f}", "period": "none", "mode": "soft"},
    )
    assert response.status_code == 201, response.text
    return spent


class _SchedulerProcess:
    """One `ledger --config FILE scheduler`, its stderr kept in a file."""

    def __init__(self, config: Path, env: dict[str, str], log: Path) -> None:
        self.log = log
        self._log_file = log.open("wb")
        ledger = Path(sys.executable).with_name("ledger")
        self.process = subprocess.Popen(
            [str(ledger), "--config", str(config), "scheduler"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=self._log_file,
        )

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    def owns(self, owner: str) -> bool:
        return f":{self.process.pid}:" in owner

    def wait_started(self, deadline: float) -> None:
        while b"scheduler running as" not in self.log.read_bytes():
            assert self.running, self.log.read_text()
            assert time.monotonic() < deadline, "the scheduler did not start in time"
            time.sleep(0.05)

    def stop(self) -> int:
        """Ctrl-C, as an operator would; returns the exit code."""
        if self.running:
            self.process.send_signal(signal.SIGINT)
        try:
            return self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise
        finally:
            self._log_file.close()


def _runs(database_url: str) -> list[tuple[str, datetime, str]]:
    async def read() -> list[tuple[str, datetime, str]]:
        engine = create_engine(database_url, null_pool=True)
        try:
            async with engine.connect() as connection:
                rows = await connection.execute(
                    select(SchedulerRun.job, SchedulerRun.tick, SchedulerRun.owner)
                )
                return [(r[0], r[1], r[2]) for r in rows]
        finally:
            await engine.dispose()

    return asyncio.run(read())


def _deliveries(database_url: str) -> list[tuple[int, str, str, int]]:
    async def read() -> list[tuple[int, str, str, int]]:
        engine = create_engine(database_url, null_pool=True)
        try:
            async with engine.connect() as connection:
                rows = await connection.execute(
                    select(
                        Alert.threshold,
                        AlertDelivery.channel,
                        AlertDelivery.status,
                        AlertDelivery.attempts,
                    ).join(Alert, Alert.id == AlertDelivery.alert_id)
                )
                return sorted((r[0], r[1], r[2], r[3]) for r in rows)
        finally:
            await engine.dispose()

    return asyncio.run(read())


def test_two_scheduler_processes_share_the_work_and_deliver_each_alert_once(
    database_url: str, fake_upstream: FakeUpstream, tmp_path: Path
) -> None:
    if is_sqlite(database_url):
        pytest.skip(
            "several scheduler processes share one database in production on PostgreSQL; "
            "the SQLite half of the tick claim is covered by the concurrent-claims test"
        )
    with LiveServer(gateway_settings(database_url, fake_upstream)) as gateway:
        _spend_then_budget(gateway)

    with WebhookReceiver(secret=SECRET) as hook:
        config = tmp_path / "ledger.toml"
        config.write_text(
            "[[alert_channels]]\n"
            'name = "ops-hook"\n'
            'kind = "webhook"\n'
            f'url = "{hook.url}/hook"\n'
            'secret_env = "LEDGER_TEST_HOOK_SECRET"\n'
        )
        env = {
            **os.environ,
            "LEDGER_DATABASE_URL": database_url,
            "LEDGER_BUDGET_CHECK_INTERVAL_S": "1",
            "LEDGER_ALERT_DELIVERY_INTERVAL_S": "1",
            "LEDGER_RESERVATION_SWEEP_INTERVAL_S": "1",
            "LEDGER_TEST_HOOK_SECRET": SECRET,
            "LEDGER_LOG_LEVEL": "WARNING",
        }
        processes = [
            _SchedulerProcess(config, env, tmp_path / f"scheduler-{i}.log") for i in range(2)
        ]
        try:
            deadline = time.monotonic() + 20
            for process in processes:
                process.wait_started(deadline)
            time.sleep(6)
            # Whoever starts earlier within each second claims every tick while both run.
            # So that both are seen winning, the busier one stops until the other wins one.
            wins = Counter(
                next(i for i, p in enumerate(processes) if p.owns(owner))
                for _, _, owner in _runs(database_url)
            )
            if len(wins) < 2:
                busy = processes[wins.most_common(1)[0][0]]
                assert busy.stop() == 0
                idle = next(p for p in processes if p is not busy)
                while not any(idle.owns(owner) for _, _, owner in _runs(database_url)):
                    assert time.monotonic() < deadline + 10, "the other scheduler never ran"
                    time.sleep(0.2)
        finally:
            codes = [process.stop() for process in processes]
        logs = [process.log.read_text() for process in processes]
        assert codes == [0, 0], logs
        assert all("Traceback" not in log for log in logs), logs

        # Each alert arrived once, signed, and was sent by one process or the other.
        calls = hook.calls
        assert sorted(call.json["threshold_percent"] for call in calls) == [50, 80, 100], logs
        assert len({call.json["id"] for call in calls}) == 3
        assert all(call.signature_ok and call.answered == 200 for call in calls)

    assert _deliveries(database_url) == [
        (threshold, channel, "delivered", 1)
        for threshold in (50, 80, 100)
        for channel in ("log", "ops-hook")
    ]
    runs = _runs(database_url)
    claimed = Counter((job, tick) for job, tick, _ in runs)
    assert max(claimed.values()) == 1  # no (job, tick) ever ran twice
    owners = {owner for _, _, owner in runs}
    for process in processes:
        assert any(process.owns(owner) for owner in owners), (owners, process.process.pid)
    assert all(any(p.owns(owner) for p in processes) for owner in owners)
    jobs = {job for job, _, _ in runs}
    assert {"budget_check", "deliver_alerts", "release_expired_reservations"} <= jobs
    # With 1 s intervals over ~6 s, the budget check ran every second or so.
    assert sum(1 for job, _, _ in runs if job == "budget_check") >= 4
