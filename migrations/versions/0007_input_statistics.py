"""results.brightness, results.contrast: what the model saw (the mean and standard deviation of its
inputs), for the input-drift gauges

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    with op.batch_alter_table("results") as batch:
        batch.add_column(sa.Column("brightness", sa.Float(), nullable=True))
        batch.add_column(sa.Column("contrast", sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("results") as batch:
        batch.drop_column("contrast")
        batch.drop_column("brightness")
