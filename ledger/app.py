"""The application factory: ``create_app(settings)`` wires everything the lifespan owns."""

from __future__ import annotations

import asyncio
import gc
import hmac
import logging
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from typing import Any

import anyio
from litestar import Litestar, MediaType, Request, Response, get
from litestar.datastructures import State
from litestar.di import Provide
from litestar.exceptions import HTTPException, ValidationException
from litestar.openapi.config import OpenAPIConfig
from litestar.openapi.datastructures import ResponseSpec
from litestar.openapi.plugins import ScalarRenderPlugin
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from ledger import __version__
from ledger.admin.credentials import (
    admin_key_file,
    admin_key_hashes,
    ensure_admin_key,
    hash_key,
    load_hash_secret,
    read_admin_key_file,
    write_admin_key_file,
)
from ledger.admin.identity import Authenticator
from ledger.admin.routes import AdminController
from ledger.budgets.guard import BudgetGuard
from ledger.budgets.routes import BudgetController
from ledger.config import Settings
from ledger.db import dead_letters
from ledger.db.engine import create_engine, create_sessionmaker, is_sqlite, is_sqlite_file
from ledger.db.journal import Journal, JournalUnavailable, journal_directory
from ledger.db.ledger import LedgerEntry
from ledger.db.migrate import current_revision, head_revision, upgrade
from ledger.db.partitions import ensure_partitions
from ledger.db.prices import LivePrices, sync_prices
from ledger.db.writer import LedgerWriter, is_outage, keep_refused, write_entries
from ledger.db.writer_process import ProcessWrites
from ledger.errors import AuthenticationFailed, InvalidRequest, LedgerError, NotFound
from ledger.gateway.lifecycle import Gateway
from ledger.gateway.routes import ROUTES as GATEWAY_ROUTES
from ledger.gateway.routing import ModelRouter
from ledger.http import AccessLog, credential_from_headers, error_response, protocol_for_path
from ledger.memory import keep_freed_memory_for_reuse
from ledger.observability import Metrics, redact_logs
from ledger.openapi import Readiness, errors
from ledger.providers import Provider, build_providers
from ledger.redaction import Redactor
from ledger.reports.routes import REPORT_ROUTES
from ledger.reports.usage import UsageController
from ledger.scheduler import LedgerScheduler, ledger_jobs
from ledger.tokens import O200K_BASE, encoding_name_for_model, get_encoding, loaded_encodings

logger = logging.getLogger("ledger")

PRICE_REFRESH_S = 30.0


@dataclass
class Services:
    """What the lifespan builds and the routes use; one per app, no module globals."""

    settings: Settings
    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    authenticator: Authenticator
    prices: LivePrices
    router: ModelRouter
    providers: dict[str, Provider]
    writer: LedgerWriter
    journal: Journal
    budgets: BudgetGuard
    gateway: Gateway
    metrics: Metrics
    read_sessions: async_sessionmaker[AsyncSession]


