"""Three Ledger processes behind no load balancer but the client's round robin, one PostgreSQL.

The invariants a platform team relies on when it runs several processes: every request
sent is exactly one ledger entry, a hard budget is never exceeded, and the scheduled
jobs run once per tick however many processes run them.
"""

from __future__ import annotations

import asyncio
from collections import Counter
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


async def _scheduler_runs(database_url: str) -> tuple[int, int, int]:
    engine = create_engine(database_url, null_pool=True)
    try:
        async with engine.connect() as connection:
            row = (
                await connection.execute(
                    text(
                        "SELECT count(*), count(DISTINCT (job, tick)), count(DISTINCT owner) "
                        "FROM scheduler_runs"
                    )
                )
            ).one()
            return int(row[0]), int(row[1]), int(row[2])
    finally:
        await engine.dispose()


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

    runs, distinct_ticks, owners = asyncio.run(_scheduler_runs(database_url))
    assert runs == distinct_ticks > 0  # never the same (job, tick) twice
    assert owners >= 2  # and the work was shared between processes
