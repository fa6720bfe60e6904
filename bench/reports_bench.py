"""Report latency as the ledger grows: a month's finance report and a 30-day daily series.

Loads N synthetic ledger entries quickly (PostgreSQL: COPY; SQLite: executemany), builds
the hourly rollups from them with ``rebuild_rollups`` (the same code as the scheduled
verify-and-repair), then times the report queries Ledger answers from rollups, and the
ones that must read raw entries, and prints a table. Figures are medians of warm runs.

    python bench/reports_bench.py --database-url sqlite:////tmp/reports.db --entries 1000000
    python bench/reports_bench.py --database-url postgresql://postgres@127.0.0.1:5432/reports \\
        --entries 10000000

The database is created if needed and must be empty of entries unless ``--reuse`` is
given (then loading is skipped and only the queries are timed).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sqlite3
import statistics
import time
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import func, insert, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from ledger.config import normalise_database_url
from ledger.db.engine import create_engine
from ledger.db.migrate import upgrade
from ledger.db.tables import (
    ApiKey,
    LedgerEntryRow,
    Team,
    spend_rollups_hourly,
    spend_rollups_team_hourly,
)
from ledger.reports import render
from ledger.reports.monthly import monthly_document
from ledger.reports.months import month_of
from ledger.reports.rollups import rebuild_rollups
from ledger.reports.spend import SpendFilters, SpendQuery, spend_report
from ledger.reports.timebuckets import local_midnight, zone

TEAMS = 8
KEYS_PER_TEAM = 5
MODELS = (
    ("gpt-4.1-mini", "openai"),
    ("gpt-4.1", "openai"),
    ("gpt-4o-mini", "openai"),
    ("o4-mini", "openai"),
    ("gpt-5-mini", "openai"),
    ("claude-sonnet-4-5", "anthropic"),
    ("claude-haiku-4-5", "anthropic"),
    ("claude-opus-4-1", "anthropic"),
)
STATUSES = (
    ("ok",) * 92 + ("upstream_error",) * 3 + ("timeout",) + ("blocked",) * 3 + ("invalid_request",)
)
COLUMNS = (
    "request_id", "kind", "started_at", "ended_at", "latency_ms", "team_id", "key_id",
    "end_user", "tags", "endpoint", "requested_model", "served_model", "provider", "stream",
    "status", "http_status", "input_tokens", "cache_read_tokens", "cache_write_5m_tokens",
    "cache_write_1h_tokens", "output_tokens", "reasoning_tokens", "usage_source", "cost_nanos",
    "input_cost_nanos", "cache_read_cost_nanos", "cache_write_cost_nanos", "output_cost_nanos",
    "request_fee_nanos",
)  # fmt: skip
TAGS = (None, None, '["chat"]', '["batch"]', '["eval"]', '["chat", "prod"]')


def _rows(count: int, days: int, now: datetime, seed: int) -> Iterator[tuple[Any, ...]]:
    """Synthetic entries over the last ``days`` days, as tuples in ``COLUMNS`` order."""
    rnd = random.Random(seed)
    span_us = days * 86_400 * 1_000_000
    first = now - timedelta(days=days)
    for index in range(count):
        started = first + timedelta(microseconds=rnd.randrange(span_us))
        team = rnd.randrange(1, TEAMS + 1)
        key = (team - 1) * KEYS_PER_TEAM + rnd.randrange(1, KEYS_PER_TEAM + 1)
        model, provider = MODELS[rnd.randrange(len(MODELS))]
        status = STATUSES[rnd.randrange(len(STATUSES))]
        ok = status == "ok"
        input_tokens = rnd.randrange(50, 4000) if ok else 0
        cached = rnd.randrange(0, 2000) if ok else 0
        output_tokens = rnd.randrange(10, 1500) if ok else 0
        latency = rnd.randrange(80, 20_000)
        input_cost = input_tokens * 400
        output_cost = output_tokens * 1600
        cache_cost = cached * 100
        yield (
            f"b{seed:02d}-{index:010d}", "request", started,
            started + timedelta(milliseconds=latency), latency, team, key,
            f"user-{rnd.randrange(500)}" if rnd.random() < 0.5 else None,
            TAGS[rnd.randrange(len(TAGS))], "/v1/chat/completions", model, model, provider,
            False, status, 200 if ok else 502, input_tokens, cached, 0, 0, output_tokens,
            output_tokens // 3 if model in ("o4-mini", "gpt-5-mini") else 0,
            "provider" if ok else "none", input_cost + output_cost + cache_cost, input_cost,
            cache_cost, 0, output_cost, 0,
        )  # fmt: skip


async def _identities(engine: AsyncEngine, now: datetime) -> None:
    async with engine.begin() as connection:
        if await connection.scalar(select(func.count()).select_from(Team)):
            return
        await connection.execute(
            insert(Team),
            [{"id": t, "name": f"team-{t}", "cost_centre": f"CC-{1000 + t}",
              "markup_bps": 250 * (t % 3), "created_at": now} for t in range(1, TEAMS + 1)],
        )  # fmt: skip
        await connection.execute(
            insert(ApiKey),
            [{"id": k, "team_id": (k - 1) // KEYS_PER_TEAM + 1, "name": f"key-{k}",
              "prefix": f"sk-ledger-{k:06d}", "key_hash": f"{k:064x}", "created_at": now}
             for k in range(1, TEAMS * KEYS_PER_TEAM + 1)],
        )  # fmt: skip


async def _load_postgres(engine: AsyncEngine, count: int, days: int, now: datetime) -> None:
    chunk = 200_000
    async with engine.connect() as connection:
        raw = await connection.get_raw_connection()
        driver = raw.driver_connection
        assert driver is not None
        rows = _rows(count, days, now, seed=1)
        done = 0
        while done < count:
            batch = [next(rows) for _ in range(min(chunk, count - done))]
            await driver.copy_records_to_table(
                "ledger_entries", records=batch, columns=list(COLUMNS)
            )
            done += len(batch)
            print(f"  loaded {done:,} entries", flush=True)
        await connection.commit()
        await connection.execute(text("ANALYZE"))
        await connection.commit()


def _load_sqlite(path: str, count: int, days: int, now: datetime) -> None:
    database = sqlite3.connect(path)
    database.execute("PRAGMA journal_mode=WAL")
    database.execute("PRAGMA synchronous=OFF")
    placeholders = ", ".join("?" for _ in COLUMNS)
    statement = f"INSERT INTO ledger_entries ({', '.join(COLUMNS)}) VALUES ({placeholders})"  # noqa: S608
    chunk = 100_000

    def stored(value: Any) -> Any:
        # SQLAlchemy's SQLite storage format for a UTC timestamp.
        if isinstance(value, datetime):
            return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
        return value

    rows = _rows(count, days, now, seed=1)
    done = 0
    while done < count:
        batch = [tuple(stored(v) for v in next(rows)) for _ in range(min(chunk, count - done))]
        database.executemany(statement, batch)
        database.commit()
        done += len(batch)
        print(f"  loaded {done:,} entries", flush=True)
    database.execute("ANALYZE")
    database.commit()
    database.close()


async def _timed(fn: Callable[[], Awaitable[Any]], repeat: int) -> tuple[float, float]:
    """(first run, median of the next ``repeat`` runs), in milliseconds."""
    started = time.perf_counter()
    await fn()
    first = (time.perf_counter() - started) * 1000
    runs = []
    for _ in range(repeat):
        started = time.perf_counter()
        await fn()
        runs.append((time.perf_counter() - started) * 1000)
    return first, statistics.median(runs)


async def main(arguments: argparse.Namespace) -> None:
    url = normalise_database_url(arguments.database_url)
    if make_url(url).get_backend_name() == "postgresql":
        await _create_database(url)
    engine = create_engine(url, null_pool=True)
    await upgrade(engine)
    now = datetime.now(UTC).replace(microsecond=0)
    await _identities(engine, now)
    async with engine.connect() as connection:
        existing = int(await connection.scalar(select(func.count()).select_from(LedgerEntryRow)))
    if not arguments.reuse:
        if existing:
            raise SystemExit(f"the database already holds {existing:,} entries; use --reuse")
        print(f"loading {arguments.entries:,} entries over {arguments.days} days ...")
        started = time.perf_counter()
        if engine.dialect.name == "postgresql":
            await _load_postgres(engine, arguments.entries, arguments.days, now)
        else:
            database = make_url(url).database
            assert database is not None
            await asyncio.to_thread(_load_sqlite, database, arguments.entries, arguments.days, now)
        loaded = time.perf_counter() - started
        started = time.perf_counter()
        check = await rebuild_rollups(engine)
        rebuilt = time.perf_counter() - started
        print(f"loaded in {loaded:.0f} s; rollups built from raw entries in {rebuilt:.0f} s")
        print(f"  ({check.missing:,} rollup rows written over {check.hours_checked:,} hours)")
    async with engine.connect() as connection:
        entries = int(await connection.scalar(select(func.count()).select_from(LedgerEntryRow)))
        rollup_rows = (
            int(await connection.scalar(select(func.count()).select_from(spend_rollups_hourly))),
            int(
                await connection.scalar(select(func.count()).select_from(spend_rollups_team_hourly))
            ),
        )
        latest = await connection.scalar(select(func.max(LedgerEntryRow.started_at)))
    assert latest is not None
    await _report(engine, arguments, entries, rollup_rows, latest)
    await engine.dispose()


async def _report(
    engine: AsyncEngine, arguments: argparse.Namespace, entries: int, rollup_rows: tuple[int, int],
    latest: datetime,
) -> None:  # fmt: skip
    tz_name = "Europe/Berlin"
    tz = zone(tz_name)
    now = latest + timedelta(seconds=1)
    this_month = month_of(now, tz)
    last_month = (this_month - timedelta(days=1)).replace(day=1)
    since_30 = local_midnight(now.astimezone(tz).date() - timedelta(days=29), tz)

    async def monthly() -> None:
        async with engine.connect() as connection:
            document = await monthly_document(connection, last_month, tz_name)
        render.render_csv(document)
        render.render_json(document)

    async def monthly_xlsx() -> None:
        async with engine.connect() as connection:
            document = await monthly_document(connection, last_month, tz_name)
        render.render_xlsx(document)

    def spend(**query: Any) -> Callable[[], Awaitable[Any]]:
        async def run() -> Any:
            async with engine.connect() as connection:
                return await spend_report(connection, SpendQuery(**query))

        return run

    cases: list[tuple[str, Callable[[], Awaitable[Any]]]] = [
        (f"monthly report {last_month:%Y-%m} (JSON+CSV)", monthly),
        (f"monthly report {last_month:%Y-%m} (XLSX)", monthly_xlsx),
        ("30-day daily spend by team", spend(
            since=since_30, until=now, timezone=tz_name, granularity="day", group_by=("team",))),
        ("30-day daily spend by model, top 5", spend(
            since=since_30, until=now, timezone=tz_name, granularity="day", group_by=("model",),
            top=5)),
        ("30-day top 10 keys of one team", spend(
            since=since_30, until=now, timezone=tz_name, granularity=None, group_by=("key",),
            filters=SpendFilters(team_ids=(3,)), top=10)),
        ("7-day hourly spend by key", spend(
            since=now - timedelta(days=7), until=now, timezone=tz_name, granularity="hour",
            group_by=("key",))),
        ("30-day daily by team, Asia/Kolkata (raw)", spend(
            since=since_30, until=now, timezone="Asia/Kolkata", granularity="day",
            group_by=("team",))),
        ("7-day spend by user (raw)", spend(
            since=now - timedelta(days=7), until=now, timezone=tz_name, granularity=None,
            group_by=("user",), top=20)),
    ]  # fmt: skip
    backend = engine.dialect.name
    print(
        f"\n{backend}: {entries:,} ledger entries; rollup rows: {rollup_rows[0]:,} detailed, "
        f"{rollup_rows[1]:,} per team and model\n"
    )
    print(f"| {'query':<42} | first (ms) | median (ms) |")
    print(f"|{'-' * 44}|-----------:|------------:|")
    for name, fn in cases:
        first, median = await _timed(fn, arguments.repeat)
        print(f"| {name:<42} | {first:10.0f} | {median:11.0f} |", flush=True)


async def _create_database(url: str) -> None:
    import asyncpg

    target = make_url(url)
    admin = target.set(database="postgres").render_as_string(hide_password=False)
    connection = await asyncpg.connect(admin.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        exists = await connection.fetchval(
            "SELECT 1 FROM pg_database WHERE datname = $1", target.database
        )
        if not exists:
            await connection.execute(f'CREATE DATABASE "{target.database}"')
    finally:
        await connection.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--entries", type=int, default=1_000_000)
    parser.add_argument("--days", type=int, default=90, help="spread entries over this many days")
    parser.add_argument("--repeat", type=int, default=5, help="warm runs per query")
    parser.add_argument("--reuse", action="store_true", help="skip loading; time the queries")
    asyncio.run(main(parser.parse_args()))
