"""An entry the database refuses is never dropped: stored (maybe salvaged) or surfaced.

Values beyond their column (lengths, 64-bit integers, unpaired surrogates) are salvaged
into the ledger, flagged, with the original kept in ``ledger_dead_letters``; an entry
refused for another reason (here: a constraint an operator added) is kept there as
``unstored``, shown by ``/readyz`` and ``/metrics``, and written exactly once — budget
settlement included — by ``ledger db retry-dead-letters`` after the fix.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from ledger.budgets.store import Settlement
from ledger.cli import main as ledger_cli
from ledger.db.dead_letters import entry_from_text, entry_key, salvaged
from ledger.db.engine import create_engine
from ledger.db.journal import Journal
from ledger.db.ledger import LedgerEntry, new_request_id
from ledger.db.migrate import upgrade
from ledger.db.tables import BudgetPeriod, LedgerDeadLetter, LedgerEntryRow
from ledger.db.writer import LedgerWriter
from ledger.endusers import fit_text
from tests.fake_upstream import FakeUpstream
from tests.integration.fault_support import backend_of, ledger_rows
from tests.live import LiveServer, gateway_settings

# -- every field at and beyond its column's limits ------------------------------------

_CHARACTERS = st.sampled_from(
    ["a", "Z", "0", " ", "\x00", "é", "\u0301", "\u4e2d", "\U0001f600", "\U00010348", "\ud800"]
)


def _text_near(limit: int) -> st.SearchStrategy[str]:
    """Short strings, and strings at, just past and far past ``limit`` characters."""
    return st.one_of(
        st.text(_CHARACTERS, max_size=8),
        st.text(_CHARACTERS, min_size=limit, max_size=limit),
        st.text(_CHARACTERS, min_size=limit + 1, max_size=limit + 3),
        st.text(_CHARACTERS, min_size=limit * 4, max_size=limit * 4),
    )


def _integers(bits: int) -> st.SearchStrategy[int]:
    top = 2 ** (bits - 1)
    return st.one_of(
        st.integers(-1000, 10**6),
        st.integers(top - 2, top + 2),  # at the column's edge, and one past
        st.integers(-top - 2, -top + 2),
        st.integers(2**64, 2**80),  # beyond any 64-bit integer
    )


@st.composite
def _entries(draw: st.DrawFn) -> LedgerEntry:
    started = datetime.now(UTC) - timedelta(seconds=draw(st.integers(0, 3600)))

    def optional(limit: int) -> st.SearchStrategy[str | None]:
        return st.none() | _text_near(limit)

    return LedgerEntry(
        # Unique per example; sometimes past its 64 characters.
        request_id=f"req_{uuid.uuid4().hex}" + draw(st.text(_CHARACTERS, max_size=40)),
        started_at=started,
        ended_at=started + timedelta(milliseconds=draw(st.integers(0, 2**32))),
        endpoint=draw(_text_near(64)),
        kind=draw(st.sampled_from(["request", "adjustment"]) | _text_near(16)),
        corrects_request_id=draw(optional(64)),
        team_id=draw(st.none() | _integers(32)),
        key_id=draw(st.none() | _integers(32)),
        end_user=draw(optional(256)),
        tags=draw(st.lists(_text_near(64), max_size=3)),
        requested_model=draw(optional(200)),
        served_model=draw(optional(200)),
        provider=draw(optional(64)),
        stream=draw(st.booleans()),
        status=draw(st.sampled_from(["ok", "blocked", "invalid_request"]) | _text_near(32)),
        http_status=draw(_integers(32)),
        input_tokens=draw(_integers(64)),
        cache_read_tokens=draw(_integers(64)),
        output_tokens=draw(_integers(64)),
        reasoning_tokens=draw(_integers(64)),
        estimated_input_tokens=draw(st.none() | _integers(64)),
        usage_source=draw(_text_near(16)),
        cost_nanos=draw(_integers(64)),
        output_cost_nanos=draw(_integers(64)),
        price_id=draw(st.none() | _integers(32)),
        error=draw(st.none() | _text_near(2000)),
    )


def _as_stored(text: str, column: str) -> str:
    # As the ledger stores a text value: NULs and lone surrogates as U+FFFD, and one
    # longer than its column in its stable shortened form (ledger.endusers.fit_text).
    length = LedgerEntryRow.__table__.c[column].type.length
    return fit_text(text, length) if length is not None else fit_text(text, len(text))


async def _record_and_find(url: str, journal_dir: Path, entry: LedgerEntry) -> dict[str, Any]:
    """Record ``entry`` through the real writer (with its journal); what the database holds."""
    engine = create_engine(url)
    journal = Journal(journal_dir, f"test-{uuid.uuid4().hex[:8]}")
    journal.open()
    writer = LedgerWriter(engine, journal=journal)
    writer.start()
    try:
        await writer.record(entry)
        await writer.stop()
        copy, _ = salvaged(entry)
        async with engine.connect() as connection:
            rows = (
                await connection.execute(
                    select(LedgerEntryRow).where(
                        LedgerEntryRow.request_id.in_(
                            [
                                _as_stored(entry.request_id, "request_id"),
                                _as_stored(copy.request_id, "request_id"),
                            ]
                        )
                    )
                )
            ).all()
            letter = (
                await connection.execute(
                    select(LedgerDeadLetter).where(LedgerDeadLetter.entry_key == entry_key(entry))
                )
            ).one_or_none()
        return {"rows": rows, "letter": letter, "journal_only": writer.unstored}
    finally:
        journal.close()
        await engine.dispose()


@pytest.fixture
def migrated_url(database_url: str) -> str:
    async def migrate() -> None:
        engine = create_engine(database_url)
        try:
            await upgrade(engine)
        finally:
            await engine.dispose()

    asyncio.run(migrate())
    return database_url


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(entry=_entries())
def test_every_entry_beyond_its_columns_is_stored_or_kept_in_dead_letters_never_lost(
    migrated_url: str, tmp_path: Path, entry: LedgerEntry
) -> None:
    found = asyncio.run(_record_and_find(migrated_url, tmp_path / "journal", entry))
    rows, letter = found["rows"], found["letter"]
    assert found["journal_only"] == 0  # the dead-letter table takes anything
    assert len(rows) <= 1, "written twice"
    if letter is None:  # stored as it was (NULs as U+FFFD, as always)
        assert len(rows) == 1, f"entry {entry.request_id!r} is gone"
        row = rows[0]
        assert row.request_id == _as_stored(entry.request_id, "request_id")
        assert row.input_tokens == entry.input_tokens and row.cost_nanos == entry.cost_nanos
        assert row.end_user == (
            None if entry.end_user is None else _as_stored(entry.end_user, "end_user")
        )
        return
    # Kept: the original exactly as it was refused, retrievable.
    assert entry_from_text(letter.entry) == entry
    assert letter.attempts == 1 and letter.error
    if letter.state == "salvaged":
        assert len(rows) == 1 and rows[0].error.startswith("Salvaged:")
        assert letter.changes
    else:
        assert letter.state == "unstored" and rows == []


# -- salvage settles the budget once ---------------------------------------------------


def test_a_salvaged_entry_is_settled_on_its_budget_once_even_when_recorded_again(
    gateway: LiveServer, tmp_path: Path
) -> None:
    url = gateway.settings.database_url
    gateway.create_team("salvage")
    key = gateway.admin.post("/admin/keys", json={"team": "salvage", "name": "k"}).json()
    budget = gateway.admin.post(
        "/admin/budgets", json={"key_id": key["id"], "limit_usd": "5", "name": "cap"}
    )
    assert budget.status_code == 201, budget.text
    budget_id = budget.json()["id"]
    period_start = datetime.now(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    entry = LedgerEntry(
        request_id=new_request_id(), started_at=datetime.now(UTC), endpoint="chat.completions",
        key_id=key["id"], status="ok", http_status=200, cost_nanos=1234,
        output_tokens=2**70,  # what no column holds: refused on both databases
    )  # fmt: skip
    entry.settlements = [Settlement(budget_id, period_start, None, 1234)]

    async def record_twice() -> int:
        for _ in range(2):  # the second time as a journal replay after a crash would
            engine = create_engine(url)
            writer = LedgerWriter(engine)  # no journal: record() returns once it is kept
            writer.start()
            await writer.record(entry)
            await writer.stop()
            await engine.dispose()
        engine = create_engine(url)
        async with engine.connect() as connection:
            spent = await connection.scalar(
                select(BudgetPeriod.spent_nanos).where(BudgetPeriod.budget_id == budget_id)
            )
        await engine.dispose()
        return int(spent or 0)

    assert asyncio.run(record_twice()) == 1234
    stored = gateway.entry(entry.request_id)
    assert stored["error"].startswith("Salvaged:") and "output_tokens" in stored["error"]
    assert gateway.admin.get(f"/admin/budgets/{budget_id}/status").json()["spent_usd"] == (
        "0.000001234"
    )
    ready = httpx.get(gateway.url + "/readyz").json()
    assert ready["status"] == "ready" and ready["ledger_salvaged"] == 1
    assert ready["ledger_unstored"] == 0
    assert [row["request_id"] for row in ledger_rows(url)].count(entry.request_id) == 1


# -- refused outright: surfaced, then retried once after the fix ----------------------

_POISON = "refuse-me"


async def _poison(url: str, *, on: bool) -> None:
    """An operator's constraint that refuses entries of one end user (then removed)."""
    engine = create_engine(url)
    try:
        async with engine.begin() as connection:
            if backend_of(url) == "postgres":
                await connection.exec_driver_sql(
                    f"ALTER TABLE ledger_entries ADD CONSTRAINT ck_poison CHECK "
                    f"(end_user IS DISTINCT FROM '{_POISON}')"
                    if on
                    else "ALTER TABLE ledger_entries DROP CONSTRAINT ck_poison"
                )
            else:
                await connection.exec_driver_sql(
                    f"CREATE TRIGGER poison BEFORE INSERT ON ledger_entries "
                    f"WHEN NEW.end_user = '{_POISON}' "
                    f"BEGIN SELECT RAISE(ABORT, 'refused by the operator''s trigger'); END"
                    if on
                    else "DROP TRIGGER poison"
                )
    finally:
        await engine.dispose()


