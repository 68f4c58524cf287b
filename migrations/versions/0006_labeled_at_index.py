"""results.labeled_at indexed: the model-quality gauges count the labels of the last day and week

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01
"""

from __future__ import annotations

from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_index("ix_results_labeled_at", "results", ["labeled_at"])


def downgrade() -> None:
    op.drop_index("ix_results_labeled_at", table_name="results")
