"""Retention of finished outbox rows: an index on ``outbox.done_at`` for the hourly prune.

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Index ``outbox.done_at`` (set once a row is done or failed)."""
    op.create_index("outbox_finished", "outbox", ["done_at"])


def downgrade() -> None:
    """Drop the index again."""
    op.drop_index("outbox_finished", table_name="outbox")
