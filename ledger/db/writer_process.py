"""The ledger writer's transactions, run by a process of its own.

Committing a batch (inserting the entries, settling budgets, adding to rollups) is
Python work: on PostgreSQL it ran on the event loop, on SQLite in a thread that took
the GIL from it. Either way every request waited for its share. A serving process hands
each batch to its writer process instead, through a pipe, and the event loop only
encodes the batch and reads the answer.

Nothing else changes: :class:`~ledger.db.writer.LedgerWriter` still batches, journals,
tells outages from refused entries and replays; this runs ``write_entries_in`` on the
other side of the pipe and reports what it wrote, or why it could not. A writer process
that dies is an outage like any other: its batch stays journaled and pending, and the
next write starts a new process. Writes are idempotent by request id, so a batch the
dead process had committed is not written twice.

It runs at idle priority (Linux's SCHED_IDLE): whenever a serving process, or the
provider's or client's side of a connection, wants the CPU, the writer process gives it
way at once, so committing never adds to a request's latency. Idle priority starves it
when every CPU stays busy (a sustained overload, or other work on the machine); a batch
answered after more than a quarter of a second (they take milliseconds) is taken for
that, and the process is replaced by one at normal priority for a minute, then by one
at idle priority again. (A process cannot raise its own priority back; a new one is
started while the next batch gathers.) Requests never wait for this: their entries are
journaled.

The process ends when its pipe closes (the serving process stopped, or was killed). It
ignores SIGINT and SIGTERM, which a terminal or a service manager sends to the whole
process group: the serving process's shutdown still needs it to commit the last batches.

Frames in both directions: a 4-byte big-endian length, then JSON (msgspec). The first
frame is the database URL (through the pipe: in argv or the environment, a password
would be readable from /proc).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
from collections.abc import Sequence
from typing import BinaryIO

import msgspec

from ledger.db.ledger import LedgerEntry

logger = logging.getLogger("ledger.writer")

_STOP_WAIT_S = 30.0
# A batch answered later than this by a writer process at idle priority: it was starved
# (a batch takes milliseconds; starved by one busy process on its CPU, about 0.5 s).
STARVED_AFTER_S = 0.25
# How long writer processes run at normal priority after a starved batch.
NORMAL_PRIORITY_FOR_S = 60.0
_GIVE_WAY = "--give-way"  # the argument that starts a writer process at idle priority


class WriteFailed(Exception):
    """The writer process could not write a batch, or is gone."""

    def __init__(self, kind: str, message: str, *, outage: bool) -> None:
        super().__init__(f"{kind}: {message}")
        self.kind = kind
        self.outage = outage  # the database (or the process) is unavailable, not the data bad


class _Reply(msgspec.Struct, omit_defaults=True):
    written: list[str] = []
    error: str | None = None  # the exception's type name
    message: str = ""
    outage: bool = False


class ProcessWrites:
    """Runs ledger batches in a writer process, started on first use and after a death."""

    def __init__(self, database_url: str) -> None:
        self._database_url = database_url
        self._normal_until = 0.0  # monotonic time until which they run at normal priority
        self._starved_before = False
        self._process: asyncio.subprocess.Process | None = None
        self._process_gives_way = False  # the running process is at idle priority
        self._answered = False  # the process has answered a batch (it is past start-up)
        self._retired: list[asyncio.subprocess.Process] = []  # replaced, on their way out
        self._lock = asyncio.Lock()  # one batch in the pipe at a time
        self._encode = msgspec.json.Encoder().encode
        self._decode = msgspec.json.Decoder(_Reply).decode

    @property
    def gives_way(self) -> bool:
        """Whether the writer process runs at idle priority (the default, unless starved)."""
        return self._process is not None and self._process_gives_way

    @property
    def pid(self) -> int | None:
        """The writer process's id, while it runs."""
        process = self._process
        return process.pid if process is not None and process.returncode is None else None

    async def open(self) -> None:
        """Start the writer process now: its imports overlap the server's start-up."""
        async with self._lock:
            await self._running()

    async def write(self, entries: Sequence[LedgerEntry]) -> list[str]:
        """Write ``entries`` in one transaction; returns the request ids written."""
        payload = self._encode(list(entries))
        async with self._lock:
            process = await self._running()
            assert process.stdin is not None and process.stdout is not None
            sent_at = time.monotonic()
            try:
                process.stdin.write(len(payload).to_bytes(4, "big") + payload)
                await process.stdin.drain()
                size = int.from_bytes(await process.stdout.readexactly(4), "big")
                reply = self._decode(await process.stdout.readexactly(size))
            except (OSError, asyncio.IncompleteReadError) as exc:
                self._discard(process)
                raise WriteFailed(
                    "WriterProcessGone", f"the ledger writer process stopped ({exc!r})", outage=True
                ) from exc
            except BaseException:
                # Cancelled half-way: the pipe holds half a conversation. The process goes,
                # and whatever it committed is not committed again (request ids).
                self._discard(process)
                raise
            took_s = time.monotonic() - sent_at
            if self._process_gives_way and self._answered and took_s > STARVED_AFTER_S:
                self._starved(took_s)
            self._answered = True
            if self._process_gives_way != self._should_give_way():
                await self._replace(process)
        if reply.error is not None:
            raise WriteFailed(reply.error, reply.message, outage=reply.outage)
        return reply.written

    async def aclose(self) -> None:
        """Let the process finish its batch and exit (killed if it does not, in time)."""
        async with self._lock:
            process, self._process = self._process, None
            retired, self._retired = self._retired, []
            if process is not None and process.returncode is None:
                if self._answered:
                    assert process.stdin is not None
                    process.stdin.close()  # it exits once its connection is closed
                else:
                    # Never handed a batch (each one is answered before the lock is let
                    # go): nothing to finish, no connection yet, maybe still importing.
                    process.kill()
                retired.append(process)
            for each in retired:
                try:
                    async with asyncio.timeout(_STOP_WAIT_S):
                        await each.wait()
                except TimeoutError:
                    logger.error("the ledger writer process did not stop; killing it")
                    each.kill()
                    await each.wait()

    def _should_give_way(self) -> bool:
        return time.monotonic() >= self._normal_until

    def _starved(self, took_s: float) -> None:
        self._normal_until = time.monotonic() + NORMAL_PRIORITY_FOR_S
        # Once is news; under a sustained overload it recurs every minute.
        logger.log(
            logging.INFO if self._starved_before else logging.WARNING,
            "the ledger writer process took %.1f s for a batch at idle priority (every CPU "
            "is busy); writer processes run at normal priority for the next %.0f s",
            took_s, NORMAL_PRIORITY_FOR_S,
        )  # fmt: skip
        self._starved_before = True

    async def _replace(self, process: asyncio.subprocess.Process) -> None:
        """Start a writer process at the priority now due; ``process`` exits when idle."""
        self._process = None
        assert process.stdin is not None
        process.stdin.close()  # it has nothing left to do: it exits when it gets the CPU
        self._retired = [each for each in self._retired if each.returncode is None]
        self._retired.append(process)
        with contextlib.suppress(OSError):  # if it cannot start now, the next batch tries
            await self._running()  # the successor imports while the next batch gathers

    async def _running(self) -> asyncio.subprocess.Process:
        process = self._process
        if process is not None and process.returncode is None:
            return process
        # The same modules as this process, however it found them: its path, and -P so
        # that a `ledger` folder in the working directory cannot come first.
        path = os.pathsep.join(entry or os.getcwd() for entry in sys.path)
        env = {**os.environ, "PYTHONPATH": path}
        give_way = self._should_give_way()
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-P", "-m", "ledger.db.writer_process",
            *([_GIVE_WAY] if give_way else []),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, env=env,
        )  # fmt: skip
        assert process.stdin is not None
        url = self._database_url.encode()
        process.stdin.write(len(url).to_bytes(4, "big") + url)
        self._process = process
        self._process_gives_way = give_way
        self._answered = False
        return process

    def _discard(self, process: asyncio.subprocess.Process) -> None:
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
        if self._process is process:
            self._process = None


