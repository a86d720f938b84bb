"""Pending jobs (durable file removals, deletions, GC); metric runs; log batch ids.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Apply this revision."""
    op.create_table(
        "pending_jobs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.Text(), nullable=False),
        sa.Column("key", sa.Text(), nullable=False),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column("create_time", sa.Double(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_pending_jobs")),
        sa.UniqueConstraint("key", name=op.f("uq_pending_jobs_key")),
        sqlite_autoincrement=True,
    )
    op.create_table(
        "log_batches",
        sa.Column("trial_id", sa.Integer(), nullable=False),
        sa.Column("batch_id", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(
            ["trial_id"],
            ["trials.id"],
            name=op.f("fk_log_batches_trial_id_trials"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("trial_id", "batch_id", name=op.f("pk_log_batches")),
    )
    with op.batch_alter_table("metrics") as batch:
        batch.add_column(sa.Column("run_id", sa.Integer(), server_default="0", nullable=False))
        batch.add_column(
            sa.Column("superseded", sa.Boolean(), server_default=sa.false(), nullable=False)
        )


def downgrade() -> None:
    """Revert this revision."""
    with op.batch_alter_table("metrics") as batch:
        batch.drop_column("superseded")
        batch.drop_column("run_id")
    op.drop_table("log_batches")
    op.drop_table("pending_jobs")
