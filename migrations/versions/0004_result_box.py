"""results.box_*: where a tiled model found the symbol (the best tile, frame pixels); label boxes

results.label_box and examples.box: where a human says the symbol is ("x,y,w,h"), for tiled training.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | None = None
depends_on: str | None = None

COLUMNS = ("box_x", "box_y", "box_w", "box_h")


def upgrade() -> None:
    with op.batch_alter_table("results") as batch:
        for name in COLUMNS:
            batch.add_column(sa.Column(name, sa.Integer(), nullable=True))
        batch.add_column(sa.Column("label_box", sa.String(length=64), nullable=True))
    with op.batch_alter_table("examples") as batch:
        batch.add_column(sa.Column("box", sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("examples") as batch:
        batch.drop_column("box")
    with op.batch_alter_table("results") as batch:
        batch.drop_column("label_box")
        for name in reversed(COLUMNS):
            batch.drop_column(name)
