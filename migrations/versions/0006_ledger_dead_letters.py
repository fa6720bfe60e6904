"""ledger_dead_letters: entries the database refused, kept rather than dropped

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-08 02:40:00

An entry the ledger table will not take (a value longer than its column, an integer
beyond 64 bits, a constraint an operator added) used to be logged and dropped. It is
kept here instead, as JSON in a TEXT column (no limit for it to exceed), and retried.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "ledger_dead_letters",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("entry_key", sa.String(length=64), nullable=False),
        sa.Column("request_id", sa.Text(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("entry", sa.Text(), nullable=False),
        sa.Column("error", sa.Text(), nullable=False),
        sa.Column("changes", sa.Text(), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("first_failed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_failed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("resolved_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ledger_dead_letters")),
        sa.UniqueConstraint("entry_key", name=op.f("uq_ledger_dead_letters_entry_key")),
    )
    op.create_index(
        op.f("ix_ledger_dead_letters_state"), "ledger_dead_letters", ["state"], unique=False
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_ledger_dead_letters_state"), table_name="ledger_dead_letters")
    op.drop_table("ledger_dead_letters")
