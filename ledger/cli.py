"""The ``ledger`` command."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from ledger.config import ConfigError, Settings, load_settings

T = TypeVar("T")


def _settings(ctx: click.Context) -> Settings:
    return ctx.obj["settings"]


def _run(coro_fn: Callable[[], Awaitable[T]]) -> T:
    """Run a command's coroutine; a domain error becomes a one-line message, not a traceback."""
    from ledger.errors import LedgerError
    from ledger.pricing import PriceError

    try:
        return asyncio.run(coro_fn())  # type: ignore[arg-type]
    except (LedgerError, PriceError) as exc:
        raise click.ClickException(str(exc)) from exc


@click.group()
@click.option("--config", "config_file", type=click.Path(dir_okay=False), help="TOML config file.")
@click.option("--database-url", help="Overrides LEDGER_DATABASE_URL.")
@click.pass_context
def main(ctx: click.Context, config_file: str | None, database_url: str | None) -> None:
    """Ledger: an LLM cost and token-accounting gateway."""
    try:
        settings = load_settings(config_file=config_file)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from exc
    if database_url:
        from ledger.config import normalise_database_url

        settings = settings.with_overrides(database_url=normalise_database_url(database_url))
    ctx.obj = {"settings": settings}


@main.command()
@click.pass_context
def doctor(ctx: click.Context) -> None:
    """Check the config: settings, database, journal, providers, models, alert channels.

    Prints a table (check, status, detail, what to fix); exits 1 when any check FAILs.
    """
    from ledger.doctor import render, run_checks

    checks = asyncio.run(run_checks(ctx.obj["settings"]))
    click.echo(render(checks))
    if any(check.status == "FAIL" for check in checks):
        raise SystemExit(1)


@main.command()
@click.option("--host", default=None, help="Interface to bind (default 127.0.0.1).")
@click.option("--port", type=int, default=None, help="Port (default 8080).")
@click.option("--workers", type=int, default=None, help="Worker processes (default 1).")
@click.option("--no-migrate", is_flag=True, help="Do not upgrade the database schema on start.")
@click.option("--log-level", default=None, help="debug, info, warning, error.")
@click.option("--log-format", type=click.Choice(["json", "text"]), default=None)
@click.option(
    "--forwarded-allow-ips",
    default=None,
    help="Proxies whose X-Forwarded-For is believed (comma-separated); overrides "
    "LEDGER_TRUSTED_PROXIES. Default: none.",
)
@click.pass_context
def serve(
    ctx: click.Context,
    host: str | None,
    port: int | None,
    workers: int | None,
    no_migrate: bool,
    log_level: str | None,
    log_format: str | None,
    forwarded_allow_ips: str | None,
) -> None:
    """Run the gateway."""
    from ledger import serving
    from ledger.app import create_app
    from ledger.observability import configure_logging

    settings = _settings(ctx)
    settings = settings.with_overrides(
        host=host or settings.host,
        port=port or settings.port,
        workers=max(1, workers or settings.workers),
        migrate_on_start=settings.migrate_on_start and not no_migrate,
        log_level=(log_level or settings.log_level).upper(),
        log_format=log_format or settings.log_format,
        trusted_proxies=forwarded_allow_ips or settings.trusted_proxies,
    )
    configure_logging(settings.log_level, settings.log_format)
    _check_journal_directory(settings)
    click.echo(
        f"Ledger {_version()} on http://{settings.host}:{settings.port} "
        f"with {settings.workers} worker(s) (database: {_safe_url(settings.database_url)})",
        err=True,
    )
    # uvicorn stops gracefully on SIGTERM or Ctrl+C, then raises the signal again; a graceful
    # stop is a success, so that second signal ends the process with status 0.
    for stop_signal in (signal.SIGTERM, signal.SIGINT):
        signal.signal(stop_signal, _exit_cleanly)
    options: dict[str, Any] = {
        "host": settings.host,
        "port": settings.port,
        "log_level": settings.log_level.lower(),
        "log_config": None,  # keep Ledger's logging configuration
        "access_log": False,
        "timeout_graceful_shutdown": 30,
    }
    if settings.workers == 1:
        serving.run(
            serving.server_config(create_app(settings, serving_process=True), settings, **options)
        )
        return
    # Several workers: prepare the database once here, then every worker skips it.
    _run(lambda: _prepare_for_workers(settings))
    _export_settings(settings)
    serving.run(
        serving.server_config(
            "ledger.app:app_from_environment",
            settings,
            factory=True,
            workers=settings.workers,
            **options,
        )
    )


