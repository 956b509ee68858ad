"""The store's tables (SQLAlchemy Core metadata; Alembic migrations create them).

Times are epoch seconds (double precision): the core works in epoch seconds and the same
column type behaves identically on SQLite and PostgreSQL.
"""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData()

customer_state = sa.Table(
    "customer_state",
    metadata,
    sa.Column("customer_id", sa.String(128), primary_key=True),
    # msgspec JSON of outreach.state.CustomerState; NULL for a row reserved (locked) but not
    # yet written by the transaction that inserted it
    sa.Column("state", sa.LargeBinary, nullable=True),
    sa.Column("version", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("updated_at", sa.Double, nullable=False, server_default="0"),
)

applied_offsets = sa.Table(
    "applied_offsets",
    metadata,
    sa.Column("consumer_group", sa.String(255), primary_key=True),
    sa.Column("topic", sa.String(255), primary_key=True),
    sa.Column("partition", sa.Integer, primary_key=True, autoincrement=False),
    # the next offset to apply (Kafka's convention for committed offsets)
    sa.Column("next_offset", sa.BigInteger, nullable=False),
    sa.Column("updated_at", sa.Double, nullable=False),
)

outbox = sa.Table(
    "outbox",
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True),
    sa.Column("idempotency_key", sa.String(255), nullable=False, unique=True),
    sa.Column("kind", sa.String(16), nullable=False),  # "effect" | "delivery"
    sa.Column("customer_id", sa.String(128), nullable=False),
    sa.Column("ref", sa.String(128), nullable=False),  # action_id or message_id
    sa.Column("payload", sa.LargeBinary, nullable=False),  # JSON of the Effect / Delivery
    # pending -> in_flight -> done | failed; in_flight rows whose lease ran out are due again
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("next_at", sa.Double, nullable=False),
    sa.Column("lease_until", sa.Double, nullable=True),
    sa.Column("last_error", sa.Text, nullable=True),
    sa.Column("result", sa.LargeBinary, nullable=True),
    sa.Column("created_at", sa.Double, nullable=False),
    sa.Column("done_at", sa.Double, nullable=True),
    # when a dispatcher first called the provider for it (written with that call's outcome;
    # NULL until then): a transient failure's retries are counted from here, not from
    # created_at, since a row can wait for hours before its first call (due after quiet
    # hours, held by a kill switch or an open circuit)
    sa.Column("first_tried_at", sa.Double, nullable=True),
)
sa.Index("outbox_due", outbox.c.status, outbox.c.next_at)
sa.Index("outbox_finished", outbox.c.done_at)  # retention: NULL until done or failed

timers = sa.Table(
    "timers",
    metadata,
    sa.Column("timer_id", sa.String(255), primary_key=True),
    sa.Column("customer_id", sa.String(128), nullable=False),
    sa.Column("due_at", sa.Double, nullable=False),
    # when the scheduler last produced it (wall clock); it stays until the worker applies it
    sa.Column("published_at", sa.Double, nullable=True),
    # handed to the active scheduler's APScheduler job store (a job exists for it)
    sa.Column("armed", sa.Boolean, nullable=False, server_default=sa.false()),
)
sa.Index("timers_due", timers.c.due_at)
sa.Index("timers_unarmed", timers.c.armed, timers.c.due_at)

# Each worker's event-time clock: timers are released only once every live worker has applied
# the events before them (a worker catching up on a backlog holds back the others' timers).
# ``event_time`` NULL: the worker is idle, so the wall clock rules.
clocks = sa.Table(
    "clocks",
    metadata,
    sa.Column("consumer_group", sa.String(255), primary_key=True),
    sa.Column("member", sa.String(255), primary_key=True),
    sa.Column("event_time", sa.Double, nullable=True),
    sa.Column("seen_at", sa.Double, nullable=False),
)

# Records for Kafka (decision log topics and the DLQ), written in the same transaction as the
# state and relayed to Kafka after it commits: a crash between the two never loses one.
pending_records = sa.Table(
    "pending_records",
    metadata,
    sa.Column("seq", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True),
    sa.Column("topic", sa.String(32), nullable=False),  # signals | actions | messages | dlq
    sa.Column("key", sa.LargeBinary, nullable=True),
    sa.Column("value", sa.LargeBinary, nullable=False),
    # never reuse a number, even once the table is empty: on SQLite two relays may read the
    # same rows and the slower one deletes by number after the faster one emptied the table
    sqlite_autoincrement=True,
)

ledger = sa.Table(
    "ledger",
    metadata,
    sa.Column("key", sa.String(255), primary_key=True),
    sa.Column("total", sa.Double, nullable=False),
)

