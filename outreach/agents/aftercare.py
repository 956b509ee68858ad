"""After a message is sent: delivery outcomes and the customer's replies, inside the core.

Delivery (``message.status``): each sent message is tracked through ``queued -> sent ->
delivered | undelivered | failed | bounced`` (a report that would move it backwards, or that
is about an older attempt, is recorded but changes nothing; a late ``bounced`` after
``delivered`` counts). Failures change the policy, as ``outreach.outbound.feedback`` maps
them: an opted-out number (21610) is suppressed; an unusable number (21211, 21614, 30005,
30006) is suppressed as ``unusable`` and the message goes again on the next allowed channel
(email); carrier filtering (30007) pauses the template on SMS engine-wide, raises an alert and
sends the message by email; a carrier hiccup (30003, 30008) sends it again after a backoff,
at most twice; an email bounce, or a drop for a bounced, unsubscribed or spam-reporting
address, suppresses email. Sending again re-judges the message (consent, suppression, quiet
hours, kill switches) but not dedup, priority or caps: those judged it when it first went.

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

from datetime import UTC, datetime, timedelta
from typing import Protocol

from outreach.agents.announcing import from_held
from outreach.agents.connectors import Effect
from outreach.agents.guardrails import Ledger
from outreach.agents.recording import record_message
from outreach.agents.replies import opts_out, understand_by_keywords
from outreach.decisions import (
    ActionRecord,
    Decisions,
    Delivery,
    DeliveryRecord,
    MessageRecord,
    Timer,
)
from outreach.events import (
    MessageReceived,
    MessageReceivedData,
    MessageStatus,
    ReplyUnderstandingData,
)
from outreach.ids import make_id
from outreach.outbound.feedback import MAX_CARRIER_RETRIES, dropped_suppression, twilio_reaction
from outreach.outbound.keywords import classify
from outreach.outbound.policy import ContactPolicy, MessageDecision, OutboundMessage
from outreach.outbound.state import SentMessage
from outreach.state import CustomerState, TimerRef

_RANK = {"queued": 0, "sent": 1, "delivered": 2, "undelivered": 2, "failed": 2, "bounced": 2}
_FAILED = frozenset({"undelivered", "failed", "bounced"})
CARRIER_RETRY_BASE = 300.0  # seconds before the first send again after 30003/30008
SENT_MEMORY = 3 * 86400.0  # a sent message's outcome is awaited this long (late bounces: 72h)
CONVERSATION_LENGTH = 20
CONVERSATION_MEMORY = 30 * 86400.0  # older exchanges say little about today's reply
ESCALATE = "escalate_to_human"


def advances(old: str, new: str) -> bool:
    """Whether a report of ``new`` moves a message in state ``old`` forward."""
    if old == "delivered" and new == "bounced":
        return True  # an email can bounce after the receiving server accepted it
    return _RANK.get(new, -1) > _RANK.get(old, 3)


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


class Aftercare:
    """Delivery outcomes and replies for one contact policy."""

    def __init__(self, policy: ContactPolicy, killed_tools: frozenset[str]) -> None:
        self.policy = policy
        self.killed_tools = killed_tools

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
            self._converse(cs, now, "out", decision.rendered.body)

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
        d = event.data
        sent = cs.contact.sent.get(d.message_id)
        current = sent is not None and sent.attempt == d.attempt and sent.channel == d.channel
        applied = sent is not None and current and advances(sent.status, d.status)
        reactions: list[str] = []
        alert = False
        if sent is not None and applied:
            sent.status = d.status
        if d.status in _FAILED:
            if d.provider == "dispatcher" and d.error_code in ("suppressed", "gave_up"):
                alert = self._not_dispatched(event, sent if applied else None, cs, shared, now,
                                             out, reactions)  # fmt: skip
            elif d.channel == "sms":
                alert = self._sms_failure(event, sent if applied else None, cs, shared, now, out,
                                          reactions)  # fmt: skip
            else:
                self._email_failure(event, cs, reactions)
        if sent is not None and applied and _RANK[sent.status] == 2 and not sent.timer_id:
            cs.contact.sent.pop(d.message_id, None)  # final: nothing more to wait for
        out.receipts.append(
            DeliveryRecord(
                message_id=d.message_id,
                customer_id=cs.customer_id,
                channel=d.channel,
                attempt=d.attempt,
                status=d.status,
                at=now,
                provider=d.provider,
                provider_id=d.provider_id,
                error_code=d.error_code,
                provider_event=d.provider_event,
                detail=d.detail,
                applied=applied,
                reaction="; ".join(reactions),
                alert=alert,
            )  # fmt: skip
        )

    def _sms_failure(
        self,
        event: MessageStatus,
        sent: SentMessage | None,
        cs: CustomerState,
        shared: Ledger,
        now: datetime,
        out: Decisions,
        reactions: list[str],
    ) -> bool:
        """React to an SMS that did not arrive; returns whether to alert an operator."""
        code = event.data.error_code
        reaction = twilio_reaction(code)
        if reaction == "suppress":
            cs.contact.suppressed["sms"] = "stop"
            reactions.append(f"SMS suppressed: the number opted out ({code})")
        elif reaction == "unusable":
            _suppress(cs, "sms", "unusable")
            reactions.append(f"SMS suppressed: number unusable ({code})")
            if sent is not None:
                reactions.append(self._send_again(sent, cs, shared, now, out, f"number {code}"))
        elif reaction == "pause" and sent is not None:
            reason = f"carrier filtering ({code}) on {sent.message_id}"
            shared.set_control("template", f"sms:{sent.template}", reason)
            reactions.append(f"ALERT: template {sent.template} paused on SMS ({reason})")
            reactions.append(self._send_again(sent, cs, shared, now, out, f"SMS filtered {code}"))
            return True
        elif reaction == "retry" and sent is not None:
            if sent.carrier_retries >= MAX_CARRIER_RETRIES:
                reactions.append(f"not sent again: {MAX_CARRIER_RETRIES} carrier retries used")
            else:
                sent.carrier_retries += 1
                delay = _backoff(sent.message_id, sent.carrier_retries)
                due = now + timedelta(seconds=delay)
                self._schedule(sent, cs, due, out)
                reactions.append(
                    f"sending again at {due.astimezone(UTC):%H:%M:%S}Z "
                    f"(carrier retry {sent.carrier_retries} of {MAX_CARRIER_RETRIES}, {code})"
                )
        return False

    def _not_dispatched(
        self,
        event: MessageStatus,
        sent: SentMessage | None,
        cs: CustomerState,
        shared: Ledger,
        now: datetime,
        out: Decisions,
        reactions: list[str],
    ) -> bool:
        """The dispatcher did not send it: the address opted out after the message was decided
        (the opt-out event may still be on its way to us), or the provider failed every
        attempt. Either way the message goes by another channel if one may carry it; a
        provider that gave up also alerts an operator. Returns whether to alert."""
        d = event.data
        if d.error_code == "suppressed":
            reason = d.provider_event or "manual"
            if sent is not None and sent.purpose == "marketing" and d.channel == "email":
                cs.contact.lists[self.policy.config.marketing_list] = reason  # the narrowest
            else:
                _suppress(cs, d.channel, reason)
            reactions.append(f"{d.channel} suppressed: the address opted out ({reason})")
            if sent is not None:
                why = f"{d.channel} suppressed ({reason})"
                reactions.append(self._send_again(sent, cs, shared, now, out, why))
            return False
        reactions.append(f"ALERT: the {d.channel} provider failed every attempt ({d.detail})")
        if sent is not None:
            avoid: dict[str, str] = {d.channel: "its provider failed every attempt"}
            why = f"{d.channel} provider gave up"
            reactions.append(self._send_again(sent, cs, shared, now, out, why, avoid))
        return True

    def _email_failure(self, event: MessageStatus, cs: CustomerState, reactions: list[str]) -> None:
        d = event.data
        reason = None
        if d.status == "bounced":
            reason = "bounce"
        elif d.status == "failed" and d.provider_event == "dropped":
            reason = dropped_suppression(d.detail)
        if reason is not None:
            _suppress(cs, "email", reason)
            reactions.append(f"email suppressed ({reason})")

    def _schedule(
        self, sent: SentMessage, cs: CustomerState, due: datetime, out: Decisions
    ) -> None:
        timer_id = make_id(
            "tmr", "resend", sent.message_id, str(sent.attempt), str(due.timestamp())
        )
        cs.timers[timer_id] = TimerRef("resend", sent.message_id, due.timestamp())
        out.timers.append(Timer(timer_id, cs.customer_id, due))
        sent.timer_id = timer_id

    def fire(
        self, message_id: str, cs: CustomerState, shared: Ledger, now: datetime, out: Decisions
    ) -> None:
        """A send-again timer fell due."""
        sent = cs.contact.sent.get(message_id)
        if sent is not None:
            sent.timer_id = ""
            self._send_again(sent, cs, shared, now, out, "carrier retry due")

    def _send_again(
        self,
        sent: SentMessage,
        cs: CustomerState,
        shared: Ledger,
        now: datetime,
        out: Decisions,
        why: str,
        avoid: dict[str, str] | None = None,
    ) -> str:
        """Judge the message again and send it as its next attempt; says what happened."""
        msg = from_held(sent)
        decision = self.policy.decide(
            msg, cs.profile, cs.contact, now, shared, resend=True, avoid=avoid
        )
        decision.checks.insert(0, {"check": "resend", "result": "used", "detail": why})
        if decision.status == "deferred":
            self._schedule(sent, cs, decision.send_at, out)
            record_message(out, msg, decision, cs.customer_id)
            return f"sending again at {decision.send_at:%Y-%m-%d %H:%M}Z ({decision.reason})"
        if decision.status != "sent" or decision.to is None:
            cs.contact.sent.pop(sent.message_id, None)
            record_message(out, msg, decision, cs.customer_id)
            return f"not sent again: {decision.reason}"
        sent.attempt += 1
        sent.channel, sent.to, sent.status = decision.channel, decision.to, "queued"
        record_message(
            out, msg, decision, cs.customer_id, attempt=sent.attempt,
            marketing_list=self.policy.config.marketing_list,
        )  # fmt: skip
        return f"sent again by {decision.channel} (attempt {sent.attempt})"

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
        d = event.data
        now_ts = now.timestamp()
        self._converse(cs, now_ts, "in", d.body)
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
        if cs.contact.suppressed.get("sms") not in _OPT_OUTS:
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
        self._converse(cs, now.timestamp(), "out", body)

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

    def _converse(self, cs: CustomerState, at: float, way: str, text: str) -> None:
        talk = cs.contact.conversation
        talk.append((at, way, text))
        if len(talk) > CONVERSATION_LENGTH:
            del talk[: len(talk) - CONVERSATION_LENGTH]


_OPT_OUTS = frozenset({"stop", "unsubscribe", "complaint", "manual"})


def _suppress(cs: CustomerState, channel: str, reason: str) -> None:
    """Suppress ``channel``; a person's own opt-out is never replaced by an address problem
    (a late report about a message sent before a STOP must not turn it into something a new
    number would lift)."""
    if reason in _OPT_OUTS or cs.contact.suppressed.get(channel) not in _OPT_OUTS:
        cs.contact.suppressed[channel] = reason


def _backoff(message_id: str, retry: int) -> float:
    """Exponential backoff with jitter that is deterministic (replay decides the same)."""
    base: float = CARRIER_RETRY_BASE * 2 ** (retry - 1)
    jitter = int(make_id("j", message_id, str(retry))[-6:], 16) / 0xFFFFFF  # 0..1
    return base * (0.5 + jitter / 2)


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
