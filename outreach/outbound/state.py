"""Per-customer state of the contact policy: suppressions, recent sends, deferred messages."""

from __future__ import annotations

from typing import Any

import msgspec


class HeldMessage(msgspec.Struct, kw_only=True):
    """What a message is (identity, template, data): what the policy judges again later."""

    message_id: str
    signal_id: str
    rule_id: str
    entity: str
    template: str
    purpose: str
    context: dict[str, Any]
    notice: str
    category: str


class DeferredMessage(HeldMessage, kw_only=True):
    """A message held back (quiet hours) and re-judged by the policy when it falls due."""

    created: float
    send_at: float
    timer_id: str
    channel: str = ""  # the channel chosen when it was held (judged again when due)
    announces: list[str] = msgspec.field(default_factory=list)  # offers waiting for it
    requires: list[str] = msgspec.field(default_factory=list)  # actions it promises
    fallback: dict[str, Any] | None = None  # the message to send if this one cannot go


class SentMessage(HeldMessage, kw_only=True):
    """A message handed to a channel, kept while its delivery outcome may still change what
    we do (a carrier retry, email instead of an unusable number): what to send again, and the
    delivery state machine ``queued -> sent -> delivered | undelivered | failed | bounced``."""

    channel: str
    to: str
    attempt: int = 1
    status: str = "queued"
    sent_at: float = 0.0
    carrier_retries: int = 0  # sends again after Twilio 30003/30008
    timer_id: str = ""  # a send again waiting (backoff, quiet hours)


class ContactState(msgspec.Struct, kw_only=True):
    """What the contact policy remembers about one customer."""

    suppressed: dict[str, str] = msgspec.field(default_factory=dict)  # channel -> reason
    marketing: list[float] = msgspec.field(default_factory=list)  # marketing send times
    service_failure_at: float | None = None  # when the last service-failure message was sent
    notices: dict[str, tuple[float, str]] = msgspec.field(default_factory=dict)
    deferred: dict[str, DeferredMessage] = msgspec.field(default_factory=dict)
    lists: dict[str, str] = msgspec.field(default_factory=dict)  # email list -> why left
    sent: dict[str, SentMessage] = msgspec.field(default_factory=dict)  # awaiting outcome
    # the last SMS exchanged, oldest first: (epoch seconds, "in" | "out", text)
    conversation: list[tuple[float, str, str]] = msgspec.field(default_factory=list)

    def prune(self, now: float, keep: float) -> None:
        """Forget sends and notices older than ``keep`` seconds."""
        horizon = now - keep
        self.marketing = [t for t in self.marketing if t > horizon]
        stale = [n for n, (ts, _) in self.notices.items() if ts <= horizon]
        for notice in stale:
            del self.notices[notice]
