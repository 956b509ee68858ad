"""Scheduler: timers handed to APScheduler are marked ``armed``; workers report their clocks;
the approvals webhook marks what it has announced.

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Add ``timers.armed``, ``approvals.notified_at`` and the ``clocks`` table."""
    with op.batch_alter_table("timers") as batch:
        batch.add_column(sa.Column("armed", sa.Boolean, nullable=False, server_default=sa.false()))
    op.create_index("timers_unarmed", "timers", ["armed", "due_at"])
    with op.batch_alter_table("approvals") as batch:
        batch.add_column(sa.Column("notified_at", sa.Double, nullable=True))
    op.create_table(
        "clocks",
        sa.Column("consumer_group", sa.String(255), primary_key=True),
        sa.Column("member", sa.String(255), primary_key=True),
        sa.Column("event_time", sa.Double, nullable=True),
        sa.Column("seen_at", sa.Double, nullable=False),
    )


def downgrade() -> None:
    """Drop them again."""
    op.drop_table("clocks")
    with op.batch_alter_table("approvals") as batch:
        batch.drop_column("notified_at")
    op.drop_index("timers_unarmed", table_name="timers")
    with op.batch_alter_table("timers") as batch:
        batch.drop_column("armed")
