"""Group commit for ledger entries: many requests, one transaction, each caller told when.

``record()`` returns once the entry is committed, or — while the database is
unreachable — once it is journaled on local disk; journaled entries are written when
the database returns. While one batch commits, the next one gathers. Callers never see
the batching: it is the same ``await writer.record(entry)`` at any load.

Writes are idempotent by request id, so an entry replayed after an ambiguous commit is
not written (nor settled) twice.

An entry the database refuses for its data (not an outage) is never dropped: a copy cut
to fit the columns is salvaged into the ledger when only its values did not fit, and
the original is kept in ``ledger_dead_letters`` (:mod:`ledger.db.dead_letters`), where
``unstored`` ones are retried until they are written. Should the dead-letter table
refuse it too, it stays in the journal and is tried again every
``UNSTORED_RETRY_INTERVAL_S``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Protocol

from sqlalchemy import Connection
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine

from ledger.budgets.model import RuleIndex
from ledger.budgets.store import Settlement, apply_settlements, load_rules_in, rules_fingerprint
from ledger.db.dead_letters import (
    SALVAGED,
    UNSTORED,
    keep_in,
    list_dead_letters,
    resolve_in,
    salvaged,
)
from ledger.db.engine import WriteTransactions, write_transaction
from ledger.db.journal import Journal
from ledger.db.ledger import LedgerEntry, insert_entries
from ledger.db.writer_process import WriteFailed
from ledger.reports.rollups import apply_entries_to_rollups

logger = logging.getLogger("ledger.writer")

REPLAY_INTERVAL_S = 1.0
# How often an entry that even the dead-letter table refused is tried again.
UNSTORED_RETRY_INTERVAL_S = 30.0
KEPT_IN_JOURNAL = "journal"  # refused by the ledger and the dead-letter table alike


def write_entries_in(connection: Connection, entries: Sequence[LedgerEntry]) -> list[str]:
    """Insert entries, settle their budgets and update rollups in ``connection``'s transaction.

    Entries whose request id is already in the ledger are skipped, with their
    settlements. Returns the request ids actually written.
    """
    written = set(insert_entries(connection, entries))
    fresh = [entry for entry in entries if entry.request_id in written]
    settlements = [s for entry in fresh for s in entry.settlements]
    apply_settlements(connection, settlements + spend_on_budgets_not_settled(connection, fresh))
    apply_entries_to_rollups(connection, fresh)
    return [entry.request_id for entry in fresh]


def spend_on_budgets_not_settled(
    connection: Connection, entries: Sequence[LedgerEntry]
) -> list[Settlement]:
    """The spend of ``entries`` on budgets their process did not settle them against.

    A budget created through one process reaches the others' guards within about half a
    second; requests they served meanwhile were neither reserved nor settled against it.
    And a request interrupted by its process's death, recovered from the journal, was
    never settled at all. Matching each entry against the budgets as they are in this
    transaction adds that spend with the entry itself, so a budget's spend equals its
    ledger entries from the moment it exists, in every process.
    """
    costly = [entry for entry in entries if entry.cost_nanos]
    if not costly:
        return []
    rules = load_rules_in(connection)
    fingerprint = rules_fingerprint(rules)
    index = RuleIndex(rules)
    spend: list[Settlement] = []
    for entry in costly:
        if entry.budgets_seen == fingerprint:  # the usual case: its process knew them all
            continue
        settled = {s.budget_id for s in entry.settlements}
        for rule in index.applicable(entry.budget_scope()):
            if rule.id not in settled:
                start, end = rule.bounds(entry.started_at)
                spend.append(Settlement(rule.id, start, end, entry.cost_nanos))
    return spend


async def write_entries(engine: AsyncEngine, entries: Sequence[LedgerEntry]) -> list[str]:
    """:func:`write_entries_in` in a transaction of its own on ``engine``."""
    async with engine.begin() as connection:
        return await connection.run_sync(write_entries_in, entries)


async def keep_refused(
    engine: AsyncEngine, entry: LedgerEntry, error: str
) -> tuple[str, list[str]]:
    """Keep an entry the database refused: salvaged into the ledger if it can be, and
    its original in ``ledger_dead_letters`` either way. Returns the dead-letter state
    (``salvaged`` or ``unstored``) and what the salvaged copy changed.

    Salvage and dead letter commit together: the copy's spend is settled exactly once,
    however often the entry is refused again (the copy's request id is then in the
    ledger, and writing it again writes and settles nothing). Raises what the database
    raised if it refuses the dead-letter row too.
    """
    copy, changes = salvaged(entry)
    if changes:
        try:
            async with write_transaction(engine) as connection:
                await connection.run_sync(_salvage_in, entry, copy, error, changes)
            return SALVAGED, changes
        except Exception as exc:
            if is_outage(exc):
                raise
            error = f"{error}; the salvaged copy was refused too ({_describe(exc)})"
    async with write_transaction(engine) as connection:
        await connection.run_sync(lambda c: keep_in(c, entry, error, state=UNSTORED))
    return UNSTORED, []


def _salvage_in(
    connection: Connection, entry: LedgerEntry, copy: LedgerEntry, error: str, changes: list[str]
) -> None:
    write_entries_in(connection, [copy])
    keep_in(connection, entry, error, state=SALVAGED, changes=changes)


@dataclass
class RetryReport:
    """What one pass over the unstored dead letters did."""

    written: list[str] = field(default_factory=list)  # originals now in the ledger
    salvaged: list[str] = field(default_factory=list)  # refused again; a copy went in
    refused: list[str] = field(default_factory=list)  # refused again, still unstored


async def retry_dead_letters(engine: AsyncEngine) -> RetryReport:
    """Try every ``unstored`` dead letter again (after an operator fixed the cause).

    An entry written now is settled against its budgets in the same transaction that
    marks its row ``written``; an entry already in the ledger (another process's retry)
    writes and settles nothing. So however many processes retry, each lands once.
    """
    report = RetryReport()
    for letter in await list_dead_letters(engine, states=(UNSTORED,)):
        try:
            async with write_transaction(engine) as connection:
                await connection.run_sync(_retry_in, letter.entry, letter.id)
            report.written.append(letter.request_id)
            logger.warning("wrote dead-lettered ledger entry %s", letter.request_id)
            continue
        except Exception as exc:
            if is_outage(exc):
                raise
            error = _describe(exc)
        state, _ = await keep_refused(engine, letter.entry, error)
        (report.salvaged if state == SALVAGED else report.refused).append(letter.request_id)
    return report


def _retry_in(connection: Connection, entry: LedgerEntry, row_id: int) -> None:
    write_entries_in(connection, [entry])
    resolve_in(connection, row_id)


def _describe(exc: BaseException) -> str:
    kind = exc.kind if isinstance(exc, WriteFailed) else type(exc).__name__
    message = str(exc)
    if isinstance(exc, WriteFailed) and message.startswith(f"{kind}: "):
        message = message[len(kind) + 2 :]
    return f"{kind}: {message}"[:2000]


class EntryWrites(Protocol):
    """Where a batch's transaction runs: in this process, or in a writer process."""

    async def write(self, entries: Sequence[LedgerEntry]) -> list[str]:
        """:func:`write_entries_in` in a transaction of its own; the request ids written."""
        ...

    async def open(self) -> None:
        """Get ready for the first batch (it should not wait for a process to start)."""
        ...

    async def aclose(self) -> None: ...


class InProcessWrites:
    """Batches committed by this process (a thread of its own on a SQLite file)."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._transactions = WriteTransactions(engine)

    async def open(self) -> None:
        pass

    async def write(self, entries: Sequence[LedgerEntry]) -> list[str]:
        return await self._transactions.run(write_entries_in, entries)

    async def aclose(self) -> None:
        await self._transactions.aclose()


class LedgerWriter:
    def __init__(
        self,
        engine: AsyncEngine,
        *,
        max_batch: int = 512,
        journal: Journal | None = None,
        on_commit: Callable[[int], None] | None = None,
        ack: str = "journal",
        gather_s: float = 0.02,
        writes: EntryWrites | None = None,
    ) -> None:
        self._engine = engine
        self._gather_s = gather_s
        self._on_commit = on_commit
        # Acknowledge on the journal only when there is one to acknowledge on.
        self._ack_on_journal = journal is not None and ack == "journal"
        self._enqueued = 0  # sequence number of the last entry queued
        self._settled = 0  # ... and of the last one committed (or journaled in an outage)
        self._progress = asyncio.Condition()
        self._writes = writes or InProcessWrites(engine)
        self._max_batch = max_batch
        self._journal = journal
        # Each entry with the future its caller waits on (None: acknowledged on the journal).
        self._queue: asyncio.Queue[tuple[LedgerEntry, asyncio.Future[None] | None]] = (
            asyncio.Queue()
        )
        self._pending: list[LedgerEntry] = []  # journaled, waiting for the database
        # Refused by the ledger and by the dead-letter table: kept in the journal only.
        self._unstored: list[LedgerEntry] = []
        self._task: asyncio.Task[None] | None = None
        self._replayer: asyncio.Task[None] | None = None
        self.database_available = True
        self.batches_written = 0
        self.entries_written = 0

    @property
    def writes(self) -> EntryWrites:
        """Where this writer's batches are committed."""
        return self._writes

    @property
    def backlog(self) -> int:
        """Entries not yet in the database: queued, and journaled during an outage."""
        return self._queue.qsize() + len(self._pending)

    @property
    def unstored(self) -> int:
        """Entries the database refused outright (dead-letter row included): journal only."""
        return len(self._unstored)

    def keep_unstored(self, entries: Sequence[LedgerEntry]) -> None:
        """Hold entries no table would take (from a dead process's journal) for retry."""
        if self._journal is not None:
            self._journal.pending(list(entries))
        self._unstored.extend(entries)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="ledger-writer")
            self._replayer = asyncio.create_task(self._replay_forever(), name="ledger-replay")

    async def stop(self) -> None:
        """Write (or journal) everything queued, then stop."""
        if self._task is None:
            return
        await self._queue.join()
        for task in (self._task, self._replayer):
            if task is not None:
                task.cancel()
                with suppress(asyncio.CancelledError):
                    await task
        self._task = self._replayer = None
        if self._pending:
            await self._replay()
        if self._pending:
            logger.error(
                "%d ledger entries stay journaled until the database is back", len(self._pending)
            )
        if self._unstored:
            logger.error(
                "%d ledger entries the database refused stay in the journal (%s) for the "
                "next start to try again", len(self._unstored), self._journal_place(),
            )  # fmt: skip
        await self._writes.aclose()

    # -- the write-ahead record of requests in flight -------------------------------------

    def begin(self, entry: LedgerEntry) -> None:
        """Note that a request is in flight, so a killed process can account for it."""
        if self._journal is not None:
            self._journal.started(entry)

    def forwarding(self, entry: LedgerEntry, prompt_cost: int) -> None:
        """Note that a request is going to the provider, with what its prompt will cost."""
        if self._journal is not None:
            self._journal.forwarding(entry, prompt_cost)

    def handed_over(self, request_id: str) -> None:
        """A request's entry is owed by a database row now (an open background response):
        the journal no longer needs to account for it should this process die."""
        if self._journal is not None:
            self._journal.done([request_id])

    # -- recording ----------------------------------------------------------------------

    async def record(self, entry: LedgerEntry) -> None:
        """Queue ``entry``; return when it is committed (or journaled during an outage)."""
        if self._task is None:
            if self._journal is None:
                raise RuntimeError("the ledger writer is not running")
            # Stopped (shutting down): the journal keeps it for the next start to write.
            self._journal.pending([entry])
            return
        self._enqueued += 1
        if self._ack_on_journal:
            assert self._journal is not None
            self._journal.pending([entry])  # durable from here on: nothing to wait for
            self._queue.put_nowait((entry, None))
            return
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((entry, done))
        # The entry is written even if this caller is cancelled while waiting.
        await asyncio.shield(done)

    async def flush(self, timeout_s: float = 5.0) -> None:
        """Wait until every entry recorded before this call is committed (read your writes)."""
        target = self._enqueued
        if self._settled >= target or self._task is None:
            return
        async with self._progress:
            with suppress(TimeoutError):
                await asyncio.wait_for(
                    self._progress.wait_for(lambda: self._settled >= target), timeout_s
                )

    async def _run(self) -> None:
        try:
            await self._writes.open()
        except Exception:  # the first batch tries again, and reports an outage if it must
            logger.exception("the ledger writer could not get ready")
        while True:
            batch = [await self._queue.get()]
            if self._ack_on_journal and self._gather_s and self._queue.qsize() < self._max_batch:
                # Callers already have their answer (the journal holds their entries), so
                # waiting a moment costs them nothing, and a fuller batch costs far less
                # per entry: one transaction, one update per budget period and rollup row.
                await asyncio.sleep(self._gather_s)
            while len(batch) < self._max_batch and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            try:
                await self._write(batch)
            except Exception as exc:  # the writer must outlive any one batch
                logger.exception("ledger writer failed on a batch of %d", len(batch))
                for _, done in batch:
                    _settle(done, exc)
            finally:
                for _ in batch:
                    self._queue.task_done()
                self._settled += len(batch)
                async with self._progress:
                    self._progress.notify_all()

    async def _write(self, batch: list[tuple[LedgerEntry, asyncio.Future[None] | None]]) -> None:
        entries = [entry for entry, _ in batch]
        try:
            await self._writes.write(entries)
        except Exception as exc:
            if is_outage(exc):
                self._outage(entries, exc)
                for _, done in batch:
                    if self._journal is None:
                        _settle(done, RuntimeError("the database is unavailable"))
                    else:
                        _settle(done, None)
                return
            if len(batch) > 1:
                # One bad entry must not sink its neighbours: write them one by one.
                for item in batch:
                    await self._write([item])
                return
            kept = await self._keep_refused(entries[0], exc)
            if kept is None:  # the database went away meanwhile: an outage after all
                self._outage(entries, exc)
                kept = KEPT_IN_JOURNAL if self._journal is not None else None
            _settle(
                batch[0][1],
                None if kept is not None else RuntimeError("the ledger entry could not be written"),
            )
            return
        self.database_available = True
        self._committed(entries)
        for _, done in batch:
            _settle(done, None)

    async def _keep_refused(self, entry: LedgerEntry, exc: BaseException) -> str | None:
        """The database will not take ``entry`` as it is: keep it, and say so loudly.

        Returns where it is kept (``salvaged``, ``unstored``: the dead-letter table;
        ``journal``: only there, or only in memory without a journal), or None if the
        database turned out to be unreachable (the caller treats it as an outage).
        """
        error = _describe(exc)
        try:
            state, changes = await keep_refused(self._engine, entry, error)
        except Exception as failure:
            if is_outage(failure):
                return None
            logger.error(
                "ledger entry %s was refused by the database (%s), and so was its "
                "dead-letter row (%s): kept in the journal (%s), not dropped; tried again "
                "every %.0f s", entry.request_id, error, _describe(failure),
                self._journal_place(), UNSTORED_RETRY_INTERVAL_S,
            )  # fmt: skip
            if self._journal is not None and not self._ack_on_journal:
                self._journal.pending([entry])
            if entry not in self._unstored:
                self._unstored.append(entry)
            return KEPT_IN_JOURNAL
        if state == SALVAGED:
            logger.error(
                "ledger entry %s was refused by the database (%s): kept, not dropped. A "
                "copy cut to fit is in the ledger (%s); the original is in "
                "ledger_dead_letters", entry.request_id, error, "; ".join(changes),
            )  # fmt: skip
        else:
            logger.error(
                "ledger entry %s was refused by the database (%s): kept, not dropped, in "
                "ledger_dead_letters as unstored; fix the cause, then run `ledger db "
                "retry-dead-letters` (retried every few minutes anyway)",
                entry.request_id, error,
            )  # fmt: skip
        if self._journal is not None:
            self._journal.done([entry.request_id])
        return state

    def _journal_place(self) -> str:
        return str(self._journal.directory) if self._journal is not None else "no journal"

    def _outage(self, entries: list[LedgerEntry], exc: BaseException) -> None:
        if self.database_available:
            kind = exc.kind if isinstance(exc, WriteFailed) else type(exc).__name__
            logger.error("database unavailable, journaling ledger entries: %s", kind)
        self.database_available = False
        if self._journal is not None:
            if not self._ack_on_journal:  # otherwise they were journaled when recorded
                self._journal.pending(entries)
            self._pending.extend(entries)

    def _committed(self, entries: list[LedgerEntry]) -> None:
        self.batches_written += 1
        self.entries_written += len(entries)
        if self._on_commit is not None:
            self._on_commit(len(entries))
        if self._journal is not None:
            self._journal.done([entry.request_id for entry in entries])

    async def _replay_forever(self) -> None:
        since_unstored = 0.0
        while True:
            await asyncio.sleep(REPLAY_INTERVAL_S)
            since_unstored += REPLAY_INTERVAL_S
            if self._unstored and since_unstored >= UNSTORED_RETRY_INTERVAL_S:
                since_unstored = 0.0
                await self.retry_unstored()
            if self._pending:
                await self._replay()

    async def retry_unstored(self) -> None:
        """Try the entries kept in the journal only again: the ledger, then dead letters."""
        retry, self._unstored = self._unstored, []
        self._pending.extend(retry)
        await self._replay()

    async def _replay(self) -> None:
        """Write journaled entries now that the database may be back; once each."""
        while self._pending:
            chunk = self._pending[: self._max_batch]
            try:
                await self._writes.write(chunk)
            except Exception as exc:
                if is_outage(exc):
                    return
                # Not the outage: one of them is bad. Write them one by one.
                for entry in chunk:
                    try:
                        await self._writes.write([entry])
                    except Exception as single:
                        if is_outage(single) or await self._keep_refused(entry, single) is None:
                            return
                    else:
                        self._committed([entry])
                    self._pending.remove(entry)
                continue
            del self._pending[: len(chunk)]
            self.database_available = True
            self._committed(chunk)
            logger.warning("wrote %d journaled ledger entries", len(chunk))


def is_outage(exc: BaseException) -> bool:
    """Whether ``exc`` means the database is unreachable, not that the data is bad."""
    if isinstance(exc, WriteFailed):  # as the writer process judged it (or it is gone)
        return exc.outage
    if isinstance(exc, OperationalError | InterfaceError):
        return True
    if isinstance(exc, DBAPIError):
        return bool(exc.connection_invalidated)
    return isinstance(exc, OSError | ConnectionError | TimeoutError)


def _settle(done: asyncio.Future[None] | None, error: BaseException | None) -> None:
    if done is None or done.done():
        return
    if error is None:
        done.set_result(None)
    else:
        done.set_exception(error)
