"""claims (several workers on one incoming folder) and model_activations (promotions for every station)

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "claims",
        sa.Column("content_hash", sa.String(length=64), nullable=False),
        sa.Column("worker", sa.String(length=160), nullable=False),
        sa.Column("station", sa.String(length=64), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("claimed_at", sa.Float(), nullable=False),
        sa.Column("lease_until", sa.Float(), nullable=False),
        sa.Column("taken_over", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("content_hash", name=op.f("pk_claims")),
    )
    op.create_index(op.f("ix_claims_lease_until"), "claims", ["lease_until"], unique=False)
    op.create_table(
        "model_activations",
        sa.Column(
            "id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False
        ),
        sa.Column("version", sa.String(length=64), nullable=False),
        sa.Column("station", sa.String(length=64), nullable=True),
        sa.Column("activated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("activated_by", sa.String(length=160), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_model_activations")),
    )
    op.create_index(op.f("ix_model_activations_station"), "model_activations", ["station"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_model_activations_station"), table_name="model_activations")
    op.drop_table("model_activations")
    op.drop_index(op.f("ix_claims_lease_until"), table_name="claims")
    op.drop_table("claims")
