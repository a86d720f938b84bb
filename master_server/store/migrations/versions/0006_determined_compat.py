"""Notes on experiments, projects and model versions, as Determined keeps them.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Apply this revision."""
    with op.batch_alter_table("experiments") as batch:
        batch.add_column(sa.Column("notes", sa.Text(), nullable=False, server_default=""))
    with op.batch_alter_table("projects") as batch:
        batch.add_column(sa.Column("notes", sa.Text(), nullable=False, server_default="[]"))
    with op.batch_alter_table("model_versions") as batch:
        batch.add_column(sa.Column("notes", sa.Text(), nullable=False, server_default=""))


def downgrade() -> None:
    """Revert this revision."""
    with op.batch_alter_table("model_versions") as batch:
        batch.drop_column("notes")
    with op.batch_alter_table("projects") as batch:
        batch.drop_column("notes")
    with op.batch_alter_table("experiments") as batch:
        batch.drop_column("notes")
