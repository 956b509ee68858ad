"""The customer's replies and the conversation with them, for ``Aftercare``.

Replies (``message.received``): STOP words suppress SMS and send one confirmation (the first
time; a number already stopped gets nothing more); START/UNSTOP resubscribe and confirm;
HELP/INFO answer with the help text; YES/NO answer the latest offer awaiting acceptance
(the executor applies it through the guardrails, or cancels it) and are acknowledged. Free
text is acted on by what it was understood to mean (``understood``: the reading the inbound
webhook attached to the event, by a model or by keywords, else keywords here): opt-out
language ("stop texting me") suppresses SMS and confirms first, whatever a model read, then
goes to a person; an acceptance or refusal answers the offer awaiting one like YES or NO; a
question, a complaint, a reading not sure enough (``human``), and a YES or NO when no offer
awaits one go to a person (``escalate_to_human`` with the conversation and the reading
attached). Keyword answers are compliance replies: they go even to a
suppressed number and in quiet hours, because the customer just wrote to us; the answer to a
YES or NO is not, and is not sent to a number that opted out.

Must not import: faust, aiokafka, twilio, sendgrid, openai, fastapi, sqlalchemy.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Protocol

from outreach.agents.aftercare_delivery import OPT_OUTS
from outreach.agents.connectors import Effect
from outreach.agents.guardrails import Ledger
from outreach.agents.replies import opts_out, understand_by_keywords
from outreach.decisions import ActionRecord, Decisions, Delivery, MessageRecord
from outreach.events import MessageReceived, MessageReceivedData, ReplyUnderstandingData
from outreach.ids import make_id
from outreach.outbound.keywords import classify
from outreach.outbound.policy import ContactPolicy
from outreach.state import CustomerState

CONVERSATION_LENGTH = 20
ESCALATE = "escalate_to_human"


class Offers(Protocol):
    """Where offers awaiting the customer's YES live (the executor)."""

    def answer_offer(
        self,
        cs: CustomerState,
        shared: Ledger,
        now: datetime,
        out: Decisions,
        accepted: bool,
        source: str,
    ) -> str | None:
        """Apply or decline the latest offer awaiting an answer; ``None`` if none awaits."""
        ...