def _check_journal_directory(settings: Settings) -> None:
    """Refuse to start, in one line, if the journal cannot be written (nothing is safe)."""
    from ledger.db.journal import JournalUnavailable, check_journal_directory, journal_directory

    try:
        check_journal_directory(journal_directory(settings.journal_dir, settings.database_url))
    except JournalUnavailable as exc:
        raise click.ClickException(str(exc)) from exc


async def _prepare_for_workers(settings: Settings) -> None:
    from ledger.admin.credentials import (
        admin_key_hashes,
        ensure_admin_key,
        hash_key,
        load_hash_secret,
    )
    from ledger.app import announce_admin_key
    from ledger.db.engine import create_engine
    from ledger.db.migrate import upgrade

    engine = create_engine(settings.database_url, null_pool=True)
    try:
        if settings.migrate_on_start:
            await upgrade(engine)
        secret = await load_hash_secret(engine, settings.secret_key)
        if not settings.admin_key:
            generated = await ensure_admin_key(engine, secret)
            hashes = await admin_key_hashes(engine)
            if generated is not None:
                hashes.add(hash_key(secret, generated))
            announce_admin_key(settings, generated, secret, hashes)
    finally:
        await engine.dispose()


def _export_settings(settings: Settings) -> None:
    """Hand the command line's choices to the worker processes through the environment."""
    import os
    import tempfile

    os.environ.update(
        {
            "LEDGER_DATABASE_URL": settings.database_url,
            "LEDGER_HOST": settings.host,
            "LEDGER_PORT": str(settings.port),
            "LEDGER_MIGRATE_ON_START": "false",
            "LEDGER_LOG_LEVEL": settings.log_level,
            "LEDGER_LOG_FORMAT": settings.log_format,
        }
    )
    if settings.config_file:
        os.environ["LEDGER_CONFIG"] = settings.config_file
    # Metrics of all workers are summed from files in one directory.
    os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", tempfile.mkdtemp(prefix="ledger-metrics-"))


# -- db ---------------------------------------------------------------------------------


@main.group()
def db() -> None:
    """Database schema."""


@db.command("upgrade")
@click.option("--revision", default="head")
@click.pass_context
def db_upgrade(ctx: click.Context, revision: str) -> None:
    """Upgrade the schema to the latest revision."""
    from ledger.db.engine import create_engine
    from ledger.db.migrate import current_revision, upgrade

    async def go() -> str | None:
        engine = create_engine(_settings(ctx).database_url, null_pool=True)
        try:
            await upgrade(engine, revision)
            return await current_revision(engine)
        finally:
            await engine.dispose()

    click.echo(f"database at revision {_run(go)}")


@db.command("current")
@click.pass_context
def db_current(ctx: click.Context) -> None:
    """Print the schema revision of the database and the latest one shipped."""
    from ledger.db.engine import create_engine
    from ledger.db.migrate import current_revision, head_revision

    async def go() -> str | None:
        engine = create_engine(_settings(ctx).database_url, null_pool=True)
        try:
            return await current_revision(engine)
        finally:
            await engine.dispose()

    current = _run(go)
    head = head_revision()
    state = "up to date" if current == head else "needs `ledger db upgrade`"
    click.echo(f"current: {current or '(empty database)'}\nhead: {head}\n{state}")


