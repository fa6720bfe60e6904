"""reconciliation: the providers' own usage and cost reports, as pulled

Revision ID: 0015
Revises: 0012
Create Date: 2026-12-10 10:00:00

Each pull of a provider's reports for a month is kept whole (what the provider said, and
when), so the reconciliation can be read again without asking the provider.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0015"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "reconciliation_pulls",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            primary_key=True,
            autoincrement=True,
        ),
        sa.Column("provider", sa.String(64), nullable=False),
        sa.Column("month", sa.String(7), nullable=False),
        sa.Column("fetched_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("content", sa.Text(), nullable=False),
    )
    op.create_index(
        "ix_reconciliation_pulls_provider_month",
        "reconciliation_pulls",
        ["provider", "month", "fetched_at"],
    )


def downgrade() -> None:
    op.drop_index("ix_reconciliation_pulls_provider_month", "reconciliation_pulls")
    op.drop_table("reconciliation_pulls")
