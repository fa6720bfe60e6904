"""Ledger itself fails: it is stopped, killed, or loses its database under load.

Real ``ledger serve`` processes (``tests.processes.LedgerProcess``) on both databases:

- SIGTERM with 100 streams in flight: no new connection is accepted, the streams drain,
  every one of them is one entry, and the process exits 0. Streams still running at the
  graceful deadline are cut and recorded too (in-process server, whose deadline is 5 s).
- SIGKILL mid-load, then a restart on the same database and journal directory: requests
  that were in flight are recovered from the write-ahead journal as ``interrupted``, their
  reservations expire and are released, and the budget is not left stuck. Streams whose
  clients had read them in full, while the provider still held its body open, are
  recorded ``ok`` with the provider's output tokens and full cost.
- PostgreSQL unreachable under load (a proxy between Ledger and the database is cut):
  hard-budget requests fail closed with 503 ``budget_unavailable`` in the caller's
  protocol, a ``fail_open`` budget lets requests through, requests without budgets are
  served, finished entries are journaled and written exactly once when the database is
  back, and ``/readyz`` reports the outage and the backlog; with the writer process (the
  default) and with ``LEDGER_WRITER_PROCESS=false``.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy.engine import make_url

from ledger.budgets.checks import release_expired_reservations
from ledger.db.engine import create_engine
from tests.fake_upstream import FakeUpstream
from tests.integration.fault_support import (
    ALL,
    OPENAI,
    PLAIN,
    STREAMS,
    ZERO_USD,
    Clients,
    Kind,
    Outcome,
    backend_of,
    kind_of,
    ledger_rows,
    read_whole,
    reservations_left,
    reserved_nanos,
    tally,
)
from tests.live import LiveServer, gateway_settings
from tests.processes import LedgerProcess, free_port, write_provider_config

STREAMS_IN_FLIGHT = 100
RESERVATION_TTL_S = 2.0
OUTAGE_S = 30.0  # as long as the issue asks: pools, timeouts and the journal all see it


# -- helpers ----------------------------------------------------------------------------------


class Admin:
    """The admin API of one Ledger process."""

    def __init__(self, url: str, admin_key: str) -> None:
        self.http = httpx.Client(
            base_url=url, headers={"authorization": f"Bearer {admin_key}"}, timeout=30
        )

    def close(self) -> None:
        self.http.close()

    def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        response = self.http.post(path, json=body)
        assert response.status_code == 201, response.text
        return response.json()

    def team_with_key(self, team: str) -> tuple[str, int]:
        self.post("/admin/teams", {"name": team})
        created = self.post("/admin/keys", {"team": team})
        return created["key"], created["id"]

    def budget(self, **body: Any) -> int:
        return self.post("/admin/budgets", {"period": "monthly", "mode": "hard", **body})["id"]

    def status(self, budget_id: int) -> dict[str, Any]:
        response = self.http.get(f"/admin/budgets/{budget_id}/status")
        assert response.status_code == 200, response.text
        return response.json()

    def entries(self, team: str) -> list[dict[str, Any]]:
        response = self.http.get("/api/usage", params={"team": team, "limit": 1000})
        assert response.status_code == 200, response.text
        return response.json()["data"]


def _journal_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    return {
        "LEDGER_JOURNAL_DIR": str(tmp_path / "journal"),
        "LEDGER_RESERVATION_TTL_S": str(RESERVATION_TTL_S),
        **extra,
    }


def _writer_env(tmp_path: Path, writer: str) -> dict[str, str]:
    """Batches committed by a writer process (the default) or by the serving process
    itself: an outage must not cost an entry in either."""
    return _journal_env(tmp_path, LEDGER_WRITER_PROCESS=str(writer == "process").lower())


def _spent(status: dict[str, Any]) -> Decimal:
    return Decimal(status["spent_usd"])


async def _in_flight(
    clients: Clients, kinds: list[Kind], text: str, then: Callable[[], Any]
) -> list[Outcome]:
    """Start every request; once each has its first event, call ``then`` (in a thread)."""
    started = 0
    all_started = asyncio.Event()

    def first_event() -> None:
        nonlocal started
        started += 1
        if started == len(kinds):
            all_started.set()

    calls = [
        asyncio.ensure_future(clients.send(kind, f"{text} n{i}", on_first_event=first_event))
        for i, kind in enumerate(kinds)
    ]
    try:
        await asyncio.wait_for(all_started.wait(), 30)
        await asyncio.to_thread(then)
        return list(await asyncio.gather(*calls))
    finally:
        for call in calls:
            call.cancel()
        await clients.close()


# -- SIGTERM --------------------------------------------------------------------------------


def test_sigterm_with_a_hundred_streams_in_flight_drains_records_all_and_exits_0(
    database_url: str, fake_upstream: FakeUpstream, tmp_path: Path
) -> None:
    config = write_provider_config(tmp_path / "ledger.toml", fake_upstream)
    process = LedgerProcess(
        database_url, config=config, env=_journal_env(tmp_path), log=tmp_path / "serve.log"
    ).start()
    admin = Admin(process.url, process.admin_key)
    try:
        key, _ = admin.team_with_key("drain")
        admin.budget(team="drain", limit_usd="1000.00")
    finally:
        admin.close()
    refused_after_sigterm: list[bool] = []

    def sigterm_then_knock() -> None:
        assert process.process is not None
        process.process.send_signal(signal.SIGTERM)
        time.sleep(0.5)  # uvicorn closes its listening socket on the next tick
        try:
            httpx.get(process.url + "/healthz", timeout=2)
            refused_after_sigterm.append(False)
        except httpx.ConnectError:
            refused_after_sigterm.append(True)

    # About 2.5 s per stream: still running when the signal comes, done well before 30 s.
    kinds = [STREAMS[i % 2] for i in range(STREAMS_IN_FLIGHT)]
    outcomes = asyncio.run(
        _in_flight(
            Clients(process.url, key),
            kinds,
            "reply_words=30 chunk_delay_ms=80",
            sigterm_then_knock,
        )
    )
    assert process.process is not None
    exit_code = process.process.wait(timeout=30)

    assert refused_after_sigterm == [True], "a new connection was accepted after SIGTERM"
    assert exit_code == 0, (tmp_path / "serve.log").read_text()
    for outcome in outcomes:
        assert outcome.answer == "ok", outcome
    rows = ledger_rows(database_url)
    left = reservations_left(database_url)
    figures = tally(
        "sigterm_100_streams",
        backend_of(database_url),
        len(outcomes),
        [row["request_id"] for row in rows],
        [outcome.request_id for outcome in outcomes],
        left,
    )
    assert (figures.lost, figures.duplicated, figures.reservations_left) == (0, 0, 0), figures
    assert {row["status"] for row in rows} == {"ok"}
    assert {row["usage_source"] for row in rows} == {"provider"}
    assert all(row["cost_nanos"] > 0 for row in rows)
    assert reserved_nanos(database_url) == 0
    # Nothing is left in the journal to replay: every entry reached the database.
    assert not list((tmp_path / "journal").rglob("journal-*.jsonl"))


def test_streams_still_running_at_the_graceful_deadline_are_cut_and_recorded(
    database_url: str, fake_upstream: FakeUpstream, tmp_path: Path
) -> None:
    # The in-process server shuts down like `ledger serve` with a 5 s graceful deadline
    # (`ledger serve` waits 30 s). These streams stall for 20 s, so the deadline cuts them.
    settings = gateway_settings(
        database_url, fake_upstream, timeout_s=30.0, journal_dir=str(tmp_path / "journal")
    )
    server = LiveServer(settings).__enter__()
    try:
        key = server.team_key("cut")
        budget = server.admin.post(
            "/admin/budgets", json={"team": "cut", "limit_usd": "1000.00", "mode": "hard"}
        )
        assert budget.status_code == 201, budget.text
    except BaseException:
        server.__exit__(None, None, None)
        raise
    kinds = list(STREAMS) * 4
    stopped = threading.Event()

    def stop() -> None:
        started = time.monotonic()
        server.__exit__(None, None, None)
        assert time.monotonic() - started < 15
        stopped.set()

    outcomes = asyncio.run(
        _in_flight(Clients(server.url, key), kinds, "fault=stall_stream stall_s=20", stop)
    )
    assert stopped.is_set()
    for outcome in outcomes:
        assert outcome.answer in ("truncated", "unexpected"), outcome
    rows = ledger_rows(database_url)
    left = reservations_left(database_url)
    figures = tally(
        "shutdown_deadline_cut",
        backend_of(database_url),
        len(outcomes),
        [row["request_id"] for row in rows],
        [outcome.request_id for outcome in outcomes],
        left,
    )
    assert (figures.lost, figures.duplicated, figures.reservations_left) == (0, 0, 0), figures
    assert reserved_nanos(database_url) == 0
    for row in rows:
        # Cut by Ledger's own shutdown; priced from what was seen, never $0.
        assert row["status"] in ("interrupted", "client_disconnected"), row
        assert row["usage_source"] == "estimated" and row["cost_nanos"] > 0, row


def test_a_stream_cut_by_the_shutdown_deadline_is_recorded_as_interrupted(
    database_url: str, fake_upstream: FakeUpstream, tmp_path: Path
) -> None:
    if backend_of(database_url) != "sqlite":
        pytest.skip("the status does not depend on the database; SQLite is enough")
    settings = gateway_settings(database_url, fake_upstream, timeout_s=30.0)
    server = LiveServer(settings).__enter__()
    key = server.team_key("cut")
    asyncio.run(
        _in_flight(
            Clients(server.url, key),
            [STREAMS[0]],
            "fault=stall_stream stall_s=20",
            lambda: server.__exit__(None, None, None),
        )
    )
    rows = ledger_rows(database_url)
    assert len(rows) == 1
    assert rows[0]["status"] == "interrupted", rows[0]


# -- SIGKILL --------------------------------------------------------------------------------


def test_sigkill_mid_load_then_restart_recovers_in_flight_requests_as_interrupted(
    database_url: str, fake_upstream: FakeUpstream, tmp_path: Path
) -> None:
    config = write_provider_config(tmp_path / "ledger.toml", fake_upstream)
    env = _journal_env(tmp_path)
    first = LedgerProcess(database_url, config=config, env=env, log=tmp_path / "a.log").start()
    admin = Admin(first.url, first.admin_key)
    try:
        key, key_id = admin.team_with_key("killed")
        # Far from its limit (leases) and near it (exact reservations): both kinds of hold.
        budgets = [
            admin.budget(team="killed", limit_usd="1000.00"),
            admin.budget(key_id=key_id, limit_usd="0.25"),
        ]
    finally:
        admin.close()

    async def load() -> tuple[list[Outcome], list[Outcome]]:
        clients = Clients(first.url, key)
        done = await asyncio.gather(*(clients.send(ALL[i % 4], f"hello n{i}") for i in range(16)))
        await clients.close()

        def kill() -> None:
            # Requests still waiting for the provider's first byte are in flight too.
            time.sleep(0.3)
            first.kill()

        waiting = [
            asyncio.ensure_future(
                Clients(first.url, key).send(PLAIN[i % 2], f"fault=stall stall_s=20 w{i}")
            )
            for i in range(8)
        ]
        streams = [STREAMS[i % 2] for i in range(16)]
        cut = await _in_flight(
            Clients(first.url, key), streams, "reply_words=40 chunk_delay_ms=100", kill
        )
        return list(done), cut + list(await asyncio.gather(*waiting))

    completed, in_flight = asyncio.run(load())
    for outcome in completed:
        assert outcome.answer == "ok", outcome
    for outcome in in_flight:
        assert outcome.answer in ("unexpected", "truncated"), outcome  # the connection died

    second = LedgerProcess(database_url, config=config, env=env, log=tmp_path / "b.log").start()
    admin = Admin(second.url, second.admin_key)
    try:
        entries = admin.entries("killed")
        by_id = {entry["request_id"]: entry for entry in entries}
        for outcome in completed:
            assert by_id[outcome.request_id]["status"] == "ok"
        interrupted = [entry for entry in entries if entry["status"] == "interrupted"]
        assert len(interrupted) == len(in_flight)
        for outcome in in_flight:
            if outcome.request_id is not None:  # the streams had their headers
                assert by_id[outcome.request_id]["status"] == "interrupted"
        for entry in interrupted:
            if entry["provider"] is not None:
                # The prompt reached the provider, which may have billed it: its estimate.
                assert entry["usage_source"] == "estimated", entry
                assert entry["usage"]["input_tokens"] == entry["estimated_input_tokens"] > 0
                assert Decimal(entry["cost_usd"]) > 0, entry
            else:
                # Killed before forwarding (an Anthropic request still counting its prompt
                # with the provider, which stalls): nothing can have been billed.
                assert entry["usage_source"] == "none" and entry["cost_usd"] == ZERO_USD, entry
        streamed = {o.request_id for o in in_flight if o.request_id is not None}
        assert len(streamed) == 16
        assert all(by_id[i]["provider"] is not None for i in streamed)

        # The dead process's holds expire (it no longer renews them) and are released.
        time.sleep(RESERVATION_TTL_S + 0.5)
        asyncio.run(_release_expired(database_url))
        statuses = [admin.status(budget_id) for budget_id in budgets]
        left = reservations_left(database_url)
        sent = len(completed) + len(in_flight)
        figures = tally(
            "sigkill_then_restart",
            backend_of(database_url),
            sent,
            list(by_id),
            [outcome.request_id for outcome in (*completed, *in_flight)],
            left,
        )
        assert (figures.lost, figures.duplicated, figures.reservations_left) == (0, 0, 0), figures
        assert len(entries) == sent
        for status in statuses:
            assert status["reserved_usd"] == ZERO_USD, status
            assert not status["blocked"], status
        # Not stuck: the next request is admitted on the restarted process.
        after = asyncio.run(_one(second.url, key, Kind(OPENAI, False)))
        assert after.answer == "ok", after
    finally:
        admin.close()
        second.terminate()


def test_sigkill_after_streams_were_delivered_in_full_records_them_with_their_output(
    database_url: str, fake_upstream: FakeUpstream, tmp_path: Path
) -> None:
    # The provider holds its body open long after [DONE] / message_stop, so the process is
    # killed once each client has read its whole stream but before that body has ended.
    config = write_provider_config(tmp_path / "ledger.toml", fake_upstream)
    env = _journal_env(tmp_path)
    first = LedgerProcess(database_url, config=config, env=env, log=tmp_path / "a.log").start()
    admin = Admin(first.url, first.admin_key)
    try:
        key, _ = admin.team_with_key("delivered")
    finally:
        admin.close()
    headers = {"authorization": f"Bearer {key}"}
    kinds = [STREAMS[i % 2] for i in range(6)]
    with httpx.Client(base_url=first.url, headers=headers, timeout=30) as http:
        delivered = [
            read_whole(http, kind, f"delivered n{i} reply_words=30 body_end_delay_ms=20000")
            for i, kind in enumerate(kinds)
        ]
    first.kill()
    assert all(d.complete and d.output_tokens > 0 for d in delivered), delivered

    second = LedgerProcess(database_url, config=config, env=env, log=tmp_path / "b.log").start()
    admin = Admin(second.url, second.admin_key)
    try:
        entries = admin.entries("delivered")
        by_id = {entry["request_id"]: entry for entry in entries}
        for kind, got in zip(kinds, delivered, strict=True):
            entry = by_id[got.request_id]
            # What the client received, as the provider counted it: not the prompt alone.
            assert entry["status"] == "ok", entry
            assert entry["usage_source"] == "provider", entry
            assert entry["usage"]["output_tokens"] == got.output_tokens, entry
            assert Decimal(entry["cost_usd"]) == got.cost(kind), entry
        figures = tally(
            "sigkill_after_stream_delivered",
            backend_of(database_url),
            len(delivered),
            [entry["request_id"] for entry in entries],
            [got.request_id for got in delivered],
            reservations_left(database_url),
        )
        assert (figures.lost, figures.duplicated, figures.reservations_left) == (0, 0, 0), figures
    finally:
        admin.close()
        second.terminate()


def test_recovered_interrupted_entries_are_settled_on_their_budgets(
    database_url: str, fake_upstream: FakeUpstream, tmp_path: Path
) -> None:
    """A budget's spend equals the ledger's after a kill -9 and a restart (no check run)."""
    config = write_provider_config(tmp_path / "ledger.toml", fake_upstream)
    env = _journal_env(tmp_path)
    first = LedgerProcess(database_url, config=config, env=env, log=tmp_path / "a.log").start()
    admin = Admin(first.url, first.admin_key)
    try:
        key, key_id = admin.team_with_key("settled")
        budgets = [
            admin.budget(key_id=key_id, limit_usd="0.25"),
            admin.budget(tag="crash-test", limit_usd="0.25", mode="soft"),
        ]
    finally:
        admin.close()

    asyncio.run(
        _in_flight(
            Clients(first.url, key, tag="crash-test"),
            list(STREAMS) * 2,
            "reply_words=40 chunk_delay_ms=100",
            first.kill,
        )
    )
    second = LedgerProcess(database_url, config=config, env=env, log=tmp_path / "b.log").start()
    admin = Admin(second.url, second.admin_key)
    try:
        entries = admin.entries("settled")
        assert len(entries) == 4 and {e["status"] for e in entries} == {"interrupted"}
        assert all(e["tags"] == ["crash-test"] for e in entries), entries
        ledger_total = sum(Decimal(e["cost_usd"]) for e in entries)
        assert ledger_total > 0
        for budget in budgets:
            assert _spent(admin.status(budget)) == ledger_total
    finally:
        admin.close()
        second.terminate()


async def _release_expired(database_url: str) -> None:
    engine = create_engine(database_url, null_pool=True)
    try:
        await release_expired_reservations(engine, now=datetime.now(UTC))
    finally:
        await engine.dispose()


async def _one(url: str, key: str, kind: Kind, text: str = "hello") -> Outcome:
    clients = Clients(url, key)
    try:
        return await clients.send(kind, text)
    finally:
        await clients.close()


# -- the database goes away -----------------------------------------------------------------


class CuttableProxy:
    """A TCP proxy on loopback in front of PostgreSQL that a test can cut and restore.

    ``cut()`` drops every connection at once and closes the listener, so new connections
    are refused; ``restore()`` listens again on the same port.
    """

    def __init__(self, target_host: str, target_port: int) -> None:
        self.port = free_port()
        self._target = (target_host, target_port)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    def __enter__(self) -> CuttableProxy:
        self._thread.start()
        self.restore()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.cut()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)

    def cut(self) -> None:
        asyncio.run_coroutine_threadsafe(self._cut(), self._loop).result(timeout=5)

    def restore(self) -> None:
        asyncio.run_coroutine_threadsafe(self._listen(), self._loop).result(timeout=5)

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(
            self._connection, "127.0.0.1", self.port, reuse_address=True
        )

    async def _cut(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(*self._target)
        except OSError:
            writer.transport.abort()
            return
        self._writers |= {writer, upstream_writer}
        await asyncio.gather(
            self._pipe(reader, upstream_writer), self._pipe(upstream_reader, writer)
        )
        self._writers -= {writer, upstream_writer}

    @staticmethod
    async def _pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            while data := await source.read(65536):
                sink.write(data)
                await sink.drain()
        sink.transport.abort()


@pytest.fixture
def proxied(database_url: str) -> Iterator[tuple[str, CuttableProxy]]:
    """The database URL through a cuttable proxy (PostgreSQL only)."""
    if not database_url.startswith("postgresql"):
        pytest.skip("an unreachable database is a PostgreSQL failure; SQLite is a local file")
    url = make_url(database_url)
    with CuttableProxy(url.host or "127.0.0.1", url.port or 5432) as proxy:
        through = url.set(host="127.0.0.1", port=proxy.port)
        yield through.render_as_string(hide_password=False), proxy


@pytest.mark.parametrize("writer", ["process", "in-process"])
def test_database_outage_fails_closed_journals_entries_and_replays_them_once(
    database_url: str,
    proxied: tuple[str, CuttableProxy],
    fake_upstream: FakeUpstream,
    tmp_path: Path,
    writer: str,
) -> None:
    proxy_url, proxy = proxied
    config = write_provider_config(tmp_path / "ledger.toml", fake_upstream)
    env = _writer_env(tmp_path, writer)
    process = LedgerProcess(proxy_url, config=config, env=env, log=tmp_path / "serve.log").start()
    admin = Admin(process.url, process.admin_key)
    readiness: list[httpx.Response] = []
    try:
        keys: dict[str, str] = {}
        budgets: dict[str, int] = {}
        for team in ("gated", "unbudgeted", "failopen"):
            keys[team], key_id = admin.team_with_key(team)
            if team != "unbudgeted":
                # Near enough to its limit that every request reserves exactly in the database.
                budgets[team] = admin.budget(
                    key_id=key_id, limit_usd="0.25", fail_open=team == "failopen"
                )
        assert httpx.get(process.url + "/readyz").status_code == 200

        async def outage() -> dict[str, list[Outcome]]:
            sent: dict[str, list[Outcome]] = {team: [] for team in keys}
            clients = {team: Clients(process.url, key) for team, key in keys.items()}

            async def round_of(tag: str) -> None:
                results = await asyncio.gather(
                    *(
                        clients[team].send(kind, f"{tag} reply_words=6")
                        for team in keys
                        for kind in ALL
                    )
                )
                for i, outcome in enumerate(results):
                    sent[list(keys)[i // len(ALL)]].append(outcome)

            await round_of("before")
            await asyncio.to_thread(proxy.cut)
            started = time.monotonic()
            round_number = 0
            while time.monotonic() - started < OUTAGE_S:
                await round_of(f"during{round_number}")
                round_number += 1
                async with httpx.AsyncClient() as http:
                    readiness.append(await http.get(process.url + "/readyz"))
                await asyncio.sleep(1.5)
            await asyncio.to_thread(proxy.restore)
            for client in clients.values():
                await client.close()
            return sent

        sent = asyncio.run(outage())

        # During the outage /readyz said so, with the entries waiting on local disk.
        assert readiness and all(r.status_code == 503 for r in readiness), [
            r.text for r in readiness
        ]
        assert "unreachable" in readiness[-1].json()["database"]
        assert readiness[-1].json()["ledger_backlog"] > 0
        # Back: the journaled entries are written and Ledger is ready again within seconds.
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            ready = httpx.get(process.url + "/readyz")
            if ready.status_code == 200 and ready.json()["ledger_backlog"] == 0:
                break
            time.sleep(0.2)
        assert ready.status_code == 200, ready.text
    finally:
        admin.close()
        exit_code = process.terminate()
    assert exit_code == 0

    for team in ("unbudgeted", "failopen"):
        for outcome in sent[team]:
            assert outcome.answer == "ok", (team, outcome)
    gated = sent["gated"]
    assert gated[0].answer == "ok" and all(o.answer == "ok" for o in gated[: len(ALL)])
    for outcome in gated[len(ALL) :]:
        # Fail closed, in the caller's protocol, and never forwarded.
        assert outcome.answer == "status" and outcome.http == 503, outcome
        body = outcome.body if outcome.kind.protocol == OPENAI else outcome.body["error"]
        if outcome.kind.protocol == OPENAI:
            assert body["code"] == "budget_unavailable", body
        else:
            assert outcome.body["type"] == "error" and body["type"] == "overloaded_error", body

    rows = ledger_rows(database_url)
    ids = [row["request_id"] for row in rows]
    every = [outcome for outcomes in sent.values() for outcome in outcomes]
    figures = tally(
        f"database_outage_{OUTAGE_S:.0f}s",
        backend_of(database_url),
        len(every),
        ids,
        [o.request_id for o in every],
        reservations_left(database_url),
    )
    assert (figures.lost, figures.duplicated, figures.reservations_left) == (0, 0, 0), figures
    assert reserved_nanos(database_url) == 0
    by_id = {row["request_id"]: row for row in rows}
    for outcome in every:
        row = by_id[outcome.request_id]
        assert kind_of({"endpoint": row["endpoint"], "stream": row["stream"]}) == outcome.kind
        if outcome.answer == "ok":
            assert row["status"] == "ok" and row["cost_nanos"] > 0, row
        else:
            assert row["cost_nanos"] == 0 and row["error"], row
