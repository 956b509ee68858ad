"""After a message is sent: delivery outcomes and the customer's replies, inside the core.

Delivery outcomes (``message.status``) live in ``aftercare_delivery``; the customer's replies
(``message.received``) and the conversation they add to in ``aftercare_replies``.
``Aftercare`` remembers what was sent, forgets it and old conversation in time, and hands each
event to the module that owns it.

Must not import: faust, aiokafka, twilio, sendgrid, openai, fastapi, sqlalchemy.
"""

from __future__ import annotations

from datetime import datetime

from outreach.agents.aftercare_delivery import DeliveryOutcomes
from outreach.agents.aftercare_replies import InboundReplies, Offers, converse
from outreach.agents.guardrails import Ledger
from outreach.decisions import Decisions
from outreach.events import MessageReceived, MessageStatus
from outreach.outbound.policy import ContactPolicy, MessageDecision, OutboundMessage
from outreach.outbound.state import SentMessage
from outreach.state import CustomerState

__all__ = ["Aftercare", "Offers"]

SENT_MEMORY = 3 * 86400.0  # a sent message's outcome is awaited this long (late bounces: 72h)
CONVERSATION_MEMORY = 30 * 86400.0  # older exchanges say little about today's reply


class Aftercare:
    """Delivery outcomes and replies for one contact policy."""

    def __init__(self, policy: ContactPolicy, killed_tools: frozenset[str]) -> None:
        self.policy = policy
        self.killed_tools = killed_tools
        self.delivery = DeliveryOutcomes(policy)
        self.replies = InboundReplies(policy, killed_tools)

    # -- tracking -------------------------------------------------------------------------
    def track(
        self,
        msg: OutboundMessage,
        decision: MessageDecision,
        entity: str,
        cs: CustomerState,
        now: float,
    ) -> None:
        """Remember a message just sent, until its outcome is known."""
        if decision.to is None:
            return
        cs.contact.sent[msg.message_id] = SentMessage(
            message_id=msg.message_id, signal_id=msg.signal_id, rule_id=msg.rule_id,
            entity=entity, template=msg.template, purpose=msg.purpose, context=msg.context,
            notice=msg.notice, category=msg.category, channel=decision.channel,
            to=decision.to, sent_at=now,
        )  # fmt: skip
        if decision.channel == "sms" and decision.rendered is not None:
            converse(cs, now, "out", decision.rendered.body)

    def prune(self, cs: CustomerState, now: float) -> None:
        """Stop waiting for outcomes of messages sent long ago; forget old conversation."""
        for message_id, sent in list(cs.contact.sent.items()):
            if now - sent.sent_at > SENT_MEMORY and not sent.timer_id:
                del cs.contact.sent[message_id]
        talk = cs.contact.conversation
        if talk and now - talk[0][0] > CONVERSATION_MEMORY:
            cs.contact.conversation = [t for t in talk if now - t[0] <= CONVERSATION_MEMORY]

    # -- delivery outcomes ----------------------------------------------------------------
    def on_status(
        self, event: MessageStatus, cs: CustomerState, shared: Ledger, now: datetime, out: Decisions
    ) -> None:
        """Move the message's delivery state and react to a failure."""
        self.delivery.on_status(event, cs, shared, now, out)

    def fire(
        self, message_id: str, cs: CustomerState, shared: Ledger, now: datetime, out: Decisions
    ) -> None:
        """A send-again timer fell due."""
        self.delivery.fire(message_id, cs, shared, now, out)

    # -- replies --------------------------------------------------------------------------
    def on_reply(
        self,
        event: MessageReceived,
        cs: CustomerState,
        shared: Ledger,
        now: datetime,
        out: Decisions,
        offers: Offers | None = None,
    ) -> None:
        """Act on an inbound SMS."""
        self.replies.on_reply(event, cs, shared, now, out, offers)
