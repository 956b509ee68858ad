"""What a planner proposes: actions (tool calls) and messages, before any guardrail has spoken.

A plan is only a proposal. The executor sends every action through the guardrails and every
message through the contact policy; a planner cannot execute anything itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

Purpose = Literal["transactional", "marketing"]


@dataclass
class PlannedAction:
    """A proposed tool call. ``target`` names what it acts on (shipment, invoice#retry2...)."""

    ref: str
    tool: str
    params: dict[str, Any]
    target: str
    at: datetime | None = None  # None: now; else scheduled for that time
    announce: str | None = None  # ref of the message that must be deliverable for this to run
    note: str = ""
    # seconds the customer has to accept by replying YES when the announcement goes by SMS
    # (None: the action runs once announced, without asking)
    accept_within: float | None = None


@dataclass
class PlannedMessage:
    """A proposed message; ``notice`` identifies the notice for deduplication."""

    ref: str
    template: str
    purpose: Purpose
    context: dict[str, Any]
    notice: str
    requires: tuple[str, ...] = ()  # refs of actions that must be approved for it to go
    fallback: PlannedMessage | None = None  # sent instead when a requirement fails


@dataclass
class Plan:
    """A playbook's proposal for one signal."""

    actions: list[PlannedAction] = field(default_factory=list)
    messages: list[PlannedMessage] = field(default_factory=list)
    cancel_tools: tuple[str, ...] = ()  # cancel open actions of these tools for the subject
    cancel_reason: str = ""
    note: str = ""  # why the plan is what it is (shown on the signal)
