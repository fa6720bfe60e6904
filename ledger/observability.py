"""Prometheus metrics, structured JSON logs, and the request id every log line carries."""

from __future__ import annotations

import contextvars
import json
import logging
import os
import sys
import traceback
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.multiprocess import MultiProcessCollector

from ledger.redaction import Redactor

# The request being served, for log lines written anywhere below the lifecycle.
current_request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "ledger_request_id", default=None
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


class JsonFormatter(logging.Formatter):
    """One JSON object per line, with the request id when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        request_id = current_request_id.get()
        if request_id is not None:
            line["request_id"] = request_id
        if record.exc_info:
            line["error"] = record.exc_text or self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False)


def configure_logging(level: str, fmt: str) -> None:
    """Send Ledger's and uvicorn's logs to stderr, as JSON lines or as plain text."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
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
