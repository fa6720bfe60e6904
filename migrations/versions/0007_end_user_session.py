"""the end user's session, and the whole end user when it was too long for its column

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-27 10:00:00

Claude Code names a session in every user id: the end user is its account, and the
session is kept in a column of its own so that reports can group on it. An end user
longer than its column is stored shortened (a stable prefix and hash) with the whole
value beside it, rather than refused by the database after the provider was paid.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Nullable columns: an ALTER on both databases (on PostgreSQL every partition gets them).
    op.add_column("ledger_entries", sa.Column("end_user_session", sa.String(128), nullable=True))
    op.add_column("ledger_entries", sa.Column("end_user_full", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("ledger_entries", schema=None) as batch_op:
        batch_op.drop_column("end_user_full")
        batch_op.drop_column("end_user_session")
