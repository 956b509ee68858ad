"""Per-customer state of the contact policy: suppressions, recent sends, deferred messages."""

from __future__ import annotations

from typing import Any

import msgspec


class DeferredMessage(msgspec.Struct, kw_only=True):
    """A message held back (quiet hours) and re-judged by the policy when it falls due."""

    message_id: str
    signal_id: str
    rule_id: str
    entity: str
    template: str
    purpose: str
    context: dict[str, Any]
    notice: str
    category: str
    created: float
    send_at: float
    timer_id: str
    channel: str = ""  # the channel chosen when it was held (judged again when due)
    announces: list[str] = msgspec.field(default_factory=list)  # offers waiting for it
    requires: list[str] = msgspec.field(default_factory=list)  # actions it promises
    fallback: dict[str, Any] | None = None  # the message to send if this one cannot go


class ContactState(msgspec.Struct, kw_only=True):
    """What the contact policy remembers about one customer."""

    suppressed: dict[str, str] = msgspec.field(default_factory=dict)  # channel -> reason
    marketing: list[float] = msgspec.field(default_factory=list)  # marketing send times
    service_failure_at: float | None = None  # when the last service-failure message was sent
    notices: dict[str, tuple[float, str]] = msgspec.field(default_factory=dict)
    deferred: dict[str, DeferredMessage] = msgspec.field(default_factory=dict)

    def prune(self, now: float, keep: float) -> None:
        """Forget sends and notices older than ``keep`` seconds."""
        horizon = now - keep
        self.marketing = [t for t in self.marketing if t > horizon]
        stale = [n for n, (ts, _) in self.notices.items() if ts <= horizon]
        for notice in stale:
            del self.notices[notice]