def _metric(gateway: LiveServer, name: str) -> float:
    body = gateway.admin.get("/metrics").text
    line = next(line for line in body.splitlines() if line.startswith(name + " "))
    return float(line.split()[1])


def test_an_entry_the_database_refuses_is_surfaced_and_written_once_after_the_fix(
    database_url: str, fake_upstream: FakeUpstream, caplog: pytest.LogCaptureFixture
) -> None:
    # As `ledger serve` runs it: batches committed by the writer process.
    settings_ = gateway_settings(database_url, fake_upstream, writer_process=True)
    with LiveServer(settings_) as gateway:
        gateway.create_team("poison")
        key = gateway.admin.post("/admin/keys", json={"team": "poison", "name": "k"}).json()
        budget = gateway.admin.post(
            "/admin/budgets", json={"key_id": key["id"], "limit_usd": "5", "name": "cap"}
        ).json()
        asyncio.run(_poison(database_url, on=True))
        client = openai.OpenAI(base_url=gateway.openai_base_url, api_key=key["key"], max_retries=0)

        def ask(user: str) -> str:
            response = client.chat.completions.with_raw_response.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], max_tokens=8,
                extra_headers={"x-ledger-user": user},
            )  # fmt: skip
            return response.headers["x-ledger-request-id"]

        with caplog.at_level(logging.ERROR, logger="ledger.writer"):
            refused = ask(_POISON)
            fine = ask("someone-else")
            gateway.entry(fine)
            ready = _wait_for(lambda: httpx.get(gateway.url + "/readyz").json(), "ledger_unstored")
        # Not "ready", not silently: degraded (still 200: the others serve from the same
        # database), with the count, in the metrics and in one log line at ERROR.
        assert ready["status"] == "degraded" and ready["ledger_unstored"] == 1
        assert "retry-dead-letters" in ready["ledger_writes"]
        assert _metric(gateway, "ledger_entries_unstored") == 1.0
        assert any(
            refused in r.getMessage() and "kept, not dropped" in r.getMessage()
            for r in caplog.records
            if r.levelno == logging.ERROR
        ), [r.getMessage() for r in caplog.records]
        assert gateway.admin.get(f"/api/usage/{refused}").status_code == 404
        assert ledger_rows(database_url) and refused not in {
            row["request_id"] for row in ledger_rows(database_url)
        }

        runner = CliRunner()
        env = {"LEDGER_DATABASE_URL": database_url}
        listed = runner.invoke(ledger_cli, ["db", "dead-letters"], env=env)
        assert listed.exit_code == 0 and refused in listed.output and "unstored" in listed.output
        # Before the fix a retry changes nothing, and says so.
        still = runner.invoke(ledger_cli, ["db", "retry-dead-letters"], env=env)
        assert still.exit_code == 1 and "still refused: 1" in still.output

        asyncio.run(_poison(database_url, on=False))  # the operator's fix
        for _ in range(2):  # a second retry (or another process's) writes nothing more
            done = runner.invoke(ledger_cli, ["db", "retry-dead-letters"], env=env)
            assert done.exit_code == 0, done.output
        assert "written: 0" in done.output

        entry = gateway.entry(refused)
        assert entry["end_user"] == _POISON
        ids = [row["request_id"] for row in ledger_rows(database_url)]
        assert ids.count(refused) == 1 and ids.count(fine) == 1
        # Settled exactly once: the budget's spend is both requests' cost, no more.
        spent = gateway.admin.get(f"/admin/budgets/{budget['id']}/status").json()["spent_usd"]
        costs = [gateway.entry(i)["cost_usd"] for i in (refused, fine)]
        assert _nanos(spent) == sum(_nanos(c) for c in costs) > 0
        ready = httpx.get(gateway.url + "/readyz").json()
        assert ready["status"] == "ready" and ready["ledger_unstored"] == 0
        assert _metric(gateway, "ledger_entries_unstored") == 0.0


