"""An append-only searcher event log beside the searcher snapshot (issue 8, item 6).

Revision ID: 0007
Revises: 0003
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Apply this revision."""
    op.create_table(
        "searcher_events",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("experiment_id", sa.Integer(), nullable=False),
        sa.Column("event", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(
            ["experiment_id"],
            ["experiments.id"],
            name=op.f("fk_searcher_events_experiment_id_experiments"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_searcher_events")),
        sqlite_autoincrement=True,
    )
    op.create_index(
        op.f("ix_searcher_events_experiment_id"), "searcher_events", ["experiment_id"], unique=False
    )
    with op.batch_alter_table("searcher_states") as batch:
        batch.add_column(
            sa.Column("events_through", sa.BigInteger(), server_default="0", nullable=False)
        )


def downgrade() -> None:
    """Revert this revision."""
    with op.batch_alter_table("searcher_states") as batch:
        batch.drop_column("events_through")
    op.drop_index(op.f("ix_searcher_events_experiment_id"), table_name="searcher_events")
    op.drop_table("searcher_events")
