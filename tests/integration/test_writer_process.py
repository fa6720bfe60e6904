"""Ledger batches committed by the writer process, on each database.

The serving process only journals entries and hands batches over a pipe; these tests
check what that must never cost: an entry lost or written twice when the writer process
dies, a good entry lost with a bad one, or a writer process left behind.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import openai
import pytest

from ledger.db import writer_process
from ledger.db.dead_letters import DeadLetter, list_dead_letters
from ledger.db.engine import create_engine
from ledger.db.ledger import LedgerEntry, new_request_id
from ledger.db.writer import InProcessWrites, LedgerWriter
from ledger.db.writer_process import ProcessWrites
from tests.fake_upstream import FakeUpstream
from tests.integration.fault_support import ledger_rows
from tests.live import LiveServer, gateway_settings


def _writer_pid(server: LiveServer) -> int:
    writes = server.app.state["services"].writer.writes
    assert isinstance(writes, ProcessWrites)  # the default
    deadline = time.monotonic() + 10
    while writes.pid is None:  # started with the first batch
        assert time.monotonic() < deadline, "no writer process started"
        time.sleep(0.02)
    return writes.pid


def _ask(client: openai.OpenAI) -> str:
    response = client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "Say hi"}], max_tokens=16
    )
    return response.headers["x-ledger-request-id"]


def _alive(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists()


@pytest.fixture
def gateway(database_url: str, fake_upstream: FakeUpstream) -> Iterator[LiveServer]:
    """Ledger as `ledger serve` runs it by default: batches committed by its writer process."""
    with LiveServer(gateway_settings(database_url, fake_upstream, writer_process=True)) as server:
        yield server


def test_a_killed_writer_process_loses_and_duplicates_nothing(gateway: LiveServer) -> None:
    key, key_id = _key_with_id(gateway)
    response = gateway.admin.post(
        "/admin/budgets", json={"key_id": key_id, "limit_usd": "100.000000000", "name": "cap"}
    )
    assert response.status_code == 201, response.text
    budget_id = response.json()["id"]
    client = openai.OpenAI(base_url=gateway.openai_base_url, api_key=key, max_retries=0)

    sent = [_ask(client) for _ in range(5)]
    assert len(gateway.wait_for_entries(5)) == 5
    first = _writer_pid(gateway)
    assert first != os.getpid()
    assert b"ledger.db.writer_process" in Path(f"/proc/{first}/cmdline").read_bytes()

    os.kill(first, signal.SIGKILL)
    sent += [_ask(client) for _ in range(10)]  # answered meanwhile: journaled, then written

    entries = gateway.wait_for_entries(15, timeout=20)
    assert sorted(e["request_id"] for e in entries) == sorted(sent)
    assert all(e["status"] == "ok" for e in entries)
    second = _writer_pid(gateway)
    assert second != first and not _alive(first)
    # Settled once each: the budget's spend is exactly the sum of its entries.
    status = gateway.admin.get(f"/admin/budgets/{budget_id}/status").json()
    spent = sum(int(row["cost_nanos"]) for row in ledger_rows(gateway.settings.database_url))
    assert spent > 0
    assert status["spent_usd"] == f"{spent // 10**9}.{spent % 10**9:09d}"


def test_without_a_writer_process_the_serving_process_commits_and_settles(
    database_url: str, fake_upstream: FakeUpstream
) -> None:
    settings = gateway_settings(database_url, fake_upstream, writer_process=False)
    with LiveServer(settings) as server:
        writes = server.app.state["services"].writer.writes
        assert isinstance(writes, InProcessWrites)
        key, key_id = _key_with_id(server)
        budget = server.admin.post(
            "/admin/budgets", json={"key_id": key_id, "limit_usd": "100", "name": "cap"}
        ).json()
        client = openai.OpenAI(base_url=server.openai_base_url, api_key=key, max_retries=0)
        sent = [_ask(client) for _ in range(3)]
        entries = server.wait_for_entries(3)
        assert sorted(e["request_id"] for e in entries) == sorted(sent)
        assert not _writer_processes_of_this_process()
        status = server.admin.get(f"/admin/budgets/{budget['id']}/status").json()
    spent = sum(int(row["cost_nanos"]) for row in ledger_rows(database_url))
    assert spent > 0
    assert status["spent_usd"] == f"{spent // 10**9}.{spent % 10**9:09d}"


def _writer_processes_of_this_process() -> list[int]:
    if not Path("/proc/self/status").exists():
        pytest.skip("needs /proc")
    found = []
    for proc in Path("/proc").iterdir():
        try:
            status = (proc / "status").read_text()
            cmdline = (proc / "cmdline").read_bytes()
        except (OSError, NotADirectoryError):
            continue
        ppid = next(line.split()[1] for line in status.splitlines() if line.startswith("PPid:"))
        if int(ppid) == os.getpid() and b"ledger.db.writer_process" in cmdline:
            found.append(int(proc.name))
    return found


def test_the_writer_process_ends_with_the_server(
    database_url: str, fake_upstream: FakeUpstream
) -> None:
    with LiveServer(gateway_settings(database_url, fake_upstream, writer_process=True)) as server:
        key = server.team_key()
        client = openai.OpenAI(base_url=server.openai_base_url, api_key=key, max_retries=0)
        request_id = _ask(client)
        pid = _writer_pid(server)
        server.wait_for_entries(1)  # written by it: it is past its start-up
        # It gives way to any other work (SCHED_IDLE), which is what keeps the serving
        # process's p99 low while it commits.
        if sys.platform == "linux":
            assert os.sched_getscheduler(pid) == os.SCHED_IDLE
    assert not _alive(pid)
    assert [row["request_id"] for row in ledger_rows(database_url)] == [request_id]

    # A server stopped before its first batch stops its writer process too (at once:
    # it has nothing to finish, and may still be importing).
    with LiveServer(gateway_settings(database_url, fake_upstream, writer_process=True)) as server:
        pid = _writer_pid(server)
    assert not _alive(pid)


@pytest.mark.skipif(sys.platform != "linux", reason="scheduling policies and CPU affinity")
def test_a_writer_process_starved_of_cpu_gives_way_to_one_at_normal_priority_for_a_while(
    gateway: LiveServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(writer_process, "NORMAL_PRIORITY_FOR_S", 3.0)  # a minute in service
    key = gateway.team_key()
    client = openai.OpenAI(base_url=gateway.openai_base_url, api_key=key, max_retries=0)
    sent = [_ask(client)]
    gateway.wait_for_entries(1)
    starved = _writer_pid(gateway)
    assert os.sched_getscheduler(starved) == os.SCHED_IDLE
    # Busy work at normal priority on the writer process's only CPU: as on a machine
    # whose every CPU is taken, an idle-priority process gets next to nothing.
    cpu = min(os.sched_getaffinity(0))
    for thread in Path(f"/proc/{starved}/task").iterdir():
        os.sched_setaffinity(int(thread.name), {cpu})
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        os.sched_setaffinity(hog.pid, {cpu})
        sent += [_ask(client) for _ in range(5)]  # answered at once: journaled
        entries = gateway.wait_for_entries(6, timeout=60)
        assert sorted(e["request_id"] for e in entries) == sorted(sent)
        writes = gateway.app.state["services"].writer.writes
        # The batch is committed (and visible) a moment before this process reads the
        # writer's answer and replaces it: wait for that moment, within a bound.
        deadline = time.monotonic() + 10
        while (normal := _writer_pid(gateway)) == starved:
            assert time.monotonic() < deadline, "the starved writer process was not replaced"
            time.sleep(0.05)
        assert not writes.gives_way
        assert os.sched_getscheduler(normal) == os.SCHED_OTHER
        # While the busy work goes on, the normal-priority process keeps up.
        sent += [_ask(client) for _ in range(3)]
        assert len(gateway.wait_for_entries(9, timeout=10)) == 9
    finally:
        hog.kill()
        hog.wait()
    deadline = time.monotonic() + 10
    while _alive(starved):  # told to go; it goes once it gets the CPU
        assert time.monotonic() < deadline, "the starved writer process did not exit"
        time.sleep(0.05)
    # Once the interval is over, the next batch brings back a process at idle priority.
    time.sleep(3.0)
    sent.append(_ask(client))
    assert len(gateway.wait_for_entries(10)) == 10
    deadline = time.monotonic() + 10
    while _writer_pid(gateway) == normal:
        assert time.monotonic() < deadline, "the normal-priority process was not replaced"
        time.sleep(0.05)
    idle = _writer_pid(gateway)
    sent.append(_ask(client))
    entries = gateway.wait_for_entries(11)  # written by it: it is past its start-up
    assert sorted(e["request_id"] for e in entries) == sorted(sent)
    assert os.sched_getscheduler(idle) == os.SCHED_IDLE and writes.gives_way


def test_a_refused_entry_costs_its_batch_nothing_and_is_salvaged(gateway: LiveServer) -> None:
    url = gateway.settings.database_url

    def entry() -> LedgerEntry:
        return LedgerEntry(
            request_id=new_request_id(), started_at=datetime.now(UTC), endpoint="chat.completions"
        )

    good = [entry(), entry()]
    bad = entry()
    bad.input_tokens = 2**70  # no database column holds it

    async def record() -> list[BaseException | None]:
        engine = create_engine(url)
        writer = LedgerWriter(engine, writes=ProcessWrites(url))  # no journal: waits for commit
        writer.start()
        try:
            return await asyncio.gather(
                *(writer.record(e) for e in (good[0], bad, good[1])), return_exceptions=True
            )
        finally:
            await writer.stop()
            await engine.dispose()

    outcomes = asyncio.run(record())
    assert outcomes == [None, None, None]  # the bad one is kept, so its caller is answered
    rows = {row["request_id"]: row for row in ledger_rows(url)}
    assert set(rows) == {good[0].request_id, good[1].request_id, bad.request_id}
    # Stored with its tokens clamped to 64 bits, flagged; the original is kept as it was.
    assert rows[bad.request_id]["input_tokens"] == 2**63 - 1
    assert rows[bad.request_id]["error"].startswith("Salvaged:")
    letters = asyncio.run(_dead_letters(url))
    assert [(d.request_id, d.state, d.entry.input_tokens) for d in letters] == [
        (bad.request_id, "salvaged", 2**70)
    ]


async def _dead_letters(url: str) -> list[DeadLetter]:
    engine = create_engine(url)
    try:
        return await list_dead_letters(engine)
    finally:
        await engine.dispose()


def _key_with_id(gateway: LiveServer) -> tuple[str, int]:
    gateway.create_team("writers")
    response = gateway.admin.post("/admin/keys", json={"team": "writers", "name": "bot"})
    assert response.status_code == 201, response.text
    return response.json()["key"], response.json()["id"]
