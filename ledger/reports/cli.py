"""``ledger report``, ``ledger month`` and ``ledger demo``."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import click

from ledger.config import Settings

T = TypeVar("T")


def register(main: click.Group) -> None:
    """Attach the report commands to the ``ledger`` command group."""
    main.add_command(report)
    main.add_command(month)
    main.add_command(demo)


def _settings(ctx: click.Context) -> Settings:
    return ctx.obj["settings"]


def _with_engine(settings: Settings, fn: Callable[[Any], Awaitable[T]]) -> T:
    """Run ``fn(engine)`` on a migrated database, then dispose of the engine."""
    from ledger.db.migrate import with_migrated_engine

    return asyncio.run(with_migrated_engine(settings.database_url, fn))


@click.group()
def report() -> None:
    """Spend and finance reports."""


@report.command("monthly")
@click.argument("month_label", metavar="YYYY-MM")
@click.option(
    "--format", "fmt", type=click.Choice(["json", "csv", "xlsx"]), default="csv", show_default=True
)
@click.option("--output", "-o", type=click.Path(dir_okay=False), help="Write to a file.")
@click.pass_context
def report_monthly(ctx: click.Context, month_label: str, fmt: str, output: str | None) -> None:
    """The monthly finance report of a month in the reporting time zone.

    A closed month prints its frozen bytes. XLSX needs --output.
    """
    from ledger.reports.closing import monthly_report_file
    from ledger.reports.months import InvalidMonth

    settings = _settings(ctx)
    if fmt == "xlsx" and output is None:
        raise click.UsageError("XLSX is a binary file: pass --output report.xlsx")

    async def go(engine: Any) -> Any:
        async with engine.connect() as connection:
            return await monthly_report_file(
                connection, month_label, settings.reporting_timezone, fmt
            )

    try:
        result = _with_engine(settings, go)
    except InvalidMonth as exc:
        raise click.BadParameter(str(exc), param_hint="YYYY-MM") from exc
    if output:
        Path(output).write_bytes(result.content)
        state = "closed" if result.closed else "open"
        click.echo(f"wrote {output} ({state}, sha256 {result.sha256})", err=True)
    else:
        sys.stdout.buffer.write(result.content)
        sys.stdout.flush()


@report.command("focus")
@click.argument("month_label", metavar="YYYY-MM")
@click.option(
    "--format", "fmt", type=click.Choice(["csv", "parquet"]), default="csv", show_default=True
)
@click.option("--output", "-o", type=click.Path(dir_okay=False), help="Write to a file.")
@click.pass_context
def report_focus(ctx: click.Context, month_label: str, fmt: str, output: str | None) -> None:
    """The month's spend as FinOps FOCUS 1.2 rows; a closed month exports its frozen figures.

    Parquet needs --output.
    """
    from ledger.reports.focus import focus_file
    from ledger.reports.months import InvalidMonth

    settings = _settings(ctx)
    if fmt == "parquet" and output is None:
        raise click.UsageError("Parquet is a binary file: pass --output focus.parquet")

    async def go(engine: Any) -> Any:
        async with engine.connect() as connection:
            return await focus_file(connection, month_label, settings.reporting_timezone, fmt)

    try:
        result = _with_engine(settings, go)
    except InvalidMonth as exc:
        raise click.BadParameter(str(exc), param_hint="YYYY-MM") from exc
    if output:
        Path(output).write_bytes(result.content)
        state = "closed" if result.closed else "open"
        click.echo(f"wrote {output} ({state})", err=True)
    else:
        sys.stdout.buffer.write(result.content)
        sys.stdout.flush()


@report.command("verify-rollups")
@click.option("--since", type=click.DateTime(), help="UTC start (default: the first entry).")
@click.option("--until", type=click.DateTime(), help="UTC end (default: after the last entry).")
@click.option("--no-repair", is_flag=True, help="Only report differences.")
@click.pass_context
def report_verify_rollups(
    ctx: click.Context, since: datetime | None, until: datetime | None, no_repair: bool
) -> None:
    """Check the spend rollups against the raw ledger entries and repair differences."""
    from ledger.reports.rollups import verify_rollups

    def aware(value: datetime | None) -> datetime | None:
        return value.replace(tzinfo=UTC) if value is not None else None

    check = _with_engine(
        _settings(ctx),
        lambda engine: verify_rollups(
            engine, since=aware(since), until=aware(until), repair=not no_repair
        ),
    )
    click.echo(
        f"checked {check.hours_checked} hours, {check.rows_checked} rollup rows: "
        f"{check.missing} missing, {check.extra} extra, {check.mismatched} different"
        + (" (repaired)" if check.repaired else "")
    )
    for line in check.differences:
        click.echo(f"  {line}")
    if not check.ok and no_repair:
        sys.exit(1)


@click.group()
def month() -> None:
    """Closing months for finance."""


@month.command("close")
@click.argument("month_label", metavar="YYYY-MM")
@click.pass_context
def month_close(ctx: click.Context, month_label: str) -> None:
    """Freeze a month's report; later entries for it go to the next open month."""
    from ledger.errors import Conflict
    from ledger.reports.closing import close_month
    from ledger.reports.months import InvalidMonth

    settings = _settings(ctx)
    try:
        info = _with_engine(
            settings,
            lambda engine: close_month(engine, month_label, settings.reporting_timezone),
        )
    except InvalidMonth as exc:
        raise click.BadParameter(str(exc), param_hint="YYYY-MM") from exc
    except Conflict as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(
        f"closed {info.month} ({info.timezone}, {info.period_start.isoformat()} to "
        f"{info.period_end.isoformat()}); sha256 of the JSON report: {info.content_sha256}"
    )


