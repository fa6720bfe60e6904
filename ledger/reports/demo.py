"""Realistic synthetic traffic for a newcomer's first look at the dashboard.

``ledger demo`` creates a few teams (with cost centres and markups), keys and budgets,
then writes months of requests through the real write path: each entry is priced
with the catalog price in effect at its time (``price_cost``) and recorded by the
``LedgerWriter``, so rollups and late adjustments are maintained exactly as in
production. Traffic follows office hours and weekdays, grows a little month over
month, and includes provider errors, timeouts and budget-blocked requests.
"""

from __future__ import annotations

import asyncio
import math
import random
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import func, insert, select
from sqlalchemy.ext.asyncio import AsyncEngine

from ledger.admin import identity
from ledger.admin.credentials import load_hash_secret
from ledger.budgets.periods import period_bounds
from ledger.db.engine import create_sessionmaker
from ledger.db.ledger import LedgerEntry
from ledger.db.prices import PriceRegistry, load_registry
from ledger.db.tables import Alert, Budget, BudgetPeriod, LedgerEntryRow, Team
from ledger.db.writer import LedgerWriter
from ledger.money import usd_to_nanos
from ledger.pricing import price_cost
from ledger.usage import Usage

# name, cost centre, markup (basis points), share of traffic, favourite models
TEAMS = (
    ("research", "CC-4100", 0, 0.30, ("claude-sonnet-4-5", "o4-mini", "gpt-4.1")),
    ("platform", "CC-2200", 1000, 0.25, ("gpt-4.1-mini", "gpt-4o-mini", "claude-haiku-4-5")),
    ("growth", "CC-3300", 1250, 0.20, ("gpt-4.1-mini", "claude-haiku-4-5", "gpt-5-mini")),
    ("support", "CC-5100", 0, 0.15, ("gpt-4o-mini", "claude-haiku-4-5")),
    ("data-science", "CC-4200", 500, 0.10, ("gpt-4.1", "o4-mini", "claude-sonnet-4-5")),
)
KEY_NAMES = ("prod", "staging", "notebook")
TAGS = ("chat", "batch", "eval", "summarise", "search", "agent")
STATUSES = (  # status, http status, weight
    ("ok", 200, 0.93),
    ("upstream_error", 502, 0.025),
    ("timeout", 504, 0.01),
    ("invalid_request", 400, 0.01),
    ("client_disconnected", 499, 0.005),
    ("blocked", 429, 0.02),
)
REASONING_MODELS = ("o4-mini", "gpt-5-mini", "o3")


@dataclass(frozen=True, slots=True)
class DemoSummary:
    teams: int
    keys: int
    budgets: int
    entries: int
    since: datetime
    until: datetime
    cost_nanos: int
    sample_team_key: str | None