def _nanos(usd: str) -> int:
    whole, _, fraction = usd.partition(".")
    return int(whole) * 10**9 + int(fraction.ljust(9, "0"))


def _wait_for(read: Any, field: str, timeout_s: float = 10.0) -> dict[str, Any]:
    import time

    deadline = time.monotonic() + timeout_s
    while True:
        value = read()
        if value.get(field) or time.monotonic() > deadline:
            return value
        time.sleep(0.05)


# -- refused by the dead-letter table too: the journal keeps it ------------------------


def test_an_entry_refused_by_the_dead_letter_table_too_stays_in_the_journal_until_it_fits(
    migrated_url: str, tmp_path: Path
) -> None:
    entry = LedgerEntry(
        request_id=new_request_id(), started_at=datetime.now(UTC), endpoint="chat.completions",
        input_tokens=2**70,
    )  # fmt: skip
    journal_dir = tmp_path / "journal"

    async def scenario() -> tuple[int, list[str], int, str | None]:
        engine = create_engine(migrated_url)
        await _refuse_dead_letters(engine, on=True)  # an operator's mistake, say
        journal = Journal(journal_dir, "kept")
        journal.open()
        writer = LedgerWriter(engine, journal=journal)
        writer.start()
        await writer.record(entry)
        await writer.flush()
        held = writer.unstored
        on_disk = [p.read_text() for p in journal_dir.glob("journal-*.jsonl")]
        await _refuse_dead_letters(engine, on=False)  # the fix
        await writer.retry_unstored()
        await writer.stop()
        journal.close()
        async with engine.connect() as connection:
            state = await connection.scalar(select(LedgerDeadLetter.state))
        await engine.dispose()
        return held, on_disk, writer.unstored, state

    held, on_disk, left, state = asyncio.run(scenario())
    assert held == 1 and any(entry.request_id in text for text in on_disk)
    assert left == 0 and state == "salvaged"
    assert [row["input_tokens"] for row in ledger_rows(migrated_url)] == [2**63 - 1]
    assert list(journal_dir.glob("journal-*.jsonl")) == []  # owed nothing any more


async def _refuse_dead_letters(engine: Any, *, on: bool) -> None:
    async with engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            await connection.exec_driver_sql(
                "ALTER TABLE ledger_dead_letters ADD CONSTRAINT ck_refuse CHECK (false)"
                if on
                else "ALTER TABLE ledger_dead_letters DROP CONSTRAINT ck_refuse"
            )
        else:
            await connection.exec_driver_sql(
                "CREATE TRIGGER refuse BEFORE INSERT ON ledger_dead_letters "
                "BEGIN SELECT RAISE(ABORT, 'refused'); END"
                if on
                else "DROP TRIGGER refuse"
            )
