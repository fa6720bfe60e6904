"""The schema. Alembic migrations are the only way it reaches a database.

Money columns are integers of nano-USD (prices: nano-USD per million tokens), so
SQLite and PostgreSQL store exactly the same values.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# SQLite only auto-increments a column declared exactly INTEGER PRIMARY KEY.
BigId = BigInteger().with_variant(Integer(), "sqlite")


class Timestamp(TypeDecorator[datetime]):
    """An instant, stored in UTC and always handed back timezone-aware.

    SQLite has no time zones and returns naive values; normalising here means no
    caller ever compares a naive time with an aware one.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetimes are ambiguous; pass an aware one")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


metadata = Base.metadata


class Team(Base):
    __tablename__ = "teams"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    cost_centre: Mapped[str | None] = mapped_column(String(100))
    # Chargeback markup in basis points (1250 = 12.50 %): exact, no float.
    markup_bps: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    created_at: Mapped[datetime] = mapped_column(Timestamp())
    # Comma-separated model name patterns the team's keys may use; NULL: no restriction.
    allowed_models: Mapped[str | None] = mapped_column(Text)


class ApiKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    team_id: Mapped[int] = mapped_column(Integer, index=True)
    name: Mapped[str] = mapped_column(String(100))
    prefix: Mapped[str] = mapped_column(String(32))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(Timestamp())
    revoked_at: Mapped[datetime | None] = mapped_column(Timestamp())
    allowed_models: Mapped[str | None] = mapped_column(Text)  # as on Team, for this key


class AdminCredential(Base):
    """The admin key generated at first start, kept only as its keyed hash."""

    __tablename__ = "admin_credentials"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(Timestamp())
    revoked_at: Mapped[datetime | None] = mapped_column(Timestamp())


class InstanceSetting(Base):
    """Small values every Ledger process sharing the database must agree on."""

    __tablename__ = "instance_settings"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


