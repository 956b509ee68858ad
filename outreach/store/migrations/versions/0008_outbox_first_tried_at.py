"""Retries are counted from a row's first call to its provider: ``outbox.first_tried_at``.

Existing rows get NULL, read as "not tried yet": a row retrying at the upgrade starts its
window (``retry_for``) again at its next call, so it may retry longer than before, never
shorter; no row is rewritten (no long update of a large outbox).

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Add ``outbox.first_tried_at``."""
    with op.batch_alter_table("outbox") as batch:
        batch.add_column(sa.Column("first_tried_at", sa.Double, nullable=True))


def downgrade() -> None:
    """Drop ``outbox.first_tried_at``."""
    with op.batch_alter_table("outbox") as batch:
        batch.drop_column("first_tried_at")
