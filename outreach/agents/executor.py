"""The agent runtime inside the core: plan -> guardrails -> contact policy -> decisions.

This is the only path from a plan to an effect. Actions go through the guardrails (whatever
planned them), messages through the contact policy; an offer that cannot be announced is not
made, a message that promises an action only goes if the action was approved. Holdout and
shadow are decided here too, so they apply to every playbook alike.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from outreach.agents.connectors import Effect
from outreach.agents.guardrails import Check, Guardrails, SharedLedger, Verdict
from outreach.agents.plan import Plan, PlannedAction, PlannedMessage
from outreach.agents.playbooks import Playbook, PlaybookContext
from outreach.agents.state import OpenAction
from outreach.decisions import ActionRecord, Decisions, Delivery, MessageRecord, Timer
from outreach.events import Event
from outreach.ids import make_id
from outreach.outbound.policy import ContactPolicy, MessageDecision, OutboundMessage
from outreach.outbound.state import DeferredMessage
from outreach.rules.evaluate import Signal
from outreach.state import CustomerState, TimerRef


@dataclass(frozen=True)
class RulePlaybook:
    """A rule's playbook with its validated parameters."""

    playbook: Playbook
    params: Any
    holdout: float


def _ts(value: float) -> datetime:
    return datetime.fromtimestamp(value, UTC)


