"""keep a provider's disbelieved usage on its ledger entry

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-27 10:00:00

Usage that is not a plausible count (negative, a string, a fraction, more than any model
reads or writes) is not believed: the entry is priced from Ledger's estimate and the
provider's usage object is kept, as it came, in raw_usage.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # A nullable column without a default: on PostgreSQL a catalogue change only, and it
    # reaches every partition of the ledger from the partitioned parent.
    with op.batch_alter_table("ledger_entries", schema=None) as batch_op:
        batch_op.add_column(sa.Column("raw_usage", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("ledger_entries", schema=None) as batch_op:
        batch_op.drop_column("raw_usage")
