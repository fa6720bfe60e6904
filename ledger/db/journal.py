"""A write-ahead journal on local disk: nothing acknowledged is lost, nothing is written twice.

Each process appends to its own file, which it holds with an exclusive ``flock``:

- ``start``: a request is now in flight (written when its key is known);
- ``forward``: it is about to reach the provider (with its estimate and input cost);
- ``entry``: its final entry could not reach the database (an outage); kept for replay;
- ``done``: its entry is committed.

Appends are plain ``write`` calls: they survive the process being killed (the data is in
the kernel), which is the failure this guards against. A ``start`` waits in memory until
the end of the event loop's current step (or its request's ``forward``, which then
travels in the same record and the same ``write``): a request is on disk before anything
it waits for can let the loop run, and before the provider can see it.

On start-up a process takes over every journal whose owner is gone (its lock is free):
entries waiting for replay are written, and requests that started but never finished
become ``interrupted`` entries. Inserting by request id makes recovery idempotent.

Files live under a directory per database, so a journal is only ever replayed into the
database it was written for.
"""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
from sqlalchemy.engine import make_url

from ledger.budgets.store import Settlement
from ledger.db.engine import is_sqlite_file
from ledger.db.ledger import LedgerEntry

logger = logging.getLogger("ledger.journal")

_SEGMENT_BYTES = 64 * 1024 * 1024


_encode = msgspec.json.Encoder().encode


def _encoded(record: dict[str, Any]) -> bytes:
    try:
        return _encode(record)
    except UnicodeEncodeError:
        # A lone surrogate (UTF-8 cannot hold it): escaped, so the entry is still kept.
        return json.dumps(msgspec.to_builtins(record), ensure_ascii=True).encode()


class JournalUnavailable(Exception):
    """The journal directory cannot be created or written: Ledger cannot start safely."""

    def __init__(self, directory: Path, reason: str) -> None:
        super().__init__(
            f"the journal directory {directory} cannot be written ({reason}); set "
            "LEDGER_JOURNAL_DIR (journal_dir in the config file) to a writable directory "
            "on local disk"
        )
        self.directory = directory


def journal_directory(base: str | None, database_url: str) -> Path:
    """``base`` (or a default next to a SQLite file, else ./ledger-journal) per database."""
    url = make_url(database_url)
    identity = hashlib.sha256(url.render_as_string(hide_password=True).encode()).hexdigest()[:12]
    if base:
        root = Path(base)
    elif is_sqlite_file(url):
        root = Path(str(url.database) + ".journal")
    else:
        root = Path("ledger-journal")
    return root / identity


def check_journal_directory(directory: Path) -> None:
    """Raise :class:`JournalUnavailable` unless ``directory`` can hold journal files."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        probe = directory / f".probe-{os.getpid()}"
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600))
        probe.unlink()
    except OSError as exc:
        raise JournalUnavailable(directory, exc.strerror or str(exc)) from exc


def entry_from_json(data: dict[str, Any]) -> LedgerEntry:
    data = dict(data)
    settlements = data.pop("settlements", [])
    data.pop("latency_ms", None)
    for key in ("started_at", "ended_at", "first_token_at"):
        if data.get(key):
            data[key] = datetime.fromisoformat(data[key])
    tags = data.get("tags")
    data["tags"] = json.loads(tags) if isinstance(tags, str) else (tags or [])
    entry = LedgerEntry(**data)
    entry.settlements = [
        Settlement(
            budget_id=s["budget_id"],
            period_start=datetime.fromisoformat(s["period_start"]),
            period_end=datetime.fromisoformat(s["period_end"]) if s["period_end"] else None,
            spent=s["spent"],
            release=s["release"],
            reservation_id=s["reservation_id"],
            lease=s["lease"],
        )
        for s in settlements
    ]
    return entry


@dataclass
class Recovered:
    """What a dead process's journals still owed the database."""

    files: list[Path] = field(default_factory=list)
    pending: list[LedgerEntry] = field(default_factory=list)  # final entries to write
    interrupted: list[LedgerEntry] = field(default_factory=list)  # in flight when it died