class Executor:
    """Runs plans for signals and fires timed work, recording every verdict."""

    def __init__(
        self,
        guardrails: Guardrails,
        policy: ContactPolicy,
        rules: dict[str, RulePlaybook],
        links: dict[str, str],
    ) -> None:
        self.guardrails = guardrails
        self.policy = policy
        self.rules = rules
        self.links = links

    # -- signals --------------------------------------------------------------------------
    def run(
        self,
        signal: Signal,
        event: Event,
        cs: CustomerState,
        shared: SharedLedger,
        now: datetime,
        out: Decisions,
    ) -> None:
        """Plan for ``signal`` and decide every action and message of the plan."""
        rule = self.rules[signal.rule_id]
        entity_name, entity = cs.agents.entity(signal.rule_id, signal.key)
        entity.touched = now.timestamp()
        ctx = PlaybookContext(
            signal, event, rule.params, cs.profile, entity,
            cs.agents.open_for(entity_name), now, self.guardrails.config, self.links,
        )  # fmt: skip
        plan = rule.playbook.plan(ctx)
        if signal.shadow:
            out.signals.append(
                signal.model_copy(update={"note": plan.note, "preview": _preview(plan)})
            )
            return
        out.signals.append(signal.model_copy(update={"note": plan.note}))
        if signal.holdout:
            self._hold_out(signal, plan, rule, now, out)
            return
        if plan.cancel_tools:
            self.cancel(
                cs, entity_name, plan.cancel_reason, now, out, tools=plan.cancel_tools, close=False
            )
        self._execute(signal, plan, rule.playbook.name, entity_name, cs, shared, now, out)

    def _execute(
        self,
        signal: Signal,
        plan: Plan,
        playbook: str,
        entity_name: str,
        cs: CustomerState,
        shared: SharedLedger,
        now: datetime,
        out: Decisions,
    ) -> None:
        verdicts: dict[str, Verdict] = {}
        for action in plan.actions:
            verdict = self._check(signal, action, playbook, cs, shared, now)
            verdicts[action.ref] = verdict
            if action.announce is None:
                self._commit_action(
                    signal, action, verdict, playbook, entity_name, cs, shared, now, out
                )
        decided = [
            self._decide_message(signal, m, verdicts, entity_name, cs, now) for m in plan.messages
        ]
        for action in plan.actions:
            if action.announce is None:
                continue
            verdict = verdicts[action.ref]
            announced = next((d for d in decided if d and d[0].ref == action.announce), None)
            if verdict.approved and (announced is None or not announced[2].deliverable):
                reason = (
                    "no message could announce it" if announced is None else announced[2].reason
                )
                verdict = Verdict(
                    "blocked",
                    f"offer not made: {reason}",
                    [*verdict.checks, Check("announce", "fail", reason)],
                )
            self._commit_action(
                signal, action, verdict, playbook, entity_name, cs, shared, now, out
            )
        for entry in decided:
            if entry is not None:
                _, msg, decision, dm_entity = entry
                self._commit_message(msg, decision, dm_entity, cs, now, out)

    def _check(
        self,
        signal: Signal,
        action: PlannedAction,
        playbook: str,
        cs: CustomerState,
        shared: SharedLedger,
        now: datetime,
    ) -> Verdict:
        key = make_id("eff", signal.signal_id, action.tool, action.target)
        at = action.at.timestamp() if action.at is not None else None
        return self.guardrails.check(
            action.tool, action.params, playbook, key, cs.agents, shared, now.timestamp(), at
        )

    def _decide_message(
        self,
        signal: Signal,
        planned: PlannedMessage,
        verdicts: dict[str, Verdict],
        entity_name: str,
        cs: CustomerState,
        now: datetime,
    ) -> tuple[PlannedMessage, OutboundMessage, MessageDecision, str] | None:
        chosen: PlannedMessage | None = planned
        why = ""
        unmet = [r for r in planned.requires if not _approved(verdicts.get(r))]
        if unmet:
            first = verdicts.get(unmet[0])
            why = f"{', '.join(unmet)} not approved ({first.reason if first else 'not planned'})"
            chosen = planned.fallback
        if chosen is None:
            return None
        msg = self._outbound(signal, chosen)
        if cs.contact.notices.get(msg.notice, (0.0, ""))[1] == msg.message_id:
            return None  # already decided once (a duplicate signal); never twice
        decision = self.policy.decide(msg, cs.profile, cs.contact, now)
        if chosen is planned and not decision.deliverable and planned.fallback is not None:
            why = f"{planned.purpose} version not possible ({decision.reason})"
            chosen = planned.fallback
            msg = self._outbound(signal, chosen)
            decision = self.policy.decide(msg, cs.profile, cs.contact, now)
        if why:
            decision.checks.insert(0, {"check": "fallback", "result": "used", "detail": why})
        return planned, msg, decision, entity_name

    def _outbound(self, signal: Signal, planned: PlannedMessage) -> OutboundMessage:
        return OutboundMessage(
            message_id=make_id("msg", signal.signal_id, planned.ref),
            signal_id=signal.signal_id,
            rule_id=signal.rule_id,
            template=planned.template,
            purpose=planned.purpose,
            context=planned.context,
            notice=planned.notice,
            category=signal.category,
        )

    # -- recording ------------------------------------------------------------------------
    def _commit_action(
        self,
        signal: Signal,
        action: PlannedAction,
        verdict: Verdict,
        playbook: str,
        entity_name: str,
        cs: CustomerState,
        shared: SharedLedger,
        now: datetime,
        out: Decisions,
    ) -> None:
        if verdict.status == "duplicate":
            return
        action_id = make_id("act", signal.signal_id, action.tool, action.target)
        key = make_id("eff", signal.signal_id, action.tool, action.target)
        params = verdict.params.model_dump(mode="json") if verdict.params else action.params
        scheduled = action.at if verdict.status == "scheduled" else None
        out.actions.append(
            ActionRecord(
                action_id=action_id,
                signal_id=signal.signal_id,
                customer_id=signal.customer_id,
                rule_id=signal.rule_id,
                type=action.tool,
                params=params,
                status=verdict.status,
                at=now,
                reason=verdict.reason,
                target=action.target,
                idempotency_key=key,
                scheduled_for=scheduled,
                checks=[c.as_dict() for c in verdict.checks],
            )  # fmt: skip
        )
        if not verdict.approved:
            return
        now_ts = now.timestamp()
        cs.agents.effects[key] = now_ts
        if verdict.status == "executed":
            self.guardrails.commit_spend(action.tool, verdict, cs.agents, shared, now_ts)
            out.effects.append(
                Effect(
                    idempotency_key=key,
                    action_id=action_id,
                    customer_id=signal.customer_id,
                    tool=action.tool,
                    params=params,
                )
            )
            return
        open_action = OpenAction(
            action_id=action_id, signal_id=signal.signal_id, rule_id=signal.rule_id,
            playbook=playbook, entity=entity_name, tool=action.tool, params=params,
            target=action.target, status=verdict.status, idempotency_key=key, created=now_ts,
        )  # fmt: skip
        if scheduled is not None:
            open_action.due = scheduled.timestamp()
            open_action.timer_id = self._timer(cs, "action", action_id, scheduled, out)
        cs.agents.open[action_id] = open_action

    def _timer(self, cs: CustomerState, kind: str, ref: str, due: datetime, out: Decisions) -> str:
        timer_id = make_id("tmr", ref, str(due.timestamp()))
        cs.timers[timer_id] = TimerRef(kind, ref, due.timestamp())
        out.timers.append(Timer(timer_id, cs.customer_id, due))
        return timer_id

    def _commit_message(
        self,
        msg: OutboundMessage,
        decision: MessageDecision,
        entity_name: str,
        cs: CustomerState,
        now: datetime,
        out: Decisions,
    ) -> None:
        now_ts = now.timestamp()
        self.policy.commit(msg, decision, cs.contact, now_ts)
        rendered = decision.rendered
        segments = rendered.segments if rendered else None
        out.messages.append(
            MessageRecord(
                message_id=msg.message_id,
                signal_id=msg.signal_id,
                customer_id=cs.customer_id,
                rule_id=msg.rule_id,
                channel=decision.channel,
                to=decision.to,
                purpose=msg.purpose,
                subject=rendered.subject if rendered else None,
                body=rendered.body if rendered else None,
                send_at=decision.send_at,
                status=decision.status,
                reason=decision.reason,
                template=msg.template,
                notice=msg.notice,
                locale=rendered.locale if rendered else None,
                segments=segments.segments if segments else None,
                encoding=segments.encoding if segments else None,
                checks=decision.checks,
            )  # fmt: skip
        )
        if decision.status == "sent" and rendered is not None and decision.to is not None:
            out.deliveries.append(
                Delivery(
                    message_id=msg.message_id,
                    customer_id=cs.customer_id,
                    channel=decision.channel,
                    to=decision.to,
                    purpose=msg.purpose,
                    subject=rendered.subject,
                    body=rendered.body,
                )  # fmt: skip
            )
        if decision.status == "deferred":
            timer_id = self._timer(cs, "message", msg.message_id, decision.send_at, out)
            cs.contact.deferred[msg.message_id] = DeferredMessage(
                message_id=msg.message_id, signal_id=msg.signal_id, rule_id=msg.rule_id,
                entity=entity_name, template=msg.template, purpose=msg.purpose,
                context=msg.context, notice=msg.notice, category=msg.category,
                created=now_ts, send_at=decision.send_at.timestamp(), timer_id=timer_id,
            )  # fmt: skip

    def _hold_out(
        self, signal: Signal, plan: Plan, rule: RulePlaybook, now: datetime, out: Decisions
    ) -> None:
        reason = f"holdout: customer is in the {rule.holdout:g}% control group of {signal.rule_id}"
        actions = plan.actions or [
            PlannedAction(
                "notify",
                "notify",
                {"templates": [m.template for m in plan.messages]},
                signal.key or "message",
            )
        ]
        for action in actions:
            out.actions.append(
                ActionRecord(
                    action_id=make_id("act", signal.signal_id, action.tool, action.target),
                    signal_id=signal.signal_id,
                    customer_id=signal.customer_id,
                    rule_id=signal.rule_id,
                    type=action.tool,
                    params=action.params,
                    status="skipped_holdout",
                    at=now,
                    reason=reason,
                    target=action.target,
                    idempotency_key=make_id("eff", signal.signal_id, action.tool, action.target),
                )  # fmt: skip
            )

    # -- cancellation and timers ----------------------------------------------------------
    def cancel(
        self,
        cs: CustomerState,
        entity_name: str,
        reason: str,
        now: datetime,
        out: Decisions,
        tools: tuple[str, ...] = (),
        close: bool = True,
    ) -> None:
        """Cancel what is still pending for a subject; ``close`` it against later signals."""
        for open_action in cs.agents.open_for(entity_name, tools):
            del cs.agents.open[open_action.action_id]
            if open_action.timer_id:
                cs.timers.pop(open_action.timer_id, None)
            out.actions.append(_cancelled(open_action, cs.customer_id, reason, now))
        if not tools:
            for message_id, deferred in list(cs.contact.deferred.items()):
                if deferred.entity == entity_name:
                    del cs.contact.deferred[message_id]
                    cs.timers.pop(deferred.timer_id, None)
                    self._drop_deferred(deferred, cs, f"cancelled: {reason}", now, out)
        entity = cs.agents.entities.get(entity_name)
        if close and entity is not None:
            entity.closed = reason
            entity.touched = now.timestamp()

    def _drop_deferred(
        self,
        deferred: DeferredMessage,
        cs: CustomerState,
        reason: str,
        now: datetime,
        out: Decisions,
    ) -> None:
        msg = _from_deferred(deferred)
        order = getattr(self.policy.config.channels, msg.purpose)
        decision = MessageDecision("suppressed", order[0], None, reason, now)
        self._commit_message(msg, decision, deferred.entity, cs, now, out)

    def fire(
        self, ref: TimerRef, cs: CustomerState, shared: SharedLedger, now: datetime, out: Decisions
    ) -> None:
        """A timer fell due: execute the scheduled action or judge the deferred message."""
        if ref.kind == "action":
            self._fire_action(ref.ref, cs, shared, now, out)
        else:
            deferred = cs.contact.deferred.pop(ref.ref, None)
            if deferred is not None:
                msg = _from_deferred(deferred)
                decision = self.policy.decide(msg, cs.profile, cs.contact, now)
                self._commit_message(msg, decision, deferred.entity, cs, now, out)

    def _fire_action(
        self, action_id: str, cs: CustomerState, shared: SharedLedger, now: datetime, out: Decisions
    ) -> None:
        oa = cs.agents.open.pop(action_id, None)
        if oa is None or oa.status != "scheduled":
            return
        verdict = self.guardrails.check(
            oa.tool, oa.params, oa.playbook, oa.idempotency_key, cs.agents, shared,
            now.timestamp(), recheck=True,
        )  # fmt: skip
        if verdict.status == "pending_approval":
            oa.status, oa.timer_id, oa.due = "pending_approval", None, None
            cs.agents.open[action_id] = oa
        reason = "due; guardrails passed" if verdict.status == "executed" else verdict.reason
        record = ActionRecord(
            action_id=oa.action_id, signal_id=oa.signal_id, customer_id=cs.customer_id,
            rule_id=oa.rule_id, type=oa.tool, params=oa.params, status=verdict.status,
            at=now, reason=reason,
            target=oa.target, idempotency_key=oa.idempotency_key,
            checks=[c.as_dict() for c in verdict.checks],
        )  # fmt: skip
        out.actions.append(record)
        if verdict.status == "executed":
            self.guardrails.commit_spend(oa.tool, verdict, cs.agents, shared, now.timestamp())
            out.effects.append(
                Effect(
                    idempotency_key=oa.idempotency_key,
                    action_id=oa.action_id,
                    customer_id=cs.customer_id,
                    tool=oa.tool,
                    params=oa.params,
                )
            )


