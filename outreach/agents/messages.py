"""The executor's messages against the contact policy: decided, recorded, deferred, held back.

Owns a planned message's way out: the policy's verdict on it or on its fallback
(``Messages.decide_message``), its record, tracking and deferral (``Messages.commit_message``),
a deferred message judged again when its timer fires, with the offers it announces
(``Messages.fire_message``), and a message held back until a person approves the actions it
promises (``hold_back``, ``Messages.held_choice``). The actions themselves are
``outreach.agents.actions``'s.

Must not import: faust, aiokafka, twilio, sendgrid, openai, fastapi, sqlalchemy.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from outreach.agents.actions import Actions, ask, cancel_action, timer
from outreach.agents.aftercare import Aftercare
from outreach.agents.announcing import MessageChoice, approved, as_dict, from_held, outbound
from outreach.agents.guardrails import Ledger, Verdict
from outreach.agents.plan import Plan, PlannedMessage
from outreach.agents.recording import record_message
from outreach.agents.state import HeldBack, OpenAction
from outreach.decisions import Decisions
from outreach.outbound.policy import ContactPolicy, MessageDecision, OutboundMessage
from outreach.outbound.state import DeferredMessage
from outreach.rules.evaluate import Signal
from outreach.state import CustomerState


class Messages:
    """Judges messages by the contact policy and records what becomes of them."""

    def __init__(self, policy: ContactPolicy, aftercare: Aftercare, actions: Actions) -> None:
        self.policy = policy
        self.aftercare = aftercare
        self.actions = actions

    def decide_message(
        self,
        signal: Signal,
        planned: PlannedMessage,
        verdicts: dict[str, Verdict],
        cs: CustomerState,
        shared: Ledger,
        now: datetime,
    ) -> MessageChoice | None:
        """The policy's verdict on a planned message, or on its fallback when it cannot go."""
        chosen: PlannedMessage | None = planned
        why = ""
        unmet = [r for r in planned.requires if not approved(verdicts.get(r))]
        if unmet:
            first = verdicts.get(unmet[0])
            why = f"{', '.join(unmet)} not approved ({first.reason if first else 'not planned'})"
            chosen = planned.fallback
        if chosen is None:
            return None
        msg = outbound(signal.signal_id, signal.rule_id, signal.category, chosen)
        if cs.contact.notices.get(msg.notice, (0.0, ""))[1] == msg.message_id:
            return None  # already decided once (a duplicate signal); never twice
        decision = self.policy.decide(msg, cs.profile, cs.contact, now, shared)
        if chosen is planned and not decision.deliverable and planned.fallback is not None:
            why = f"{planned.purpose} version not possible ({decision.reason})"
            chosen = planned.fallback
            msg = outbound(signal.signal_id, signal.rule_id, signal.category, chosen)
            decision = self.policy.decide(msg, cs.profile, cs.contact, now, shared)
        if why:
            decision.checks.insert(0, {"check": "fallback", "result": "used", "detail": why})
        return MessageChoice(planned, chosen, msg, decision, why)

    def commit_message(
        self,
        msg: OutboundMessage,
        decision: MessageDecision,
        entity_name: str,
        cs: CustomerState,
        now: datetime,
        out: Decisions,
        announces: list[str] | None = None,
        fallback: dict[str, Any] | None = None,
        requires: list[str] | None = None,
    ) -> None:
        """Record the policy's verdict on a message: tracked if sent, kept if deferred."""
        self.policy.commit(msg, decision, cs.contact, now.timestamp())
        marketing_list = self.policy.config.marketing_list
        record_message(out, msg, decision, cs.customer_id, marketing_list=marketing_list)
        if decision.status == "sent":
            self.aftercare.track(msg, decision, entity_name, cs, now.timestamp())
        if decision.status != "deferred":
            return
        timer_id = timer(cs, "message", msg.message_id, decision.send_at, out)
        cs.contact.deferred[msg.message_id] = DeferredMessage(
            message_id=msg.message_id, signal_id=msg.signal_id, rule_id=msg.rule_id,
            entity=entity_name, template=msg.template, purpose=msg.purpose, context=msg.context,
            notice=msg.notice, category=msg.category, created=now.timestamp(),
            channel=decision.channel,
            send_at=decision.send_at.timestamp(), timer_id=timer_id,
            announces=announces or [], fallback=fallback, requires=requires or [],
        )  # fmt: skip

    def drop(
        self,
        deferred: DeferredMessage,
        cs: CustomerState,
        reason: str,
        now: datetime,
        out: Decisions,
    ) -> None:
        """Record a held message as suppressed (``reason``): it will not go."""
        msg = from_held(deferred)
        decision = MessageDecision("suppressed", self._held_channel(deferred), None, reason, now)
        self.commit_message(msg, decision, deferred.entity, cs, now, out)

    def _held_channel(self, deferred: DeferredMessage) -> str:
        """The channel a held message was going to use (older state: its purpose's first)."""
        order: list[str] = getattr(self.policy.config.channels, deferred.purpose)
        return deferred.channel or order[0]

    def fire_message(
        self,
        deferred: DeferredMessage,
        cs: CustomerState,
        shared: Ledger,
        now: datetime,
        out: Decisions,
    ) -> None:
        """Judge a deferred message again; its waiting offers go with it or not at all."""
        msg = from_held(deferred)
        blocked = self.actions.recheck_announced(deferred.announces, cs, shared, now)
        if blocked:
            decision = MessageDecision(
                "suppressed", self._held_channel(deferred), None, blocked, now
            )
        else:
            decision = self.policy.decide(msg, cs.profile, cs.contact, now, shared)
        if decision.status == "deferred":
            self.commit_message(
                msg, decision, deferred.entity, cs, now, out,
                deferred.announces, deferred.fallback, deferred.requires,
            )  # fmt: skip
            return
        self.commit_message(msg, decision, deferred.entity, cs, now, out)
        if decision.status == "sent":
            for action_id in deferred.announces:
                oa = cs.agents.open.get(action_id)
                if oa is not None and oa.accept_within and decision.channel == "sms":
                    ask(oa, cs, now, out)
                else:
                    self.actions.fire_action(action_id, cs, shared, now, out)
            return
        for action_id in deferred.announces:
            reason = f"offer not made: its announcement was not sent ({decision.reason})"
            cancel_action(action_id, cs, reason, now, out)
        if deferred.fallback is not None:
            planned = PlannedMessage(**deferred.fallback)
            fallback = outbound(deferred.signal_id, deferred.rule_id, deferred.category, planned)
            choice = self.policy.decide(fallback, cs.profile, cs.contact, now, shared)
            why = f"{msg.purpose} version not sent ({decision.reason})"
            choice.checks.insert(0, {"check": "fallback", "result": "used", "detail": why})
            self.commit_message(fallback, choice, deferred.entity, cs, now, out)

    def held_choice(
        self,
        held: HeldBack,
        oa: OpenAction,
        cs: CustomerState,
        shared: Ledger,
        now: datetime,
        out: Decisions,
    ) -> MessageChoice | None:
        """The contact policy's verdict on the message ``oa`` held back, now that ``oa`` is
        approved; ``None`` while another action it promises still waits (it goes with the
        last approval) or when one of them did not happen (its fallback said what is true).

        A fallback of the same notice still waiting to go (quiet hours) is superseded when this
        one can go: the customer gets one message. Once the fallback has gone, this one is a
        notice of its own.
        """
        entity = cs.agents.entities.get(oa.entity)
        outcomes = entity.outcomes if entity is not None else {}
        for other in held.requires:
            if other == oa.action_id:
                continue
            waiting = cs.agents.open.get(other)
            if waiting is not None and waiting.status == "pending_approval":
                if waiting.held is None:  # it sends the message when approved in turn
                    waiting.held = held
                return None
            if outcomes.get(other, ("", "", ""))[2] not in ("executed", "scheduled"):
                return None
        planned = PlannedMessage(**held.message)
        notice = planned.notice
        planned.notice = f"{notice}#approved"  # a notice of its own, unless it replaces one
        msg = outbound(oa.signal_id, oa.rule_id, held.category, planned)
        decision = self.policy.decide(msg, cs.profile, cs.contact, now, shared)
        superseded = [
            d for d in cs.contact.deferred.values()
            if d.signal_id == oa.signal_id and d.notice == notice
        ]  # fmt: skip
        if superseded and decision.deliverable:  # else the waiting fallback still goes
            for d in superseded:
                del cs.contact.deferred[d.message_id]
                cs.timers.pop(d.timer_id, None)
                reason = f"superseded: {oa.tool} was approved, {msg.message_id} goes instead"
                self.drop(d, cs, reason, now, out)
            planned.notice = notice
            msg = outbound(oa.signal_id, oa.rule_id, held.category, planned)
            decision = self.policy.decide(msg, cs.profile, cs.contact, now, shared)
        return MessageChoice(planned, planned, msg, decision, "")


_GOING = ("executed", "scheduled", "pending_approval")  # requirements a held message may await


def hold_back(
    signal: Signal,
    plan: Plan,
    verdicts: dict[str, Verdict],
    ids: dict[str, str],
    cs: CustomerState,
) -> None:
    """Keep each message that waits only for approvals with the actions it waits for."""
    actions = {a.ref: a for a in plan.actions}
    for m in plan.messages:
        statuses = {r: verdicts[r].status if r in verdicts else "" for r in m.requires}
        waiting = [r for r, status in statuses.items() if status == "pending_approval"]
        if not waiting or not all(s in _GOING for s in statuses.values()):
            continue  # goes now, or never (a requirement was blocked)
        for r in waiting:
            oa = cs.agents.open.get(ids[r])
            if oa is None or oa.status != "pending_approval":
                continue
            action = actions[r]
            oa.held = HeldBack(
                message=as_dict(m) or {}, category=signal.category,
                requires=[ids[x] for x in m.requires if x in ids],
                announce=action.announce == m.ref, accept_within=action.accept_within,
            )  # fmt: skip
