"""what priced an entry beyond its tokens, and the provider's own reported cost

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-27 12:00:00

Providers bill by service tier, data residency, speed, per-call tool fees and time of
day. Each entry now says which applied (``service_tier``, ``pricing_notes``), what tool
fees it was charged (``tool_fees_nanos``) and, where the provider reports one
(OpenRouter's ``usage.cost``), the provider's own cost beside Ledger's. A price version
carries its service-tier prices and time-of-day windows (``prices.dimensions``, JSON).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Nullable columns: an ALTER on both databases (on PostgreSQL every partition gets them).
    op.add_column("ledger_entries", sa.Column("tool_fees_nanos", sa.BigInteger(), nullable=True))
    op.add_column("ledger_entries", sa.Column("service_tier", sa.String(32), nullable=True))
    op.add_column("ledger_entries", sa.Column("pricing_notes", sa.Text(), nullable=True))
    op.add_column(
        "ledger_entries", sa.Column("provider_cost_nanos", sa.BigInteger(), nullable=True)
    )
    op.add_column("prices", sa.Column("dimensions", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("prices", schema=None) as batch_op:
        batch_op.drop_column("dimensions")
    with op.batch_alter_table("ledger_entries", schema=None) as batch_op:
        batch_op.drop_column("provider_cost_nanos")
        batch_op.drop_column("pricing_notes")
        batch_op.drop_column("service_tier")
        batch_op.drop_column("tool_fees_nanos")
