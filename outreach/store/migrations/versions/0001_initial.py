"""The live runtime's store: customer state, applied offsets, effects outbox, timers,
records waiting for Kafka, shared ledger.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def _serial() -> sa.types.TypeEngine[int]:
    return sa.BigInteger().with_variant(sa.Integer, "sqlite")


def upgrade() -> None:
    """Create every table of the first schema."""
    op.create_table(
        "customer_state",
        sa.Column("customer_id", sa.String(128), primary_key=True),
        sa.Column("state", sa.LargeBinary, nullable=True),
        sa.Column("version", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("updated_at", sa.Double, nullable=False, server_default="0"),
    )
    op.create_table(
        "applied_offsets",
        sa.Column("consumer_group", sa.String(255), primary_key=True),
        sa.Column("topic", sa.String(255), primary_key=True),
        sa.Column("partition", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("next_offset", sa.BigInteger, nullable=False),
        sa.Column("updated_at", sa.Double, nullable=False),
    )
    op.create_table(
        "outbox",
        sa.Column("id", _serial(), primary_key=True),
        sa.Column("idempotency_key", sa.String(255), nullable=False, unique=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("customer_id", sa.String(128), nullable=False),
        sa.Column("ref", sa.String(128), nullable=False),
        sa.Column("payload", sa.LargeBinary, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("next_at", sa.Double, nullable=False),
        sa.Column("lease_until", sa.Double, nullable=True),
        sa.Column("last_error", sa.Text, nullable=True),
        sa.Column("result", sa.LargeBinary, nullable=True),
        sa.Column("created_at", sa.Double, nullable=False),
        sa.Column("done_at", sa.Double, nullable=True),
    )
    op.create_index("outbox_due", "outbox", ["status", "next_at"])
    op.create_table(
        "timers",
        sa.Column("timer_id", sa.String(255), primary_key=True),
        sa.Column("customer_id", sa.String(128), nullable=False),
        sa.Column("due_at", sa.Double, nullable=False),
    )
    op.create_index("timers_due", "timers", ["due_at"])
    op.create_table(
        "pending_records",
        sa.Column("seq", _serial(), primary_key=True),
        sa.Column("topic", sa.String(32), nullable=False),
        sa.Column("key", sa.LargeBinary, nullable=True),
        sa.Column("value", sa.LargeBinary, nullable=False),
    )
    op.create_table(
        "ledger",
        sa.Column("key", sa.String(255), primary_key=True),
        sa.Column("total", sa.Double, nullable=False),
    )


def downgrade() -> None:
    """Drop every table of the first schema."""
    for table in ("ledger", "pending_records", "timers", "outbox", "applied_offsets"):
        op.drop_table(table)
    op.drop_table("customer_state")
