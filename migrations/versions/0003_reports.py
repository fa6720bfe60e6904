"""reports: hourly spend rollups (two levels), closed months and snapshots, late adjustments

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26 03:46:00.773095
"""

import math
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Kept in step with ledger.db.tables.LATENCY_BUCKETS and ledger/reports/histogram.py.
LATENCY_BUCKETS = 42
_SUMS = (
    "input_tokens",
    "cache_read_tokens",
    "cache_write_5m_tokens",
    "cache_write_1h_tokens",
    "output_tokens",
    "reasoning_tokens",
    "cost_nanos",
)


def upgrade() -> None:
    op.create_table(
        "closed_months",
        sa.Column("month", sa.String(length=7), nullable=False),
        sa.Column("timezone", sa.String(length=64), nullable=False),
        sa.Column("period_start", sa.DateTime(timezone=True), nullable=False),
        sa.Column("period_end", sa.DateTime(timezone=True), nullable=False),
        sa.Column("closed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("content_sha256", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("month", name=op.f("pk_closed_months")),
    )
    op.create_table(
        "late_adjustments",
        sa.Column("source_month", sa.String(length=7), nullable=False),
        sa.Column("team_id", sa.Integer(), nullable=False),
        sa.Column("model", sa.String(length=200), nullable=False),
        sa.Column("reported_in", sa.String(length=7), nullable=False),
        sa.Column("entries", sa.BigInteger(), nullable=False),
        sa.Column("requests", sa.BigInteger(), nullable=False),
        *(sa.Column(name, sa.BigInteger(), nullable=False) for name in _SUMS),
        sa.PrimaryKeyConstraint(
            "source_month", "team_id", "model", "reported_in", name=op.f("pk_late_adjustments")
        ),
    )
    op.create_table(
        "month_snapshots",
        sa.Column("month", sa.String(length=7), nullable=False),
        sa.Column("format", sa.String(length=8), nullable=False),
        sa.Column("media_type", sa.String(length=100), nullable=False),
        sa.Column("content", sa.LargeBinary(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("month", "format", name=op.f("pk_month_snapshots")),
    )
    op.create_table(
        "spend_rollups_hourly",
        sa.Column("epoch_hour", sa.BigInteger(), nullable=False),
        sa.Column("team_id", sa.Integer(), nullable=False),
        sa.Column("key_id", sa.Integer(), nullable=False),
        sa.Column("model", sa.String(length=200), nullable=False),
        sa.Column("provider", sa.String(length=64), nullable=False),
        sa.Column("status", sa.String(length=32), nullable=False),
        *_rollup_sums(),
        sa.PrimaryKeyConstraint(
            "epoch_hour",
            "team_id",
            "key_id",
            "model",
            "provider",
            "status",
            name=op.f("pk_spend_rollups_hourly"),
        ),
    )
    op.create_table(
        "spend_rollups_team_hourly",
        sa.Column("epoch_hour", sa.BigInteger(), nullable=False),
        sa.Column("team_id", sa.Integer(), nullable=False),
        sa.Column("model", sa.String(length=200), nullable=False),
        sa.Column("provider", sa.String(length=64), nullable=False),
        *_rollup_sums(),
        sa.PrimaryKeyConstraint(
            "epoch_hour", "team_id", "model", "provider", name=op.f("pk_spend_rollups_team_hourly")
        ),
    )
    with op.batch_alter_table("ledger_entries", schema=None) as batch_op:
        batch_op.create_index(
            "ix_ledger_entries_end_user_started", ["end_user", "started_at"], unique=False
        )

    _backfill_rollups()


def downgrade() -> None:
    with op.batch_alter_table("ledger_entries", schema=None) as batch_op:
        batch_op.drop_index("ix_ledger_entries_end_user_started")

    op.drop_table("spend_rollups_team_hourly")
    op.drop_table("spend_rollups_hourly")
    op.drop_table("month_snapshots")
    op.drop_table("late_adjustments")
    op.drop_table("closed_months")


def _rollup_sums() -> list[sa.Column]:
    return [
        sa.Column("entries", sa.BigInteger(), nullable=False),
        sa.Column("requests", sa.BigInteger(), nullable=False),
        sa.Column("errors", sa.BigInteger(), nullable=False),
        sa.Column("blocked", sa.BigInteger(), nullable=False),
        *(sa.Column(name, sa.BigInteger(), nullable=False) for name in _SUMS),
        *(
            sa.Column(f"latency_{b:02d}", sa.BigInteger(), nullable=False)
            for b in range(LATENCY_BUCKETS)
        ),
    ]


def _backfill_rollups() -> None:
    """Roll up the entries written before this revision (the writer keeps it up after)."""
    if op.get_bind().dialect.name == "postgresql":
        hour = "CAST(FLOOR(EXTRACT(EPOCH FROM started_at) / 3600) AS BIGINT)"
    else:
        hour = "CAST(strftime('%s', started_at) AS INTEGER) / 3600"
    bounds = [0] + [math.isqrt(2 ** (b - 1) - 1) + 1 for b in range(1, LATENCY_BUCKETS)]
    latency = []
    for b in range(LATENCY_BUCKETS):
        upper = f" AND latency_ms < {bounds[b + 1]}" if b + 1 < LATENCY_BUCKETS else ""
        lower = f"latency_ms >= {bounds[b]}" if b > 0 else "1 = 1"
        latency.append(f"SUM(CASE WHEN kind = 'request' AND {lower}{upper} THEN 1 ELSE 0 END)")
    errors = "'upstream_error', 'timeout', 'invalid_request', 'interrupted'"
    latency_columns = [f"latency_{b:02d}" for b in range(LATENCY_BUCKETS)]
    sums = ["entries", "requests", "errors", "blocked", *_SUMS, *latency_columns]
    op.execute(
        f"""
        INSERT INTO spend_rollups_hourly (
            epoch_hour, team_id, key_id, model, provider, status, {", ".join(sums)}
        )
        SELECT {hour}, COALESCE(team_id, 0), COALESCE(key_id, 0),
            COALESCE(requested_model, ''), COALESCE(provider, ''), status, COUNT(*),
            SUM(CASE WHEN kind = 'request' THEN 1 ELSE 0 END),
            SUM(CASE WHEN kind = 'request' AND status IN ({errors}) THEN 1 ELSE 0 END),
            SUM(CASE WHEN kind = 'request' AND status = 'blocked' THEN 1 ELSE 0 END),
            {", ".join(f"SUM({name})" for name in _SUMS)}, {", ".join(latency)}
        FROM ledger_entries
        GROUP BY {hour}, COALESCE(team_id, 0), COALESCE(key_id, 0),
            COALESCE(requested_model, ''), COALESCE(provider, ''), status
        """  # noqa: S608 - every piece is a constant of this file
    )
    op.execute(
        f"""
        INSERT INTO spend_rollups_team_hourly (
            epoch_hour, team_id, model, provider, {", ".join(sums)}
        )
        SELECT epoch_hour, team_id, model, provider, {", ".join(f"SUM({n})" for n in sums)}
        FROM spend_rollups_hourly
        GROUP BY epoch_hour, team_id, model, provider
        """  # noqa: S608 - every piece is a constant of this file
    )
