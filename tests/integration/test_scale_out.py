"""Three Ledger processes behind no load balancer but the client's round robin, one PostgreSQL.

The invariants a platform team relies on when it runs several processes: every request
sent is exactly one ledger entry, a hard budget is never exceeded, and the scheduled
jobs run once per tick however many processes run them, and carry on when one dies.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import anthropic
import httpx
import openai
import pytest
from sqlalchemy import text

from ledger.db.engine import create_engine
from tests.fake_upstream import FakeUpstream
from tests.processes import LedgerProcess, write_provider_config

PROCESSES = 3
REQUESTS = 240


async def _scheduler_runs(database_url: str) -> list[tuple[str, datetime, str]]:
    """Every claimed (job, tick, owner), oldest tick first."""
    engine = create_engine(database_url, null_pool=True)
    try:
        async with engine.connect() as connection:
            rows = await connection.execute(
                text("SELECT job, tick, owner FROM scheduler_runs ORDER BY tick")
            )
            return [(job, _as_utc(tick), owner) for job, tick, owner in rows]
    finally:
        await engine.dispose()


def _as_utc(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _assert_each_tick_ran_once(runs: list[tuple[str, datetime, str]]) -> None:
    assert runs and len(runs) == len({(job, tick) for job, tick, _ in runs})


def _assert_scheduler_fails_over(database_url: str, processes: list[LedgerProcess]) -> None:
    """When the process that has been winning the ticks dies, another takes the jobs over.

    Which live process wins a tick depends on where in the second its timer fires, so
    one process may well win them all; what matters is that no tick runs twice and that
    the jobs carry on without it.
    """
    runs = asyncio.run(_scheduler_runs(database_url))
    _assert_each_tick_ran_once(runs)
    last_owner = [owner for job, _, owner in runs if job == "budget_check"][-1]
    pid = int(last_owner.split(":")[-2])  # owners read "host:pid:nonce"
    winner = next(p for p in processes if p.process is not None and p.process.pid == pid)
    winner.kill()
    killed_at = datetime.now(UTC)
    owners_since: list[str] = []
    for _ in range(50):
        time.sleep(0.2)
        runs = asyncio.run(_scheduler_runs(database_url))
        owners_since = [o for job, tick, o in runs if job == "budget_check" and tick > killed_at]
        if len(owners_since) >= 2:
            break
    assert owners_since, "no process took the budget check over"
    assert last_owner not in owners_since
    _assert_each_tick_ran_once(runs)


def test_three_processes_share_one_database_without_losing_or_overspending(
    database_url: str, fake_upstream: FakeUpstream, tmp_path: Path
) -> None:
    if not database_url.startswith("postgresql"):
        pytest.skip("scale-out shares one PostgreSQL; SQLite is for a single host")
    config = write_provider_config(tmp_path / "ledger.toml", fake_upstream)
    env = {
        "LEDGER_SCHEDULER": "on",
        "LEDGER_BUDGET_CHECK_INTERVAL_S": "1",
        "LEDGER_RESERVATION_SWEEP_INTERVAL_S": "1",
        "LEDGER_ALERT_DELIVERY_INTERVAL_S": "1",
    }
    first = LedgerProcess(database_url, config=config, env=env, log=tmp_path / "0.log").start()
    processes = [first]
    try:
        admin = httpx.Client(
            base_url=first.url, headers={"authorization": f"Bearer {first.admin_key}"}
        )
        for team in ("web", "agents"):
            assert admin.post("/admin/teams", json={"name": team}).status_code == 201
        web_key = admin.post("/admin/keys", json={"team": "web"}).json()["key"]
        agents_key = admin.post("/admin/keys", json={"team": "agents"}).json()["key"]
        # A tight hard budget for the agents, a roomy one for the web team (leases).
        tight = admin.post(
            "/admin/budgets",
            json={"team": "agents", "limit_usd": "0.0005", "period": "daily", "mode": "hard"},
        ).json()
        admin.post(
            "/admin/budgets",
            json={"team": "web", "limit_usd": "100", "period": "monthly", "mode": "hard"},
        )
        for index in range(1, PROCESSES):
            log = tmp_path / f"{index}.log"
            processes.append(LedgerProcess(database_url, config=config, env=env, log=log).start())

        async def load() -> Counter[str]:
            outcomes: Counter[str] = Counter()
            oai = [
                openai.AsyncOpenAI(base_url=p.url + "/v1", api_key=k, max_retries=0)
                for p in processes
                for k in (web_key, agents_key)
            ]
            claude = [
                anthropic.AsyncAnthropic(base_url=p.url, api_key=web_key, max_retries=0)
                for p in processes
            ]

            async def one(i: int) -> None:
                try:
                    if i % 4 == 3:
                        client = claude[i % PROCESSES]
                        async with client.messages.stream(
                            model="claude-haiku-4-5",
                            max_tokens=50,
                            messages=[{"role": "user", "content": f"stream {i}"}],
                        ) as stream:
                            await stream.get_final_message()
                    else:
                        client = oai[i % len(oai)]
                        await client.chat.completions.create(
                            model="gpt-4.1-mini",
                            max_tokens=50,
                            stream=i % 2 == 0,
                            messages=[{"role": "user", "content": f"request {i}"}],
                        )
                    outcomes["ok"] += 1
                except openai.APIStatusError as exc:
                    outcomes[str(exc.status_code)] += 1
                except anthropic.APIStatusError as exc:
                    outcomes[str(exc.status_code)] += 1

            semaphore = asyncio.Semaphore(40)

            async def bounded(i: int) -> None:
                async with semaphore:
                    await one(i)

            await asyncio.gather(*(bounded(i) for i in range(REQUESTS)))
            for client in [*oai, *claude]:
                await client.close()
            return outcomes

        outcomes = asyncio.run(load())
        assert set(outcomes) <= {"ok", "429"}, outcomes
        assert outcomes["429"] > 0  # the tight budget did refuse

        # Streams record after their last byte: give the writers a moment.
        entries: list[dict] = []
        for _ in range(50):
            entries = admin.get("/api/usage", params={"limit": 1000}).json()["data"]
            if len(entries) >= REQUESTS:
                break
            asyncio.run(asyncio.sleep(0.1))
        asyncio.run(asyncio.sleep(2.5))  # a few scheduler ticks
        status = admin.get(f"/admin/budgets/{tight['id']}/status").json()
        admin.close()
        _assert_scheduler_fails_over(database_url, processes)
    finally:
        for process in processes:
            process.terminate()

    assert len(entries) == REQUESTS
    assert len({e["request_id"] for e in entries}) == REQUESTS
    statuses = Counter(e["status"] for e in entries)
    assert statuses["ok"] == outcomes["ok"] and statuses["blocked"] == outcomes["429"]
    agents_spend = sum(Decimal(e["cost_usd"]) for e in entries if e["team"] == "agents")
    assert Decimal(status["spent_usd"]) == agents_spend <= Decimal("0.0005")
    assert status["reserved_usd"] == "0.000000000"
