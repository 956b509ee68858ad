"""The agent runtime inside the core: plan -> guardrails -> contact policy -> decisions.

This is the only path from a plan to an effect. Actions go through the guardrails (whatever
planned them), messages through the contact policy. Two couplings are enforced here, for every
playbook alike:
- a message that promises an action (``requires``) goes only if the action is executed or
  scheduled, else its fallback goes instead;
- an action that must be announced (``announce``, e.g. an offer) happens only when its message
  is sent: if the message is deferred (quiet hours) the action waits for it, and if the message
  is finally not sent the action is cancelled and the message's fallback goes instead;
- an action that must be accepted (``accept_within``, an offer asking for a YES) and whose
  announcement went by SMS waits for the customer's answer once announced: YES runs it
  through the guardrails again (budgets may have moved), NO or the end of the window
  cancels it (``answer_offer``).
- a message held back because an action it promises waits for approval goes once a person
  approves the action (``HeldBack``): in place of its fallback if that is still waiting to go,
  else after it as its own notice; an offer that must be announced is performed only with it.
Holdout and shadow are decided here too.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from outreach.agents.aftercare import Aftercare
from outreach.agents.announcing import (
    MessageChoice,
    announced,
    approved,
    as_dict,
    from_held,
    outbound,
)
from outreach.agents.guardrails import Check, Guardrails, Ledger, Verdict
from outreach.agents.plan import Plan, PlannedAction, PlannedMessage
from outreach.agents.planner import Planned, Planner, PlaybookPlanner
from outreach.agents.playbooks import Playbook, PlaybookContext
from outreach.agents.recording import action_record, effect, preview, record_message
from outreach.agents.state import HeldBack, OpenAction
from outreach.decisions import Decisions, Timer
from outreach.events import ActionStatusChanged, Event, utc_iso
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


class Executor:
    """Runs plans for signals and fires timed work, recording every verdict."""

    def __init__(
        self,
        guardrails: Guardrails,
        policy: ContactPolicy,
        rules: dict[str, RulePlaybook],
        links: dict[str, str],
        aftercare: Aftercare,
        planner: Planner | None = None,
    ) -> None:
        self.planner = planner or PlaybookPlanner()
        self.guardrails = guardrails
        self.policy = policy
        self.rules = rules
        self.links = links
        self.aftercare = aftercare

    # -- signals --------------------------------------------------------------------------
    def run(
        self,
        signal: Signal,
        event: Event,
        cs: CustomerState,
        shared: Ledger,
        now: datetime,
        out: Decisions,
    ) -> None:
        """Plan for ``signal`` and decide every action and message of the plan."""
        rule = self.rules[signal.rule_id]
        entity_name, entity = cs.agents.entity(signal.rule_id, signal.key)
        if signal.signal_id in entity.signals:
            return  # the same event again, past the dedup window: never a second decision
        entity.signals[signal.signal_id] = entity.touched = now.timestamp()
        ctx = PlaybookContext(
            signal, event, rule.params, cs.profile, entity,
            cs.agents.open_for(entity_name), now, self.guardrails.config, self.links,
        )  # fmt: skip
        planned = self.planner.plan(rule.playbook, ctx)
        plan = planned.plan
        seen = {"note": plan.note, "planner": _planner_record(planned)}
        if signal.shadow:
            shown = preview(plan.actions, plan.messages)
            out.signals.append(signal.model_copy(update={**seen, "preview": shown}))
            return
        out.signals.append(signal.model_copy(update=seen))
        if signal.holdout:
            self._hold_out(signal, plan, rule, now, out)
            return
        if plan.cancel_tools:
            reason = plan.cancel_reason
            self.cancel(cs, entity_name, reason, now, out, tools=plan.cancel_tools, close=False)
        self._execute(signal, plan, rule.playbook.name, entity_name, cs, shared, now, out)

    def _execute(
        self,
        signal: Signal,
        plan: Plan,
        playbook: str,
        entity_name: str,
        cs: CustomerState,
        shared: Ledger,
        now: datetime,
        out: Decisions,
    ) -> None:
        verdicts: dict[str, Verdict] = {}
        for action in plan.actions:  # one at a time: each one's spend counts for the next
            verdicts[action.ref] = self._check(signal, action, playbook, cs, shared, now)
            if action.accept_within and verdicts[action.ref].approved:
                verdicts[action.ref] = _one_question(verdicts[action.ref], cs)
            if action.announce is None:
                self._commit(
                    signal,
                    action,
                    verdicts[action.ref],
                    playbook,
                    entity_name,
                    cs,
                    shared,
                    now,
                    out,
                )
        choices = {
            m.ref: self._decide_message(signal, m, verdicts, cs, shared, now) for m in plan.messages
        }
        waiting: dict[str, list[str]] = {}
        for action in plan.actions:
            if action.announce is None:
                continue
            choice = choices.get(action.announce)
            verdict, due = announced(verdicts[action.ref], choice)
            waits_for = choice.msg.message_id if due is not None and choice else None
            accept = action.accept_within if choice and choice.decision.channel == "sms" else None
            if accept and verdict.status == "executed":
                verdict, due = _awaiting_answer(verdict, now, accept)
            action_id = self._commit(
                signal, action, verdict, playbook, entity_name, cs, shared, now, out, due,
                waits_for, accept,
            )  # fmt: skip
            if waits_for:
                waiting.setdefault(action.announce, []).append(action_id)
        ids = {a.ref: make_id("act", signal.signal_id, a.tool, a.target) for a in plan.actions}
        for ref, choice in choices.items():
            if choice is not None:
                fallback = choice.planned.fallback if choice.chosen is choice.planned else None
                promised = [ids[r] for r in choice.chosen.requires if r in ids]
                self._commit_message(
                    choice.msg, choice.decision, entity_name, cs, now, out,
                    waiting.get(ref, []), as_dict(fallback), promised,
                )  # fmt: skip
        self._hold_back(signal, plan, verdicts, ids, cs)

    def _hold_back(
        self,
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

    def _check(
        self,
        signal: Signal,
        action: PlannedAction,
        playbook: str,
        cs: CustomerState,
        shared: Ledger,
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

    # -- recording ------------------------------------------------------------------------
    def _commit(
        self,
        signal: Signal,
        action: PlannedAction,
        verdict: Verdict,
        playbook: str,
        entity_name: str,
        cs: CustomerState,
        shared: Ledger,
        now: datetime,
        out: Decisions,
        due: datetime | None = None,
        waits_for: str | None = None,
        accept_within: float | None = None,
    ) -> str:
        """Record an action's verdict and do what it implies; returns the action id.

        With ``accept_within`` the action waits for the customer's YES: from ``due`` (its
        announcement, deferred) or, announced now, until ``due`` (the end of the window)."""
        action_id = make_id("act", signal.signal_id, action.tool, action.target)
        if verdict.status == "duplicate":
            return action_id
        when = due or (action.at if verdict.status == "scheduled" else None)
        oa = OpenAction(
            action_id=action_id, signal_id=signal.signal_id, rule_id=signal.rule_id,
            playbook=playbook, entity=entity_name, tool=action.tool,
            params=verdict.params.model_dump(mode="json") if verdict.params else action.params,
            target=action.target, status=verdict.status,
            idempotency_key=make_id("eff", signal.signal_id, action.tool, action.target),
            created=now.timestamp(), due=when.timestamp() if when else None, waits_for=waits_for,
            accept_within=accept_within,
        )  # fmt: skip
        if verdict.status == "pending_approval":  # queued first: the record says until when
            self._await_approval(oa, cs, now, out)
        self._record(cs, oa, verdict.status, verdict.reason, now, out, verdict)
        if not verdict.approved:
            return action_id
        cs.agents.effects[oa.idempotency_key] = now.timestamp()
        if verdict.status == "executed":
            self._perform(oa, verdict, cs, shared, now, out)
            return action_id
        if verdict.status == "pending_approval":
            return action_id
        if when is not None and waits_for is None:
            oa.timer_id = self._timer(cs, "action", action_id, when, out)
        cs.agents.open[action_id] = oa
        return action_id

    def _await_approval(
        self, oa: OpenAction, cs: CustomerState, now: datetime, out: Decisions
    ) -> None:
        """Queue ``oa`` for a person's approval until it expires (``approval_expiry``)."""
        if oa.timer_id:
            cs.timers.pop(oa.timer_id, None)
        expires = datetime.fromtimestamp(
            now.timestamp() + self.guardrails.config.approval_expiry.total_seconds(), now.tzinfo
        )
        oa.status, oa.due, oa.waits_for = "pending_approval", expires.timestamp(), None
        oa.timer_id = self._timer(cs, "action", oa.action_id, expires, out)
        cs.agents.open[oa.action_id] = oa

    def effect_failed(
        self, event: ActionStatusChanged, cs: CustomerState, now: datetime, out: Decisions
    ) -> None:
        """An executed action whose effect failed for good in its system: recorded ``failed``
        with the system's reason, and remembered so on its subject (a playbook may try again
        where it would not repeat a live action)."""
        d = event.data
        entity_name = next(
            (name for name, e in cs.agents.entities.items() if d.action_id in e.outcomes), ""
        )
        oa = OpenAction(
            action_id=d.action_id, signal_id=d.signal_id or "",
            rule_id=d.rule_id or entity_name.partition("|")[0],
            playbook="", entity=entity_name, tool=d.tool, params={}, target=d.target or "",
            status="failed", idempotency_key=d.idempotency_key or "", created=now.timestamp(),
        )  # fmt: skip
        self._record(cs, oa, "failed", d.detail, now, out)

    def _record(
        self,
        cs: CustomerState,
        oa: OpenAction,
        status: str,
        reason: str,
        now: datetime,
        out: Decisions,
        verdict: Verdict | None = None,
        decided_by: str | None = None,
    ) -> None:
        """Append an action's new status and remember it on its subject (for its playbook)."""
        out.actions.append(
            action_record(oa, cs.customer_id, status, reason, now, verdict, decided_by)
        )
        entity = cs.agents.entities.get(oa.entity)
        if entity is not None:
            entity.outcomes[oa.action_id] = (oa.tool, oa.target, status)

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
        announces: list[str] | None = None,
        fallback: dict[str, Any] | None = None,
        requires: list[str] | None = None,
    ) -> None:
        self.policy.commit(msg, decision, cs.contact, now.timestamp())
        marketing_list = self.policy.config.marketing_list
        record_message(out, msg, decision, cs.customer_id, marketing_list=marketing_list)
        if decision.status == "sent":
            self.aftercare.track(msg, decision, entity_name, cs, now.timestamp())
        if decision.status != "deferred":
            return
        timer_id = self._timer(cs, "message", msg.message_id, decision.send_at, out)
        cs.contact.deferred[msg.message_id] = DeferredMessage(
            message_id=msg.message_id, signal_id=msg.signal_id, rule_id=msg.rule_id,
            entity=entity_name, template=msg.template, purpose=msg.purpose, context=msg.context,
            notice=msg.notice, category=msg.category, created=now.timestamp(),
            channel=decision.channel,
            send_at=decision.send_at.timestamp(), timer_id=timer_id,
            announces=announces or [], fallback=fallback, requires=requires or [],
        )  # fmt: skip

    def _hold_out(
        self, signal: Signal, plan: Plan, rule: RulePlaybook, now: datetime, out: Decisions
    ) -> None:
        reason = f"holdout: customer is in the {rule.holdout:g}% control group of {signal.rule_id}"
        templates = {"templates": [m.template for m in plan.messages]}
        actions = plan.actions or [PlannedAction("notify", "notify", templates, signal.key or "-")]
        for action in actions:
            oa = OpenAction(
                action_id=make_id("act", signal.signal_id, action.tool, action.target),
                signal_id=signal.signal_id, rule_id=signal.rule_id, playbook="", entity="",
                tool=action.tool, params=action.params, target=action.target,
                status="skipped_holdout", created=now.timestamp(),
                idempotency_key=make_id("eff", signal.signal_id, action.tool, action.target),
            )  # fmt: skip
            out.actions.append(action_record(oa, signal.customer_id, oa.status, reason, now))

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
        """Cancel what is still pending for a subject; ``close`` it against later signals.

        With ``tools``, only those tools' actions and the held messages that promise them."""
        cancelled = set()
        for oa in cs.agents.open_for(entity_name, tools):
            cancelled.add(oa.action_id)
            self._cancel_action(oa.action_id, cs, f"cancelled: {reason}", now, out)
        for message_id, deferred in list(cs.contact.deferred.items()):
            if deferred.entity != entity_name:
                continue
            if tools and not cancelled.intersection(deferred.requires):
                continue
            del cs.contact.deferred[message_id]
            cs.timers.pop(deferred.timer_id, None)
            self._drop(deferred, cs, f"cancelled: {reason}", now, out)
        entity = cs.agents.entities.get(entity_name)
        if close and entity is not None:
            entity.closed = reason
            entity.touched = now.timestamp()

    def _cancel_action(
        self, action_id: str, cs: CustomerState, reason: str, now: datetime, out: Decisions
    ) -> None:
        oa = cs.agents.open.pop(action_id, None)
        if oa is None:
            return
        if oa.timer_id:
            cs.timers.pop(oa.timer_id, None)
        self._record(cs, oa, "cancelled", reason, now, out)

    def _drop(
        self,
        deferred: DeferredMessage,
        cs: CustomerState,
        reason: str,
        now: datetime,
        out: Decisions,
    ) -> None:
        msg = from_held(deferred)
        decision = MessageDecision("suppressed", self._held_channel(deferred), None, reason, now)
        self._commit_message(msg, decision, deferred.entity, cs, now, out)

    def _held_channel(self, deferred: DeferredMessage) -> str:
        """The channel a held message was going to use (older state: its purpose's first)."""
        order: list[str] = getattr(self.policy.config.channels, deferred.purpose)
        return deferred.channel or order[0]

    def fire(
        self, ref: TimerRef, cs: CustomerState, shared: Ledger, now: datetime, out: Decisions
    ) -> None:
        """A timer fell due: execute the scheduled action or judge the deferred message."""
        if ref.kind == "action":
            self._fire_action(ref.ref, cs, shared, now, out)
            return
        if ref.kind == "resend":
            self.aftercare.fire(ref.ref, cs, shared, now, out)
            return
        deferred = cs.contact.deferred.pop(ref.ref, None)
        if deferred is not None:
            self._fire_message(deferred, cs, shared, now, out)

    def _fire_message(
        self,
        deferred: DeferredMessage,
        cs: CustomerState,
        shared: Ledger,
        now: datetime,
        out: Decisions,
    ) -> None:
        """Judge a deferred message again; its waiting offers go with it or not at all."""
        msg = from_held(deferred)
        blocked = self._recheck_announced(deferred.announces, cs, shared, now)
        if blocked:
            decision = MessageDecision(
                "suppressed", self._held_channel(deferred), None, blocked, now
            )
        else:
            decision = self.policy.decide(msg, cs.profile, cs.contact, now, shared)
        if decision.status == "deferred":
            self._commit_message(
                msg, decision, deferred.entity, cs, now, out,
                deferred.announces, deferred.fallback, deferred.requires,
            )  # fmt: skip
            return
        self._commit_message(msg, decision, deferred.entity, cs, now, out)
        if decision.status == "sent":
            for action_id in deferred.announces:
                oa = cs.agents.open.get(action_id)
                if oa is not None and oa.accept_within and decision.channel == "sms":
                    self._ask(oa, cs, now, out)
                else:
                    self._fire_action(action_id, cs, shared, now, out)
            return
        for action_id in deferred.announces:
            reason = f"offer not made: its announcement was not sent ({decision.reason})"
            self._cancel_action(action_id, cs, reason, now, out)
        if deferred.fallback is not None:
            planned = PlannedMessage(**deferred.fallback)
            fallback = outbound(deferred.signal_id, deferred.rule_id, deferred.category, planned)
            choice = self.policy.decide(fallback, cs.profile, cs.contact, now, shared)
            why = f"{msg.purpose} version not sent ({decision.reason})"
            choice.checks.insert(0, {"check": "fallback", "result": "used", "detail": why})
            self._commit_message(fallback, choice, deferred.entity, cs, now, out)

    def _recheck_announced(
        self, announces: list[str], cs: CustomerState, shared: Ledger, now: datetime
    ) -> str:
        """Why a waiting offer may no longer be made (budgets move overnight), or ''."""
        for action_id in announces:
            oa = cs.agents.open.get(action_id)
            if oa is None:
                continue
            verdict = self._recheck(oa, cs, shared, now)
            if verdict.status != "executed":
                return f"the offer it announces is no longer allowed ({verdict.reason})"
        return ""

    def _ask(self, oa: OpenAction, cs: CustomerState, now: datetime, out: Decisions) -> None:
        """Its announcement just went by SMS: wait for the customer's YES until the window ends."""
        assert oa.accept_within is not None
        until, reason = _yes_by(now, oa.accept_within)
        oa.waits_for, oa.due = None, until.timestamp()
        oa.timer_id = self._timer(cs, "action", oa.action_id, until, out)
        self._record(cs, oa, "scheduled", reason, now, out)

    def answer_offer(
        self,
        cs: CustomerState,
        shared: Ledger,
        now: datetime,
        out: Decisions,
        accepted: bool,
        source: str,
    ) -> str | None:
        """The customer answered YES (``accepted``) or NO to the latest offer awaiting an
        answer; returns what became of it (``accepted``, ``declined``, or the guardrails'
        status when they no longer allow it: ``blocked``, ``pending_approval``), or ``None``
        when no offer awaits an answer."""
        waiting = [oa for oa in cs.agents.open.values() if oa.awaiting_reply]
        if not waiting:
            return None
        oa = max(waiting, key=lambda a: (a.due or 0.0, a.action_id))
        del cs.agents.open[oa.action_id]
        if oa.timer_id:
            cs.timers.pop(oa.timer_id, None)
        oa.timer_id, oa.accept_within = None, None  # answered: no longer awaiting
        if not accepted:
            self._record(
                cs, oa, "cancelled", f"declined: the customer replied NO ({source})", now, out
            )
            return "declined"
        verdict = self._recheck(oa, cs, shared, now)
        said = f"the customer replied YES ({source})"
        if verdict.status == "executed":
            self._record(
                cs, oa, "executed", f"accepted: {said}; guardrails passed", now, out, verdict
            )
            self._perform(oa, verdict, cs, shared, now, out)
            return "accepted"
        if verdict.status == "pending_approval":
            self._await_approval(oa, cs, now, out)
        self._record(cs, oa, verdict.status, f"{said}, but: {verdict.reason}", now, out, verdict)
        return verdict.status

    def decide_approval(
        self,
        cs: CustomerState,
        shared: Ledger,
        now: datetime,
        out: Decisions,
        action_id: str,
        approve: bool,
        by: str,
        note: str | None = None,
    ) -> str | None:
        """A person approved or rejected an action waiting for approval. Approved, it is judged
        again now (kill switches and budgets may have moved since it was queued) with the
        value threshold passed by the approval. Returns the action's new status, or ``None``
        when it no longer waits (approved, rejected, expired or cancelled before)."""
        oa = cs.agents.open.get(action_id)
        if oa is None or oa.status != "pending_approval":
            return None
        del cs.agents.open[action_id]
        if oa.timer_id:
            cs.timers.pop(oa.timer_id, None)
        oa.timer_id, oa.due = None, None
        said = f"{'approved' if approve else 'rejected'} by {by}" + (f": {note}" if note else "")
        if not approve:
            self._record(cs, oa, "cancelled", said, now, out, decided_by=by)
            return "cancelled"
        oa.approved_by = by
        verdict = self._recheck(oa, cs, shared, now)
        held, oa.held = oa.held, None
        choice = None
        if held is not None and verdict.status == "executed":
            choice = self._held_choice(held, oa, cs, shared, now, out)
            if choice is not None and held.announce:  # the offer goes with it or not at all
                verdict = self._announce_approved(oa, verdict, choice, held, cs, now, out)
        if verdict.status == "executed":
            reason = f"{said}; guardrails passed"
            self._record(cs, oa, "executed", reason, now, out, verdict, decided_by=by)
            self._perform(oa, verdict, cs, shared, now, out)
        else:
            reason = f"{said}, but: {verdict.reason}"
            if verdict.status == "scheduled":
                reason = f"{said}; {verdict.reason}"
            self._record(cs, oa, verdict.status, reason, now, out, verdict, decided_by=by)
        if choice is not None and held is not None:
            why = f"held back until {action_id} was approved; approved by {by}"
            choice.decision.checks.insert(0, {"check": "approval", "result": "pass", "detail": why})
            announces = [action_id] if oa.waits_for else []
            self._commit_message(
                choice.msg, choice.decision, oa.entity, cs, now, out, announces,
                requires=held.requires,
            )  # fmt: skip
        return verdict.status

    def _announce_approved(
        self,
        oa: OpenAction,
        verdict: Verdict,
        choice: MessageChoice,
        held: HeldBack,
        cs: CustomerState,
        now: datetime,
        out: Decisions,
    ) -> Verdict:
        """An approved offer that must be announced: made now, waiting (for its deferred
        announcement or for the customer's YES), or blocked when its message cannot go."""
        verdict, due = announced(verdict, choice)
        accept = held.accept_within if choice.decision.channel == "sms" else None
        if accept and verdict.status == "executed":
            verdict, due = _awaiting_answer(verdict, now, accept)
        if verdict.status != "scheduled":
            return verdict
        assert due is not None
        oa.status, oa.due, oa.accept_within = "scheduled", due.timestamp(), accept
        if choice.decision.status == "deferred":  # its announcement sends it
            oa.waits_for = choice.msg.message_id
        else:  # announced now by SMS: waits for the YES until the window ends
            oa.timer_id = self._timer(cs, "action", oa.action_id, due, out)
        cs.agents.open[oa.action_id] = oa
        return verdict

    def _recheck(self, oa: OpenAction, cs: CustomerState, shared: Ledger, now: datetime) -> Verdict:
        """Judge an action decided earlier again now (kill switches, budgets); a person's
        approval (``oa.approved_by``) still passes its threshold."""
        return self.guardrails.check(
            oa.tool, oa.params, oa.playbook, oa.idempotency_key, cs.agents, shared,
            now.timestamp(), recheck=True, approved_by=oa.approved_by,
        )  # fmt: skip

    def _perform(
        self,
        oa: OpenAction,
        verdict: Verdict,
        cs: CustomerState,
        shared: Ledger,
        now: datetime,
        out: Decisions,
    ) -> None:
        """An executed action: its spend counts and its effect goes to the outbox."""
        self.guardrails.commit_spend(oa.tool, verdict, cs.agents, shared, now.timestamp())
        out.effects.append(effect(oa, cs.customer_id))

    def _held_choice(
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
                self._drop(d, cs, reason, now, out)
            planned.notice = notice
            msg = outbound(oa.signal_id, oa.rule_id, held.category, planned)
            decision = self.policy.decide(msg, cs.profile, cs.contact, now, shared)
        return MessageChoice(planned, planned, msg, decision, "")

    def _fire_action(
        self, action_id: str, cs: CustomerState, shared: Ledger, now: datetime, out: Decisions
    ) -> None:
        oa = cs.agents.open.pop(action_id, None)
        if oa is None:
            return
        if oa.status == "pending_approval":  # nobody approved it in time
            until = utc_iso(datetime.fromtimestamp(oa.due or now.timestamp(), now.tzinfo))
            self._record(cs, oa, "expired", f"no approval by {until}: not performed", now, out)
            return
        if oa.status != "scheduled":
            return
        if oa.awaiting_reply:  # the window closed with no answer: no discount
            until = utc_iso(datetime.fromtimestamp(oa.due or now.timestamp(), now.tzinfo))
            self._record(cs, oa, "cancelled", f"offer expired: no YES by {until}", now, out)
            return
        verdict = self._recheck(oa, cs, shared, now)
        if verdict.status == "pending_approval":
            oa.timer_id = None  # the timer that fired
            self._await_approval(oa, cs, now, out)
        reason = "due; guardrails passed" if verdict.status == "executed" else verdict.reason
        self._record(cs, oa, verdict.status, reason, now, out, verdict)
        if verdict.status == "executed":
            self._perform(oa, verdict, cs, shared, now, out)


_GOING = ("executed", "scheduled", "pending_approval")  # requirements a held message may await


def _one_question(verdict: Verdict, cs: CustomerState) -> Verdict:
    """One offer waits for a YES at a time: with two, the customer's YES would be ambiguous."""
    asking = sorted(oa.action_id for oa in cs.agents.open.values() if oa.accept_within)
    if not asking:
        return verdict
    why = f"offer not made: offer {asking[0]} still awaits the customer's YES or NO"
    return Verdict("blocked", why, [*verdict.checks, Check("acceptance", "fail", why)])


def _yes_by(now: datetime, accept_within: float) -> tuple[datetime, str]:
    """The end of an offer's window for a YES, and the reason recorded while it waits."""
    until = datetime.fromtimestamp(now.timestamp() + accept_within, now.tzinfo)
    return until, f"offer made: applied if the customer replies YES by {utc_iso(until)}"


def _awaiting_answer(
    verdict: Verdict, now: datetime, accept_within: float
) -> tuple[Verdict, datetime]:
    """An offer announced by SMS now that asks for a YES: (scheduled verdict, end of window)."""
    until, why = _yes_by(now, accept_within)
    checks = [*verdict.checks, Check("acceptance", "wait", why)]
    return Verdict("scheduled", why, checks, verdict.params, verdict.value, verdict.currency), until


__all__ = ["Executor", "MessageChoice", "RulePlaybook"]


def _planner_record(planned: Planned) -> dict[str, Any] | None:
    """What the signal records of its planning: nothing for the playbook alone; for a model,
    which plan ran and why, the fallback reason and the audit of its calls."""
    if planned.source == "playbook" and planned.fallback is None and not planned.llm:
        return None
    return {
        "source": planned.source,
        "reason": planned.reason,
        "fallback": planned.fallback,
        "violation": planned.violation,
        "llm": planned.llm,
    }