@db.command("dead-letters")
@click.option("--all", "show_all", is_flag=True, help="Include entries already written.")
@click.pass_context
def db_dead_letters(ctx: click.Context, show_all: bool) -> None:
    """List ledger entries the database refused (kept, never dropped), as JSON lines."""
    from ledger.db import dead_letters
    from ledger.db.engine import create_engine
    from ledger.db.migrate import upgrade

    states = [dead_letters.UNSTORED, dead_letters.SALVAGED]
    if show_all:
        states.append(dead_letters.WRITTEN)

    async def go() -> list[dead_letters.DeadLetter]:
        engine = create_engine(_settings(ctx).database_url, null_pool=True)
        try:
            await upgrade(engine)
            return await dead_letters.list_dead_letters(engine, states=states)
        finally:
            await engine.dispose()

    for letter in _run(go):
        click.echo(
            json.dumps(
                {
                    "request_id": letter.request_id,
                    "state": letter.state,
                    "attempts": letter.attempts,
                    "first_failed_at": letter.first_failed_at.isoformat(),
                    "last_failed_at": letter.last_failed_at.isoformat(),
                    "error": letter.error,
                    "changes": letter.changes,
                    "entry": json.loads(dead_letters.entry_as_text(letter.entry)),
                }
            )
        )


@db.command("retry-dead-letters")
@click.pass_context
def db_retry_dead_letters(ctx: click.Context) -> None:
    """Write the refused entries again (after fixing the cause); each lands exactly once."""
    from ledger.db.engine import create_engine
    from ledger.db.migrate import upgrade
    from ledger.db.writer import RetryReport, retry_dead_letters

    async def go() -> RetryReport:
        engine = create_engine(_settings(ctx).database_url, null_pool=True)
        try:
            await upgrade(engine)
            return await retry_dead_letters(engine)
        finally:
            await engine.dispose()

    report = _run(go)
    click.echo(
        f"written: {len(report.written)}, salvaged: {len(report.salvaged)}, "
        f"still refused: {len(report.refused)}"
    )
    if report.refused:
        ctx.exit(1)


# -- teams and keys ---------------------------------------------------------------------


async def _with_session(settings: Settings, fn: Callable[..., Awaitable[T]]) -> T:
    from ledger.admin.credentials import load_hash_secret
    from ledger.db.engine import create_engine, create_sessionmaker
    from ledger.db.migrate import upgrade

    engine = create_engine(settings.database_url, null_pool=True)
    try:
        await upgrade(engine)
        secret = await load_hash_secret(engine, settings.secret_key)
        async with create_sessionmaker(engine, writes=True).begin() as session:
            return await fn(session, secret)
    finally:
        await engine.dispose()


_ALLOWED_MODELS_HELP = "Comma-separated model name patterns it may use, e.g. 'gpt-4.1*,claude-*'."


@main.group()
def teams() -> None:
    """Teams."""


@teams.command("create")
@click.argument("name")
@click.option("--cost-centre", default=None)
@click.option("--allowed-models", default=None, help=_ALLOWED_MODELS_HELP)
@click.pass_context
def teams_create(
    ctx: click.Context, name: str, cost_centre: str | None, allowed_models: str | None
) -> None:
    """Create a team."""
    from ledger.admin import identity

    async def go(session: Any, _secret: bytes) -> Any:
        return await identity.create_team(
            session, name, cost_centre=cost_centre, allowed_models=allowed_models
        )

    team = _run(lambda: _with_session(_settings(ctx), go))
    click.echo(f"created team {team.name} (id {team.id})")


@teams.command("list")
@click.pass_context
def teams_list(ctx: click.Context) -> None:
    from ledger.admin import identity

    async def go(session: Any, _secret: bytes) -> Any:
        return await identity.list_teams(session)

    for team in _run(lambda: _with_session(_settings(ctx), go)):
        click.echo(f"{team.id}\t{team.name}\t{team.cost_centre or ''}")


@main.group()
def keys() -> None:
    """Client keys."""


