"""The overspend bound under concurrency, proven across several Ledger processes.

README, "Budgets": a hard budget admits a request only if its worst case still fits, in
one atomic statement per budget in the shared database. So with the provider honouring
``max_tokens`` and the prompt estimate exact, settled spend never exceeds the limit.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from sqlalchemy import func, select

from ledger.budgets import admin as budget_admin
from ledger.budgets.guard import BudgetGuard
from ledger.budgets.model import RequestScope
from ledger.budgets.store import load_rules_in, rules_fingerprint
from ledger.db.engine import create_engine
from ledger.db.migrate import upgrade
from ledger.db.tables import BudgetReservation
from ledger.money import cost_of_tokens
from ledger.tokens import count_openai_chat_prompt, count_text_tokens
from tests.fake_upstream import FakeUpstream
from tests.processes import LedgerProcess, write_provider_config

MODEL = "gpt-4.1-mini"
INPUT_NANOS_PER_M, OUTPUT_NANOS_PER_M = 400_000_000, 1_600_000_000
COVERED, SENT = 50, 200


async def _reservations_left(database_url: str) -> int:
    engine = create_engine(database_url, null_pool=True)
    try:
        async with engine.connect() as connection:
            return int(
                await connection.scalar(select(func.count()).select_from(BudgetReservation)) or 0
            )
    finally:
        await engine.dispose()


def test_two_hundred_concurrent_requests_from_two_processes_never_overspend(
    database_url: str, fake_upstream: FakeUpstream, tmp_path: Path
) -> None:
    if not database_url.startswith("postgresql"):
        pytest.skip("the multi-process proof runs on PostgreSQL (SQLite serialises writers)")
    reply_words = 6
    reply = " ".join(f"word{i}" for i in range(reply_words))
    messages = [{"role": "user", "content": f"reply_words={reply_words} chunk_delay_ms=5"}]
    prompt_tokens = count_openai_chat_prompt(MODEL, {"model": MODEL, "messages": messages})
    # max_tokens is exactly what the provider will write, so the reserved worst case is
    # also the actual cost: the budget covers exactly COVERED requests.
    max_tokens = count_text_tokens(MODEL, reply)
    per_request = cost_of_tokens(prompt_tokens, INPUT_NANOS_PER_M) + cost_of_tokens(
        max_tokens, OUTPUT_NANOS_PER_M
    )
    limit_nanos = COVERED * per_request
    limit_usd = str(Decimal(limit_nanos).scaleb(-9))

    config = write_provider_config(tmp_path / "ledger.toml", fake_upstream)
    with LedgerProcess(database_url, config=config, log=tmp_path / "a.log") as first:
        admin = httpx.Client(
            base_url=first.url, headers={"authorization": f"Bearer {first.admin_key}"}
        )
        assert admin.post("/admin/teams", json={"name": "agents"}).status_code == 201
        key = admin.post("/admin/keys", json={"team": "agents"}).json()["key"]
        budget = admin.post(
            "/admin/budgets",
            json={"team": "agents", "limit_usd": limit_usd, "period": "monthly", "mode": "hard"},
        ).json()
        second = LedgerProcess(database_url, config=config, log=tmp_path / "b.log").start()

        async def fire() -> list[int]:
            clients = [
                openai.AsyncOpenAI(base_url=p.url + "/v1", api_key=key, max_retries=0)
                for p in (first, second)
            ]

            async def one(i: int) -> int:
                try:
                    await clients[i % 2].chat.completions.create(
                        model=MODEL, messages=messages, max_tokens=max_tokens
                    )
                    return 200
                except openai.APIStatusError as exc:
                    return exc.status_code

            try:
                return await asyncio.gather(*(one(i) for i in range(SENT)))
            finally:
                for client in clients:
                    await client.close()

        try:
            statuses = asyncio.run(fire())
        finally:
            second.terminate()
        admitted = statuses.count(200)
        assert statuses.count(429) == SENT - admitted, statuses

        status = admin.get(f"/admin/budgets/{budget['id']}/status").json()
        entries = admin.get("/api/usage", params={"limit": 1000}).json()["data"]
        admin.close()

    spent = Decimal(status["spent_usd"])
    assert 0 < admitted <= COVERED
    assert spent <= Decimal(limit_usd)
    assert spent == sum(Decimal(e["cost_usd"]) for e in entries)
    assert spent == admitted * Decimal(per_request).scaleb(-9)
    assert status["reserved_usd"] == "0.000000000"
    # Every request sent is exactly one ledger entry: admitted ones and blocked ones.
    assert len(entries) == SENT
    assert sum(e["status"] == "blocked" for e in entries) == SENT - admitted
    assert asyncio.run(_reservations_left(database_url)) == 0


def test_a_new_budget_counts_what_other_processes_spend_before_they_see_it(
    database_url: str, fake_upstream: FakeUpstream, tmp_path: Path
) -> None:
    """A budget created through one process reaches the others within about half a second.

    What they serve meanwhile is not held against the budget, but it is in the budget's
    spend as soon as its entries are, not only after the next scheduled check (off here).
    """
    config = write_provider_config(tmp_path / "ledger.toml", fake_upstream)
    with (
        LedgerProcess(database_url, config=config, log=tmp_path / "a.log") as first,
        LedgerProcess(database_url, config=config, log=tmp_path / "b.log") as second,
    ):
        admin = httpx.Client(
            base_url=first.url, headers={"authorization": f"Bearer {first.admin_key}"}
        )

        def entries(count: int) -> list[dict[str, Any]]:
            for _ in range(100):  # until the last one is committed
                data = admin.get("/api/usage", params={"limit": 100}).json()["data"]
                if len(data) >= count:
                    return data
                time.sleep(0.05)
            raise AssertionError(f"{count} entries expected, {len(data)} committed")

        assert admin.post("/admin/teams", json={"name": "agents"}).status_code == 201
        key = admin.post("/admin/keys", json={"team": "agents"}).json()["key"]
        client = openai.OpenAI(base_url=second.url + "/v1", api_key=key, max_retries=0)
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
        [before] = entries(1)  # committed before the budget exists
        budget = admin.post(
            "/admin/budgets",
            json={"team": "agents", "limit_usd": "100", "period": "monthly", "mode": "hard"},
        ).json()
        for number in range(10):  # through the process that has not reloaded its budgets yet
            client.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": f"question {number}"}]
            )
        after = [e for e in entries(11) if e["request_id"] != before["request_id"]]
        status = admin.get(f"/admin/budgets/{budget['id']}/status").json()
        admin.close()
    spent = Decimal(status["spent_usd"])
    assert spent > 0
    assert spent == sum(Decimal(e["cost_usd"]) for e in after)


def test_the_ledger_writer_trusts_a_guard_only_while_they_see_the_same_budgets(
    database_url: str,
) -> None:
    """The writer skips matching an entry against the budgets only if its guard saw them all.

    The entry carries the fingerprint of the budgets its reservation was chosen from; the
    writer compares it with the budgets in its own transaction. Any change to a budget
    must make them differ, or spend on a new or changed budget would go unrecorded.
    """

    async def writers_fingerprint(engine: Any) -> str:
        async with engine.connect() as connection:
            return await connection.run_sync(lambda sync: rules_fingerprint(load_rules_in(sync)))

    async def scenario() -> None:
        engine = create_engine(database_url)
        await upgrade(engine)
        limit = {"limit_usd": "5", "period": "monthly", "mode": "hard"}
        async with engine.begin() as connection:
            rule = await budget_admin.create_budget(connection, {"scope": "org", **limit})
        guard = BudgetGuard(engine)
        await guard.start()
        scope = RequestScope(team_id=None, key_id=None, model=MODEL)
        try:
            before = await guard.reserve("req_before", scope, 1000, datetime.now(UTC))
            assert before.rules_fingerprint == await writers_fingerprint(engine)
            for change in (
                lambda c: budget_admin.update_budget(c, rule.id, {"limit_usd": "6"}),
                lambda c: budget_admin.create_budget(c, {"tag": "nightly", **limit}),
                lambda c: budget_admin.delete_budget(c, rule.id),
            ):
                async with engine.begin() as connection:
                    await change(connection)
                assert await writers_fingerprint(engine) != before.rules_fingerprint
                await guard.reload_rules()
                after = await guard.reserve("req_after", scope, 1000, datetime.now(UTC))
                assert after.rules_fingerprint == await writers_fingerprint(engine)
                guard.settle(after, 0)
                before = after
            guard.settle(before, 0)
        finally:
            await guard.stop()
            await engine.dispose()

    asyncio.run(scenario())