async def start_services(settings: Settings, *, announce: bool = True) -> Services:
    """Open the database, migrate, load prices and keys, start the ledger writer."""
    engine = create_engine(
        settings.database_url,
        pool_size=settings.db_pool_size,
        statement_cache_size=settings.pg_statement_cache_size,
    )
    if settings.migrate_on_start:
        await upgrade(engine)
    await ensure_partitions(engine)
    secret = await load_hash_secret(engine, settings.secret_key)
    admin_hashes = await admin_key_hashes(engine)
    if settings.admin_key:
        admin_hashes.add(hash_key(secret, settings.admin_key))
    else:
        generated = await ensure_admin_key(engine, secret)
        if generated is not None:
            admin_hashes.add(hash_key(secret, generated))
        if announce:
            announce_admin_key(settings, generated, secret, admin_hashes)
    await sync_prices(engine, settings.price_overrides)
    prices = LivePrices(engine)
    await prices.reload()
    providers = build_providers(settings)
    # A provider may echo its key in an error: cut every configured key out of what is
    # relayed, stored and logged.
    redactor = Redactor(provider.api_key for provider in settings.providers)
    redact_logs(redactor)
    if announce and settings.uses_mock_provider:
        _warn(
            "No providers are configured: every catalog model is served by the built-in MOCK "
            "provider (deterministic replies, no real model). Configure [[providers]] to proxy "
            "real APIs."
        )
    sessions = create_sessionmaker(engine, writes=True)
    primary_reads = create_sessionmaker(engine)  # lock-free reads of the primary
    read_sessions = primary_reads
    if settings.reports_database_url:
        replica = create_engine(settings.reports_database_url, pool_size=settings.db_pool_size)
        read_sessions = create_sessionmaker(replica)
    # Keys are checked on the primary: a replica's lag would let a revoked key through.
    authenticator = Authenticator(
        primary_reads, secret, admin_hashes, ttl_s=settings.key_cache_ttl_s
    )
    router = ModelRouter(settings, providers, prices)
    budgets = BudgetGuard(
        engine,
        reservation_ttl_s=settings.reservation_ttl_s,
        db_timeout_s=settings.budget_db_timeout_s,
    )
    journal = Journal(journal_directory(settings.journal_dir, settings.database_url), budgets.owner)
    try:
        journal.open()
    except JournalUnavailable as exc:
        logger.error("Ledger cannot start: %s", exc)  # one line, before any traceback
        await engine.dispose()
        raise
    unkept = await recover_journals(engine, journal)
    metrics = Metrics()
    writer = LedgerWriter(
        engine,
        max_batch=settings.ledger_batch_max,
        journal=journal,
        on_commit=metrics.batch_size.observe,
        writes=ProcessWrites(settings.database_url) if _writer_process(settings) else None,
    )
    writer.keep_unstored(unkept)
    writer.start()
    await budgets.start()
    gateway = Gateway(
        authenticator=authenticator,
        router=router,
        prices=prices,
        writer=writer,
        budgets=budgets,
        default_max_output_tokens=settings.default_max_output_tokens,
        responses_context_bound_tokens=settings.responses_context_bound_tokens,
        metrics=metrics,
        max_body_bytes=settings.max_body_bytes,
        max_event_bytes=settings.max_event_bytes,
        redactor=redactor,
        body_read_timeout_s=settings.body_read_timeout_s,
    )
    return Services(
        settings, engine, sessions, authenticator, prices, router, providers, writer, journal,
        budgets, gateway, metrics, read_sessions,
    )  # fmt: skip


def encodings_to_warm(settings: Settings, router: ModelRouter) -> set[str]:
    """The encodings to build before serving: those the first requests will need.

    o200k_base always (every current OpenAI model, and Anthropic's local estimate), plus
    the encoding of each OpenAI model configured in ``[[models]]``. A legacy catalog model
    served without ``[[models]]`` (gpt-3.5, gpt-4-turbo: cl100k_base) still builds its
    encoding on first use: building it for every server would cost each ~23 MB of memory.
    """
    names = {O200K_BASE}
    if settings.models:
        for route in router.models():
            if route.provider.speaks("openai"):
                names.add(encoding_name_for_model(route.upstream_model))
    return names


def _writer_process(settings: Settings) -> bool:
    # An in-memory SQLite database exists only inside this process.
    return settings.writer_process and (
        is_sqlite_file(settings.database_url) or not is_sqlite(settings.database_url)
    )


async def stop_services(services: Services) -> None:
    # Requests cut at the server's shutdown deadline are still recording their entries.
    left = await services.gateway.drain(timeout_s=10.0)
    if left:
        logger.error("%d requests were still unrecorded at shutdown; see the journal", left)
    await services.writer.stop()
    await services.budgets.stop()
    services.journal.close()
    for provider in services.providers.values():
        await provider.transport.aclose()
    await services.engine.dispose()
    replica = services.read_sessions.kw["bind"]
    if replica is not services.engine:
        await replica.dispose()