class Journal:
    """This process's journal file. Not thread-safe: used from the event loop only."""

    def __init__(self, directory: Path, owner: str) -> None:
        self.directory = directory
        self.owner = owner.replace("/", "_").replace(":", "_")
        self._fd: int | None = None
        self._path: Path | None = None
        self._segment = 0
        self._size = 0
        self._open_requests: dict[str, int] = {}  # request id -> segment
        self._segment_open: dict[int, int] = {}  # segment -> requests not yet done
        self._segment_paths: dict[int, Path] = {}
        # Records not yet written, and the ``start`` records among them by request id.
        self._unwritten: list[dict[str, Any]] = []
        self._unwritten_starts: dict[str, dict[str, Any]] = {}
        self._write_scheduled = False

    # -- recovery -----------------------------------------------------------------------

    def take_over_orphans(self) -> Recovered:
        """Read every journal in the directory whose owner no longer holds its lock."""
        recovered = Recovered()
        if not self.directory.exists():
            return recovered
        for path in sorted(self.directory.glob("journal-*.jsonl")):
            if self._path is not None and path == self._path:
                continue
            fd = os.open(path, os.O_RDWR)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue  # its owner is alive
            try:
                self._read_orphan(path, recovered)
                recovered.files.append(path)
            finally:
                os.close(fd)
        return recovered

    @staticmethod
    def _read_orphan(path: Path, recovered: Recovered) -> None:
        started: dict[str, dict[str, Any]] = {}
        pending: dict[str, dict[str, Any]] = {}
        done: set[str] = set()
        with path.open(encoding="utf-8") as lines:
            for line in lines:
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a torn last line from the moment of the kill
                kind, request_id = record.get("t"), record.get("id")
                if kind == "start":
                    started[request_id] = record["entry"]
                elif kind == "forward" and request_id in started:
                    started[request_id].update(record["entry"])
                elif kind == "entry":
                    pending[request_id] = record["entry"]
                elif kind == "done":
                    done.add(request_id)
        for request_id, data in pending.items():
            if request_id not in done:
                recovered.pending.append(entry_from_json(data))
        now = datetime.now(UTC)
        for request_id, data in started.items():
            if request_id in done or request_id in pending:
                continue
            entry = entry_from_json(data)
            entry.status = "interrupted"
            entry.http_status = 0
            entry.ended_at = now
            entry.error = "Ledger stopped before the request finished (recovered from the journal)."
            if entry.estimated_input_tokens:
                entry.usage_source = "estimated"
                entry.input_tokens = entry.estimated_input_tokens
            recovered.interrupted.append(entry)

    @staticmethod
    def remove(paths: list[Path]) -> None:
        for path in paths:
            path.unlink(missing_ok=True)

    # -- this process's records ---------------------------------------------------------

    def open(self) -> None:
        """Create the directory and this process's first file; :class:`JournalUnavailable`
        if it cannot be written (nothing could be acknowledged safely)."""
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._open_segment()
        except OSError as exc:
            raise JournalUnavailable(self.directory, exc.strerror or str(exc)) from exc

    def _open_segment(self) -> None:
        self._write_unwritten()  # into the segment their requests were counted in
        self._segment += 1
        path = self.directory / f"journal-{self.owner}-{self._segment:06d}.jsonl"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        previous = self._fd
        self._fd, self._path, self._size = fd, path, 0
        self._segment_paths[self._segment] = path
        self._segment_open.setdefault(self._segment, 0)
        if previous is not None:
            self._retire_segments()

    def close(self) -> None:
        """Close; the files are deleted if nothing in them is still owed."""
        if self._fd is None:
            return
        self._write_unwritten()
        os.close(self._fd)
        self._fd = None
        for segment, path in list(self._segment_paths.items()):
            if self._segment_open.get(segment, 0) == 0:
                path.unlink(missing_ok=True)
                del self._segment_paths[segment]

    def started(self, entry: LedgerEntry) -> None:
        self._open_requests[entry.request_id] = self._segment
        self._segment_open[self._segment] = self._segment_open.get(self._segment, 0) + 1
        if self._fd is None:
            return
        # Only what is known when the key is: the rest of the entry keeps its defaults.
        started = {
            "request_id": entry.request_id,
            "started_at": entry.started_at,
            "endpoint": entry.endpoint,
            "team_id": entry.team_id,
            "key_id": entry.key_id,
            "end_user": entry.end_user,
            "end_user_session": entry.end_user_session,
            "end_user_full": entry.end_user_full,
        }
        record = {"t": "start", "id": entry.request_id, "entry": started}
        self._unwritten.append(record)
        self._unwritten_starts[entry.request_id] = record
        self._write_at_end_of_step()

    def forwarding(self, entry: LedgerEntry, prompt_cost: int) -> None:
        forwarded = {
            "requested_model": entry.requested_model,
            # Known only once the body is parsed: budgets and reports match on them.
            "end_user": entry.end_user,
            "end_user_session": entry.end_user_session,
            "end_user_full": entry.end_user_full,
            "tags": entry.tags,
            "served_model": entry.served_model,
            "provider": entry.provider,
            "stream": entry.stream,
            "estimated_input_tokens": entry.estimated_input_tokens,
            "price_id": entry.price_id,
            # If the process dies, the prompt is what the provider surely billed.
            "input_cost_nanos": prompt_cost,
            "cost_nanos": prompt_cost,
        }
        start = self._unwritten_starts.get(entry.request_id)
        if start is not None:  # not on disk yet: one record, started and forwarded
            start["entry"].update(forwarded)
            self._write_unwritten()
        else:
            self._append({"t": "forward", "id": entry.request_id, "entry": forwarded})

    def pending(self, entries: list[LedgerEntry]) -> None:
        """The database could not take these entries: keep them for replay."""
        for entry in entries:
            self._track(entry.request_id)
        # The entry as it is (msgspec encodes the dataclass, its settlements and its
        # datetimes as RFC 3339 itself); entry_from_json reads it back.
        self._append_many([{"t": "entry", "id": e.request_id, "entry": e} for e in entries])

    def done(self, request_ids: list[str]) -> None:
        self._append_many([{"t": "done", "id": request_id} for request_id in request_ids])
        for request_id in request_ids:
            segment = self._open_requests.pop(request_id, None)
            if segment is not None:
                self._segment_open[segment] -= 1
        if self._size > _SEGMENT_BYTES:
            self._open_segment()
        else:
            self._retire_segments()

    def _track(self, request_id: str) -> None:
        if request_id not in self._open_requests:
            self._open_requests[request_id] = self._segment
            self._segment_open[self._segment] = self._segment_open.get(self._segment, 0) + 1

    def _retire_segments(self) -> None:
        for segment, path in list(self._segment_paths.items()):
            if segment != self._segment and self._segment_open.get(segment, 0) == 0:
                path.unlink(missing_ok=True)
                del self._segment_paths[segment]
                self._segment_open.pop(segment, None)

    def _append(self, record: dict[str, Any]) -> None:
        self._append_many([record])

    def _append_many(self, records: list[dict[str, Any]]) -> None:
        """Write ``records`` now, after any still waiting: one ``write`` for all of them."""
        if self._fd is None:
            return
        if self._unwritten:
            records = self._unwritten + records
            self._unwritten = []
            self._unwritten_starts.clear()
        if not records:
            return
        data = b"".join(_encoded(record) + b"\n" for record in records)
        os.write(self._fd, data)
        self._size += len(data)

    def _write_unwritten(self) -> None:
        self._write_scheduled = False
        self._append_many([])

    def _write_at_end_of_step(self) -> None:
        if self._write_scheduled:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no event loop (start-up, tests): nothing could run first
            self._write_unwritten()
            return
        self._write_scheduled = True
        loop.call_soon(self._write_unwritten)
