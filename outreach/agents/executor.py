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

The executor owns the entry points (a signal, a timer, a cancellation, an answer, an approval,
a failed effect) and decides the couplings above when a plan is run. Carrying them out later
is shared: ``outreach.agents.actions`` carries out actions' verdicts (guardrails), including
an approved action's announcement (``announce_approved``); ``outreach.agents.messages``
carries out messages' (contact policy), including a deferred message's announced offers when
its timer fires and a message held back for an approval (``hold_back``, ``held_choice``).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from outreach.agents.actions import (
    Actions,
    announce_approved,
    awaiting_answer,
    cancel_action,
    one_question,
    record,
)
from outreach.agents.aftercare import Aftercare
from outreach.agents.announcing import MessageChoice, announced, as_dict
from outreach.agents.guardrails import Guardrails, Ledger, Verdict
from outreach.agents.messages import Messages, hold_back
from outreach.agents.plan import Plan, PlannedAction
from outreach.agents.planner import Planned, Planner, PlaybookPlanner
from outreach.agents.playbooks import Playbook, PlaybookContext
from outreach.agents.recording import action_record, preview
from outreach.agents.state import OpenAction
from outreach.decisions import Decisions
from outreach.events import ActionStatusChanged, Event
from outreach.ids import make_id
from outreach.outbound.policy import ContactPolicy
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
        self.actions = Actions(guardrails)
        self.messages = Messages(policy, aftercare, self.actions)

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
            verdicts[action.ref] = self.actions.check(signal, action, playbook, cs, shared, now)
            if action.accept_within and verdicts[action.ref].approved:
                verdicts[action.ref] = one_question(verdicts[action.ref], cs)
            if action.announce is None:
                self.actions.commit(
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
            m.ref: self.messages.decide_message(signal, m, verdicts, cs, shared, now)
            for m in plan.messages
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
                verdict, due = awaiting_answer(verdict, now, accept)
            action_id = self.actions.commit(
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
                self.messages.commit_message(
                    choice.msg, choice.decision, entity_name, cs, now, out,
                    waiting.get(ref, []), as_dict(fallback), promised,
                )  # fmt: skip
        hold_back(signal, plan, verdicts, ids, cs)

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
        record(cs, oa, "failed", d.detail, now, out)

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
            cancel_action(oa.action_id, cs, f"cancelled: {reason}", now, out)
        for message_id, deferred in list(cs.contact.deferred.items()):
            if deferred.entity != entity_name:
                continue
            if tools and not cancelled.intersection(deferred.requires):
                continue
            del cs.contact.deferred[message_id]
            cs.timers.pop(deferred.timer_id, None)
            self.messages.drop(deferred, cs, f"cancelled: {reason}", now, out)
        entity = cs.agents.entities.get(entity_name)
        if close and entity is not None:
            entity.closed = reason
            entity.touched = now.timestamp()

    def fire(
        self, ref: TimerRef, cs: CustomerState, shared: Ledger, now: datetime, out: Decisions
    ) -> None:
        """A timer fell due: execute the scheduled action or judge the deferred message."""
        if ref.kind == "action":
            self.actions.fire_action(ref.ref, cs, shared, now, out)
            return
        if ref.kind == "resend":
            self.aftercare.fire(ref.ref, cs, shared, now, out)
            return
        deferred = cs.contact.deferred.pop(ref.ref, None)
        if deferred is not None:
            self.messages.fire_message(deferred, cs, shared, now, out)

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
            record(cs, oa, "cancelled", f"declined: the customer replied NO ({source})", now, out)
            return "declined"
        verdict = self.actions.recheck(oa, cs, shared, now)
        said = f"the customer replied YES ({source})"
        if verdict.status == "executed":
            record(cs, oa, "executed", f"accepted: {said}; guardrails passed", now, out, verdict)
            self.actions.perform(oa, verdict, cs, shared, now, out)
            return "accepted"
        if verdict.status == "pending_approval":
            self.actions.await_approval(oa, cs, now, out)
        record(cs, oa, verdict.status, f"{said}, but: {verdict.reason}", now, out, verdict)
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
            record(cs, oa, "cancelled", said, now, out, decided_by=by)
            return "cancelled"
        oa.approved_by = by
        verdict = self.actions.recheck(oa, cs, shared, now)
        held, oa.held = oa.held, None
        choice = None
        if held is not None and verdict.status == "executed":
            choice = self.messages.held_choice(held, oa, cs, shared, now, out)
            if choice is not None and held.announce:  # the offer goes with it or not at all
                verdict = announce_approved(oa, verdict, choice, held, cs, now, out)
        if verdict.status == "executed":
            reason = f"{said}; guardrails passed"
            record(cs, oa, "executed", reason, now, out, verdict, decided_by=by)
            self.actions.perform(oa, verdict, cs, shared, now, out)
        else:
            reason = f"{said}, but: {verdict.reason}"
            if verdict.status == "scheduled":
                reason = f"{said}; {verdict.reason}"
            record(cs, oa, verdict.status, reason, now, out, verdict, decided_by=by)
        if choice is not None and held is not None:
            why = f"held back until {action_id} was approved; approved by {by}"
            choice.decision.checks.insert(0, {"check": "approval", "result": "pass", "detail": why})
            announces = [action_id] if oa.waits_for else []
            self.messages.commit_message(
                choice.msg, choice.decision, oa.entity, cs, now, out, announces,
                requires=held.requires,
            )  # fmt: skip
        return verdict.status


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
