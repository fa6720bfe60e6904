"""drop the ledger's request_id index: the unique (request_id, started_at) key serves it

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-26 15:30:00

Every ledger insert maintained seven indexes, one of them a copy of the leading column
of the unique key on (request_id, started_at). Lookups by request id use that key's
index, so the copy only cost time on every write.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # On PostgreSQL, dropping the partitioned index drops each partition's with it.
    op.drop_index("ix_ledger_entries_request_id", table_name="ledger_entries")


def downgrade() -> None:
    op.create_index("ix_ledger_entries_request_id", "ledger_entries", ["request_id"])