@keys.command("create")
@click.option("--team", required=True)
@click.option("--name", default="default")
@click.option("--allowed-models", default=None, help=_ALLOWED_MODELS_HELP)
@click.pass_context
def keys_create(ctx: click.Context, team: str, name: str, allowed_models: str | None) -> None:
    """Create a key; it is printed once, alone on the last line."""
    from ledger.admin import identity

    async def go(session: Any, secret: bytes) -> Any:
        found = await identity.get_team_by_name(session, team)
        return await identity.create_key(session, secret, found, name, allowed_models)

    key, plaintext = _run(lambda: _with_session(_settings(ctx), go))
    click.echo(f"created key {key.id} ({key.prefix}…) for team {team}; it is shown only now:")
    click.echo(plaintext)


@keys.command("list")
@click.pass_context
def keys_list(ctx: click.Context) -> None:
    from ledger.admin import identity

    async def go(session: Any, _secret: bytes) -> Any:
        return await identity.list_keys(session)

    for key, team in _run(lambda: _with_session(_settings(ctx), go)):
        state = "revoked" if key.revoked_at else "active"
        click.echo(f"{key.id}\t{team}\t{key.name}\t{key.prefix}…\t{state}")


@keys.command("revoke")
@click.argument("key_id", type=int)
@click.pass_context
def keys_revoke(ctx: click.Context, key_id: int) -> None:
    from ledger.admin import identity

    async def go(session: Any, _secret: bytes) -> Any:
        return await identity.revoke_key(session, key_id)

    _run(lambda: _with_session(_settings(ctx), go))
    click.echo(f"revoked key {key_id}")


# -- prices -----------------------------------------------------------------------------


@main.group()
def prices() -> None:
    """Model prices."""


@prices.command("list")
@click.pass_context
def prices_list(ctx: click.Context) -> None:
    """Every price version: its source, tiers and the fees that can apply to it."""
    from ledger.db.engine import create_engine
    from ledger.db.migrate import upgrade
    from ledger.db.prices import list_prices, sync_prices
    from ledger.money import format_usd
    from ledger.pricing.prices import describe_fees

    settings = _settings(ctx)

    async def go() -> list[Any]:
        engine = create_engine(settings.database_url, null_pool=True)
        try:
            await upgrade(engine)
            await sync_prices(engine, settings.price_overrides)
            return await list_prices(engine)
        finally:
            await engine.dispose()

    click.echo(
        "model\teffective_from\torigin\tinput/1M\tcached/1M\toutput/1M\tprovider\tsource\ttiers"
        "\tfees"
    )
    for origin, price in _run(go):
        # Each tier: "above N tokens: input/output"; fees: service tiers, multipliers,
        # per-call tool fees and time-of-day windows that can apply (see describe_fees).
        tier_text = "; ".join(
            f">{t.threshold}: {format_usd(t.input)}/{format_usd(t.output)}" for t in price.tiers
        )
        click.echo(
            f"{price.model}\t{price.effective_from.date()}\t{origin}\t{format_usd(price.input)}\t"
            f"{format_usd(price.cached_input)}\t{format_usd(price.output)}\t{price.provider}\t"
            f"{price.source}\t{tier_text}\t{'; '.join(describe_fees(price))}"
        )


@prices.command("rerate")
@click.option("--model", required=True, help="The model whose entries are re-rated.")
@click.option("--since", required=True, help="Start, inclusive: an ISO date or date-time (UTC).")
@click.option("--until", required=True, help="End, exclusive: an ISO date or date-time (UTC).")
@click.pass_context
def prices_rerate(ctx: click.Context, model: str, since: str, until: str) -> None:
    """Price the model's entries again at the versions now in effect for their time.

    One adjustment entry per entry whose cost changes; running it twice writes nothing.
    """
    from ledger.db.engine import create_engine
    from ledger.db.migrate import upgrade
    from ledger.db.prices import load_registry, sync_prices
    from ledger.db.rerate import rerate
    from ledger.money import format_usd

    settings = _settings(ctx)
    start, end = _instant(since, "--since"), _instant(until, "--until")
    if end <= start:
        raise click.BadParameter("must be after --since", param_hint="--until")

    async def go() -> Any:
        engine = create_engine(settings.database_url, null_pool=True)
        try:
            await upgrade(engine)
            await sync_prices(engine, settings.price_overrides)
            registry = await load_registry(engine)
            return await rerate(engine, registry.price_at, model, start, end)
        finally:
            await engine.dispose()

    result = _run(go)
    click.echo(
        f"{result.entries} entries re-rated, difference {format_usd(result.difference_nanos)} USD"
        f" ({result.unchanged} unchanged, {result.without_price} without a price)"
    )