async def recover_journals(engine: AsyncEngine, journal: Journal) -> list[LedgerEntry]:
    """Write what dead processes' journals still owe the ledger, then drop those journals.

    An entry the database refuses is kept (salvaged, dead-lettered); one that even the
    dead-letter table refuses is returned, for this process's writer to hold and retry.
    """
    recovered = journal.take_over_orphans()
    entries = recovered.pending + recovered.interrupted
    unkept: list[LedgerEntry] = []
    if entries:
        try:
            written = await write_entries(engine, entries)
        except Exception as exc:
            if is_outage(exc):
                raise
            # One entry the database refuses must not keep Ledger from starting.
            written = []
            for entry in entries:
                try:
                    written += await write_entries(engine, [entry])
                except Exception as single:
                    if is_outage(single):
                        raise
                    error = f"{type(single).__name__}: {single}"[:2000]
                    try:
                        state, _ = await keep_refused(engine, entry, error)
                    except Exception as failure:
                        if is_outage(failure):
                            raise
                        unkept.append(entry)
                        state = "the journal"
                    logger.error(
                        "journaled entry %s was refused by the database (%s): kept, not "
                        "dropped (%s)", entry.request_id, error, state,
                    )  # fmt: skip
        logger.warning(
            "recovered %d ledger entries from the journal (%d interrupted requests)",
            len(written), len(recovered.interrupted),
        )  # fmt: skip
    Journal.remove(recovered.files)
    return unkept


SERVING_SWITCH_INTERVAL_S = 0.001


def create_app(
    settings: Settings, *, announce: bool = True, serving_process: bool = False
) -> Litestar:
    """Build the Ledger application for ``settings``.

    ``serving_process`` is for a process that serves this one app for its whole life
    (``ledger serve``), which is then tuned for it once the services have started:

    - everything alive is moved out of the cyclic collector's sight, so its full
      collections scan only what requests create (on a fresh process they scanned about
      a million start-up objects, a pause of ~100 ms);
    - the interpreter's switch interval drops from 5 ms to 1 ms: when the event loop
      lets go of the GIL (a tokenizer call, a write), the ledger writer's thread may
      take it, and the loop waited up to the whole interval to get it back;
    - the C allocator keeps freed multi-megabyte buffers for reuse
      (:func:`ledger.memory.keep_freed_memory_for_reuse`): a large prompt's body no
      longer costs thousands of page faults on the event loop.
    """
    holder: dict[str, Services] = {}

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        # What the first request would otherwise wait for is ready before the server
        # accepts it: the encodings (a few hundred ms each, built in a thread while the
        # database is opened) and the key lookup's compiled query.
        loop = asyncio.get_running_loop()
        warming = [loop.run_in_executor(None, get_encoding, O200K_BASE)]
        services = await start_services(settings, announce=announce)
        for name in encodings_to_warm(settings, services.router) - {O200K_BASE}:
            warming.append(loop.run_in_executor(None, get_encoding, name))
        await services.authenticator.warm()
        await asyncio.gather(*warming)
        holder["services"] = services
        app.state["services"] = services
        refresher = asyncio.create_task(_refresh_prices(services.prices))
        scheduler = None
        if settings.scheduler:
            scheduler = LedgerScheduler(services.engine, ledger_jobs(services.engine, settings))
            scheduler.start()
        if serving_process:
            gc.collect()
            gc.freeze()
            sys.setswitchinterval(SERVING_SWITCH_INTERVAL_S)
            keep_freed_memory_for_reuse()
        try:
            yield
        finally:
            if scheduler is not None:
                await scheduler.stop()  # a job in flight finishes before the engine closes
            refresher.cancel()
            with suppress(asyncio.CancelledError):
                await refresher
            await stop_services(services)

    def service(name: str) -> Provide:
        return Provide(lambda: getattr(holder["services"], name), sync_to_thread=False)

    app = Litestar(
        route_handlers=[
            *GATEWAY_ROUTES,
            AdminController,
            BudgetController,
            UsageController,
            *REPORT_ROUTES,
            healthz,
            readyz,
            metrics_endpoint,
        ],
        lifespan=[lifespan],
        dependencies={
            "gateway": service("gateway"),
            "router": service("router"),
            "sessions": service("sessions"),
            "read_sessions": service("read_sessions"),
            "authenticator": service("authenticator"),
            "prices": service("prices"),
            "engine": service("engine"),
            "budgets": service("budgets"),
            "services": Provide(lambda: holder["services"], sync_to_thread=False),
        },
        exception_handlers={Exception: _render_exception},
        state=State({"settings": settings}),
        openapi_config=OpenAPIConfig(
            title="Ledger",
            version=__version__,
            description="LLM cost and token-accounting gateway.",
            path="/schema",
            render_plugins=[ScalarRenderPlugin()],
        ),
        request_max_body_size=settings.max_body_bytes,
        debug=False,
        # Logging is configured once, by `ledger serve` (configure_logging): Litestar's own
        # default would replace it, level and JSON format included, when the app is built.
        logging_config=None,
    )
    # Around Litestar's whole handler (exception handling and routing included), not as a
    # route middleware: an unrouted 404 gets its access line too.
    app.asgi_handler = AccessLog(app.asgi_handler)
    return app


