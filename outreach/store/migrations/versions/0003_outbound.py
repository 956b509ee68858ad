"""Outbound: address suppressions, the address book, seen callbacks, run-time controls.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Create ``suppressions``, ``contacts``, ``inbound_seen`` and ``controls``."""
    op.create_table(
        "suppressions",
        sa.Column("channel", sa.String(8), primary_key=True),
        sa.Column("address", sa.String(320), primary_key=True),
        sa.Column("list_id", sa.String(64), primary_key=True),
        sa.Column("reason", sa.String(64), nullable=False),
        sa.Column("at", sa.Double, nullable=False),
    )
    op.create_table(
        "contacts",
        sa.Column("channel", sa.String(8), primary_key=True),
        sa.Column("address", sa.String(320), primary_key=True),
        sa.Column("customer_id", sa.String(128), primary_key=True),
    )
    op.create_table(
        "inbound_seen",
        sa.Column("source", sa.String(32), primary_key=True),
        sa.Column("id", sa.String(255), primary_key=True),
        sa.Column("at", sa.Double, nullable=False),
    )
    op.create_index("inbound_seen_at", "inbound_seen", ["at"])
    op.create_table(
        "controls",
        sa.Column("kind", sa.String(16), primary_key=True),
        sa.Column("name", sa.String(128), primary_key=True),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("at", sa.Double, nullable=False),
    )


def downgrade() -> None:
    """Drop the outbound tables."""
    for table in ("controls", "inbound_seen", "contacts", "suppressions"):
        op.drop_table(table)
