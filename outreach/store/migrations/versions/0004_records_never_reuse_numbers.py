"""Queued records' numbers are never reused (SQLite AUTOINCREMENT).

Without it SQLite hands out max(rowid)+1, so once the relay has emptied ``pending_records``
new records get the numbers of the ones just published, and a second relay that read the old
rows deletes the new ones by number after publishing the old ones: records lost. PostgreSQL
numbers come from a sequence, which never goes back; nothing changes there.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Rebuild ``pending_records`` with AUTOINCREMENT on SQLite (rows kept, in order)."""
    _rebuild(autoincrement=True)


def downgrade() -> None:
    """Rebuild ``pending_records`` without AUTOINCREMENT on SQLite."""
    _rebuild(autoincrement=False)


def _rebuild(*, autoincrement: bool) -> None:
    if op.get_bind().dialect.name != "sqlite":
        return
    with op.batch_alter_table(
        "pending_records", recreate="always", table_kwargs={"sqlite_autoincrement": autoincrement}
    ):
        pass