# Address-level suppressions (STOP, bounces, complaints, unsubscribes), written by the webhooks
# the moment they are received and checked by the dispatcher right before every send, so a
# message decided before the customer's state caught up still never reaches the address.
# ``list_id`` is '' for the whole channel, else one email list (a SendGrid unsubscribe group).
suppressions = sa.Table(
    "suppressions",
    metadata,
    sa.Column("channel", sa.String(8), primary_key=True),
    sa.Column("address", sa.String(320), primary_key=True),  # E.164 or lower-cased email
    sa.Column("list_id", sa.String(64), primary_key=True),
    sa.Column("reason", sa.String(64), nullable=False),
    sa.Column("at", sa.Double, nullable=False),
)

# Which customers an address belongs to (inbound SMS name a number, not a customer); kept by
# the worker from the customers' profiles, in the batch transaction.
contacts = sa.Table(
    "contacts",
    metadata,
    sa.Column("channel", sa.String(8), primary_key=True),
    sa.Column("address", sa.String(320), primary_key=True),
    sa.Column("customer_id", sa.String(128), primary_key=True),
)

# Provider callbacks already taken (Twilio MessageSid, SendGrid sg_event_id): a provider that
# retries a webhook is answered 200 and nothing happens twice.
inbound_seen = sa.Table(
    "inbound_seen",
    metadata,
    sa.Column("source", sa.String(32), primary_key=True),
    sa.Column("id", sa.String(255), primary_key=True),
    sa.Column("at", sa.Double, nullable=False),
)
sa.Index("inbound_seen_at", inbound_seen.c.at)

# Engine-wide switches set at run time: a template paused on a channel after carrier
# filtering (Twilio 30007), kill switches from the operator API. Read by the core through
# the ledger port, written in the batch that decides them.
controls = sa.Table(
    "controls",
    metadata,
    sa.Column("kind", sa.String(16), primary_key=True),  # template | tool | channel
    sa.Column("name", sa.String(128), primary_key=True),  # e.g. "sms:renewal_offer"
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("at", sa.Double, nullable=False),
)

# The audit trail an operator explains a customer from (``outreach explain``, the timeline
# endpoint): every applied event (its raw JSON) and every decision record (signals, action and
# message statuses, delivery outcomes), written in the batch transaction that applied them.
# ``at`` is the record's own time (event time), ``seq`` the order it was written in.
audit = sa.Table(
    "audit",
    metadata,
    sa.Column("seq", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True),
    sa.Column("customer_id", sa.String(128), nullable=False),
    sa.Column("at", sa.Double, nullable=False),
    sa.Column("kind", sa.String(16), nullable=False),  # event | signal | action | message | receipt
    sa.Column("ref", sa.String(255), nullable=False),  # event, signal, action or message id
    sa.Column("status", sa.String(32), nullable=True),  # of an action, message or delivery
    sa.Column("body", sa.LargeBinary, nullable=False),  # JSON
)
sa.Index("audit_customer", audit.c.customer_id, audit.c.at, audit.c.seq)

# The approvals queue, kept from the action records (the core decides; this is its index):
# one row per action that ever waited for a person, with its latest status.
approvals = sa.Table(
    "approvals",
    metadata,
    sa.Column("action_id", sa.String(128), primary_key=True),
    sa.Column("customer_id", sa.String(128), nullable=False),
    sa.Column("rule_id", sa.String(128), nullable=False),
    sa.Column("tool", sa.String(64), nullable=False),
    sa.Column("status", sa.String(32), nullable=False),  # pending_approval, then the outcome
    sa.Column("requested_at", sa.Double, nullable=False),
    sa.Column("expires_at", sa.Double, nullable=True),
    sa.Column("decided_by", sa.String(256), nullable=True),
    sa.Column("updated_at", sa.Double, nullable=False),
    sa.Column("record", sa.LargeBinary, nullable=False),  # the latest action record (JSON)
    sa.Column("request", sa.LargeBinary, nullable=False),  # the pending_approval record (JSON)
    sa.Column("notified_at", sa.Double, nullable=True),  # announced to the approvals webhook
)
sa.Index("approvals_status", approvals.c.status, approvals.c.requested_at)

# Operator API keys: only a SHA-256 of the secret is kept (keys are 256-bit random, so a fast
# hash is enough); ``key_id`` is the public part shown in lists and logs.
api_keys = sa.Table(
    "api_keys",
    metadata,
    sa.Column("key_id", sa.String(32), primary_key=True),
    sa.Column("name", sa.String(128), nullable=False),
    sa.Column("scope", sa.String(16), nullable=False),  # ingest | operator | admin
    sa.Column("secret_sha256", sa.String(64), nullable=False),
    sa.Column("created_at", sa.Double, nullable=False),
    sa.Column("revoked_at", sa.Double, nullable=True),
)

# Running totals of what the workers applied (events, dead letters, signals per rule, actions
# and messages per status), added to in each batch's transaction: the operator API exports them
# as Prometheus counters, whichever worker did the work.
tallies = sa.Table(
    "tallies",
    metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("label", sa.String(128), primary_key=True),
    sa.Column("value", sa.BigInteger, nullable=False),
)
