"""One customer's whole state: profile, rule windows, agent memory, contact history, timers.

The decision core reads and updates it; runtimes own it (in memory for replay, one row per
customer in the store for the live runtime) and must discard it if an evaluation raises.
"""

from __future__ import annotations

import msgspec

from outreach.agents.state import AgentState
from outreach.outbound.state import ContactState
from outreach.rules.state import Profile, RuleState


class TimerRef(msgspec.Struct, array_like=True):
    """What a pending timer will do: fire an open action or judge a deferred message."""

    kind: str  # "action" | "message"
    ref: str  # action_id or message_id
    due: float


class CustomerState(msgspec.Struct, kw_only=True):
    """Everything the engine remembers about one customer."""

    customer_id: str
    profile: Profile = msgspec.field(default_factory=Profile)
    rules: RuleState = msgspec.field(default_factory=RuleState)
    agents: AgentState = msgspec.field(default_factory=AgentState)
    contact: ContactState = msgspec.field(default_factory=ContactState)
    timers: dict[str, TimerRef] = msgspec.field(default_factory=dict)
    pruned_at: float = 0.0
