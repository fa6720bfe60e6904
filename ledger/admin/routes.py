"""Admin API: teams, keys and prices. Every route needs the admin key."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

import msgspec
from litestar import Controller, delete, get, patch, post
from litestar.datastructures import State
from litestar.di import Provide
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from ledger.access import MAX_PATTERNS, Patterns
from ledger.admin import identity
from ledger.admin.identity import Authenticator, Principal
from ledger.auth import provide_admin
from ledger.config import ConfigError, Settings, provider_for_price
from ledger.db.prices import LivePrices, insert_prices, list_price_rows
from ledger.db.rerate import RerateResult
from ledger.db.rerate import rerate as rerate_entries
from ledger.errors import InvalidRequest
from ledger.http import parse_instant
from ledger.money import format_usd
from ledger.openapi import DATE_TIME_PATTERN, ROW_ID, admin_errors
from ledger.pricing import PriceError, price_from_mapping

# One model name or glob: no comma, no space or control character. Spelled out, because
# ``\s`` means different characters to Python (which checks) and to JSON Schema tools.
_MODEL_PATTERN = (
    r"^[^,\x00-\x20\x7f-\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000\ufeff]{1,200}$"
)
# The constraints below are both what the decoder enforces and what the schema says.
Name = Annotated[str, msgspec.Meta(min_length=1, max_length=100, pattern=r"\S")]
AllowedModels = Annotated[
    list[Annotated[str, msgspec.Meta(pattern=_MODEL_PATTERN)]],
    msgspec.Meta(min_length=1, max_length=MAX_PATTERNS),
]
MarkupPercent = Annotated[
    str,
    msgspec.Meta(
        pattern=r"^(1000(\.0{1,2})?|[0-9]{1,3}(\.[0-9]{1,2})?)$",
        description="0 to 1000, at most two decimals.",
    ),
]


# What a refused body field should say, in place of the decoder's "Expected ... matching
# regex ...": the rule in words. Fields named the same in every admin body only.
FIELD_HINTS = {
    "allowed_models": f"allowed_models must name at least one pattern and at most {MAX_PATTERNS}; "
    "a pattern is a model name or glob of 1 to 200 characters that may not hold commas or "
    "spaces (anything else is not a model name pattern); leave it out (or null) to allow "
    "every model",
    "markup_percent": "markup_percent must be a decimal string from 0 to 1000 with at most two "
    "decimals",
}


class TeamIn(msgspec.Struct, forbid_unknown_fields=True):
    name: Name
    cost_centre: Annotated[str, msgspec.Meta(max_length=100)] | None = None
    markup_percent: MarkupPercent = "0"
    allowed_models: AllowedModels | None = None  # model name patterns; None: no restriction


class KeyIn(msgspec.Struct, forbid_unknown_fields=True):
    team: Annotated[str, msgspec.Meta(min_length=1)]
    name: Annotated[str, msgspec.Meta(max_length=100)] = "default"
    allowed_models: AllowedModels | None = None  # narrows the team's, never widens it


class RerateIn(msgspec.Struct, forbid_unknown_fields=True):
    model: Annotated[str, msgspec.Meta(pattern=_MODEL_PATTERN)]
    since: Annotated[
        str, msgspec.Meta(pattern=DATE_TIME_PATTERN, description="RFC 3339, inclusive")
    ]
    until: Annotated[
        str, msgspec.Meta(pattern=DATE_TIME_PATTERN, description="RFC 3339, exclusive")
    ]


class AllowedModelsIn(msgspec.Struct, forbid_unknown_fields=True):
    allowed_models: AllowedModels | None  # required: null lifts the restriction


def team_out(team: Any) -> dict[str, Any]:
    return {
        "id": team.id,
        "name": team.name,
        "cost_centre": team.cost_centre,
        "markup_percent": _bps_to_percent(team.markup_bps),
        "allowed_models": _patterns_out(team.allowed_models),
        "created_at": team.created_at.isoformat(),
    }


def key_out(key: Any, team_name: str) -> dict[str, Any]:
    return {
        "id": key.id,
        "team": team_name,
        "name": key.name,
        "prefix": key.prefix,
        "allowed_models": _patterns_out(key.allowed_models),
        "created_at": key.created_at.isoformat(),
        "revoked_at": key.revoked_at.isoformat() if key.revoked_at else None,
    }


class AdminController(Controller):
    path = "/admin"
    tags = ["admin"]
    dependencies = {"admin": Provide(provide_admin)}

    @post("/teams", operation_id="createTeam", responses=admin_errors(400, 409, 413))
    async def create_team(
        self, data: TeamIn, admin: Principal, sessions: async_sessionmaker[AsyncSession]
    ) -> dict[str, Any]:
        markup_bps = _percent_to_bps(data.markup_percent)
        async with sessions.begin() as session:
            team = await identity.create_team(
                session, data.name, cost_centre=data.cost_centre, markup_bps=markup_bps,
                allowed_models=data.allowed_models,
            )  # fmt: skip
        return team_out(team)

    @patch("/teams/{team_id:int}", operation_id="updateTeam", responses=admin_errors(400, 404))
    async def update_team(
        self,
        team_id: ROW_ID,
        data: AllowedModelsIn,
        admin: Principal,
        sessions: async_sessionmaker[AsyncSession],
        authenticator: Authenticator,
    ) -> dict[str, Any]:
        """Replace the team's ``allowed_models``; its keys' cached copies are dropped here."""
        async with sessions.begin() as session:
            team = await identity.set_team_allowed_models(session, team_id, data.allowed_models)
        authenticator.forget_team(team_id)
        return team_out(team)

    @get("/teams", operation_id="listTeams", responses=admin_errors())
    async def list_teams(
        self, admin: Principal, sessions: async_sessionmaker[AsyncSession]
    ) -> dict[str, Any]:
        async with sessions() as session:
            teams = await identity.list_teams(session)
        return {"data": [team_out(team) for team in teams]}

    @post("/keys", operation_id="createKey", responses=admin_errors(400, 404, 413))
    async def create_key(
        self,
        data: KeyIn,
        admin: Principal,
        sessions: async_sessionmaker[AsyncSession],
        authenticator: Authenticator,
    ) -> dict[str, Any]:
        """Create a team key. The key itself is in this response and nowhere else, ever."""
        async with sessions.begin() as session:
            team = await identity.get_team_by_name(session, data.team)
            key, plaintext = await identity.create_key(
                session, authenticator.secret, team, data.name, data.allowed_models
            )
        return {**key_out(key, team.name), "key": plaintext}

    @get("/keys", operation_id="listKeys", responses=admin_errors())
    async def list_keys(
        self, admin: Principal, sessions: async_sessionmaker[AsyncSession]
    ) -> dict[str, Any]:
        async with sessions() as session:
            keys = await identity.list_keys(session)
        return {"data": [key_out(key, team) for key, team in keys]}

    @patch("/keys/{key_id:int}", operation_id="updateKey", responses=admin_errors(400, 404))
    async def update_key(
        self,
        key_id: ROW_ID,
        data: AllowedModelsIn,
        admin: Principal,
        sessions: async_sessionmaker[AsyncSession],
        authenticator: Authenticator,
    ) -> dict[str, Any]:
        """Replace the key's ``allowed_models``; its cached copy is dropped here."""
        async with sessions.begin() as session:
            key = await identity.set_key_allowed_models(session, key_id, data.allowed_models)
            team = await session.get(identity.Team, key.team_id)
        authenticator.forget_key(key_id)
        return key_out(key, team.name if team else "")

    @delete(
        "/keys/{key_id:int}",
        operation_id="revokeKey",
        status_code=200,
        responses=admin_errors(400, 404),
    )
    async def revoke_key(
        self,
        key_id: ROW_ID,
        admin: Principal,
        sessions: async_sessionmaker[AsyncSession],
        authenticator: Authenticator,
    ) -> dict[str, Any]:
        async with sessions.begin() as session:
            key = await identity.revoke_key(session, key_id)
            team = await session.get(identity.Team, key.team_id)
        authenticator.forget_key(key_id)
        return key_out(key, team.name if team else "")

    @post("/prices", operation_id="createPrice", responses=admin_errors(400, 413))
    async def create_price(
        self, data: dict[str, Any], admin: Principal, prices: LivePrices, state: State
    ) -> dict[str, Any]:
        """Add a price version (effective now unless ``effective_from`` says otherwise).

        Without ``provider``, the model's route names it (see ``provider_for_price``).
        """
        fields = dict(data)
        fields.setdefault("effective_from", datetime.now(UTC).isoformat())
        if "provider" not in fields and isinstance(fields.get("model"), str) and fields["model"]:
            fields["provider"] = _provider_for(fields["model"], state["settings"], prices)
        fields.setdefault("source", "admin API")
        try:
            price = price_from_mapping(fields)
        except PriceError as exc:
            raise InvalidRequest(str(exc)) from exc
        async with prices.engine.begin() as connection:
            ids = await insert_prices(connection, [(price, "admin")], replace=True)
        await prices.reload()
        return {**price_out(price), "id": ids[0] if ids else None}

    @get("/prices", operation_id="listPrices", responses=admin_errors())
    async def list_prices(self, admin: Principal, prices: LivePrices) -> dict[str, Any]:
        rows = await list_price_rows(prices.engine)
        return {"data": [price_row_out(row) for row in rows]}

    @post("/rerate", operation_id="rerate", status_code=200, responses=admin_errors(400))
    async def rerate(self, data: RerateIn, admin: Principal, prices: LivePrices) -> dict[str, Any]:
        """Re-rate the entries of ``model`` started in ``[since, until)`` at the prices now
        in effect for their time: one adjustment entry per entry whose cost changes.

        Twice is a no-op. The answer says how many entries moved and by how much.
        """
        since = parse_instant(data.since, "since")
        until = parse_instant(data.until, "until")
        assert since is not None and until is not None
        if until <= since:
            raise InvalidRequest("until must be after since", param="until")
        await prices.reload()  # a correction made through another process counts too
        result = await rerate_entries(prices.engine, prices.price_at, data.model, since, until)
        return rerate_out(data.model, since, until, result)


