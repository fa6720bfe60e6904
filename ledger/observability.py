"""Prometheus metrics, structured JSON logs, the request id every log line carries, and
the access line: one per HTTP request, on the ``ledger.access`` logger at INFO."""

from __future__ import annotations

import contextvars
import logging
import os
import sys
import time
import traceback
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

import msgspec
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.multiprocess import MultiProcessCollector

from ledger.money import format_usd
from ledger.redaction import Redactor

# The request being served, for log lines written anywhere below the lifecycle.
current_request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "ledger_request_id", default=None
)

access_logger = logging.getLogger("ledger.access")


class _Entry(Protocol):
    """What the access line reads from a request's ledger entry."""

    request_id: str
    team_name: str | None
    endpoint: str
    requested_model: str | None
    status: str
    cost_nanos: int


@dataclass(slots=True)
class AccessRecord:
    """One HTTP request as its access line tells it; turned into text only when logged.

    The gateway attaches the request's ledger entry (and the key's display prefix) once the
    key is known; the entry is read when the line is written, after the response, so a
    stream's line has its final status and cost.
    """

    method: str
    path: str
    started: float  # time.perf_counter()
    http_status: int | None = None
    ended: float | None = None  # when the response's last byte was handed to the server
    entry: _Entry | None = None
    key_prefix: str | None = None

    def fields(self) -> dict[str, Any]:
        """The line's fields; those not known for this request are left out."""
        ended = self.ended if self.ended is not None else time.perf_counter()
        fields: dict[str, Any] = {"method": self.method, "path": self.path}
        if self.http_status is not None:
            fields["http_status"] = self.http_status
        fields["latency_ms"] = round((ended - self.started) * 1000, 2)
        entry = self.entry
        if entry is not None:
            fields["request_id"] = entry.request_id
            if entry.team_name is not None:
                fields["team"] = entry.team_name
            if self.key_prefix is not None:
                fields["key_prefix"] = self.key_prefix
            fields["endpoint"] = entry.endpoint
            if entry.requested_model is not None:
                fields["model"] = entry.requested_model
            fields["status"] = entry.status
            fields["cost_usd"] = format_usd(entry.cost_nanos)
        return fields

    def summary(self) -> str:
        return f"{self.method} {self.path} {self.http_status}"

    def __str__(self) -> str:  # the text format's message: every field, key=value
        return " ".join(f"{k}={v}" for k, v in self.fields().items())


# The HTTP request being served, for the gateway to attach its ledger entry to.
current_access: contextvars.ContextVar[AccessRecord | None] = contextvars.ContextVar(
    "ledger_access", default=None
)


# Probes and scrapes that succeed are logged at DEBUG: they come every few seconds to a
# server nobody uses, which should be quiet.
_ROUTINE_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})


def log_access(record: AccessRecord) -> None:
    """Write ``record``'s access line (formatted by the handler, so only when it is kept)."""
    routine = record.path in _ROUTINE_PATHS and (record.http_status or 500) < 400
    access_logger.log(
        logging.DEBUG if routine else logging.INFO, "%s", record, extra={"access": record}
    )


