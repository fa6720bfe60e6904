"""prices: every tier, audio prices, and the catalog's provider in the unique key

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-02 10:00:00

genai-prices prices the same model id differently per provider, so a price version is
unique per (model, provider, start, origin). Tiers at any threshold are kept as JSON
(the long_context_* columns keep the first tier, for readers of the old shape).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("prices") as batch:
        batch.add_column(sa.Column("tiers", sa.Text(), nullable=False, server_default=""))
        batch.add_column(sa.Column("input_audio", sa.BigInteger(), nullable=True))
        batch.add_column(sa.Column("cached_audio_input", sa.BigInteger(), nullable=True))
        batch.add_column(sa.Column("output_audio", sa.BigInteger(), nullable=True))
        batch.drop_constraint("uq_prices_model", type_="unique")
        batch.create_unique_constraint(
            "uq_prices_model", ["model", "provider", "effective_from", "origin"]
        )


def downgrade() -> None:
    with op.batch_alter_table("prices") as batch:
        batch.drop_constraint("uq_prices_model", type_="unique")
        batch.create_unique_constraint("uq_prices_model", ["model", "effective_from", "origin"])
        batch.drop_column("output_audio")
        batch.drop_column("cached_audio_input")
        batch.drop_column("input_audio")
        batch.drop_column("tiers")
