"""Group commit for ledger entries: many requests, one transaction, each caller told when.

``record()`` returns only once the entry is committed, so an acknowledged request is a
durable one; while one batch commits, the next one gathers. The callers never see the
batching: it is the same ``await writer.record(entry)`` at any load.
"""

from __future__ import annotations

import asyncio
import logging
from contextlib import suppress

from sqlalchemy.ext.asyncio import AsyncEngine

from ledger.budgets.store import apply_settlements
from ledger.db.ledger import LedgerEntry, insert_entries
from ledger.reports.rollups import apply_entries_to_rollups

logger = logging.getLogger("ledger.writer")


class LedgerWriter:
    def __init__(self, engine: AsyncEngine, *, max_batch: int = 512) -> None:
        self._engine = engine
        self._max_batch = max_batch
        self._queue: asyncio.Queue[tuple[LedgerEntry, asyncio.Future[None]]] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self.batches_written = 0
        self.entries_written = 0

    @property
    def backlog(self) -> int:
        return self._queue.qsize()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="ledger-writer")

    async def stop(self) -> None:
        """Write everything queued, then stop."""
        if self._task is None:
            return
        await self._queue.join()
        self._task.cancel()
        with suppress(asyncio.CancelledError):
            await self._task
        self._task = None

    async def record(self, entry: LedgerEntry) -> None:
        """Queue ``entry`` and wait until it is committed. Raises if it could not be written."""
        if self._task is None:
            raise RuntimeError("the ledger writer is not running")
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((entry, done))
        # The entry is written even if this caller is cancelled while waiting.
        await asyncio.shield(done)

    async def _run(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while len(batch) < self._max_batch and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            try:
                await self._write(batch)
            finally:
                for _ in batch:
                    self._queue.task_done()

    async def _write(self, batch: list[tuple[LedgerEntry, asyncio.Future[None]]]) -> None:
        try:
            entries = [entry for entry, _ in batch]
            async with self._engine.begin() as connection:
                await insert_entries(connection, entries)
                await apply_settlements(
                    connection, [s for entry in entries for s in entry.settlements]
                )
                await apply_entries_to_rollups(connection, entries)
        except Exception:
            if len(batch) == 1:
                logger.exception("could not write ledger entry %s", batch[0][0].request_id)
                _settle(batch[0][1], RuntimeError("the ledger entry could not be written"))
                return
            # One bad entry must not sink its neighbours: write them one by one.
            for item in batch:
                await self._write([item])
            return
        self.batches_written += 1
        self.entries_written += len(batch)
        for _, done in batch:
            _settle(done, None)


def _settle(done: asyncio.Future[None], error: BaseException | None) -> None:
    if done.done():
        return
    if error is None:
        done.set_result(None)
    else:
        done.set_exception(error)