def rerate_out(
    model: str, since: datetime, until: datetime, result: RerateResult
) -> dict[str, Any]:
    return {
        "model": model,
        "since": since.isoformat(),
        "until": until.isoformat(),
        "entries": result.entries,
        "difference_usd": format_usd(result.difference_nanos),
        "unchanged": result.unchanged,
        "without_price": result.without_price,
        "adjustment_request_ids": result.adjustment_ids,
    }


def price_out(price: Any) -> dict[str, Any]:
    return {
        "model": price.model,
        "provider": price.provider,
        "effective_from": price.effective_from.isoformat(),
        "input_per_million_usd": format_usd(price.input),
        "cached_input_per_million_usd": format_usd(price.cached_input),
        "cache_write_5m_per_million_usd": format_usd(price.cache_write_5m),
        "cache_write_1h_per_million_usd": format_usd(price.cache_write_1h),
        "output_per_million_usd": format_usd(price.output),
        "request_fee_usd": format_usd(price.request_fee_nanos),
        "long_context_threshold": price.long_context_threshold,
        "free": price.free,
    }


def price_row_out(row: Any) -> dict[str, Any]:
    return {
        "id": row.id,
        "origin": row.origin,
        "source": row.source,
        "model": row.model,
        "provider": row.provider,
        "effective_from": row.effective_from.isoformat(),
        "input_per_million_usd": format_usd(row.input),
        "cached_input_per_million_usd": format_usd(row.cached_input),
        "cache_write_5m_per_million_usd": format_usd(row.cache_write_5m),
        "cache_write_1h_per_million_usd": format_usd(row.cache_write_1h),
        "output_per_million_usd": format_usd(row.output),
        "request_fee_usd": format_usd(row.request_fee),
        "long_context_threshold": row.long_context_threshold,
        "free": row.free,
    }


