"""partition the ledger by month on PostgreSQL; request ids unique per start time

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-26 04:20:00

On PostgreSQL the ledger becomes a table partitioned by month of started_at, with a
partition for every month that has entries, the next two months, and a default one.
A unique key on a partitioned table must contain the partition key, so request ids are
unique together with started_at (on both databases, to keep one schema).
"""

from collections.abc import Sequence
from datetime import UTC, date, datetime

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_INDEXES = {
    "ix_ledger_entries_started_at": "(started_at)",
    "ix_ledger_entries_team_started": "(team_id, started_at)",
    "ix_ledger_entries_key_started": "(key_id, started_at)",
    "ix_ledger_entries_end_user_started": "(end_user, started_at)",
    "ix_ledger_entries_request_id": "(request_id)",
}


def _add_months(first: date, months: int) -> date:
    index = first.month - 1 + months
    return date(first.year + index // 12, index % 12 + 1, 1)


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        _partition_postgresql()
        return
    with op.batch_alter_table("ledger_entries", schema=None) as batch_op:
        batch_op.drop_constraint("uq_ledger_entries_request_id", type_="unique")
        batch_op.create_unique_constraint(
            "uq_ledger_entries_request_started", ["request_id", "started_at"]
        )
        batch_op.create_index("ix_ledger_entries_request_id", ["request_id"], unique=False)


def _partition_postgresql() -> None:
    bind = op.get_bind()
    op.execute("ALTER TABLE ledger_entries RENAME TO ledger_entries_unpartitioned")
    for name in _INDEXES:
        op.execute(f"ALTER INDEX IF EXISTS {name} RENAME TO {name}_old")
    op.execute(
        "ALTER TABLE ledger_entries_unpartitioned "
        "RENAME CONSTRAINT pk_ledger_entries TO pk_ledger_entries_old"
    )
    op.execute(
        "ALTER TABLE ledger_entries_unpartitioned "
        "RENAME CONSTRAINT uq_ledger_entries_request_id TO uq_ledger_entries_request_id_old"
    )
    op.execute("CREATE SEQUENCE IF NOT EXISTS ledger_entry_ids AS BIGINT")
    op.execute(
        """
        CREATE TABLE ledger_entries (
            LIKE ledger_entries_unpartitioned INCLUDING DEFAULTS,
            CONSTRAINT pk_ledger_entries PRIMARY KEY (id, started_at),
            CONSTRAINT uq_ledger_entries_request_started UNIQUE (request_id, started_at)
        ) PARTITION BY RANGE (started_at)
        """
    )
    op.execute("ALTER TABLE ledger_entries ALTER COLUMN id SET DEFAULT nextval('ledger_entry_ids')")
    op.execute("ALTER SEQUENCE ledger_entry_ids OWNED BY ledger_entries.id")
    for name, columns in _INDEXES.items():
        op.execute(f"CREATE INDEX {name} ON ledger_entries {columns}")

    oldest = bind.execute(
        sa.text("SELECT min(started_at) FROM ledger_entries_unpartitioned")
    ).scalar()
    today = datetime.now(UTC).date().replace(day=1)
    first = min(oldest.astimezone(UTC).date().replace(day=1), today) if oldest else today
    month = first
    while month <= _add_months(today, 2):
        end = _add_months(month, 1)
        op.execute(
            f"CREATE TABLE ledger_entries_{month.year:04d}_{month.month:02d} "
            f"PARTITION OF ledger_entries FOR VALUES FROM ('{month.isoformat()} 00:00:00+00') "
            f"TO ('{end.isoformat()} 00:00:00+00')"
        )
        month = end
    op.execute("CREATE TABLE ledger_entries_default PARTITION OF ledger_entries DEFAULT")

    op.execute("INSERT INTO ledger_entries SELECT * FROM ledger_entries_unpartitioned")
    op.execute(
        "SELECT setval('ledger_entry_ids', "
        "COALESCE((SELECT max(id) FROM ledger_entries), 0) + 1, false)"
    )
    op.execute("DROP TABLE ledger_entries_unpartitioned")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE ledger_entries RENAME TO ledger_entries_partitioned")
        for name in _INDEXES:
            op.execute(f"ALTER INDEX IF EXISTS {name} RENAME TO {name}_p")
        op.execute(
            "ALTER TABLE ledger_entries_partitioned "
            "RENAME CONSTRAINT pk_ledger_entries TO pk_ledger_entries_p"
        )
        op.execute(
            """
            CREATE TABLE ledger_entries (
                LIKE ledger_entries_partitioned INCLUDING DEFAULTS,
                CONSTRAINT pk_ledger_entries PRIMARY KEY (id),
                CONSTRAINT uq_ledger_entries_request_id UNIQUE (request_id)
            )
            """
        )
        for name, columns in _INDEXES.items():
            if name != "ix_ledger_entries_request_id":
                op.execute(f"CREATE INDEX {name} ON ledger_entries {columns}")
        op.execute("INSERT INTO ledger_entries SELECT * FROM ledger_entries_partitioned")
        op.execute("DROP TABLE ledger_entries_partitioned CASCADE")
        return
    with op.batch_alter_table("ledger_entries", schema=None) as batch_op:
        batch_op.drop_index("ix_ledger_entries_request_id")
        batch_op.drop_constraint("uq_ledger_entries_request_started", type_="unique")
        batch_op.create_unique_constraint("uq_ledger_entries_request_id", ["request_id"])
