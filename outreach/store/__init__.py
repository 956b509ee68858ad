"""The live runtime's durable store: SQLAlchemy 2 with Alembic migrations.

Owns: per-customer state (one row per customer), the position each partition has been applied
up to, the effects outbox (one row per idempotency key), pending timers, decision records and
dead letters waiting to be relayed to Kafka, and the shared ledger (global budgets). A batch's
state, outbox rows, records and positions are written in ONE transaction (``Store.batch``).

SQLite file by default (``sqlite:///outreach.db``); PostgreSQL in production
(``OUTREACH_DATABASE_URL=postgresql+psycopg://...``).

Must not import: faust, aiokafka, twilio, sendgrid, openai, fastapi; nor the decision core
(it stores bytes and rows; ``outreach.streams`` turns them into states and events).
"""

from __future__ import annotations

from outreach.store.batch import (
    ApprovalRow,
    AuditRow,
    Batch,
    Stamp,
    StoredState,
    StoreLedger,
    TimerRow,
)
from outreach.store.locking import Claim, StoreBusyError
from outreach.store.store import OutboxRow, PendingRecord, Store, StoreSettings

__all__ = [
    "ApprovalRow",
    "AuditRow",
    "Batch",
    "Claim",
    "OutboxRow",
    "PendingRecord",
    "Store",
    "Stamp",
    "StoreBusyError",
    "StoredState",
    "StoreLedger",
    "StoreSettings",
    "TimerRow",
]