def _instant(text: str, param: str) -> Any:
    from datetime import UTC, date, datetime

    try:
        if len(text) == len("2025-01-01"):
            day = date.fromisoformat(text)
            return datetime(day.year, day.month, day.day, tzinfo=UTC)
        value = datetime.fromisoformat(text)
    except ValueError as exc:
        raise click.BadParameter(
            f"not an ISO date or date-time: {text!r}", param_hint=param
        ) from exc
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


@prices.command("import")
@click.argument("path", type=click.Path(exists=True, dir_okay=False))
@click.option("--dry-run", is_flag=True, help="Report what would change, write nothing.")
@click.pass_context
def prices_import(ctx: click.Context, path: str, dry_run: bool) -> None:
    """Import the community price-map JSON (per-token costs); reports added and changed prices."""
    from datetime import UTC, datetime

    from ledger.db.engine import create_engine
    from ledger.db.migrate import upgrade
    from ledger.db.prices import insert_prices, load_registry, sync_prices
    from ledger.pricing import PriceBook, PriceError, diff_prices, parse_price_map_text
    from ledger.pricing.price_map import refuse_untiered_replacements

    settings = _settings(ctx)
    now = datetime.now(UTC)
    try:
        result = parse_price_map_text(Path(path).read_text(encoding="utf-8"), effective_from=now)
    except PriceError as exc:
        raise click.ClickException(f"{path}: {exc}") from exc

    async def go() -> Any:
        engine = create_engine(settings.database_url, null_pool=True)
        try:
            await upgrade(engine)
            await sync_prices(engine, settings.price_overrides)
            registry = await load_registry(engine)
            # One price per model: two names (a model and its alias) can share one.
            in_effect = (registry.price_at(m, now) for m in registry.models())
            current = PriceBook({p.model: p for p in in_effect if p}.values())
            diff = diff_prices(current, result.prices, now)
            changed, kept_tiers = refuse_untiered_replacements(diff.changed)
            result.refused.extend(kept_tiers)
            diff = diff._replace(changed=changed)
            if not dry_run:
                to_write = [(p, "import") for p in diff.added] + [
                    (new, "import") for _, new in diff.changed
                ]
                async with engine.begin() as connection:
                    await insert_prices(connection, to_write, replace=True)
            return diff
        finally:
            await engine.dispose()

    diff = _run(go)
    for price in diff.added:
        click.echo(f"added    {price.model}")
    for _old, new in diff.changed:
        click.echo(f"changed  {new.model}")
    for name, reason in result.refused:
        click.echo(f"refused  {name}: {reason}")
    for name, price_field, written, kept in result.rounded:
        click.echo(f"rounded  {name}: {price_field} {written} per token -> ${kept} per million")
    click.echo(
        f"{len(diff.added)} added, {len(diff.changed)} changed, {len(diff.unchanged)} unchanged, "
        f"{len(result.refused)} refused, {len(result.skipped)} skipped"
        + (f", {len(result.rounded)} rounded to the nano per million" if result.rounded else "")
        + (" (dry run: nothing written)" if dry_run else "")
    )


