"""allowed_models on teams and keys: which models their requests may use

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-02 10:00:00

Comma-separated model name patterns (``gpt-4.1*,claude-*``); NULL, the default for
every existing team and key, means no restriction beyond the gateway's own setting.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("teams", sa.Column("allowed_models", sa.Text(), nullable=True))
    op.add_column("api_keys", sa.Column("allowed_models", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("api_keys") as batch:
        batch.drop_column("allowed_models")
    with op.batch_alter_table("teams") as batch:
        batch.drop_column("allowed_models")
