"""Target 4: ledger entries per second through the group-commit writer, as the gateway drives it.

Many concurrent callers each do what a request does around the database: reserve on a
hard key budget (``BudgetGuard``, local lease), journal ``start`` and ``forward``, settle,
then ``await LedgerWriter.record(entry)``, which returns only once the entry is committed.
The figure is entries acknowledged per second, from the first call to the last
acknowledgement. Batches are committed by a writer process, as ``ledger serve`` does by
default (``--in-process``: by this process, as with ``LEDGER_WRITER_PROCESS=false``);
afterwards the ledger is counted and the budget's spend compared with the sum of the
entries' costs. The clock starts once the writer has committed a first (warm-up) entry.

    python bench/writer_bench.py --database-url sqlite+aiosqlite:////tmp/w.db --entries 50000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, select

from ledger.admin import identity
from ledger.admin.credentials import load_hash_secret
from ledger.budgets import admin
from ledger.budgets.guard import BudgetGuard
from ledger.budgets.model import RequestScope
from ledger.config import normalise_database_url
from ledger.db.engine import create_engine, create_sessionmaker
from ledger.db.journal import Journal, journal_directory
from ledger.db.ledger import LedgerEntry, new_request_id
from ledger.db.migrate import upgrade
from ledger.db.tables import BudgetPeriod, LedgerEntryRow
from ledger.db.writer import LedgerWriter
from ledger.db.writer_process import ProcessWrites

COST_NANOS = 103_600  # 27 input and 58 output tokens of gpt-4.1-mini
WORST_CASE_NANOS = 6_564_400


async def run(
    database_url: str,
    entries: int,
    callers: int,
    max_batch: int,
    record_only: bool = False,
    writer_process: bool = False,
    other_budgets: int = 0,
) -> dict[str, Any]:
    engine = create_engine(database_url, pool_size=10)
    await upgrade(engine)
    secret = await load_hash_secret(engine, None)
    team_name = "writer-bench-" + uuid.uuid4().hex[:8]
    async with create_sessionmaker(engine).begin() as session:
        team = await identity.create_team(session, team_name)
        key, _ = await identity.create_key(session, secret, team, "bench")
        team_id, key_id = team.id, key.id
    async with engine.begin() as connection:
        rule = await admin.create_budget(
            connection,
            {"key_id": key_id, "limit_usd": "1000000", "period": "monthly", "mode": "hard"},
        )
        for number in range(other_budgets):  # budgets of others: none applies to these entries
            await admin.create_budget(
                connection,
                {"tag": f"other-{number}", "limit_usd": "1", "period": "monthly", "mode": "hard"},
            )
    guard = BudgetGuard(engine)
    await guard.start()
    journal_root = tempfile.mkdtemp(prefix="ledger-writer-bench-")
    journal = Journal(journal_directory(journal_root, database_url), guard.owner)
    journal.open()
    writes = ProcessWrites(database_url) if writer_process else None
    writer = LedgerWriter(engine, max_batch=max_batch, journal=journal, writes=writes)
    writer.start()
    # The clock starts once a first entry is committed: a writer process starts with the
    # server, not with the first request, and its start-up (imports, about 0.7 s) is not
    # what the target measures. The warm-up entry has no key, so no count or spend below
    # includes it.
    await writer.record(
        LedgerEntry(request_id=new_request_id(), started_at=datetime.now(UTC), endpoint="warm-up")
    )
    await writer.flush(timeout_s=60)
    scope = RequestScope(team_id=team_id, key_id=key_id, model="gpt-4.1-mini")
    acknowledged: list[float] = []

    async def prepare() -> LedgerEntry:
        now = datetime.now(UTC)
        entry = LedgerEntry(
            request_id=new_request_id(),  # as the gateway makes them
            started_at=now,
            endpoint="chat.completions",
            team_id=team_id,
            key_id=key_id,
            requested_model="gpt-4.1-mini",
            served_model="gpt-4.1-mini",
            provider="bench",
        )
        if not record_only:
            writer.begin(entry)
        reservation = await guard.reserve(entry.request_id, scope, WORST_CASE_NANOS, now)
        if not record_only:
            writer.forwarding(entry, 10_800)
        entry.status, entry.http_status, entry.usage_source = "ok", 200, "provider"
        entry.input_tokens, entry.output_tokens, entry.estimated_input_tokens = 27, 58, 27
        entry.input_cost_nanos, entry.output_cost_nanos = 10_800, 92_800
        entry.cost_nanos = COST_NANOS
        entry.ended_at = datetime.now(UTC)
        entry.settlements = guard.settle(reservation, entry.cost_nanos)
        entry.budgets_seen = reservation.rules_fingerprint
        return entry

    # --record-only: entries, reservations and settlements are made before the clock starts,
    # so the figure is the writer's alone; otherwise each caller also does the request's
    # journal and budget work, as the gateway does.
    prepared = [await prepare() for _ in range(entries)] if record_only else []
    remaining = iter(range(entries))

    async def caller() -> None:
        for index in remaining:
            entry = prepared[index] if record_only else await prepare()
            started = time.perf_counter()
            await writer.record(entry)
            acknowledged.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(callers)))
    acknowledged_all = time.perf_counter() - started
    # Callers are answered once their entry is journaled; the target is what the database
    # sustains, so the clock stops when the last entry is committed.
    await writer.flush(timeout_s=300)
    elapsed = time.perf_counter() - started
    batches = writer.batches_written
    await writer.stop()
    await guard.stop()
    journal.close()
    async with engine.connect() as connection:
        written = await connection.scalar(
            select(func.count()).select_from(LedgerEntryRow).where(LedgerEntryRow.key_id == key_id)
        )
        spent = await connection.scalar(
            select(func.sum(BudgetPeriod.spent_nanos)).where(BudgetPeriod.budget_id == rule.id)
        )
    await engine.dispose()
    acknowledged.sort()
    return {
        "database": engine.dialect.name,
        "record_only": record_only,
        "writer_process": writer_process,
        "other_budgets": other_budgets,
        "entries": entries,
        "callers": callers,
        "seconds": elapsed,
        "entries_per_s": entries / elapsed,
        "acknowledged_per_s": entries / acknowledged_all,
        "batches": batches,
        "mean_batch": entries / batches if batches else 0,
        "ack_p50_ms": acknowledged[len(acknowledged) // 2] * 1000,
        "ack_p99_ms": acknowledged[int(len(acknowledged) * 0.99)] * 1000,
        "written": written,
        "budget_spent_nanos": int(spent or 0),
        "expected_spent_nanos": entries * COST_NANOS,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--entries", type=int, default=50_000)
    parser.add_argument("--callers", type=int, default=512)
    parser.add_argument("--max-batch", type=int, default=512)
    parser.add_argument(
        "--record-only", action="store_true", help="time LedgerWriter.record() alone"
    )
    parser.add_argument(
        "--in-process", action="store_true", help="commit in this process, not a writer process"
    )
    parser.add_argument(
        "--other-budgets", type=int, default=0, help="also this many budgets that do not apply"
    )
    args = parser.parse_args()
    try:
        import uvloop

        runner = uvloop.run
    except ImportError:
        runner = asyncio.run
    url = normalise_database_url(args.database_url)
    result = runner(
        run(
            url,
            args.entries,
            args.callers,
            args.max_batch,
            args.record_only,
            not args.in_process,
            args.other_budgets,
        )
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