@get("/healthz", operation_id="healthz", tags=["ops"], media_type=MediaType.JSON)
async def healthz() -> dict[str, str]:
    """The process is up."""
    return {"status": "ok"}


@get(
    "/readyz",
    operation_id="readyz",
    tags=["ops"],
    media_type=MediaType.JSON,
    responses={
        200: ResponseSpec(Readiness, description="Ready.", generate_examples=False),
        503: ResponseSpec(Readiness, description="Not ready.", generate_examples=False),
    },
)
async def readyz(services: Services) -> Response[dict[str, Any]]:
    """Ready to serve: the database answers, the schema is current, the ledger is caught up.

    ``encodings`` lists the tokenizer encodings already built (at start-up, before serving).
    """
    checks: dict[str, Any] = {
        "ledger_backlog": services.writer.backlog,
        "encodings": loaded_encodings(),  # built before the first request, not by it
    }
    ready = True
    try:
        with anyio.fail_after(2.0):
            revision = await current_revision(services.engine)
        checks["database"] = "ok"
        checks["migrations"] = "current" if revision == head_revision() else f"at {revision}"
        ready = revision == head_revision()
    except Exception as exc:
        checks["database"] = f"unreachable ({type(exc).__name__})"
        ready = False
    if not services.writer.database_available:
        checks["ledger_writes"] = "journaling: the database refused the last write"
        ready = False
    unstored, salvaged = await _refused_entries(services, ask=checks["database"] == "ok")
    checks["ledger_unstored"] = unstored
    checks["ledger_salvaged"] = salvaged
    status = "ready" if ready else "not ready"
    if ready and unstored:
        # Still serving (every process shares the database: a 503 here would take them
        # all out of rotation over one entry), but never silently "ready".
        status = "degraded"
        checks["ledger_writes"] = (
            f"{unstored} ledger entries refused by the database are kept unstored: see "
            "`ledger db dead-letters`, fix the cause, run `ledger db retry-dead-letters`"
        )
    return Response({"status": status, **checks}, status_code=200 if ready else 503)


async def _refused_entries(services: Services, *, ask: bool = True) -> tuple[int, int]:
    """Entries the database refused: (not in the ledger, in it as a salvaged copy)."""
    unstored = services.writer.unstored  # kept in this process's journal only
    if not ask:  # the database did not answer just now: no second wait for it
        return unstored, 0
    try:
        with anyio.fail_after(2.0):
            by_state = await dead_letters.counts(services.engine)
    except Exception:  # the database (or the table, before migrating) is not there
        return unstored, 0
    return unstored + by_state.get(dead_letters.UNSTORED, 0), by_state.get(dead_letters.SALVAGED, 0)


@get(
    "/metrics",
    operation_id="metrics",
    tags=["ops"],
    media_type=MediaType.TEXT,
    responses=errors("openai", 401),
)
async def metrics_endpoint(request: Request[Any, Any, Any], services: Services) -> Response[bytes]:
    """Prometheus metrics: spend by team is not public, so a token (or the admin key) is needed."""
    presented = credential_from_headers(request) or ""
    token = services.settings.metrics_token
    allowed = (token is not None and hmac.compare_digest(presented.encode(), token.encode())) or (
        services.authenticator.is_admin_key(presented)
    )
    if not allowed:
        return error_response(
            AuthenticationFailed("Send LEDGER_METRICS_TOKEN (or the admin key) as a bearer token.")
        )
    metrics = services.metrics
    metrics.write_backlog.set(services.writer.backlog)
    unstored, salvaged = await _refused_entries(services)
    metrics.entries_unstored.set(unstored)
    metrics.entries_salvaged.set(salvaged)
    for rule, used in services.budgets.utilisation():
        metrics.budget_utilisation.labels(str(rule.id), rule.name).set(used)
    body, content_type = metrics.render()
    return Response(body, media_type=content_type)


