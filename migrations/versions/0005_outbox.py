"""outbox: committed results the MQTT broker has not acknowledged yet ([mqtt])

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | None = None
depends_on: str | None = None

RowId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "outbox",
        sa.Column("result_id", RowId, nullable=False),
        sa.Column("station", sa.String(length=64), nullable=False),
        sa.Column("queued_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["result_id"], ["results.id"], name="fk_outbox_result_id_results", ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("result_id", name="pk_outbox"),
    )
    op.create_index("ix_outbox_station", "outbox", ["station"])


def downgrade() -> None:
    op.drop_index("ix_outbox_station", table_name="outbox")
    op.drop_table("outbox")
