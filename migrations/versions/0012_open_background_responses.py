"""open_background_responses: background responses whose one entry is still owed

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-10 10:00:00

A ``background: true`` response is answered at once and finishes later; its single
ledger entry is written when it is terminal, from the provider's usage. Until then its
row here holds the entry as it stood at creation and its durable budget reservations,
so a restart loses nothing and the poller (any process) can settle it.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "open_background_responses",
        sa.Column("response_id", sa.String(length=200), nullable=False),
        sa.Column("request_id", sa.String(length=64), nullable=False),
        sa.Column("provider", sa.String(length=128), nullable=False),
        sa.Column("model", sa.String(length=256), nullable=True),
        sa.Column("price_id", sa.Integer(), nullable=True),
        sa.Column("team_id", sa.Integer(), nullable=True),
        sa.Column("estimated_cost_nanos", sa.BigInteger(), nullable=False),
        sa.Column("entry", sa.Text(), nullable=False),
        sa.Column("holds", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("claimed_by", sa.String(length=64), nullable=True),
        sa.Column("claimed_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("response_id", name=op.f("pk_open_background_responses")),
        sa.UniqueConstraint("request_id", name=op.f("uq_open_background_responses_request_id")),
    )
    op.create_index(
        "ix_open_background_responses_created_at",
        "open_background_responses",
        ["created_at"],
        unique=False,
    )


def downgrade() -> None:
    op.drop_index("ix_open_background_responses_created_at", table_name="open_background_responses")
    op.drop_table("open_background_responses")
