"""The ``ledger`` command."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from ledger.config import ConfigError, Settings, load_settings

T = TypeVar("T")


def _settings(ctx: click.Context) -> Settings:
    return ctx.obj["settings"]


def _run(coro_fn: Callable[[], Awaitable[T]]) -> T:
    return asyncio.run(coro_fn())  # type: ignore[arg-type]


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
@click.option("--host", default=None, help="Interface to bind (default 127.0.0.1).")
@click.option("--port", type=int, default=None, help="Port (default 8080).")
@click.option("--no-migrate", is_flag=True, help="Do not upgrade the database schema on start.")
@click.option("--log-level", default=None, help="debug, info, warning, error.")
@click.pass_context
def serve(
    ctx: click.Context, host: str | None, port: int | None, no_migrate: bool, log_level: str | None
) -> None:
    """Run the gateway."""
    import uvicorn

    from ledger.app import create_app

    settings = _settings(ctx)
    settings = settings.with_overrides(
        host=host or settings.host,
        port=port or settings.port,
        migrate_on_start=settings.migrate_on_start and not no_migrate,
        log_level=(log_level or settings.log_level).upper(),
    )
    logging.basicConfig(level=settings.log_level, format="%(levelname)s %(name)s: %(message)s")
    click.echo(
        f"Ledger {_version()} on http://{settings.host}:{settings.port} "
        f"(database: {_safe_url(settings.database_url)})",
        err=True,
    )
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level.lower(),
        access_log=False,
        loop="auto",
        http="auto",
        timeout_graceful_shutdown=30,
    )


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


# -- teams and keys ---------------------------------------------------------------------


async def _with_session(settings: Settings, fn: Callable[..., Awaitable[T]]) -> T:
    from ledger.admin.credentials import load_hash_secret
    from ledger.db.engine import create_engine, create_sessionmaker
    from ledger.db.migrate import upgrade

    engine = create_engine(settings.database_url, null_pool=True)
    try:
        await upgrade(engine)
        secret = await load_hash_secret(engine, settings.secret_key)
        async with create_sessionmaker(engine).begin() as session:
            return await fn(session, secret)
    finally:
        await engine.dispose()


@main.group()
def teams() -> None:
    """Teams."""


@teams.command("create")
@click.argument("name")
@click.option("--cost-centre", default=None)
@click.pass_context
def teams_create(ctx: click.Context, name: str, cost_centre: str | None) -> None:
    """Create a team."""
    from ledger.admin import identity

    async def go(session: Any, _secret: bytes) -> Any:
        return await identity.create_team(session, name, cost_centre=cost_centre)

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
@click.pass_context
def keys_create(ctx: click.Context, team: str, name: str) -> None:
    """Create a key; it is printed once, alone on the last line."""
    from ledger.admin import identity

    async def go(session: Any, secret: bytes) -> Any:
        found = await identity.get_team_by_name(session, team)
        return await identity.create_key(session, secret, found, name)

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
    """Every price version known to the database."""
    from ledger.db.engine import create_engine
    from ledger.db.migrate import upgrade
    from ledger.db.prices import list_price_rows, sync_prices
    from ledger.money import format_usd

    settings = _settings(ctx)

    async def go() -> list[Any]:
        engine = create_engine(settings.database_url, null_pool=True)
        try:
            await upgrade(engine)
            await sync_prices(engine, settings.price_overrides)
            return await list_price_rows(engine)
        finally:
            await engine.dispose()

    click.echo("model\teffective_from\torigin\tinput/1M\tcached/1M\toutput/1M")
    for row in _run(go):
        click.echo(
            f"{row.model}\t{row.effective_from.date()}\t{row.origin}\t{format_usd(row.input)}\t"
            f"{format_usd(row.cached_input)}\t{format_usd(row.output)}"
        )


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
    from ledger.pricing import PriceBook, diff_prices, parse_price_map_text

    settings = _settings(ctx)
    now = datetime.now(UTC)
    result = parse_price_map_text(Path(path).read_text(encoding="utf-8"), effective_from=now)

    async def go() -> Any:
        engine = create_engine(settings.database_url, null_pool=True)
        try:
            await upgrade(engine)
            await sync_prices(engine, settings.price_overrides)
            registry = await load_registry(engine)
            current = PriceBook(
                [p for p in (registry.price_at(m, now) for m in registry.models()) if p]
            )
            diff = diff_prices(current, result.prices, now)
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
    click.echo(
        f"{len(diff.added)} added, {len(diff.changed)} changed, {len(diff.unchanged)} unchanged, "
        f"{len(result.refused)} refused, {len(result.skipped)} skipped"
        + (" (dry run: nothing written)" if dry_run else "")
    )


def _version() -> str:
    from ledger import __version__

    return __version__


def _safe_url(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def _print_json(data: Any) -> None:
    json.dump(data, sys.stdout, indent=2, default=str)
    sys.stdout.write("\n")


def _register_subcommands() -> None:
    from ledger.reports.cli import register

    register(main)


_register_subcommands()

if __name__ == "__main__":
    main()