# -- the writer process -------------------------------------------------------------------


def _read_frame(stream: BinaryIO) -> bytes | None:
    header = stream.read(4)
    if len(header) < 4:
        return None  # the serving process closed the pipe (or died)
    size = int.from_bytes(header, "big")
    payload = stream.read(size)
    return payload if len(payload) == size else None


async def _serve(stdin: BinaryIO, stdout: BinaryIO, *, give_way: bool) -> None:
    # Imported here: the serving process imports this module without needing them.
    from ledger.db.engine import WriteTransactions, create_engine
    from ledger.db.writer import is_outage, write_entries_in

    url = await asyncio.to_thread(_read_frame, stdin)
    if url is None:
        return
    if give_way:  # from here on: start-up (imports) ran at normal priority
        _give_way_to_other_work()
    engine = create_engine(url.decode(), pool_size=1)
    # Alone in its process: no event loop to step aside for between statements.
    transactions = WriteTransactions(engine, pause_s=0)
    decode = msgspec.json.Decoder(list[LedgerEntry]).decode
    encode = msgspec.json.Encoder().encode
    try:
        while (frame := await asyncio.to_thread(_read_frame, stdin)) is not None:
            try:
                reply = _Reply(written=await transactions.run(write_entries_in, decode(frame)))
            except Exception as exc:
                reply = _Reply(
                    error=type(exc).__name__, message=str(exc)[:2000], outage=is_outage(exc)
                )
            data = encode(reply)
            stdout.write(len(data).to_bytes(4, "big") + data)
            stdout.flush()
    finally:
        await transactions.aclose()
        await engine.dispose()


def _give_way_to_other_work() -> None:
    # Threads started from here on inherit the policy (the SQLite writer's among them; the
    # one reading the pipe, started before, only waits). A batch is a few milliseconds of
    # CPU, and at normal priority a task that woke meanwhile (the serving process, the
    # client, the provider) could wait behind it for a time slice. p99 at one connection
    # on SQLite, medians of alternating runs on 2 cores: 3.05 ms at normal priority,
    # 1.48-3.30 under SCHED_BATCH, 1.65-1.87 pausing after each statement, 1.37-1.55 at
    # idle priority (BENCHMARKS.md, tenth session).
    with contextlib.suppress(AttributeError, OSError):  # not Linux, or not permitted
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))


def main() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    logging.basicConfig(level=logging.WARNING, format="ledger-writer %(levelname)s %(message)s")
    # Frames go to the pipe that was stdout; anything else printed goes to stderr.
    frames = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    with contextlib.suppress(BrokenPipeError):  # the serving process went first
        asyncio.run(_serve(sys.stdin.buffer, frames, give_way=_GIVE_WAY in sys.argv[1:]))


if __name__ == "__main__":
    # Run the module's importable copy, the one ``ledger.db.writer`` also imports.
    from ledger.db.writer_process import main as run_writer_process

    run_writer_process()
