"""Engine and session factory for SQLite (embedded default) and PostgreSQL."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Any, Concatenate, ParamSpec, TypeVar

from sqlalchemy import Connection, Engine, event
from sqlalchemy import create_engine as create_sync_engine
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.pool import NullPool

# How long a SQLite transaction waits for another connection's write lock.
BUSY_TIMEOUT_MS = 30_000


def is_sqlite(url: str) -> bool:
    return make_url(url).get_backend_name() == "sqlite"


def is_sqlite_file(url: str | URL) -> bool:
    """A SQLite database in a file: one that other threads and processes can open too."""
    url = make_url(url)
    return url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:")


def create_engine(
    url: str, *, pool_size: int = 10, null_pool: bool = False, statement_cache_size: int = 100
) -> AsyncEngine:
    """Create the async engine with the per-backend settings Ledger relies on.

    SQLite runs in WAL mode with a busy timeout so that readers never block the
    single writer and concurrent processes wait instead of failing.
    """
    if is_sqlite_file(url):
        create_private_sqlite_file(url)
    kwargs: dict[str, Any] = {}
    if null_pool:
        kwargs["poolclass"] = NullPool
    elif not is_sqlite(url):
        kwargs.update(pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True)
    if not is_sqlite(url):
        # Prepared statements live per connection: PgBouncer in transaction mode needs
        # LEDGER_PG_STATEMENT_CACHE_SIZE=0; a direct connection re-prepares nothing.
        kwargs["connect_args"] = {"statement_cache_size": statement_cache_size}
    engine = create_async_engine(url, **kwargs)
    if is_sqlite(url):
        event.listen(engine.sync_engine, "connect", _configure_sqlite)
        event.listen(engine.sync_engine, "begin", _begin_sqlite)
    return engine


def create_private_sqlite_file(url: str | URL) -> None:
    """Create a new SQLite database file readable by its owner only (mode 0600).

    It holds the generated key-hashing secret when ``LEDGER_SECRET_KEY`` is unset, and
    the ledger. SQLite gives its ``-wal`` and ``-shm`` files the database file's mode,
    so they are 0600 too. An existing file keeps the mode it has.
    """
    path = make_url(url).database
    assert path is not None
    if path.startswith("file:"):  # a URI filename: SQLite parses it, not us
        return
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except (FileExistsError, FileNotFoundError):  # there already; or no directory: SQLite says
        return
    os.close(fd)  # an empty file is an empty SQLite database
    os.chmod(path, 0o600)  # whatever the umask


def create_sessionmaker(
    engine: AsyncEngine, *, writes: bool = False
) -> async_sessionmaker[AsyncSession]:
    """Sessions; ``writes=True`` for read-then-write work (admin changes) on SQLite."""
    if writes:
        engine = engine.execution_options(sqlite_begin="IMMEDIATE")
    return async_sessionmaker(engine, expire_on_commit=False)


@asynccontextmanager
async def write_transaction(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    """A transaction that may read before it writes, safe against SQLite's lock upgrade."""
    async with engine.connect() as connection:
        connection = await connection.execution_options(sqlite_begin="IMMEDIATE")
        async with connection.begin():
            yield connection


def bounded_waits(engine: AsyncEngine, timeout_s: float) -> AsyncEngine:
    """``engine`` whose transactions wait at most ``timeout_s`` for a SQLite write lock.

    Another process holding the file's lock (a long ``BEGIN IMMEDIATE``, a backup) makes
    a transaction wait for the busy timeout, 30 s by default, then fail with "database is
    locked". A request waiting on it should fail sooner. PostgreSQL is unaffected.
    """
    if not is_sqlite(str(engine.url)):
        return engine
    return engine.execution_options(sqlite_busy_timeout_ms=max(1, int(timeout_s * 1000)))


P = ParamSpec("P")
T = TypeVar("T")


# How long the SQLite writer's thread steps aside after each statement (see below).
WRITER_PAUSE_S = 0.0003


