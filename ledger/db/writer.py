"""Group commit for ledger entries: many requests, one transaction, each caller told when.

``record()`` returns once the entry is committed, or — while the database is
unreachable — once it is journaled on local disk; journaled entries are written when
the database returns. While one batch commits, the next one gathers. Callers never see
the batching: it is the same ``await writer.record(entry)`` at any load.

Writes are idempotent by request id, so an entry replayed after an ambiguous commit is
not written (nor settled) twice.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from contextlib import suppress
from typing import Protocol

from sqlalchemy import Connection
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine

from ledger.budgets.model import RuleIndex
from ledger.budgets.store import Settlement, apply_settlements, load_rules_in, rules_fingerprint
from ledger.db.engine import WriteTransactions
from ledger.db.journal import Journal
from ledger.db.ledger import LedgerEntry, insert_entries
from ledger.db.writer_process import WriteFailed
from ledger.reports.rollups import apply_entries_to_rollups

logger = logging.getLogger("ledger.writer")

REPLAY_INTERVAL_S = 1.0


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
            self._refused(entries[0], exc)
            _settle(batch[0][1], RuntimeError("the ledger entry could not be written"))
            return
        self.database_available = True
        self._committed(entries)
        for _, done in batch:
            _settle(done, None)

    def _refused(self, entry: LedgerEntry, exc: BaseException) -> None:
        """The database will never take this entry as it is: say so loudly, with the entry."""
        logger.error(
            "ledger entry %s was refused by the database (%s: %s); entry: %s",
            entry.request_id, type(exc).__name__, exc, entry.as_row(),
        )  # fmt: skip
        if self._journal is not None:
            self._journal.done([entry.request_id])

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
        while True:
            await asyncio.sleep(REPLAY_INTERVAL_S)
            if self._pending:
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
                        if is_outage(single):
                            return
                        self._refused(entry, single)
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
