"""Timers stay in the table until applied: remember when the relay last published one.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Add ``timers.published_at``."""
    with op.batch_alter_table("timers") as batch:
        batch.add_column(sa.Column("published_at", sa.Double, nullable=True))


def downgrade() -> None:
    """Drop ``timers.published_at``."""
    with op.batch_alter_table("timers") as batch:
        batch.drop_column("published_at")