async def _refresh_prices(prices: LivePrices) -> None:
    # Prices changed through another process's admin API reach this one within the period.
    while True:
        await asyncio.sleep(PRICE_REFRESH_S)
        try:
            await prices.reload()
        except Exception:
            logger.exception("could not reload prices")


def _render_exception(request: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
    """One place that turns any error into the caller's protocol; never a stack trace."""
    protocol = protocol_for_path(request.url.path)
    if isinstance(exc, LedgerError):
        return error_response(exc, protocol)
    if isinstance(exc, ValidationException):
        details = "; ".join(
            f"{e.get('key') or 'body'}: {e.get('message')}"
            for e in (exc.extra if isinstance(exc.extra, list) else [])
            if isinstance(e, dict)
        )
        return error_response(InvalidRequest(details or exc.detail), protocol)
    if isinstance(exc, HTTPException):
        if exc.status_code == 404:
            return error_response(NotFound(f"No route for {request.url.path}"), protocol)
        error = LedgerError(exc.detail, status=exc.status_code, code="http_error")
        if exc.status_code < 500:
            error.openai_type = error.anthropic_type = "invalid_request_error"
        return error_response(error, protocol)
    if _is_unstorable_value(exc):
        # e.g. a NUL character, which PostgreSQL text cannot hold: the caller's value, not us.
        return error_response(
            InvalidRequest("A value in the request cannot be stored or compared."), protocol
        )
    logger.exception("unexpected error on %s", request.url.path)
    return error_response(
        LedgerError("Ledger hit an internal error; the request was not completed."), protocol
    )


def _is_unstorable_value(exc: Exception) -> bool:
    """A database "data exception" (SQLSTATE class 22) or an integer beyond 64 bits."""
    if isinstance(exc, DBAPIError):
        sqlstate = getattr(exc.orig, "sqlstate", None)
        return isinstance(sqlstate, str) and sqlstate.startswith("22")
    return isinstance(exc, OverflowError)


def app_from_environment() -> Litestar:
    """The app for one of several workers: settings from the environment ``ledger serve`` set."""
    from ledger.config import load_settings
    from ledger.observability import configure_logging

    settings = load_settings()
    configure_logging(settings.log_level, settings.log_format)
    return create_app(settings, serving_process=True)


def announce_admin_key(
    settings: Settings, generated: str | None, secret: bytes, admin_hashes: set[str]
) -> None:
    """Keep a generated admin key in its 0600 file and say where; never in the log stream.

    The key itself reaches only the file and, when stderr is a terminal, that terminal:
    stderr is where the JSON log lines go, and wherever it is collected, a key among them
    would be stored with them. On a restart the file is named again while its key works.
    """
    path = admin_key_file(settings.database_url, settings.journal_dir)
    if generated is None:
        kept = read_admin_key_file(path)
        if kept is not None and hash_key(secret, kept) in admin_hashes:
            logger.info("the admin key Ledger generated is in %s", path)
        return
    try:
        write_admin_key_file(path, generated)
    except OSError as exc:
        logger.error(
            "Ledger generated an admin key but could not write it to %s (%s); set "
            "LEDGER_ADMIN_KEY to an admin key of your own and restart",
            path, exc,
        )  # fmt: skip
    else:
        logger.warning(
            "Ledger generated an admin key and wrote it to %s (readable by its owner only); "
            "only its hash is in the database",
            path,
        )
    if sys.stderr.isatty():
        print(
            "\n  Ledger generated an admin key. It is shown once here, and kept in\n"
            f"  {path}:\n\n"
            f"      {generated}\n\n"
            "  Set LEDGER_ADMIN_KEY to use a key of your own instead.\n",
            file=sys.stderr,
            flush=True,
        )


def _warn(message: str) -> None:
    print(f"\nWARNING: {message}\n", file=sys.stderr, flush=True)