@prices.command("sync")
@click.option(
    "--from",
    "data_path",
    type=click.Path(exists=True, dir_okay=False),
    help="A genai-prices data file (its data.json) instead of the installed package's data.",
)
@click.option("--accept-lower", is_flag=True, help="Apply prices lower than the stored ones.")
@click.option("--dry-run", is_flag=True, help="Show the diff, write nothing.")
@click.pass_context
def prices_sync(
    ctx: click.Context, data_path: str | None, accept_lower: bool, dry_run: bool
) -> None:
    """Refresh genai-prices' catalog rows from the installed package or a data file.

    Prints what changed per provider (added, raised, lowered, removed; USD per million).
    A lower price is refused, and nothing written, unless --accept-lower. A change is a
    new price version from now (or the data's later start date): entries already
    recorded keep the version they were priced at. Nothing is downloaded: to refresh,
    `pip install -U genai-prices` first, or pass a data file.
    """
    from datetime import UTC, datetime

    from ledger.db.engine import create_engine
    from ledger.db.migrate import upgrade
    from ledger.db.prices import (
        apply_catalog_refresh,
        installed_catalog,
        plan_catalog_refresh,
        sync_prices,
    )
    from ledger.pricing.genai import installed_version, load_providers, materialise

    settings = _settings(ctx)
    now = datetime.now(UTC)
    if data_path is None:
        catalog = installed_catalog()
    else:
        source = f"genai-prices data file {Path(data_path).name}"
        catalog = _run_sync(lambda: materialise(load_providers(data_path), source))

    async def plan() -> Any:
        engine = create_engine(settings.database_url, null_pool=True)
        try:
            await upgrade(engine)
            await sync_prices(engine, settings.price_overrides)
            return await plan_catalog_refresh(engine, catalog, now)
        finally:
            await engine.dispose()

    diff = _run(plan)
    click.echo(
        f"genai-prices: {catalog.version if data_path else 'installed ' + installed_version()}"
    )
    for provider in sorted({change.provider for change in diff.changes}):
        click.echo(provider)
        for change in diff.changes:
            if change.provider == provider:
                click.echo(f"  {change.kind:<8} {change.model}{_change_text(change)}")
    if diff.absent_providers:
        absent = ", ".join(f"{p} ({n})" for p, n in sorted(diff.absent_providers.items()))
        click.echo(f"not in the data, their models keep their prices: {absent}")
    for name in catalog.rounded:
        click.echo(f"rounded  {name}")
    for name, reason in catalog.refused:
        click.echo(f"refused  {name}: {reason}")
    counts = {kind: len(diff.of(kind)) for kind in ("added", "raised", "lowered", "removed")}
    click.echo(
        f"{counts['added']} added, {counts['raised']} raised, {counts['lowered']} lowered, "
        f"{counts['removed']} removed (kept, still priced), {diff.unchanged} unchanged"
        + (" (dry run: nothing written)" if dry_run else "")
    )
    lowered = diff.of("lowered")
    if lowered and not accept_lower and not dry_run:
        names = ", ".join(f"{c.provider}/{c.model}" for c in lowered)
        raise click.ClickException(
            f"lower prices refused, nothing written: {names}; "
            "run again with --accept-lower to apply them"
        )
    if dry_run:
        return

    async def apply() -> int:
        engine = create_engine(settings.database_url, null_pool=True)
        try:
            return await apply_catalog_refresh(engine, diff)
        finally:
            await engine.dispose()

    written = _run(apply)
    click.echo(f"{written} price versions written, effective {now.isoformat()} or later")


def _change_text(change: Any) -> str:
    from ledger.money import format_usd

    def usd(nanos: int) -> str:
        text = format_usd(nanos).rstrip("0")
        return text + "00" if text.endswith(".") else text

    if change.kind == "added":
        price = change.new[-1]
        return f": input ${usd(price.input)}, output ${usd(price.output)} per million"
    if change.kind == "removed":
        return ""
    shown = [
        f"{name} ${usd(old)} -> ${usd(new)}"
        if name != "charged"
        else f"{'charged' if new else 'free'}"
        for name, old, new in change.rates()
    ]
    start = change.new[0].effective_from.date()
    return f": {', '.join(shown)} per million (from {start})"


def _run_sync(fn: Callable[[], T]) -> T:
    from ledger.pricing import PriceError

    try:
        return fn()
    except PriceError as exc:
        raise click.ClickException(str(exc)) from exc


# -- budgets and the scheduler ------------------------------------------------------------


