"""Reading the ledger entry by entry: ``GET /api/usage`` and ``GET /api/usage/{request_id}``."""

from __future__ import annotations

import json
from typing import Any

from litestar import Controller, get
from litestar.di import Provide
from litestar.params import Parameter
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from ledger.admin.identity import Principal
from ledger.auth import provide_principal, provide_read_sessions, read_your_writes
from ledger.db.ledger import EntryFilter, get_entry, list_entries
from ledger.db.tables import ApiKey, LedgerEntryRow, Team
from ledger.errors import NotFound, PermissionDenied
from ledger.http import parse_instant
from ledger.money import format_usd
from ledger.openapi import INT64_MAX, instant, key_errors


def entry_out(row: LedgerEntryRow, teams: dict[int, str], keys: dict[int, str]) -> dict[str, Any]:
    """One ledger entry as JSON: token buckets, and money as exact decimal strings."""
    return {
        "request_id": row.request_id,
        "kind": row.kind,
        "corrects_request_id": row.corrects_request_id,
        "started_at": row.started_at.isoformat(),
        "first_token_at": row.first_token_at.isoformat() if row.first_token_at else None,
        "ended_at": row.ended_at.isoformat(),
        "latency_ms": row.latency_ms,
        "team": teams.get(row.team_id) if row.team_id is not None else None,
        "key_prefix": keys.get(row.key_id) if row.key_id is not None else None,
        "key_id": row.key_id,
        "end_user": row.end_user,
        "end_user_session": row.end_user_session,
        "end_user_full": row.end_user_full,
        "tags": json.loads(row.tags) if row.tags else [],
        "endpoint": row.endpoint,
        "requested_model": row.requested_model,
        "served_model": row.served_model,
        "provider": row.provider,
        "stream": row.stream,
        "status": row.status,
        "http_status": row.http_status,
        "usage": {
            "input_tokens": row.input_tokens,
            "cache_read_tokens": row.cache_read_tokens,
            "cache_write_5m_tokens": row.cache_write_5m_tokens,
            "cache_write_1h_tokens": row.cache_write_1h_tokens,
            "output_tokens": row.output_tokens,
            "reasoning_tokens": row.reasoning_tokens,
        },
        "estimated_input_tokens": row.estimated_input_tokens,
        "usage_source": row.usage_source,
        "cost_usd": format_usd(row.cost_nanos),
        "cost_breakdown_usd": {
            "input": format_usd(row.input_cost_nanos),
            "cache_read": format_usd(row.cache_read_cost_nanos),
            "cache_write": format_usd(row.cache_write_cost_nanos),
            "output": format_usd(row.output_cost_nanos),
            "request_fee": format_usd(row.request_fee_nanos),
        },
        "tool_fees_usd": format_usd(row.tool_fees_nanos or 0),  # per-call fees, in cost_usd
        "service_tier": row.service_tier,
        "pricing_notes": json.loads(row.pricing_notes) if row.pricing_notes else [],
        # The provider's own reported cost (OpenRouter's usage.cost) and how far Ledger's
        # differs from it (Ledger's minus the provider's); null when none was reported.
        "provider_cost_usd": (
            format_usd(row.provider_cost_nanos) if row.provider_cost_nanos is not None else None
        ),
        "cost_difference_usd": (
            format_usd(row.cost_nanos - row.provider_cost_nanos)
            if row.provider_cost_nanos is not None
            else None
        ),
        "price_id": row.price_id,
        "budget_id": row.budget_id,
        "error": row.error,
        "raw_usage": row.raw_usage,
    }


async def _names(session: AsyncSession) -> tuple[dict[int, str], dict[int, str]]:
    teams = dict((await session.execute(select(Team.id, Team.name))).all())
    keys = dict((await session.execute(select(ApiKey.id, ApiKey.prefix))).all())
    return teams, keys


async def _team_id(session: AsyncSession, principal: Principal, team: str | None) -> int | None:
    """The team filter a principal may use: a team key sees its own team and nothing else."""
    if principal.is_admin:
        if team is None:
            return None
        team_id = await session.scalar(select(Team.id).where(Team.name == team))
        if team_id is None:
            raise NotFound(f"no team named {team!r}")
        return team_id
    if team is not None and team != principal.team_name:
        raise PermissionDenied("A team key can only read its own team's usage.")
    return principal.team_id


async def _own_key(session: AsyncSession, principal: Principal, key_id: int) -> None:
    """A team key may filter by its own team's keys; any other key id is refused (403).

    An id that does not exist is refused the same way, as the reports do, so the answer
    does not tell which ids exist.
    """
    team_id = await session.scalar(select(ApiKey.team_id).where(ApiKey.id == key_id))
    if team_id != principal.team_id:
        raise PermissionDenied("A team key can only read its own team's keys.")


class UsageController(Controller):
    before_request = read_your_writes
    path = "/api/usage"
    tags = ["usage"]
    dependencies = {
        "principal": Provide(provide_principal),
        "sessions": Provide(provide_read_sessions, sync_to_thread=False),
    }

    @get("/", operation_id="listUsage", responses=key_errors(400, 403, 404))
    async def list_usage(
        self,
        principal: Principal,
        sessions: async_sessionmaker[AsyncSession],
        team: str | None = None,
        key_id: int | None = Parameter(default=None, ge=1, le=INT64_MAX),
        model: str | None = None,
        status: str | None = None,
        request_id: str | None = None,
        since_text: str | None = instant("since", "Entries that started at or after this time."),
        until_text: str | None = instant("until", "Entries that started before this time."),
        limit: int = Parameter(default=100, ge=1, le=1000),
        cursor: int | None = Parameter(default=None, ge=1, le=INT64_MAX),
    ) -> dict[str, Any]:
        """Ledger entries, newest first. Page with ``cursor`` = the previous ``next_cursor``."""
        since = parse_instant(since_text, "since")
        until = parse_instant(until_text, "until")
        async with sessions() as session:
            if key_id is not None and not principal.is_admin:
                await _own_key(session, principal, key_id)
            where = EntryFilter(
                request_id=request_id,
                team_id=await _team_id(session, principal, team),
                key_id=key_id,
                model=model,
                status=status,
                since=since,
                until=until,
            )
            rows = await list_entries(session, where, limit=limit + 1, after_id=cursor)
            teams, keys = await _names(session)
        page = rows[:limit]
        return {
            "data": [entry_out(row, teams, keys) for row in page],
            "next_cursor": page[-1].id if len(rows) > limit else None,
        }

    # 400: a NUL in the id, which PostgreSQL text cannot hold.
    @get("/{request_id:str}", operation_id="getUsage", responses=key_errors(400, 404))
    async def get_usage(
        self, request_id: str, principal: Principal, sessions: async_sessionmaker[AsyncSession]
    ) -> dict[str, Any]:
        async with sessions() as session:
            row = await get_entry(session, request_id)
            if row is None or (not principal.is_admin and row.team_id != principal.team_id):
                # The same answer for "not yours" as for "not there": ids are not disclosed.
                raise NotFound(f"no ledger entry {request_id!r}")
            teams, keys = await _names(session)
        return entry_out(row, teams, keys)