async def fill_demo(
    engine: AsyncEngine,
    *,
    entries: int = 50_000,
    months: int = 3,
    seed: int = 7,
    secret_key: str | None = None,
    now: datetime | None = None,
    progress: Callable[[int], None] = lambda _: None,
) -> DemoSummary:
    """Create demo teams, keys and budgets, then write ``entries`` requests over ``months``.

    Entries go through :class:`LedgerWriter` (and so into the rollups); ``progress``
    is called with the number of entries written after each chunk. Running it again
    adds more traffic and reuses the teams, keys and budgets.
    """
    rnd = random.Random(seed)
    now = now or datetime.now(UTC)
    first = now.astimezone(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    for _ in range(months - 1):
        first = (first - timedelta(days=1)).replace(day=1)
    registry = await load_registry(engine)
    teams, sample_key = await _teams_and_keys(engine, secret_key)
    favourites = {spec[0]: spec[4] for spec in TEAMS}
    models = {
        team.name: [m for m in favourites[team.name] if registry.price_at(m, now) is not None]
        for team in teams
    }
    writer = LedgerWriter(engine, max_batch=1000)
    writer.start()
    written = 0
    total_cost = 0
    try:
        chunk: list[LedgerEntry] = []
        for _ in range(entries):
            entry = _entry(rnd, registry, teams, models, first, now)
            total_cost += entry.cost_nanos
            chunk.append(entry)
            if len(chunk) == 2000:
                await asyncio.gather(*(writer.record(e) for e in chunk))
                written += len(chunk)
                progress(len(chunk))
                chunk = []
        if chunk:
            await asyncio.gather(*(writer.record(e) for e in chunk))
            written += len(chunk)
            progress(len(chunk))
    finally:
        await writer.stop()
    budgets = await _budgets(engine, teams, now)
    return DemoSummary(
        teams=len(teams),
        keys=sum(len(t.keys) for t in teams),
        budgets=budgets,
        entries=written,
        since=first,
        until=now,
        cost_nanos=total_cost,
        sample_team_key=sample_key,
    )


@dataclass(slots=True)
class _Team:
    id: int
    name: str
    share: float
    keys: list[int]


async def _teams_and_keys(
    engine: AsyncEngine, secret_key: str | None
) -> tuple[list[_Team], str | None]:
    secret = await load_hash_secret(engine, secret_key)
    teams: list[_Team] = []
    sample_key = None
    async with create_sessionmaker(engine).begin() as session:
        for name, cost_centre, markup_bps, share, _ in TEAMS:
            team = await session.scalar(select(Team).where(Team.name == name))
            if team is None:
                team = await identity.create_team(
                    session, name, cost_centre=cost_centre, markup_bps=markup_bps
                )
            existing = [key.id for key, _ in await identity.list_keys(session, team.id)]
            keys = list(existing)
            for key_name in KEY_NAMES[: max(0, 3 - len(existing))]:
                key, plaintext = await identity.create_key(session, secret, team, key_name)
                keys.append(key.id)
                if sample_key is None:
                    sample_key = plaintext
            teams.append(_Team(team.id, name, share, keys))
    return teams, sample_key


def _when(rnd: random.Random, first: datetime, now: datetime) -> datetime:
    """A request time: more on weekdays and in office hours, growing towards now."""
    span = (now - first).total_seconds()
    while True:
        # sqrt skews towards recent times: traffic grows month over month.
        at = first + timedelta(seconds=span * math.sqrt(rnd.random()))
        hour = at.hour
        weight = 1.0 if 7 <= hour <= 19 else 0.35
        if at.weekday() >= 5:
            weight *= 0.4
        if rnd.random() < weight:
            return at


def _entry(
    rnd: random.Random,
    registry: PriceRegistry,
    teams: list[_Team],
    models: dict[str, list[str]],
    first: datetime,
    now: datetime,
) -> LedgerEntry:
    team = rnd.choices(teams, weights=[t.share for t in teams])[0]
    key_id = rnd.choices(team.keys, weights=[6 / (i + 1) for i in range(len(team.keys))])[0]
    model = rnd.choice(models[team.name] or ["gpt-4.1-mini"])
    price = registry.price_at(model, now)
    started = _when(rnd, first, now)
    status, http_status = _status(rnd)
    input_tokens = int(rnd.lognormvariate(7.6, 0.9))
    cached = int(input_tokens * rnd.choice((0, 0, 0.3, 0.6))) if status == "ok" else 0
    writes_cache = price is not None and price.provider == "anthropic" and rnd.random() < 0.1
    cache_write = int(input_tokens * 0.2) if writes_cache and status == "ok" else 0
    output_tokens = int(rnd.lognormvariate(5.9, 0.8)) if status == "ok" else 0
    reasoning = int(output_tokens * rnd.uniform(0.3, 0.7)) if model in REASONING_MODELS else 0
    latency_ms = int(rnd.lognormvariate(6.3, 0.5) + output_tokens * rnd.uniform(4, 12))
    if status == "timeout":
        latency_ms = 60_000 + rnd.randrange(5_000)
    if status in ("blocked", "invalid_request"):
        input_tokens, latency_ms = 0, rnd.randrange(1, 8)
    if status in ("upstream_error", "client_disconnected"):
        input_tokens = input_tokens if status == "client_disconnected" else 0
    usage = Usage(
        input_tokens=max(0, input_tokens - cached - cache_write),
        cache_read_tokens=cached,
        cache_write_5m_tokens=cache_write,
        output_tokens=output_tokens,
        reasoning_tokens=reasoning,
    )
    cost = price_cost(usage, price) if price is not None and status != "blocked" else None
    provider = price.provider if price else "openai"
    tags = rnd.sample(TAGS, k=rnd.choice((0, 1, 1, 2)))
    return LedgerEntry(
        request_id=f"demo-{uuid.UUID(int=rnd.getrandbits(128)).hex}",
        started_at=started,
        ended_at=started + timedelta(milliseconds=latency_ms),
        endpoint="/v1/messages" if provider == "anthropic" else "/v1/chat/completions",
        team_id=team.id,
        key_id=key_id,
        end_user=f"user-{rnd.randrange(40):02d}@example.com" if rnd.random() < 0.6 else None,
        tags=tags,
        requested_model=model,
        served_model=model,
        provider=provider,
        stream=rnd.random() < 0.4,
        status=status,
        http_status=http_status,
        input_tokens=usage.input_tokens,
        cache_read_tokens=usage.cache_read_tokens,
        cache_write_5m_tokens=usage.cache_write_5m_tokens,
        output_tokens=usage.output_tokens,
        reasoning_tokens=usage.reasoning_tokens,
        usage_source="provider" if status == "ok" else "none",
        cost_nanos=cost.total if cost else 0,
        input_cost_nanos=cost.input if cost else 0,
        cache_read_cost_nanos=cost.cache_read if cost else 0,
        cache_write_cost_nanos=cost.cache_write if cost else 0,
        output_cost_nanos=cost.output if cost else 0,
        request_fee_nanos=cost.request_fee if cost else 0,
        price_id=price.id if price else None,
        error=None if status == "ok" else f"demo {status}",
    )


def _status(rnd: random.Random) -> tuple[str, int]:
    status, http_status, _ = rnd.choices(STATUSES, weights=[s[2] for s in STATUSES])[0]
    return status, http_status


async def _budgets(engine: AsyncEngine, teams: list[_Team], now: datetime) -> int:
    """A monthly budget per team (sized so some are near or over their thresholds)."""
    created = 0
    async with engine.begin() as connection:
        for index, team in enumerate(teams):
            name = f"{team.name} monthly"
            if await connection.scalar(
                select(Budget.id).where(Budget.name == name, Budget.deleted_at.is_(None))
            ):
                continue
            start, end = period_bounds("monthly", "UTC", now)
            spent = int(
                await connection.scalar(
                    select(func.coalesce(func.sum(LedgerEntryRow.cost_nanos), 0)).where(
                        LedgerEntryRow.team_id == team.id,
                        LedgerEntryRow.started_at >= start,
                        LedgerEntryRow.started_at < (end or now),
                    )
                )
                or 0
            )
            # 60 %, 85 %, 105 %, ... of this month's spend so far: every colour shows.
            ratio = (0.6, 0.85, 1.05, 0.4, 0.92)[index % 5]
            limit = max(usd_to_nanos(5), int(spent / ratio) // 10**7 * 10**7)
            result = await connection.execute(
                insert(Budget).values(
                    name=name,
                    scope="team",
                    team_id=team.id,
                    period="monthly",
                    timezone="UTC",
                    limit_nanos=limit,
                    mode="soft",
                    thresholds="50,80,100",
                    clamp_max_tokens=False,
                    fail_open=False,
                    created_at=now,
                    updated_at=now,
                )
            )
            assert result.inserted_primary_key is not None
            budget_id = result.inserted_primary_key[0]
            await connection.execute(
                insert(BudgetPeriod).values(
                    budget_id=budget_id,
                    period_start=start,
                    period_end=end,
                    spent_nanos=spent,
                    reserved_nanos=0,
                    blocked=False,
                    updated_at=now,
                )
            )
            for threshold in (50, 80, 100):
                if spent * 100 >= limit * threshold:
                    await connection.execute(
                        insert(Alert).values(
                            budget_id=budget_id,
                            period_start=start,
                            kind="threshold",
                            threshold=threshold,
                            message=f"{name} has used {threshold}% of its limit",
                            spent_nanos=spent,
                            limit_nanos=limit,
                            created_at=now - timedelta(hours=(100 - threshold) // 5),
                        )
                    )
            created += 1
    return created