def _approved(verdict: Verdict | None) -> bool:
    """A message may promise an action only if it is certain: executed or scheduled."""
    return verdict is not None and verdict.status in ("executed", "scheduled")


def _cancelled(oa: OpenAction, customer_id: str, reason: str, now: datetime) -> ActionRecord:
    return ActionRecord(
        action_id=oa.action_id, signal_id=oa.signal_id, customer_id=customer_id,
        rule_id=oa.rule_id, type=oa.tool, params=oa.params, status="cancelled", at=now,
        reason=f"cancelled: {reason}", target=oa.target, idempotency_key=oa.idempotency_key,
        scheduled_for=_ts(oa.due) if oa.due else None,
    )  # fmt: skip


def _from_deferred(d: DeferredMessage) -> OutboundMessage:
    return OutboundMessage(
        message_id=d.message_id, signal_id=d.signal_id, rule_id=d.rule_id, template=d.template,
        purpose=d.purpose, context=d.context, notice=d.notice, category=d.category,
    )  # fmt: skip


def _preview(plan: Plan) -> dict[str, Any]:
    return {
        "actions": [
            {
                "type": a.tool,
                "params": a.params,
                "target": a.target,
                "at": a.at.isoformat() if a.at else None,
            }
            for a in plan.actions
        ],
        "messages": [{"template": m.template, "purpose": m.purpose} for m in plan.messages],
    }
