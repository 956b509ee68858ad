"""What a provider's report about a message means for the policy (one mapping, used by the
webhooks to suppress at once and by the core to update the customer's state).

Twilio (error codes on the API call or in the status callback's ``ErrorCode``):
- 30003 (unreachable handset), 30008 (unknown error): transient on the carrier side; the
  message is sent again, at most twice (``MAX_CARRIER_RETRIES``).
- 21610 (the recipient replied STOP to this sender): SMS suppression, never retried.
- 21211 (invalid number), 21614 (not a mobile number), 30005 (unknown or inactive number),
  30006 (landline or unreachable carrier): the number is unusable; fall back to email.
- 30007 (carrier filtering): the template is paused on SMS and an alert is raised.

SendGrid (event webhook): ``bounce`` -> bounced and email suppression (a ``blocked`` bounce
is temporary: undelivered, no suppression); ``dropped`` -> failed, and a suppression when the
reason is a bounced, unsubscribed or spam-reporting address; ``spamreport`` ->
suppression (complaint); ``unsubscribe`` -> suppression; ``group_unsubscribe`` /
``group_resubscribe`` -> that group only; ``processed`` -> sent; ``delivered`` -> delivered;
``deferred`` -> still queued (SendGrid retries by itself); ``open``/``click`` -> nothing.

Must not import: faust, aiokafka, twilio, sendgrid, openai, fastapi, sqlalchemy.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

MAX_CARRIER_RETRIES = 2
TWILIO_RETRY = frozenset({"30003", "30008"})
TWILIO_STOPPED = frozenset({"21610"})
TWILIO_UNUSABLE = frozenset({"21211", "21614", "30005", "30006"})
TWILIO_FILTERED = frozenset({"30007"})

Reaction = Literal["none", "retry", "suppress", "unusable", "pause"]


def twilio_reaction(code: str | None) -> Reaction:
    """What a Twilio error code calls for."""
    if code is None:
        return "none"
    if code in TWILIO_RETRY:
        return "retry"
    if code in TWILIO_STOPPED:
        return "suppress"
    if code in TWILIO_UNUSABLE:
        return "unusable"
    if code in TWILIO_FILTERED:
        return "pause"
    return "none"


# Twilio MessageStatus -> our delivery status (None: not a step of ours, e.g. "read")
TWILIO_STATUSES: dict[str, str] = {
    "accepted": "queued",
    "scheduled": "queued",
    "queued": "queued",
    "sending": "queued",
    "sent": "sent",
    "delivered": "delivered",
    "read": "delivered",
    "undelivered": "undelivered",
    "failed": "failed",
    "canceled": "failed",
}

_DROP_REASONS: tuple[tuple[str, str], ...] = (
    ("bounced address", "bounce"),
    ("unsubscribed address", "unsubscribe"),
    ("spam reporting address", "complaint"),
    ("invalid", "unusable"),  # "Invalid SMTPAPI header" is not an address problem
)


def dropped_suppression(reason: str | None) -> str | None:
    """The suppression a SendGrid ``dropped`` reason implies, or ``None``."""
    text = (reason or "").lower()
    for needle, suppression in _DROP_REASONS:
        if needle in text and not (needle == "invalid" and "smtpapi" in text):
            return suppression
    return None


@dataclass(frozen=True)
class SendGridOutcome:
    """One SendGrid event read as our facts.

    ``status``: a delivery status for ``message.status`` (or ``None``); ``suppress`` /
    ``unsuppress``: a suppression reason to apply to the address (``list_id`` for one group)."""

    status: str | None = None
    suppress: str | None = None
    unsuppress: str | None = None
    list_id: str | None = None


def sendgrid_outcome(event: Mapping[str, Any]) -> SendGridOutcome:
    """What one SendGrid event webhook entry means."""
    kind = str(event.get("event", ""))
    group = event.get("asm_group_id")
    list_id = str(group) if group is not None else None
    if kind == "processed":
        return SendGridOutcome(status="sent")
    if kind == "deferred":
        return SendGridOutcome(status="queued")
    if kind == "delivered":
        return SendGridOutcome(status="delivered")
    if kind == "bounce":
        if str(event.get("type", "bounce")) == "blocked":
            return SendGridOutcome(status="undelivered")
        return SendGridOutcome(status="bounced", suppress="bounce")
    if kind == "dropped":
        return SendGridOutcome(status="failed", suppress=dropped_suppression(event.get("reason")))
    if kind == "spamreport":
        return SendGridOutcome(suppress="complaint")
    if kind == "unsubscribe":
        return SendGridOutcome(suppress="unsubscribe")
    if kind == "group_unsubscribe":
        return SendGridOutcome(suppress="unsubscribe", list_id=list_id)
    if kind == "group_resubscribe":
        return SendGridOutcome(unsuppress="resubscribe", list_id=list_id)
    return SendGridOutcome()  # open, click and anything new: nothing to do
