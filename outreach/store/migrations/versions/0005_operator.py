"""Operator: the audit trail, the approvals queue, API keys and the running tallies.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Create ``audit``, ``approvals``, ``api_keys`` and ``tallies``."""
    op.create_table(
        "audit",
        sa.Column("seq", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True),
        sa.Column("customer_id", sa.String(128), nullable=False),
        sa.Column("at", sa.Double, nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("ref", sa.String(255), nullable=False),
        sa.Column("status", sa.String(32), nullable=True),
        sa.Column("body", sa.LargeBinary, nullable=False),
    )
    op.create_index("audit_customer", "audit", ["customer_id", "at", "seq"])
    op.create_table(
        "approvals",
        sa.Column("action_id", sa.String(128), primary_key=True),
        sa.Column("customer_id", sa.String(128), nullable=False),
        sa.Column("rule_id", sa.String(128), nullable=False),
        sa.Column("tool", sa.String(64), nullable=False),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("requested_at", sa.Double, nullable=False),
        sa.Column("expires_at", sa.Double, nullable=True),
        sa.Column("decided_by", sa.String(256), nullable=True),
        sa.Column("updated_at", sa.Double, nullable=False),
        sa.Column("record", sa.LargeBinary, nullable=False),
        sa.Column("request", sa.LargeBinary, nullable=False),
    )
    op.create_index("approvals_status", "approvals", ["status", "requested_at"])
    op.create_table(
        "api_keys",
        sa.Column("key_id", sa.String(32), primary_key=True),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("scope", sa.String(16), nullable=False),
        sa.Column("secret_sha256", sa.String(64), nullable=False),
        sa.Column("created_at", sa.Double, nullable=False),
        sa.Column("revoked_at", sa.Double, nullable=True),
    )
    op.create_table(
        "tallies",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("label", sa.String(128), primary_key=True),
        sa.Column("value", sa.BigInteger, nullable=False),
    )


def downgrade() -> None:
    """Drop the operator tables."""
    op.drop_index("approvals_status", "approvals")
    op.drop_index("audit_customer", "audit")
    for table in ("tallies", "api_keys", "approvals", "audit"):
        op.drop_table(table)