async def _with_engine(settings: Settings, fn: Callable[[Any], Awaitable[T]]) -> T:
    from ledger.db.migrate import with_migrated_engine

    return await with_migrated_engine(settings.database_url, fn)


@main.group()
def budgets() -> None:
    """Budgets: hard limits and alerts per team, key, user, model, tag or the organisation."""


@budgets.command("create")
@click.option("--team", help="Team name (team, user and model budgets).")
@click.option("--key-id", type=int, help="Key id (key budgets).")
@click.option("--user", help="End user (user budgets, with --team).")
@click.option("--model", help="Model (model budgets, with --team).")
@click.option("--tag", help="Tag (tag budgets).")
@click.option("--org", is_flag=True, help="A budget for the whole organisation.")
@click.option("--limit", "limit_usd", required=True, help="Limit in USD, e.g. 500 or 12.50.")
@click.option(
    "--period",
    type=click.Choice(["daily", "weekly", "monthly", "quarterly", "none"]),
    default="monthly",
)
@click.option("--timezone", default="UTC", help="IANA zone the period follows.")
@click.option("--mode", type=click.Choice(["hard", "soft"]), default="hard")
@click.option("--thresholds", default="50,80,100", help="Alert thresholds in percent.")
@click.option("--name", default=None)
@click.option("--clamp-max-tokens", is_flag=True, help="Clamp max_tokens instead of refusing.")
@click.pass_context
def budgets_create(ctx: click.Context, **options: Any) -> None:
    """Create a budget, e.g. `ledger budgets create --team research --limit 500`."""
    from ledger.budgets import admin
    from ledger.db.engine import write_transaction
    from ledger.money import format_usd

    data: dict[str, Any] = {
        "limit_usd": options["limit_usd"],
        "period": options["period"],
        "timezone": options["timezone"],
        "mode": options["mode"],
        "thresholds": [int(t) for t in options["thresholds"].split(",") if t.strip()],
        "clamp_max_tokens": options["clamp_max_tokens"],
    }
    for option, field in (("team", "team"), ("key_id", "key_id"), ("user", "user"),
                          ("model", "model"), ("tag", "tag"), ("name", "name")):  # fmt: skip
        if options[option] is not None:
            data[field] = options[option]
    if options["org"]:
        data["scope"] = "org"

    async def go(engine: Any) -> Any:
        async with write_transaction(engine) as connection:
            return await admin.create_budget(connection, data)

    rule = _run(lambda: _with_engine(_settings(ctx), go))
    click.echo(
        f"created budget {rule.id}: {rule.name} — {rule.mode} limit ${format_usd(rule.limit_nanos)} "
        f"{rule.period} ({rule.timezone})"
    )


@budgets.command("list")
@click.pass_context
def budgets_list(ctx: click.Context) -> None:
    """Every budget with its current period's spend."""
    from datetime import UTC, datetime

    from ledger.budgets import admin
    from ledger.budgets.store import load_rules
    from ledger.money import format_usd

    async def go(engine: Any) -> Any:
        async with engine.connect() as connection:
            rules = await load_rules(connection)
            now = datetime.now(UTC)
            return [await admin.budget_status(connection, rule, now) for rule in rules]

    rows = [
        (
            str(s.rule.id), s.rule.name, s.rule.mode, s.rule.period,
            format_usd(s.rule.limit_nanos), format_usd(s.spent),
            format_usd(s.reserved), format_usd(s.remaining),
            "yes" if s.blocked else "",
        )
        for s in _run(lambda: _with_engine(_settings(ctx), go))
    ]  # fmt: skip
    _table(
        ("id", "name", "mode", "period", "limit", "spent", "reserved", "remaining", "blocked"), rows
    )