class InboundReplies:
    """Keyword answers, offer answers and hand-offs to a person, for one contact policy."""

    def __init__(self, policy: ContactPolicy, killed_tools: frozenset[str]) -> None:
        self.policy = policy
        self.killed_tools = killed_tools

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
        d = event.data
        now_ts = now.timestamp()
        converse(cs, now_ts, "in", d.body)
        word = classify(d.body)
        suppressed = cs.contact.suppressed
        if word == "stop":
            self._stop(event, cs, now, out)
        elif word == "start":
            if suppressed.get("sms") in ("stop", "unusable"):
                del suppressed["sms"]
            self._answer(event, "start", self.policy.config.keywords.start, cs, now, out)
        elif word == "help":
            self._answer(event, "help", self.policy.config.keywords.help, cs, now, out)
        elif (
            word in ("yes", "no")
            and offers is not None
            and self._answered(event, word == "yes", offers, cs, shared, now, out)
        ):
            return
        elif word in ("yes", "no"):
            self._escalate(event, cs, shared, now, out, f"{word.upper()} but no offer awaits one")
        else:
            self._free_text(event, cs, shared, now, out, offers)

    def _free_text(
        self,
        event: MessageReceived,
        cs: CustomerState,
        shared: Ledger,
        now: datetime,
        out: Decisions,
        offers: Offers | None,
    ) -> None:
        """A reply that is no keyword, by what it was understood to mean: opt-out language
        suppresses first (whatever a model thought), an acceptance or refusal answers the
        offer awaiting one, anything else goes to a person with the reading attached."""
        d = event.data
        reading = understood(d)
        if opts_out(d.body) or reading.intent == "opt_out":  # suppress first, ask later
            self._stop(event, cs, now, out)
            why = "opt-out language: SMS suppressed; a person checks what else they asked"
            self._escalate(event, cs, shared, now, out, why, reading)
            return
        if (
            reading.intent in ("accept", "decline")
            and offers is not None
            and self._answered(
                event,
                reading.intent == "accept",
                offers,
                cs,
                shared,
                now,
                out,
                f"free text read as {reading.intent} by {reading.source}, {reading.confidence:.2f}",
            )
        ):
            return
        why = {
            "accept": "reads as an acceptance, but no offer awaits one",
            "decline": "reads as a refusal, but no offer awaits one",
            "question": "a question",
            "complaint": "a complaint",
            "human": "not understood surely enough",
        }[reading.intent]
        self._escalate(event, cs, shared, now, out, f"customer reply: {why}", reading)

    def _stop(
        self, event: MessageReceived, cs: CustomerState, now: datetime, out: Decisions
    ) -> None:
        """Suppress SMS and confirm it the first time (a stopped number hears nothing more)."""
        suppressed = cs.contact.suppressed
        first = suppressed.get("sms") != "stop"
        suppressed["sms"] = "stop"
        if first:
            self._answer(event, "stop", self.policy.config.keywords.stop, cs, now, out)

    def _answered(
        self,
        event: MessageReceived,
        accepted: bool,
        offers: Offers,
        cs: CustomerState,
        shared: Ledger,
        now: datetime,
        out: Decisions,
        how: str = "",
    ) -> bool:
        """A YES or NO to an offer awaiting one: applied or declined, and acknowledged
        (``how``: how a free-text answer was read)."""
        source = f"{event.event_id}; {how}" if how else event.event_id
        outcome = offers.answer_offer(cs, shared, now, out, accepted, source)
        if outcome is None:
            return False
        texts = self.policy.config.keywords
        text = {"accepted": texts.accepted, "declined": texts.declined}.get(outcome)
        if text is None:  # the guardrails no longer allow it: a person follows up
            text = texts.unavailable
            self._escalate(event, cs, shared, now, out, f"accepted offer not applied ({outcome})")
        if cs.contact.suppressed.get("sms") not in OPT_OUTS:
            self._answer(event, outcome, text, cs, now, out, compliance=False)
        return True

    def _answer(
        self,
        event: MessageReceived,
        word: str,
        text: str,
        cs: CustomerState,
        now: datetime,
        out: Decisions,
        *,
        compliance: bool = True,
    ) -> None:
        brand = self.policy.brand
        body = text.format(
            brand=brand.get("name", ""),
            support_url=brand.get("support_url", ""),
            support_email=brand.get("support_email", ""),
        )
        message_id = make_id("msg", event.event_id, word)
        to = event.data.from_address
        out.messages.append(
            MessageRecord(
                message_id=message_id,
                signal_id="",
                customer_id=cs.customer_id,
                rule_id="sms_keywords" if compliance else "sms_replies",
                channel="sms",
                to=to,
                purpose="transactional",
                subject=None,
                body=body,
                send_at=now,
                status="sent",
                reason=(
                    f"answer to {word.upper()} ({event.event_id})"
                    if compliance
                    else f"offer {word}: the customer's answer acknowledged ({event.event_id})"
                ),
                template=f"keyword_{word}",
                notice=f"keyword|{event.event_id}",
                checks=[{"check": "keyword", "result": "pass", "detail": f"{word.upper()} reply"}],
            )  # fmt: skip
        )
        out.deliveries.append(
            Delivery(
                message_id=message_id,
                customer_id=cs.customer_id,
                channel="sms",
                to=to,
                purpose="transactional",
                subject=None,
                body=body,
                template=f"keyword_{word}",
                compliance=compliance,
            )  # fmt: skip
        )
        converse(cs, now.timestamp(), "out", body)

    def _escalate(
        self,
        event: MessageReceived,
        cs: CustomerState,
        shared: Ledger,
        now: datetime,
        out: Decisions,
        reason: str = "the customer replied with something we do not answer automatically",
        reading: ReplyUnderstandingData | None = None,
    ) -> None:
        # the customer in the ids: customers sharing a number get the same inbound event id
        action_id = make_id("act", cs.customer_id, event.event_id, ESCALATE)
        key = make_id("eff", cs.customer_id, event.event_id, ESCALATE)
        params: dict[str, object] = {
            "reason": reason,
            "reply": event.data.body,
            "conversation": [
                {"at": _iso(at), "direction": way, "text": text}
                for at, way, text in cs.contact.conversation
            ],
        }
        if reading is not None:
            params["understanding"] = reading.model_dump(exclude_none=True)
        stopped = ESCALATE in self.killed_tools or shared.control("tool", ESCALATE)
        status = "blocked" if stopped else "executed"
        reason = "kill switch" if stopped else "customer reply needs a person"
        check = {"check": "kill_switch", "result": "fail" if stopped else "pass", "detail": reason}
        out.actions.append(
            ActionRecord(
                action_id=action_id,
                signal_id="",
                customer_id=cs.customer_id,
                rule_id="sms_replies",
                type=ESCALATE,
                params=params,
                status=status,
                at=now,
                reason=reason,
                target=event.data.from_address,
                idempotency_key=key,
                checks=[check],
            )  # fmt: skip
        )
        if not stopped:
            out.effects.append(
                Effect(
                    idempotency_key=key,
                    action_id=action_id,
                    customer_id=cs.customer_id,
                    tool=ESCALATE,
                    params=params,
                )
            )


def converse(cs: CustomerState, at: float, way: str, text: str) -> None:
    """Add a line to the conversation, keeping the latest ``CONVERSATION_LENGTH``."""
    talk = cs.contact.conversation
    talk.append((at, way, text))
    if len(talk) > CONVERSATION_LENGTH:
        del talk[: len(talk) - CONVERSATION_LENGTH]


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


def understood(data: MessageReceivedData) -> ReplyUnderstandingData:
    """What a free-text reply means: the webhook's reading carried by the event, else the
    keyword reading (an event recorded before readings existed, or published by hand)."""
    if data.understanding is not None:
        return data.understanding
    found = understand_by_keywords(data.body)
    return ReplyUnderstandingData(
        intent=found.intent, confidence=found.confidence, source=found.source,
        reason=found.reason[:512],
    )  # fmt: skip
