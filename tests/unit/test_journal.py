"""The write-ahead journal on real files: what a killed process leaves for the next one."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path

import pytest

from ledger.db.journal import Journal, journal_directory
from ledger.db.ledger import LedgerEntry, new_request_id

pytestmark = pytest.mark.anyio


def _entry() -> LedgerEntry:
    return LedgerEntry(
        request_id=new_request_id(),
        started_at=datetime.now(UTC),
        endpoint="chat.completions",
        team_id=1,
        key_id=2,
    )


def _forwarded(entry: LedgerEntry) -> LedgerEntry:
    entry.requested_model = entry.served_model = "gpt-4o-mini"
    entry.provider = "openai"
    entry.estimated_input_tokens = 1200
    return entry


def _lines(directory: Path) -> list[str]:
    return [
        line
        for path in sorted(directory.glob("journal-*.jsonl"))
        for line in path.read_text(encoding="utf-8").splitlines()
    ]


def _opened(directory: Path) -> Journal:
    journal = Journal(directory, "worker")
    journal.open()
    return journal


def _recover(directory: Path) -> list[LedgerEntry]:
    """What a process starting after this one's death would write as interrupted."""
    return Journal(directory, "successor").take_over_orphans().interrupted


async def test_a_started_request_is_on_disk_before_anything_it_awaits_can_run(
    tmp_path: Path,
) -> None:
    journal = _opened(tmp_path)
    entry = _entry()
    journal.started(entry)
    await asyncio.sleep(0)  # the request waits for something: the loop runs other work
    assert len(_lines(tmp_path)) == 1
    journal.close()  # the process dies here: the request never finished

    (interrupted,) = _recover(tmp_path)
    assert interrupted.request_id == entry.request_id
    assert interrupted.status == "interrupted"
    assert (interrupted.team_id, interrupted.key_id) == (1, 2)


async def test_start_and_forward_in_one_step_are_one_record_with_the_prompt_cost(
    tmp_path: Path,
) -> None:
    journal = _opened(tmp_path)
    entry = _entry()
    journal.started(entry)
    journal.forwarding(_forwarded(entry), prompt_cost=180_000)
    assert len(_lines(tmp_path)) == 1  # written before the provider can see the request
    journal.close()

    (interrupted,) = _recover(tmp_path)
    assert interrupted.requested_model == "gpt-4o-mini"
    assert interrupted.input_tokens == 1200  # the estimate is what the provider billed
    assert interrupted.cost_nanos == 180_000
    assert interrupted.usage_source == "estimated"


async def test_a_forward_after_a_wait_adds_to_the_start_already_written(tmp_path: Path) -> None:
    journal = _opened(tmp_path)
    entry = _entry()
    journal.started(entry)
    await asyncio.sleep(0)  # e.g. the provider's count_tokens
    journal.forwarding(_forwarded(entry), prompt_cost=180_000)
    assert len(_lines(tmp_path)) == 2
    journal.close()

    (interrupted,) = _recover(tmp_path)
    assert (interrupted.team_id, interrupted.cost_nanos) == (1, 180_000)


async def test_a_recorded_entry_is_replayed_and_never_reported_as_interrupted(
    tmp_path: Path,
) -> None:
    journal = _opened(tmp_path)
    entry = _forwarded(_entry())
    journal.started(entry)
    entry.status, entry.http_status, entry.cost_nanos = "ok", 200, 250_000
    journal.pending([entry])  # recorded in the same step as it started
    journal.close()

    recovered = Journal(tmp_path, "successor").take_over_orphans()
    assert recovered.interrupted == []
    (pending,) = recovered.pending
    assert (pending.request_id, pending.status, pending.cost_nanos) == (
        entry.request_id,
        "ok",
        250_000,
    )


def test_the_default_journal_lives_beside_a_sqlite_file_and_in_the_working_directory_else(
    tmp_path: Path,
) -> None:
    database = tmp_path / "ledger.db"
    beside = journal_directory(None, f"sqlite+aiosqlite:///{database}")
    assert beside.parent == Path(f"{database}.journal")
    for url in ("sqlite+aiosqlite:///:memory:", "postgresql+asyncpg://ledger@db/ledger"):
        assert journal_directory(None, url).parent == Path("ledger-journal")
    # One directory per database, and an explicit base wins.
    assert journal_directory(str(tmp_path / "j"), "sqlite+aiosqlite:///:memory:").parent == (
        tmp_path / "j"
    )
    assert beside != journal_directory(None, f"sqlite+aiosqlite:///{tmp_path / 'other.db'}")
