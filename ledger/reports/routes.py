"""Report routes: spend, budgets, the monthly finance report, month close, the dashboard.

Thin handlers: each checks who is asking, calls one domain function and shapes the
answer. A team key sees only its own team; asking for another team's data is refused
with 403. The admin key sees everything.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, Literal
from zoneinfo import available_timezones

import msgspec
from litestar import Controller, MediaType, Request, Response, get, post
from litestar.di import Provide
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import Parameter
from litestar.static_files import create_static_files_router
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession, async_sessionmaker

from ledger.admin.identity import Principal
from ledger.auth import provide_admin, provide_principal, provide_read_sessions, read_your_writes
from ledger.config import Settings, load_settings
from ledger.db.tables import ApiKey, Team
from ledger.endusers import END_USER_CHARS, fit_text
from ledger.errors import InvalidRequest, NotFound, PermissionDenied, UpstreamFailed
from ledger.http import parse_instant
from ledger.openapi import (
    CSV,
    INT64_MAX,
    KEY_ERRORS,
    MONTH,
    ROW_IDS,
    XLSX,
    admin_errors,
    answers,
    documented,
    errors,
    instant,
    key_errors,
)
from ledger.providers.admin_reports import ReportUnavailable
from ledger.reports import closing, focus, present, reconciliation
from ledger.reports.budgets import budget_statuses, recent_alerts
from ledger.reports.months import InvalidMonth
from ledger.reports.render import FORMATS
from ledger.reports.spend import DIMENSIONS, SpendFilters, SpendQuery, spend_report
from ledger.reports.timebuckets import local_midnight, zone

_DIMENSION = "(" + "|".join(DIMENSIONS) + ")"
GROUP_BY_PATTERN = f"^{_DIMENSION}(,{_DIMENSION})*$"
"""One ``group_by`` value: dimensions, comma-separated."""

# The zones a report may use: the schema lists them, so any zone it allows is one Ledger knows.
TIME_ZONES = frozenset(available_timezones()) | {"UTC"}
STATIC_DIR = Path(__file__).resolve().parent / "static"
_DASHBOARD_HTML = (STATIC_DIR / "dashboard.html").read_bytes()
DASHBOARD_HEADERS = {
    "content-security-policy": (
        "default-src 'self'; frame-ancestors 'none'; base-uri 'none'; "
        "form-action 'none'; object-src 'none'"
    ),
    "x-frame-options": "DENY",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "cache-control": "no-store",
}


def provide_report_settings(request: Request[Any, Any, Any]) -> Settings:
    """The settings the app was created with (``app.state.settings``).

    Until the app factory puts them there, they are read once from the environment
    and config file, as ``ledger serve`` reads them.
    """
    settings = request.app.state.get("settings")
    if not isinstance(settings, Settings):
        settings = load_settings()
        request.app.state["settings"] = settings
    return settings


def _engine(sessions: async_sessionmaker[AsyncSession]) -> AsyncEngine:
    engine = sessions.kw["bind"]
    assert isinstance(engine, AsyncEngine)
    return engine


def _file(content: bytes, media_type: str, filename: str, **headers: str) -> Response[bytes]:
    return Response(
        content=content,
        media_type=media_type,
        headers={"content-disposition": f'attachment; filename="{filename}"', **headers},
    )


def _format(*allowed: str) -> Any:
    """The ``format`` query parameter; the enum is documentation, ``_check_format`` decides."""
    return Parameter(
        query="format",
        default=allowed[0],
        description=", ".join(allowed),
        schema_extra={"enum": list(allowed)},
    )


class ReportsController(Controller):
    before_request = read_your_writes
    path = "/api/reports"
    tags = ["reports"]
    dependencies = {
        "principal": Provide(provide_principal),
        "report_settings": Provide(provide_report_settings, sync_to_thread=False),
        # Reports only read: a read replica (LEDGER_REPORTS_DATABASE_URL) serves them.
        "sessions": Provide(provide_read_sessions, sync_to_thread=False),
    }

    @get(
        "/spend",
        operation_id="getSpendReport",
        responses=key_errors(400, 403, 404),
        operation_class=documented(content={200: CSV}),
    )
    async def spend(
        self,
        principal: Principal,
        sessions: async_sessionmaker[AsyncSession],
        since_text: str | None = instant("since", "From this time (default: 30 days back)."),
        until_text: str | None = instant("until", "Up to this time (default: now)."),
        tz: str = Parameter(
            query="timezone", default="UTC", schema_extra={"enum": sorted(TIME_ZONES)}
        ),
        granularity: Literal["hour", "day", "week", "month", "none"] = "day",
        group_by: Annotated[
            list[str] | None,  # comma-separated lists too: "team,model"
            Parameter(
                description="team, key, user, session, model, provider, status, tag; "
                "several as a comma-separated list or a repeated parameter",
                schema_extra={"items": {"type": "string", "pattern": GROUP_BY_PATTERN}},
            ),
        ] = None,
        team: list[str] | None = None,
        key_id: Annotated[
            list[Annotated[int, msgspec.Meta(ge=1, le=INT64_MAX)]] | None,
            Parameter(schema_extra=ROW_IDS),
        ] = None,
        user: list[str] | None = None,
        model: list[str] | None = None,
        provider: list[str] | None = None,
        status: list[str] | None = None,
        tag: list[str] | None = None,
        top: int | None = Parameter(default=None, ge=1, le=1000),
        fmt: str = _format("json", "csv"),
    ) -> Response[Any]:
        """Totals, groups and a calendar-aligned series of spend over ``[since, until)``.

        Defaults: the last 30 days (from local midnight) in ``timezone``, by day.
        """
        _check_format(fmt, ("json", "csv"))
        try:
            zone(tz)
        except ValueError as exc:
            raise InvalidRequest(str(exc), param="timezone") from exc
        since = parse_instant(since_text, "since")
        until = parse_instant(until_text, "until")
        now = datetime.now(UTC)
        until = until or now
        if since is None:
            today = until.astimezone(zone(tz)).date()
            since = local_midnight(today - timedelta(days=29), zone(tz))
        # A range that ends before it starts holds nothing: an empty report, not an error.
        until = max(until, since)
        async with _engine(sessions).connect() as connection:
            team_ids = await _visible_teams(connection, principal, team or [])
            key_ids = await _visible_keys(connection, principal, key_id or [])
            query = SpendQuery(
                since=since,
                until=until,
                timezone=tz,
                granularity=None if granularity == "none" else granularity,
                group_by=_split(group_by),
                filters=SpendFilters(
                    team_ids=team_ids,
                    key_ids=key_ids,
                    # As the gateway stores them: a long name finds its shortened form.
                    users=tuple(fit_text(u, END_USER_CHARS) for u in user or ()),
                    models=tuple(model or ()),
                    providers=tuple(provider or ()),
                    statuses=tuple(status or ()),
                    tags=tuple(tag or ()),
                ),
                top=top,
            )
            report = await spend_report(connection, query)
        if fmt == "csv":
            return _file(present.spend_csv(report), "text/csv", "spend.csv")
        return Response(present.spend_json(report), media_type=MediaType.JSON)

    @get(
        "/budgets",
        operation_id="getBudgetReport",
        responses=key_errors(400),
        operation_class=documented(content={200: CSV}),
    )
    async def budgets(
        self,
        principal: Principal,
        sessions: async_sessionmaker[AsyncSession],
        fmt: str = _format("json", "csv"),
    ) -> Response[Any]:
        """Every budget the key may see in its current period, and the latest alerts."""
        _check_format(fmt, ("json", "csv"))
        now = datetime.now(UTC)
        team_id = None if principal.is_admin else principal.team_id
        async with _engine(sessions).connect() as connection:
            statuses = await budget_statuses(connection, now, team_id=team_id)
            alerts = await recent_alerts(connection, team_id=team_id)
        budgets = [present.budget_json(status, now) for status in statuses]
        if fmt == "csv":
            return _file(present.budgets_csv(budgets), "text/csv", "budgets.csv")
        body = {
            "as_of": now.isoformat(),
            "data": budgets,
            "recent_alerts": [present.alert_json(alert) for alert in alerts],
        }
        return Response(body, media_type=MediaType.JSON)

    @get(
        "/monthly/{month:str}",
        operation_id="getMonthlyReport",
        # The handler returns the file's bytes: say what the JSON format's bytes hold.
        responses=answers(dict[str, Any], "openai", *KEY_ERRORS, 400),
        operation_class=documented(content={200: {**CSV, **XLSX}}),
    )
    async def monthly(
        self,
        month: MONTH,
        principal: Principal,
        sessions: async_sessionmaker[AsyncSession],
        report_settings: Settings,
        fmt: str = _format(*FORMATS),
    ) -> Response[bytes]:
        """The month's finance report; a closed month returns its frozen bytes.

        Headers: ``X-Ledger-Month-Status`` (open or closed) and ``X-Content-SHA256``.
        A team key gets its own team's section only.
        """
        _check_format(fmt, tuple(FORMATS))
        team_id = None if principal.is_admin else principal.team_id
        async with _engine(sessions).connect() as connection:
            try:
                report = await closing.monthly_report_file(
                    connection, month, report_settings.reporting_timezone, fmt, team_id=team_id
                )
            except InvalidMonth as exc:
                raise InvalidRequest(str(exc), param="month") from exc
        return _file(
            report.content,
            report.media_type,
            f"ledger-{month}.{fmt}",
            **{
                "x-ledger-month-status": "closed" if report.closed else "open",
                "x-content-sha256": report.sha256,
                "etag": f'"{report.sha256}"',
            },
        )

    @get(
        "/reconciliation/{month:str}",
        operation_id="getReconciliationReport",
        responses=key_errors(400, 403),
        operation_class=documented(content={200: CSV}),
    )
    async def reconciliation_report(
        self,
        month: MONTH,
        principal: Principal,
        sessions: async_sessionmaker[AsyncSession],
        report_settings: Settings,
        provider: str | None = None,
        fmt: str = _format("json", "csv"),
    ) -> Response[Any]:
        """The month per day, provider and model: Ledger's figures, the provider's own
        report (its latest stored pull), and the difference (provider minus Ledger)."""
        _check_format(fmt, ("json", "csv"))
        if not principal.is_admin:
            raise PermissionDenied("Only the admin key can read the reconciliation.")
        try:
            report = await reconciliation.reconciliation(
                _engine(sessions), report_settings, month, provider
            )
        except InvalidMonth as exc:
            raise InvalidRequest(str(exc), param="month") from exc
        if fmt == "csv":
            return _file(
                reconciliation.to_csv(report).encode(), "text/csv", f"reconciliation-{month}.csv"
            )
        report["totals"] = reconciliation.totals_by_provider(report)
        return Response(report, media_type=MediaType.JSON)

    @get(
        "/focus/{month:str}",
        operation_id="getFocusExport",
        responses={
            200: ResponseSpec(
                str, description="OK", media_type="text/csv", generate_examples=False
            ),
            **errors("openai", *KEY_ERRORS, 400, 403),
        },
        operation_class=documented(content={200: {focus.FORMATS["parquet"]: None}}),
    )
    async def focus_export(
        self,
        month: MONTH,
        principal: Principal,
        sessions: async_sessionmaker[AsyncSession],
        report_settings: Settings,
        fmt: str = _format(*focus.FORMATS),
    ) -> Response[bytes]:
        """The month's spend as FinOps FOCUS 1.2 rows (CSV or Parquet); admin only.

        Σ BilledCost is the monthly report's cost total; a closed month exports its
        frozen figures. Header ``X-Ledger-Month-Status`` (open or closed).
        """
        _check_format(fmt, tuple(focus.FORMATS))
        if not principal.is_admin:
            raise PermissionDenied("the FOCUS export covers every team: it needs an admin key")
        async with _engine(sessions).connect() as connection:
            try:
                export = await focus.focus_file(
                    connection, month, report_settings.reporting_timezone, fmt
                )
            except InvalidMonth as exc:
                raise InvalidRequest(str(exc), param="month") from exc
        return _file(
            export.content,
            export.media_type,
            f"ledger-focus-{month}.{fmt}",
            **{"x-ledger-month-status": "closed" if export.closed else "open"},
        )

    @get("/me", operation_id="getReportPrincipal", responses=key_errors())
    async def me(self, principal: Principal) -> dict[str, Any]:
        """Who the key is: the admin, or a team (what the dashboard may show)."""
        return {
            "admin": principal.is_admin,
            "team": principal.team_name,
            "team_id": principal.team_id,
            "key_prefix": principal.key_prefix,
        }

    @get("/months", operation_id="listClosedMonths", responses=key_errors())
    async def months(
        self, principal: Principal, sessions: async_sessionmaker[AsyncSession]
    ) -> dict[str, Any]:
        """The closed months, most recent first."""
        async with _engine(sessions).connect() as connection:
            closed = await closing.list_closed_months(connection)
        return {"data": [_closed_json(info) for info in closed]}


class MonthsAdminController(Controller):
    path = "/admin/months"
    tags = ["admin"]
    dependencies = {
        "admin": Provide(provide_admin),
        "report_settings": Provide(provide_report_settings, sync_to_thread=False),
    }

    @post(
        "/{month:str}/close",
        operation_id="closeMonth",
        status_code=200,
        responses=admin_errors(400, 409),
    )
    async def close(
        self,
        month: MONTH,
        admin: Principal,
        sessions: async_sessionmaker[AsyncSession],
        report_settings: Settings,
    ) -> dict[str, Any]:
        """Close a month that has ended: its report files are frozen with their sha256."""
        try:
            info = await closing.close_month(
                _engine(sessions), month, report_settings.reporting_timezone
            )
        except InvalidMonth as exc:
            raise InvalidRequest(str(exc), param="month") from exc
        return _closed_json(info)


class ReconciliationAdminController(Controller):
    path = "/admin/reconciliation"
    tags = ["admin"]
    dependencies = {
        "admin": Provide(provide_admin),
        "report_settings": Provide(provide_report_settings, sync_to_thread=False),
    }

    @post(
        "/{month:str}/refresh",
        operation_id="refreshReconciliation",
        status_code=200,
        responses=admin_errors(400, 404, 502),
    )
    async def refresh(
        self,
        month: MONTH,
        admin: Principal,
        sessions: async_sessionmaker[AsyncSession],
        report_settings: Settings,
        provider: str | None = None,
    ) -> dict[str, Any]:
        """Pull the providers' usage and cost reports for the month now, and store them."""
        engine = _engine(sessions)
        try:
            pulled = await reconciliation.refresh(engine, report_settings, month, provider)
        except InvalidMonth as exc:
            raise InvalidRequest(str(exc), param="month") from exc
        except KeyError as exc:
            raise NotFound(f"No provider {provider!r} with an admin key.") from exc
        except ReportUnavailable as exc:
            raise UpstreamFailed(str(exc), may_have_billed=False) from exc
        report = await reconciliation.reconciliation(engine, report_settings, month, provider)
        alerts = await reconciliation.raise_alerts(engine, report_settings, month, report)
        return {"month": month, "pulled": pulled, "alerts": alerts}


