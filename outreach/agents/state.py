"""Per-customer state of the agents: playbook subjects, open actions, effects, spend ledgers."""

from __future__ import annotations

from typing import Any

import msgspec

from outreach.rules.state import Window


class Entity(msgspec.Struct, kw_only=True):
    """A playbook's memory about one subject (a shipment, an invoice) of one rule."""

    data: dict[str, Any] = msgspec.field(default_factory=dict)
    touched: float = 0.0
    closed: str | None = None  # why the subject was closed (delivered, paid...)
    signals: dict[str, float] = msgspec.field(default_factory=dict)  # acted on: id -> when
    outcomes: dict[str, tuple[str, str, str]] = msgspec.field(default_factory=dict)
    # action id -> (tool, target, latest status): what really happened to the subject's actions


class HeldBack(msgspec.Struct, kw_only=True):
    """A planned message that could not go because an action it promises waits for approval.

    Sent once that action (and any other it promises) is approved, in place of the fallback
    still waiting to go or, the fallback already sent, as its own notice."""

    message: dict[str, Any]  # the planned message (ref, template, purpose, context, notice)
    category: str  # the signal's
    requires: list[str]  # ids of every action it promises
    announce: bool = False  # the action happens only with this message (an offer)
    accept_within: float | None = None  # the offer's window for a YES, once announced by SMS


class OpenAction(msgspec.Struct, kw_only=True):
    """An action decided but not yet done: scheduled for later or waiting for approval."""

    action_id: str
    signal_id: str
    rule_id: str
    playbook: str
    entity: str
    tool: str
    params: dict[str, Any]
    target: str
    status: str  # "scheduled" | "pending_approval"
    idempotency_key: str
    created: float
    due: float | None = None
    timer_id: str | None = None
    waits_for: str | None = None  # a deferred message that must be sent first (an offer)
    accept_within: float | None = None  # once announced by SMS, wait this long for a YES
    # the message held back while it waits for approval (see Executor._perform_approved)
    held: HeldBack | None = None
    approved_by: str | None = None  # who approved it: later rechecks pass its threshold

    @property
    def awaiting_reply(self) -> bool:
        """Announced, waiting for the customer's YES: runs on YES, cancelled on NO or at
        ``due``. (Before its announcement it ``waits_for`` the message; once answered,
        ``accept_within`` is cleared.)"""
        return self.accept_within is not None and self.waits_for is None


class AgentState(msgspec.Struct, kw_only=True):
    """Everything the agents of one customer remember between events."""

    entities: dict[str, Entity] = msgspec.field(default_factory=dict)
    open: dict[str, OpenAction] = msgspec.field(default_factory=dict)
    effects: dict[str, float] = msgspec.field(default_factory=dict)  # idempotency key -> when
    spend: dict[str, Window] = msgspec.field(default_factory=dict)  # budget ledgers

    def entity(self, rule_id: str, key: str | None) -> tuple[str, Entity]:
        """The subject ``rule|key`` (created on first use)."""
        name = f"{rule_id}|{key or ''}"
        found = self.entities.get(name)
        if found is None:
            found = self.entities[name] = Entity()
        return name, found

    def open_for(self, entity: str, tools: tuple[str, ...] = ()) -> list[OpenAction]:
        """Open actions of a subject, optionally only those of some tools."""
        return [
            a for a in self.open.values() if a.entity == entity and (not tools or a.tool in tools)
        ]