def _provider_for(model: str, settings: Settings, prices: LivePrices) -> str:
    def known(name: str) -> str | None:
        # The latest version's: a new version of a known model keeps its provider.
        price = prices.price_at(name, datetime(9999, 1, 1, tzinfo=UTC))
        return price.provider if price is not None else None

    try:
        return provider_for_price(
            model,
            served_by={m.name: m.provider for m in settings.models},
            known_provider=known,
            providers=[p.name for p in settings.providers],
        )
    except ConfigError as exc:
        raise InvalidRequest(str(exc), param="provider") from exc


def _patterns_out(stored: str | None) -> list[str] | None:
    patterns: Patterns | None = identity.stored_patterns(stored)
    return list(patterns) if patterns is not None else None


def _percent_to_bps(value: str) -> int:
    from decimal import Decimal, InvalidOperation

    try:
        bps = Decimal(value) * 100
    except InvalidOperation as exc:
        raise InvalidRequest(
            "markup_percent must be a decimal string", param="markup_percent"
        ) from exc
    if bps != bps.to_integral_value() or not 0 <= bps <= 100_000:
        raise InvalidRequest(
            "markup_percent must be between 0 and 1000 with at most two decimals",
            param="markup_percent",
        )
    return int(bps)


def _bps_to_percent(bps: int) -> str:
    return f"{bps // 100}.{bps % 100:02d}"