class WriteTransactions:
    """Runs synchronous units of write work, each in one transaction of its own.

    On a SQLite file the work runs in a thread of its own on a plain ``sqlite3``
    connection: through aiosqlite every statement is several round trips between the
    event loop and aiosqlite's thread, and a ledger batch is about ten statements, so
    one hand-off per transaction instead is most of the writer's cost saved. On
    PostgreSQL (asyncpg needs no thread) the same work runs on the async engine.

    The thread steps aside for ``pause_s`` after each statement, letting go of the GIL
    and the CPU. Without it a batch ran as one stretch of a millisecond or more, and a
    request that arrived meanwhile waited for the GIL: at one connection that was the
    p99 (2.3-2.5 ms, against 1.3-1.4 ms with the pause, in alternating runs). The
    batch's writes take a few milliseconds longer; no request waits for them.
    """

    def __init__(self, engine: AsyncEngine, *, pause_s: float = WRITER_PAUSE_S) -> None:
        self._engine = engine
        self._thread_engine: Engine | None = None
        self._executor: ThreadPoolExecutor | None = None
        url = engine.url
        if is_sqlite_file(url):
            thread_engine = create_sync_engine(url.set(drivername="sqlite"))
            event.listen(thread_engine, "connect", _configure_sqlite)
            event.listen(thread_engine, "begin", _begin_sqlite)
            if pause_s > 0:
                event.listen(thread_engine, "after_cursor_execute", _pause_for(pause_s))
            # Write-only transactions: take the write lock at BEGIN, never half-way.
            self._thread_engine = thread_engine.execution_options(sqlite_begin="IMMEDIATE")
            self._executor = ThreadPoolExecutor(1, thread_name_prefix="ledger-sqlite-writer")

    async def run(
        self, work: Callable[Concatenate[Connection, P], T], *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """``work(connection, *args)`` in one transaction, committed unless it raises."""
        if self._executor is None:
            async with self._engine.begin() as connection:
                return await connection.run_sync(work, *args, **kwargs)
        return await asyncio.get_running_loop().run_in_executor(
            self._executor, lambda: self._run_in_thread(work, *args, **kwargs)
        )

    def _run_in_thread(
        self, work: Callable[Concatenate[Connection, P], T], *args: P.args, **kwargs: P.kwargs
    ) -> T:
        assert self._thread_engine is not None
        with self._thread_engine.begin() as connection:
            return work(connection, *args, **kwargs)

    async def aclose(self) -> None:
        if self._executor is None or self._thread_engine is None:
            return
        executor, engine = self._executor, self._thread_engine
        self._executor = self._thread_engine = None
        # Whatever is running finishes first; the connection is closed in its thread.
        await asyncio.get_running_loop().run_in_executor(executor, engine.dispose)
        executor.shutdown(wait=True)


def _pause_for(seconds: float) -> Callable[..., None]:
    def pause(*_args: Any) -> None:
        time.sleep(seconds)  # releases the GIL: the event loop runs meanwhile

    return pause


def _configure_sqlite(dbapi_connection: Any, _record: Any) -> None:
    # pysqlite's own transaction handling is disabled so that BEGIN is ours (see below).
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def _begin_sqlite(connection: Any) -> None:
    # A transaction that reads before it writes asks for sqlite_begin="IMMEDIATE" (see
    # write_transaction): taking the write lock up front means it can never fail half-way
    # with "database is locked" when another writer commits first. Reads stay lock-free.
    options = connection.get_execution_options()
    # A caller that must answer fast (a budget decision on the request path) waits less
    # for another process's lock: see bounded_waits. Set per connection, and only when
    # it changes, so the common case costs nothing.
    wait_ms = options.get("sqlite_busy_timeout_ms", BUSY_TIMEOUT_MS)
    info = connection.connection.info
    if info.get("busy_timeout_ms", BUSY_TIMEOUT_MS) != wait_ms:
        connection.exec_driver_sql(f"PRAGMA busy_timeout={int(wait_ms)}")
        info["busy_timeout_ms"] = wait_ms
    mode = options.get("sqlite_begin", "DEFERRED")
    connection.exec_driver_sql(f"BEGIN {mode}")