@budgets.command("check")
@click.pass_context
def budgets_check(ctx: click.Context) -> None:
    """Run the scheduled budget checks once (release, recompute, alert, block) and print them."""
    from ledger.budgets.alerts import deliver_pending
    from ledger.budgets.checks import check_budgets, release_expired_reservations
    from ledger.budgets.periods import zone
    from ledger.money import format_usd

    settings = _settings(ctx)

    async def go(engine: Any) -> Any:
        released = await release_expired_reservations(engine)
        checks = await check_budgets(engine, settings.alert_channels)
        delivered = await deliver_pending(engine, settings.alert_channels)
        return released, checks, delivered

    released, checks, delivered = _run(lambda: _with_engine(settings, go))
    rows = [
        (
            str(c.rule.id), c.rule.name, c.rule.period,
            c.period_start.astimezone(zone(c.rule.timezone)).date().isoformat(),
            format_usd(c.rule.limit_nanos), format_usd(c.spent), format_usd(c.reserved),
            format_usd(c.drift), "yes" if c.blocked else "", ", ".join(c.alerts),
        )
        for c in checks
    ]  # fmt: skip
    _table(
        ("id", "name", "period", "from", "limit", "spent", "reserved", "drift", "blocked",
         "new alerts"),
        rows,
    )  # fmt: skip
    click.echo(f"{released} expired reservation(s) released; {delivered} alert delivery(ies) made")


@main.command()
@click.pass_context
def scheduler(ctx: click.Context) -> None:
    """Run only the scheduled jobs (no HTTP), e.g. on a separate host."""
    from ledger.scheduler import LedgerScheduler, ledger_jobs

    settings = _settings(ctx)
    logging.basicConfig(level=settings.log_level, format="%(levelname)s %(name)s: %(message)s")

    async def go(engine: Any) -> None:
        jobs = LedgerScheduler(engine, ledger_jobs(engine, settings))
        jobs.start()
        click.echo(f"scheduler running as {jobs.owner}; Ctrl-C to stop", err=True)
        stopping = asyncio.Event()
        loop = asyncio.get_running_loop()
        for stop_signal in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(stop_signal, stopping.set)
        try:
            await stopping.wait()
        finally:
            await jobs.stop()  # let a job in flight finish rather than cancel it half way

    with contextlib.suppress(KeyboardInterrupt):
        _run(lambda: _with_engine(settings, go))


def _table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> None:
    widths = [
        max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)
    ]
    click.echo("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)))
    for row in rows:
        click.echo("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)))


def _exit_cleanly(_signum: int, _frame: Any) -> None:
    raise SystemExit(0)


def _version() -> str:
    from ledger import __version__

    return __version__


def _safe_url(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def _register_subcommands() -> None:
    from ledger.reports.cli import register

    register(main)


_register_subcommands()

if __name__ == "__main__":
    main()


@main.command("reconcile")
@click.argument("month")
@click.option("--provider", default=None, help="Only this provider.")
@click.option("--refresh", is_flag=True, help="Pull the providers' reports first.")
@click.option("--format", "fmt", type=click.Choice(["text", "json", "csv"]), default="text")
@click.pass_context
def reconcile(
    ctx: click.Context, month: str, provider: str | None, refresh: bool, fmt: str
) -> None:
    """Ledger's month beside the providers' own usage and cost reports (provider minus Ledger)."""
    from ledger.db.engine import create_engine
    from ledger.providers.admin_reports import ReportUnavailable
    from ledger.reports import reconciliation
    from ledger.reports.months import InvalidMonth

    settings = _settings(ctx)

    async def go() -> dict[str, Any]:
        engine = create_engine(settings.database_url, null_pool=True)
        try:
            if refresh:
                await reconciliation.refresh(engine, settings, month, provider)
            return await reconciliation.reconciliation(engine, settings, month, provider)
        finally:
            await engine.dispose()

    try:
        report = _run(go)
    except (InvalidMonth, ReportUnavailable) as exc:
        raise click.ClickException(str(exc)) from exc
    except KeyError as exc:
        raise click.ClickException(f"no provider {provider!r} with an admin key") from exc
    if fmt == "json":
        click.echo(json.dumps(report, indent=2))
    elif fmt == "csv":
        click.echo(reconciliation.to_csv(report), nl=False)
    else:
        click.echo(reconciliation.to_text(report), nl=False)
