"""Decision records (the decision log of ARCHITECTURE.md) and what one evaluation returns.

``actions.jsonl`` and ``messages.jsonl`` are append-only: a record is written at each status
change and the last record of an id is its current state. Ids are deterministic.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from outreach.agents.connectors import Effect
from outreach.rules.evaluate import RuleRuntimeError, Signal

ActionStatus = Literal[
    "executed",
    "scheduled",
    "pending_approval",
    "blocked",
    "skipped_holdout",
    "cancelled",
    "expired",
    "failed",
]
MessageStatus = Literal["sent", "suppressed", "capped", "deferred"]


class ActionRecord(BaseModel):
    """One status of one action (``actions.jsonl``)."""

    model_config = ConfigDict(frozen=True)

    action_id: str
    signal_id: str
    customer_id: str
    rule_id: str
    type: str
    params: dict[str, Any]
    status: ActionStatus
    at: datetime
    reason: str
    target: str
    idempotency_key: str
    scheduled_for: datetime | None = None
    checks: list[dict[str, str]] = []
    decided_by: str | None = None  # who approved or rejected it (an approval's answer)


class MessageRecord(BaseModel):
    """One status of one message (``messages.jsonl``)."""

    model_config = ConfigDict(frozen=True)

    message_id: str
    signal_id: str
    customer_id: str
    rule_id: str
    channel: str
    to: str | None
    purpose: str
    subject: str | None
    body: str | None
    send_at: datetime
    status: MessageStatus
    reason: str
    template: str
    notice: str
    locale: str | None = None
    segments: int | None = None
    encoding: str | None = None
    checks: list[dict[str, str]] = []
    # a model composer's account: source, reason, fallback, audit of its calls
    composer: dict[str, Any] | None = None


class DeliveryRecord(BaseModel):
    """One delivery outcome of one message attempt (``deliveries.jsonl``), and what the
    engine did about it (``reaction``: suppressed the number, sent it by email...)."""

    model_config = ConfigDict(frozen=True)

    message_id: str
    customer_id: str
    channel: str
    attempt: int
    status: str  # queued | sent | delivered | undelivered | failed | bounced
    at: datetime
    provider: str
    provider_id: str | None = None
    error_code: str | None = None
    provider_event: str | None = None
    detail: str | None = None
    applied: bool = True  # False: out of order or for an older attempt; the state kept
    reaction: str = ""
    alert: bool = False  # an operator must look (a template paused after carrier filtering)


class Delivery(BaseModel):
    """A message to hand to a channel now (what the outbound dispatcher sends).

    ``attempt`` > 1: the same message sent again (a transient carrier failure, or another
    channel after the first proved unusable); each attempt has its own idempotency ``key``.
    ``compliance``: a reply the law requires even to a suppressed address (the one STOP
    confirmation, HELP); the dispatcher's suppression check lets only these through.
    ``list_id``: the email list a marketing email belongs to (a SendGrid unsubscribe group);
    the unsubscribe link and ``List-Unsubscribe`` header name it."""

    model_config = ConfigDict(frozen=True)

    message_id: str
    customer_id: str
    channel: str
    to: str
    purpose: str
    subject: str | None
    body: str
    template: str = ""
    attempt: int = 1
    compliance: bool = False
    list_id: str | None = None

    @property
    def key(self) -> str:
        """The idempotency key of this attempt (``msg:<id>``, then ``msg:<id>#<n>``)."""
        base = f"msg:{self.message_id}"
        return base if self.attempt == 1 else f"{base}#{self.attempt}"


@dataclass(frozen=True)
class Timer:
    """Work due later: the runtime must deliver a ``timer.fired`` event at ``due_at``."""

    timer_id: str
    customer_id: str
    due_at: datetime


class Decisions:
    """Everything one evaluation decided, in order, plus the effects to perform.

    A plain slotted class, not a dataclass: one is built per event on the hot path."""

    __slots__ = (
        "signals", "actions", "messages", "timers", "effects", "deliveries", "receipts",
        "errors", "duplicate",
    )  # fmt: skip

    def __init__(self) -> None:
        self.signals: list[Signal] = []
        self.actions: list[ActionRecord] = []
        self.messages: list[MessageRecord] = []
        self.timers: list[Timer] = []
        self.effects: list[Effect] = []
        self.deliveries: list[Delivery] = []
        self.receipts: list[DeliveryRecord] = []  # delivery outcomes reported back
        self.errors: list[RuleRuntimeError] = []  # rules that raised
        self.duplicate = False  # the event had been processed before; nothing was done

    def __bool__(self) -> bool:
        """Whether anything was decided (records, timers or effects)."""
        return bool(
            self.signals or self.actions or self.messages or self.timers or self.effects
            or self.receipts or self.errors
        )  # fmt: skip