class PriceRow(Base):
    """One version of a model's price; a change is a new row with a later effective date."""

    __tablename__ = "prices"
    __table_args__ = (UniqueConstraint("model", "provider", "effective_from", "origin"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model: Mapped[str] = mapped_column(String(200), index=True)
    provider: Mapped[str] = mapped_column(String(64))
    effective_from: Mapped[datetime] = mapped_column(Timestamp())
    # catalog (ours, catalog.toml) | genai-prices | config | admin | import
    origin: Mapped[str] = mapped_column(String(16))
    source: Mapped[str] = mapped_column(String(500))
    input: Mapped[int] = mapped_column(BigInteger)
    cached_input: Mapped[int] = mapped_column(BigInteger)
    cache_write_5m: Mapped[int] = mapped_column(BigInteger)
    cache_write_1h: Mapped[int] = mapped_column(BigInteger)
    output: Mapped[int] = mapped_column(BigInteger)
    request_fee: Mapped[int] = mapped_column(BigInteger, default=0)
    long_context_threshold: Mapped[int | None] = mapped_column(BigInteger)
    long_context_input: Mapped[int | None] = mapped_column(BigInteger)
    long_context_cached_input: Mapped[int | None] = mapped_column(BigInteger)
    long_context_cache_write_5m: Mapped[int | None] = mapped_column(BigInteger)
    long_context_cache_write_1h: Mapped[int | None] = mapped_column(BigInteger)
    long_context_output: Mapped[int | None] = mapped_column(BigInteger)
    free: Mapped[bool] = mapped_column(Boolean, default=False)
    aliases: Mapped[str] = mapped_column(Text, default="")  # comma-separated
    # Service-tier prices and time-of-day windows, JSON (ledger.db.prices); NULL: none.
    dimensions: Mapped[str | None] = mapped_column(Text)
    tiers: Mapped[str] = mapped_column(Text, default="", server_default="")  # JSON, see _row
    input_audio: Mapped[int | None] = mapped_column(BigInteger)
    cached_audio_input: Mapped[int | None] = mapped_column(BigInteger)
    output_audio: Mapped[int | None] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(Timestamp())


class LedgerEntryRow(Base):
    """One final, append-only record per request. Corrections are new rows."""

    __tablename__ = "ledger_entries"
    __table_args__ = (
        Index("ix_ledger_entries_started_at", "started_at"),
        Index("ix_ledger_entries_team_started", "team_id", "started_at"),
        Index("ix_ledger_entries_key_started", "key_id", "started_at"),
        UniqueConstraint("request_id", "started_at", name="uq_ledger_entries_request_started"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    # Unique with started_at rather than alone: on PostgreSQL the table is partitioned by
    # month, and a unique key there must contain the partition key. A replayed entry has
    # the same request id and start, so writes stay idempotent.
    request_id: Mapped[str] = mapped_column(String(64))  # found by the unique key's index
    kind: Mapped[str] = mapped_column(String(16), default="request")
    corrects_request_id: Mapped[str | None] = mapped_column(String(64))
    started_at: Mapped[datetime] = mapped_column(Timestamp())
    first_token_at: Mapped[datetime | None] = mapped_column(Timestamp())
    ended_at: Mapped[datetime] = mapped_column(Timestamp())
    latency_ms: Mapped[int] = mapped_column(Integer, default=0)
    team_id: Mapped[int | None] = mapped_column(Integer)
    key_id: Mapped[int | None] = mapped_column(Integer)
    end_user: Mapped[str | None] = mapped_column(String(256))  # see ledger/endusers.py
    end_user_session: Mapped[str | None] = mapped_column(String(128))
    end_user_full: Mapped[str | None] = mapped_column(Text)  # only when end_user shortened it
    tags: Mapped[str | None] = mapped_column(Text)  # JSON array of strings
    endpoint: Mapped[str] = mapped_column(String(64))
    requested_model: Mapped[str | None] = mapped_column(String(200))
    served_model: Mapped[str | None] = mapped_column(String(200))
    provider: Mapped[str | None] = mapped_column(String(64))
    stream: Mapped[bool] = mapped_column(Boolean, default=False)
    status: Mapped[str] = mapped_column(String(32))
    http_status: Mapped[int] = mapped_column(Integer)
    input_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    cache_read_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    cache_write_5m_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    cache_write_1h_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    output_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    reasoning_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    estimated_input_tokens: Mapped[int | None] = mapped_column(BigInteger)
    usage_source: Mapped[str] = mapped_column(String(16), default="none")
    cost_nanos: Mapped[int] = mapped_column(BigInteger, default=0)
    input_cost_nanos: Mapped[int] = mapped_column(BigInteger, default=0)
    cache_read_cost_nanos: Mapped[int] = mapped_column(BigInteger, default=0)
    cache_write_cost_nanos: Mapped[int] = mapped_column(BigInteger, default=0)
    output_cost_nanos: Mapped[int] = mapped_column(BigInteger, default=0)
    request_fee_nanos: Mapped[int] = mapped_column(BigInteger, default=0)
    # Per-call tool fees (web searches), the service tier that priced the entry, what
    # else applied (multipliers, fees: JSON list of phrases), and the provider's own
    # reported cost (OpenRouter's usage.cost), kept beside Ledger's for comparison.
    tool_fees_nanos: Mapped[int | None] = mapped_column(BigInteger, default=0)
    service_tier: Mapped[str | None] = mapped_column(String(32))
    pricing_notes: Mapped[str | None] = mapped_column(Text)
    provider_cost_nanos: Mapped[int | None] = mapped_column(BigInteger)
    price_id: Mapped[int | None] = mapped_column(Integer)
    budget_id: Mapped[int | None] = mapped_column(Integer)  # the budget that blocked it
    error: Mapped[str | None] = mapped_column(Text)
    raw_usage: Mapped[str | None] = mapped_column(Text)  # a disbelieved usage object, JSON


class LedgerDeadLetter(Base):
    """A ledger entry the database refused, kept (never dropped) until it is written.

    ``state`` is ``unstored`` (the entry is in no ledger row: retried until it is),
    ``salvaged`` (a copy cut to fit the columns is in the ledger, flagged in its
    ``error``; this row keeps the original) or ``written`` (a retry wrote the original).
    Every column is TEXT or a number: nothing here has a length for the entry to exceed.
    """

    __tablename__ = "ledger_dead_letters"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    # sha256 of the entry's identity (request id and start): a request id of any length
    # is unique here without an index on the text itself.
    entry_key: Mapped[str] = mapped_column(String(64), unique=True)
    request_id: Mapped[str] = mapped_column(Text)
    state: Mapped[str] = mapped_column(String(16), index=True)
    entry: Mapped[str] = mapped_column(Text)  # the entry as it was refused, ASCII JSON
    error: Mapped[str] = mapped_column(Text)  # why the database refused it, last time
    changes: Mapped[str | None] = mapped_column(Text)  # what salvage changed, if it did
    attempts: Mapped[int] = mapped_column(Integer)
    first_failed_at: Mapped[datetime] = mapped_column(Timestamp())
    last_failed_at: Mapped[datetime] = mapped_column(Timestamp())
    resolved_at: Mapped[datetime | None] = mapped_column(Timestamp())


class Budget(Base):
    """A spending limit on one scope, per calendar period in the budget's own time zone."""

    __tablename__ = "budgets"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(100))
    scope: Mapped[str] = mapped_column(String(16))  # org | team | key | user | model | tag
    team_id: Mapped[int | None] = mapped_column(Integer, index=True)
    key_id: Mapped[int | None] = mapped_column(Integer)
    end_user: Mapped[str | None] = mapped_column(String(256))
    model: Mapped[str | None] = mapped_column(String(200))
    tag: Mapped[str | None] = mapped_column(String(64))
    period: Mapped[str] = mapped_column(String(16))  # daily | weekly | monthly | quarterly | none
    timezone: Mapped[str] = mapped_column(String(64), default="UTC")
    limit_nanos: Mapped[int] = mapped_column(BigInteger)
    mode: Mapped[str] = mapped_column(String(8))  # hard | soft
    thresholds: Mapped[str] = mapped_column(String(100), default="50,80,100")
    clamp_max_tokens: Mapped[bool] = mapped_column(Boolean, default=False)
    fail_open: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(Timestamp())
    updated_at: Mapped[datetime] = mapped_column(Timestamp())
    deleted_at: Mapped[datetime | None] = mapped_column(Timestamp())


class BudgetPeriod(Base):
    """The running state of one budget in one period; a new period is a new row at zero."""

    __tablename__ = "budget_periods"

    budget_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    period_start: Mapped[datetime] = mapped_column(Timestamp(), primary_key=True)
    period_end: Mapped[datetime | None] = mapped_column(Timestamp())
    spent_nanos: Mapped[int] = mapped_column(BigInteger, default=0)
    reserved_nanos: Mapped[int] = mapped_column(BigInteger, default=0)
    blocked: Mapped[bool] = mapped_column(Boolean, default=False)
    updated_at: Mapped[datetime] = mapped_column(Timestamp())


class BudgetReservation(Base):
    """Money set aside before forwarding: one request's worst case, or a process's lease."""

    __tablename__ = "budget_reservations"
    __table_args__ = (Index("ix_budget_reservations_expires_at", "expires_at"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    budget_id: Mapped[int] = mapped_column(Integer)
    period_start: Mapped[datetime] = mapped_column(Timestamp())
    kind: Mapped[str] = mapped_column(String(8))  # request | lease
    request_id: Mapped[str | None] = mapped_column(String(64))
    owner: Mapped[str] = mapped_column(String(64))
    amount_nanos: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(Timestamp())
    expires_at: Mapped[datetime] = mapped_column(Timestamp())


class Alert(Base):
    """One alert per budget, kind, threshold and period: the unique key makes it send once."""

    __tablename__ = "alerts"
    __table_args__ = (
        UniqueConstraint(
            "budget_id", "period_start", "kind", "threshold", name="uq_alerts_once_per_period"
        ),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    budget_id: Mapped[int] = mapped_column(Integer, index=True)
    period_start: Mapped[datetime] = mapped_column(Timestamp())
    kind: Mapped[str] = mapped_column(String(16))  # threshold | forecast | blocked | unblocked
    threshold: Mapped[int] = mapped_column(Integer, default=0)  # percent; 0 when not a threshold
    message: Mapped[str] = mapped_column(Text)
    spent_nanos: Mapped[int] = mapped_column(BigInteger)
    limit_nanos: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(Timestamp())


class AlertDelivery(Base):
    """The outbox: one row per alert and channel, retried until delivered."""

    __tablename__ = "alert_deliveries"
    __table_args__ = (UniqueConstraint("alert_id", "channel"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    alert_id: Mapped[int] = mapped_column(Integer, index=True)
    channel: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16))  # pending | delivered | failed
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text)
    next_attempt_at: Mapped[datetime] = mapped_column(Timestamp())
    delivered_at: Mapped[datetime | None] = mapped_column(Timestamp())


class SchedulerRun(Base):
    """A scheduled job's tick, claimed by exactly one process (the primary key decides)."""

    __tablename__ = "scheduler_runs"

    job: Mapped[str] = mapped_column(String(64), primary_key=True)
    tick: Mapped[datetime] = mapped_column(Timestamp(), primary_key=True)
    owner: Mapped[str] = mapped_column(String(64))
    started_at: Mapped[datetime] = mapped_column(Timestamp())
    finished_at: Mapped[datetime | None] = mapped_column(Timestamp())


class OpenBackgroundResponse(Base):
    """A ``background: true`` response still running at its provider: its entry is owed.

    The entry is written once, when the response is terminal (the client's retrieve, a
    cancel, or the poller finds it so). ``entry`` is the request's entry as it stood at
    creation (JSON), ``holds`` its durable budget reservations; ``claimed_by`` and
    ``claimed_at`` say which process is settling it (a stale claim is taken over).
    """

    __tablename__ = "open_background_responses"
    __table_args__ = (Index("ix_open_background_responses_created_at", "created_at"),)

    response_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    request_id: Mapped[str] = mapped_column(String(64), unique=True)
    provider: Mapped[str] = mapped_column(String(128))
    model: Mapped[str | None] = mapped_column(String(256))
    price_id: Mapped[int | None] = mapped_column(Integer)
    team_id: Mapped[int | None] = mapped_column(Integer)
    estimated_cost_nanos: Mapped[int] = mapped_column(BigInteger, default=0)
    entry: Mapped[str] = mapped_column(Text)
    holds: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(Timestamp())
    claimed_by: Mapped[str | None] = mapped_column(String(64))
    claimed_at: Mapped[datetime | None] = mapped_column(Timestamp())


# -- reports: rollups, closed months, late adjustments --------------------------------
# (Imported here rather than at the top so that this section can be appended on its own.)
from typing import Any  # noqa: E402

from sqlalchemy import Column, LargeBinary, Table  # noqa: E402

# How many latency buckets each rollup row keeps (see ledger/reports/histogram.py).
LATENCY_BUCKETS = 42


def _rollup_table(name: str, *dimensions: Column[Any]) -> Table:
    """Sums of ledger entries per UTC hour and dimensions, kept by the ledger writer.

    They are updated in the same transaction as the entries they sum. Dimensions are
    never NULL so that an upsert can match them: 0 stands for "no team/key", "" for
    "no model/provider".
    """
    return Table(
        name,
        metadata,
        Column("epoch_hour", BigInteger, primary_key=True),  # hours since 1970-01-01T00:00Z
        *dimensions,
        Column("entries", BigInteger, nullable=False),  # every kind, adjustments included
        Column("requests", BigInteger, nullable=False),  # kind == "request" only
        Column("errors", BigInteger, nullable=False),  # requests that failed
        Column("blocked", BigInteger, nullable=False),  # requests a budget refused
        Column("input_tokens", BigInteger, nullable=False),
        Column("cache_read_tokens", BigInteger, nullable=False),
        Column("cache_write_5m_tokens", BigInteger, nullable=False),
        Column("cache_write_1h_tokens", BigInteger, nullable=False),
        Column("output_tokens", BigInteger, nullable=False),
        Column("reasoning_tokens", BigInteger, nullable=False),
        Column("cost_nanos", BigInteger, nullable=False),
        *(Column(f"latency_{b:02d}", BigInteger, nullable=False) for b in range(LATENCY_BUCKETS)),
    )


# Every dimension the spend report can read from rollups.
spend_rollups_hourly = _rollup_table(
    "spend_rollups_hourly",
    Column("team_id", Integer, primary_key=True),
    Column("key_id", Integer, primary_key=True),
    Column("model", String(200), primary_key=True),  # the requested model
    Column("provider", String(64), primary_key=True),
    Column("status", String(32), primary_key=True),
)

# The same sums per team and model only: a few rows an hour, for the monthly report and
# for series grouped or filtered by team, model and provider.
spend_rollups_team_hourly = _rollup_table(
    "spend_rollups_team_hourly",
    Column("team_id", Integer, primary_key=True),
    Column("model", String(200), primary_key=True),
    Column("provider", String(64), primary_key=True),
)

# The user group-by and filter read raw entries; this keeps them to the requested range.
Index("ix_ledger_entries_end_user_started", LedgerEntryRow.end_user, LedgerEntryRow.started_at)


class ClosedMonth(Base):
    """A month finance has closed: its report is frozen in ``month_snapshots``."""

    __tablename__ = "closed_months"

    month: Mapped[str] = mapped_column(String(7), primary_key=True)  # YYYY-MM
    timezone: Mapped[str] = mapped_column(String(64))
    period_start: Mapped[datetime] = mapped_column(Timestamp())
    period_end: Mapped[datetime] = mapped_column(Timestamp())
    closed_at: Mapped[datetime] = mapped_column(Timestamp())
    content_sha256: Mapped[str] = mapped_column(String(64))  # of the JSON snapshot


class MonthSnapshot(Base):
    """The exact bytes of a closed month's report in one format, and their sha256."""

    __tablename__ = "month_snapshots"

    month: Mapped[str] = mapped_column(String(7), primary_key=True)
    format: Mapped[str] = mapped_column(String(8), primary_key=True)  # json | csv | xlsx
    media_type: Mapped[str] = mapped_column(String(100))
    content: Mapped[bytes] = mapped_column(LargeBinary)
    sha256: Mapped[str] = mapped_column(String(64))


class ReconciliationPull(Base):
    """One pull of a provider's usage and cost reports for a month, kept as it came."""

    __tablename__ = "reconciliation_pulls"
    __table_args__ = (
        Index("ix_reconciliation_pulls_provider_month", "provider", "month", "fetched_at"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    provider: Mapped[str] = mapped_column(String(64))
    month: Mapped[str] = mapped_column(String(7))  # YYYY-MM, UTC days
    fetched_at: Mapped[datetime] = mapped_column(Timestamp())
    content: Mapped[str] = mapped_column(Text)  # JSON: every page of every report, as sent


class LateAdjustment(Base):
    """Entries that reached a month after it was closed, summed per team and model.

    They are reported in the next open month (``reported_in`` is "" until the month
    that shows them is closed in turn), never by changing the closed one.
    """

    __tablename__ = "late_adjustments"

    source_month: Mapped[str] = mapped_column(String(7), primary_key=True)
    team_id: Mapped[int] = mapped_column(Integer, primary_key=True)  # 0: no team
    model: Mapped[str] = mapped_column(String(200), primary_key=True)  # "": no model
    reported_in: Mapped[str] = mapped_column(String(7), primary_key=True)  # "": still open
    entries: Mapped[int] = mapped_column(BigInteger)
    requests: Mapped[int] = mapped_column(BigInteger)
    input_tokens: Mapped[int] = mapped_column(BigInteger)
    cache_read_tokens: Mapped[int] = mapped_column(BigInteger)
    cache_write_5m_tokens: Mapped[int] = mapped_column(BigInteger)
    cache_write_1h_tokens: Mapped[int] = mapped_column(BigInteger)
    output_tokens: Mapped[int] = mapped_column(BigInteger)
    reasoning_tokens: Mapped[int] = mapped_column(BigInteger)
    cost_nanos: Mapped[int] = mapped_column(BigInteger)
