"""Decision records (the decision log of ARCHITECTURE.md) and what one evaluation returns.

``actions.jsonl`` and ``messages.jsonl`` are append-only: a record is written at each status
change and the last record of an id is its current state. Ids are deterministic.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from outreach.agents.connectors import Effect
from outreach.rules.evaluate import RuleRuntimeError, Signal

ActionStatus = Literal[
    "executed", "scheduled", "pending_approval", "blocked", "skipped_holdout", "cancelled", "failed"
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


class Delivery(BaseModel):
    """A message to hand to a channel now (what the outbound dispatcher sends)."""

    model_config = ConfigDict(frozen=True)

    message_id: str
    customer_id: str
    channel: str
    to: str
    purpose: str
    subject: str | None
    body: str


@dataclass(frozen=True)
class Timer:
    """Work due later: the runtime must deliver a ``timer.fired`` event at ``due_at``."""

    timer_id: str
    customer_id: str
    due_at: datetime


@dataclass
class Decisions:
    """Everything one evaluation decided, in order, plus the effects to perform."""

    signals: list[Signal] = field(default_factory=list)
    actions: list[ActionRecord] = field(default_factory=list)
    messages: list[MessageRecord] = field(default_factory=list)
    timers: list[Timer] = field(default_factory=list)
    effects: list[Effect] = field(default_factory=list)
    deliveries: list[Delivery] = field(default_factory=list)
    errors: list[RuleRuntimeError] = field(default_factory=list)  # rules that raised
    duplicate: bool = False  # the event had been processed before; nothing was done

    def __bool__(self) -> bool:
        """Whether anything was decided (records, timers or effects)."""
        return bool(
            self.signals or self.actions or self.messages or self.timers or self.effects
            or self.errors
        )  # fmt: skip
