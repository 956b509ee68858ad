"""Delivery outcomes of sent messages, for ``Aftercare``.

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

Must not import: faust, aiokafka, twilio, sendgrid, openai, fastapi, sqlalchemy.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from outreach.agents.announcing import from_held
from outreach.agents.guardrails import Ledger
from outreach.agents.recording import record_message
from outreach.decisions import Decisions, DeliveryRecord, Timer
from outreach.events import MessageStatus
from outreach.ids import make_id
from outreach.outbound.feedback import MAX_CARRIER_RETRIES, dropped_suppression, twilio_reaction
from outreach.outbound.policy import ContactPolicy
from outreach.outbound.state import SentMessage
from outreach.state import CustomerState, TimerRef

_RANK = {"queued": 0, "sent": 1, "delivered": 2, "undelivered": 2, "failed": 2, "bounced": 2}
_FAILED = frozenset({"undelivered", "failed", "bounced"})
CARRIER_RETRY_BASE = 300.0  # seconds before the first send again after 30003/30008
OPT_OUTS = frozenset({"stop", "unsubscribe", "complaint", "manual"})  # the person's own choice


def advances(old: str, new: str) -> bool:
    """Whether a report of ``new`` moves a message in state ``old`` forward."""
    if old == "delivered" and new == "bounced":
        return True  # an email can bounce after the receiving server accepted it
    return _RANK.get(new, -1) > _RANK.get(old, 3)


class DeliveryOutcomes:
    """Delivery outcomes for one contact policy: failures suppress, pause or send again."""

    def __init__(self, policy: ContactPolicy) -> None:
        self.policy = policy

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


def _suppress(cs: CustomerState, channel: str, reason: str) -> None:
    """Suppress ``channel``; a person's own opt-out is never replaced by an address problem
    (a late report about a message sent before a STOP must not turn it into something a new
    number would lift)."""
    if reason in OPT_OUTS or cs.contact.suppressed.get(channel) not in OPT_OUTS:
        cs.contact.suppressed[channel] = reason


def _backoff(message_id: str, retry: int) -> float:
    """Exponential backoff with jitter that is deterministic (replay decides the same)."""
    base: float = CARRIER_RETRY_BASE * 2 ** (retry - 1)
    jitter = int(make_id("j", message_id, str(retry))[-6:], 16) / 0xFFFFFF  # 0..1
    return base * (0.5 + jitter / 2)