@get(
    "/dashboard",
    operation_id="dashboard",
    include_in_schema=False,
    media_type=MediaType.HTML,
    sync_to_thread=False,
)
def dashboard() -> Response[bytes]:
    """The web dashboard: a static page that reads the report API with the key typed in."""
    return Response(_DASHBOARD_HTML, media_type=MediaType.HTML, headers=DASHBOARD_HEADERS)


def _closed_json(info: closing.ClosedMonthInfo) -> dict[str, Any]:
    return {
        "month": info.month,
        "timezone": info.timezone,
        "period_start": info.period_start.astimezone(zone(info.timezone)).isoformat(),
        "period_end": info.period_end.astimezone(zone(info.timezone)).isoformat(),
        "closed_at": info.closed_at.isoformat(),
        "content_sha256": info.content_sha256,
    }


def _check_format(fmt: str, allowed: tuple[str, ...]) -> None:
    if fmt not in allowed:
        raise InvalidRequest(f"format must be one of {', '.join(allowed)}", param="format")


def _split(values: list[str] | None) -> tuple[str, ...]:
    """``group_by=team,model`` and ``group_by=team&group_by=model`` mean the same; a
    dimension named twice is grouped by once."""
    for value in values or ():
        if re.match(GROUP_BY_PATTERN, value) is None:
            raise InvalidRequest(
                f"cannot group by {value!r}; choose from {', '.join(DIMENSIONS)} "
                "(several comma-separated, no spaces)",
                param="group_by",
            )
    return tuple(dict.fromkeys(part for value in values or () for part in value.split(",")))