_LATENCY_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.00075, 0.001, 0.0015, 0.002, 0.003, 0.005, 0.0075, 0.01,
    0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
)  # fmt: skip
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class Metrics:
    """Ledger's metrics, in a registry of its own (one per app; no process globals).

    Cost counters count nano-USD; Prometheus stores them as float64, exact up to 2**53
    nanos (about 9 million USD per series) — the ledger, not this, is the money record.
    """

    def __init__(self) -> None:
        self._children: dict[tuple[str, str, str, str], _RequestChildren] = {}
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "ledger_requests_total",
            "Requests recorded in the ledger.",
            ["team", "model", "status"],
            registry=self.registry,
        )
        self.cost = Counter(
            "ledger_cost_nanos_total",
            "Recorded cost in nano-USD (1e-9 USD).",
            ["team", "model"],
            registry=self.registry,
        )
        self.tokens = Counter(
            "ledger_tokens_total",
            "Recorded tokens by bucket.",
            ["team", "model", "bucket"],
            registry=self.registry,
        )
        self.added_latency = Histogram(
            "ledger_added_latency_seconds",
            "Ledger's own time per request, excluding the provider's.",
            ["endpoint"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "ledger_ledger_batch_size",
            "Ledger entries committed per transaction (group commit).",
            buckets=_BATCH_BUCKETS,
            registry=self.registry,
        )
        self.write_backlog = Gauge(
            "ledger_ledger_write_backlog",
            "Ledger entries not yet in the database (queued or journaled).",
            registry=self.registry,
            multiprocess_mode="livesum",
        )
        # Every process reads the same dead-letter table: the max is the count.
        self.entries_unstored = Gauge(
            "ledger_entries_unstored",
            "Ledger entries the database refused and that are in no ledger row yet "
            "(kept in ledger_dead_letters or the journal): an operator must act.",
            registry=self.registry,
            multiprocess_mode="max",
        )
        self.entries_salvaged = Gauge(
            "ledger_entries_salvaged",
            "Ledger entries the database refused, stored as a copy cut to fit the columns "
            "(the original is in ledger_dead_letters).",
            registry=self.registry,
            multiprocess_mode="max",
        )
        self.budget_utilisation = Gauge(
            "ledger_budget_utilisation_ratio",
            "Spent plus reserved over the limit, per budget, for the current period.",
            ["budget_id", "budget"],
            registry=self.registry,
            multiprocess_mode="max",
        )

    def observe_request(
        self,
        *,
        team: str,
        model: str,
        status: str,
        endpoint: str,
        cost_nanos: int,
        tokens: dict[str, int],
        added_seconds: float,
    ) -> None:
        """Count one recorded request (the gateway calls this once per ledger entry)."""
        children = self._children.get((team, model, status, endpoint))
        if children is None:
            # Looking a labelled child up takes a lock and a dict of tuples in
            # prometheus_client: done once per label set, not per request.
            children = _RequestChildren(
                requests=self.requests.labels(team, model, status),
                cost=self.cost.labels(team, model),
                tokens={b: self.tokens.labels(team, model, b) for b in TOKEN_BUCKETS},
                added_latency=self.added_latency.labels(endpoint),
            )
            if len(self._children) < _MAX_CACHED_LABEL_SETS:
                self._children[(team, model, status, endpoint)] = children
        children.requests.inc()
        if cost_nanos:
            children.cost.inc(cost_nanos)
        for bucket, count in tokens.items():
            if count:
                children.tokens[bucket].inc(count)
        children.added_latency.observe(added_seconds)

    def render(self) -> tuple[bytes, str]:
        """The exposition text; with several workers, the sum over all of them."""
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            registry = CollectorRegistry()
            MultiProcessCollector(registry)
            return generate_latest(registry), CONTENT_TYPE_LATEST
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


TOKEN_BUCKETS = ("input", "cache_read", "cache_write_5m", "cache_write_1h", "output")
_MAX_CACHED_LABEL_SETS = 10_000


@dataclass(frozen=True, slots=True)
class _RequestChildren:
    requests: Any
    cost: Any
    tokens: dict[str, Any]
    added_latency: Any


_encode_line = msgspec.json.Encoder(enc_hook=str).encode  # several times faster than json


class JsonFormatter(logging.Formatter):
    """One JSON object per line, with the request id when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        access: AccessRecord | None = getattr(record, "access", None)
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage() if access is None else access.summary(),
        }
        if access is not None:
            line.update(access.fields())  # its own request id, whatever the context says
        else:
            request_id = current_request_id.get()
            if request_id is not None:
                line["request_id"] = request_id
        if record.exc_info:
            line["error"] = record.exc_text or self.formatException(record.exc_info)
        return _encode_line(line).decode()


def configure_logging(level: str, fmt: str) -> None:
    """Send Ledger's and uvicorn's logs to stderr, as JSON lines or as plain text."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    # A line per request: what no line shows is not gathered for each (the caller's frame,
    # thread and process names cost more than the line's own fields).
    logging._srcfile = None  # type: ignore[attr-defined]  # the logging HOWTO's "Optimization"
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # APScheduler logs every run at INFO ("Running job …", "… executed successfully"):
    # Ledger's job runner says what each run did instead, at a level that fits it.
    logging.getLogger("apscheduler").setLevel(max(logging.WARNING, root.level))
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers[:] = []
        logger.propagate = True


def redact_logs(redactor: Redactor) -> None:
    """Cut ``redactor``'s secrets out of every log record from now on, whoever handles it.

    Done where records are made (the record factory) rather than in one handler: a record
    reaches every handler on its way up, the operator's and a test's included. Logging is
    process-wide, so this is too: each app adds its providers' keys.
    """
    if not redactor:
        return
    if not _log_redactors:
        previous = logging.getLogRecordFactory()

        def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
            record = previous(*args, **kwargs)
            _redact_record(record)
            return record

        logging.setLogRecordFactory(factory)
    _log_redactors.append(redactor)


_log_redactors: list[Redactor] = []


def _redact_record(record: logging.LogRecord) -> None:
    try:
        message = record.getMessage()
    except Exception:  # a malformed record is logging's to report, when it is emitted
        return
    clean = message
    for redactor in _log_redactors:
        clean = redactor.text(clean)
    if clean != message:
        record.msg, record.args = clean, None
    if record.exc_info and record.exc_info[0] is not None:
        # Formatted now so the traceback (an error's message may quote the provider) is
        # redacted too; formatters use exc_text when it is set.
        text = "".join(traceback.format_exception(*record.exc_info)).rstrip("\n")
        for redactor in _log_redactors:
            text = redactor.text(text)
        record.exc_text = text
