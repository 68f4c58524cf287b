"""results: one row per distinct image content

Revision ID: 0001
Revises:
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "results",
        sa.Column(
            "id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False
        ),
        sa.Column("content_hash", sa.String(length=64), nullable=False),
        sa.Column("original_name", sa.Text(), nullable=False),
        sa.Column("stored_path", sa.Text(), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("width", sa.Integer(), nullable=True),
        sa.Column("height", sa.Integer(), nullable=True),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("processed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("latency_s", sa.Float(), nullable=False),
        sa.Column("model_version", sa.String(length=64), nullable=True),
        sa.Column("threshold", sa.Float(), nullable=True),
        sa.Column("score", sa.Float(), nullable=True),
        sa.Column("verdict", sa.String(length=8), nullable=True),
        sa.Column("status", sa.String(length=8), nullable=False),
        sa.Column("error_reason", sa.Text(), nullable=True),
        sa.Column("station", sa.String(length=64), nullable=False),
        sa.Column("label", sa.String(length=8), nullable=True),
        sa.Column("labeled_by", sa.String(length=128), nullable=True),
        sa.Column("labeled_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint("verdict IN ('present', 'absent')", name=op.f("ck_results_verdict")),
        sa.CheckConstraint("status IN ('ok', 'error')", name=op.f("ck_results_status")),
        sa.CheckConstraint("label IN ('present', 'absent')", name=op.f("ck_results_label")),
        sa.CheckConstraint(
            "(status = 'ok' AND verdict IS NOT NULL AND score IS NOT NULL)"
            " OR (status = 'error' AND error_reason IS NOT NULL)",
            name=op.f("ck_results_status_fields"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_results")),
        sa.UniqueConstraint("content_hash", name=op.f("uq_results_content_hash")),
    )
    op.create_index(op.f("ix_results_processed_at"), "results", ["processed_at"])
    op.create_index(op.f("ix_results_status"), "results", ["status"])
    op.create_index(op.f("ix_results_verdict"), "results", ["verdict"])
    op.create_index(op.f("ix_results_station"), "results", ["station"])
    op.create_index("ix_results_station_processed_at", "results", ["station", "processed_at"])


def downgrade() -> None:
    op.drop_table("results")