@month.command("list")
@click.pass_context
def month_list(ctx: click.Context) -> None:
    """The closed months."""
    from ledger.reports.closing import list_closed_months

    async def go(engine: Any) -> Any:
        async with engine.connect() as connection:
            return await list_closed_months(connection)

    for info in _with_engine(_settings(ctx), go):
        click.echo(f"{info.month}\t{info.closed_at.isoformat()}\t{info.content_sha256}")


@click.command()
@click.option("--entries", default=50_000, show_default=True, help="How many requests to write.")
@click.option("--months", default=3, show_default=True, help="How many calendar months back.")
@click.option("--seed", default=7, show_default=True, help="Random seed (same seed, same data).")
@click.pass_context
def demo(ctx: click.Context, entries: int, months: int, seed: int) -> None:
    """Fill the database with realistic synthetic traffic, teams, keys and budgets."""
    from ledger.db.prices import sync_prices
    from ledger.money import format_usd_cents
    from ledger.reports.demo import fill_demo

    settings = _settings(ctx)
    if entries < 1 or months < 1:
        raise click.BadParameter("--entries and --months must be at least 1")

    async def go(engine: Any) -> Any:
        await sync_prices(engine, settings.price_overrides)
        with click.progressbar(length=entries, label="Writing demo traffic") as bar:
            return await fill_demo(
                engine,
                entries=entries,
                months=months,
                seed=seed,
                secret_key=settings.secret_key,
                progress=bar.update,
            )

    summary = _with_engine(settings, go)
    click.echo(
        f"{summary.entries} requests from {summary.since.date()} to {summary.until.date()} "
        f"for {summary.teams} teams ({summary.keys} keys, {summary.budgets} new budgets), "
        f"${format_usd_cents(summary.cost_nanos)} in all."
    )
    click.echo("Run `ledger serve` and open http://127.0.0.1:8080/dashboard with the admin key.")
    if summary.sample_team_key:
        click.echo("A key of the research team, to see the dashboard as a team sees it:")
        click.echo(summary.sample_team_key)