async def _visible_teams(
    connection: AsyncConnection, principal: Principal, names: list[str]
) -> tuple[int, ...]:
    """The team filter a principal may use: a team key is always limited to its own team."""
    if not principal.is_admin:
        if any(name != principal.team_name for name in names):
            raise PermissionDenied("A team key can only read its own team's reports.")
        assert principal.team_id is not None
        return (principal.team_id,)
    if not names:
        return ()
    rows = (await connection.execute(select(Team.id, Team.name).where(Team.name.in_(names)))).all()
    missing = set(names) - {row.name for row in rows}
    if missing:
        raise NotFound(f"no team named {sorted(missing)[0]!r}")
    return tuple(row.id for row in rows)


async def _visible_keys(
    connection: AsyncConnection, principal: Principal, key_ids: list[int]
) -> tuple[int, ...]:
    """Key filters; a team key may name only its own team's keys (others are refused)."""
    if key_ids and not principal.is_admin:
        own = set(
            (
                await connection.scalars(
                    select(ApiKey.id).where(
                        ApiKey.team_id == principal.team_id, ApiKey.id.in_(key_ids)
                    )
                )
            ).all()
        )
        if own != set(key_ids):
            raise PermissionDenied("A team key can only read its own team's keys.")
    return tuple(key_ids)


REPORT_ROUTES: list[Any] = [
    ReportsController,
    MonthsAdminController,
    ReconciliationAdminController,
    dashboard,
    create_static_files_router(path="/dashboard/static", directories=[STATIC_DIR]),
]
