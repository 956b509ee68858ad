"""The executor's actions against the guardrails: checked, recorded, queued, performed.

Owns an action's life once it is planned: its verdict (``Actions.check``, ``Actions.recheck``
when judged again), its record in the decision log and on its subject (``record``), its timer
(``timer``), the approval queue (``Actions.await_approval``), its spend and effect
(``Actions.perform``), and an offer's wait for the customer's YES (``ask``,
``awaiting_answer``, ``one_question``), and the message an approved action announces
(``announce_approved``). Which actions a plan couples with which messages is decided by the
executor (``outreach.agents.executor``).

Must not import: faust, aiokafka, twilio, sendgrid, openai, fastapi, sqlalchemy.
"""

from __future__ import annotations

from datetime import datetime

from outreach.agents.announcing import MessageChoice, announced
from outreach.agents.guardrails import Check, Guardrails, Ledger, Verdict
from outreach.agents.plan import PlannedAction
from outreach.agents.recording import action_record, effect
from outreach.agents.state import HeldBack, OpenAction
from outreach.decisions import Decisions, Timer
from outreach.events import utc_iso
from outreach.ids import make_id
from outreach.rules.evaluate import Signal
from outreach.state import CustomerState, TimerRef


class Actions:
    """Judges actions by the guardrails and carries out their verdicts."""

    def __init__(self, guardrails: Guardrails) -> None:
        self.guardrails = guardrails

    def check(
        self,
        signal: Signal,
        action: PlannedAction,
        playbook: str,
        cs: CustomerState,
        shared: Ledger,
        now: datetime,
    ) -> Verdict:
        """The guardrails' verdict on a planned action."""
        key = make_id("eff", signal.signal_id, action.tool, action.target)
        at = action.at.timestamp() if action.at is not None else None
        return self.guardrails.check(
            action.tool, action.params, playbook, key, cs.agents, shared, now.timestamp(), at
        )

    def commit(
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
            self.await_approval(oa, cs, now, out)
        record(cs, oa, verdict.status, verdict.reason, now, out, verdict)
        if not verdict.approved:
            return action_id
        cs.agents.effects[oa.idempotency_key] = now.timestamp()
        if verdict.status == "executed":
            self.perform(oa, verdict, cs, shared, now, out)
            return action_id
        if verdict.status == "pending_approval":
            return action_id
        if when is not None and waits_for is None:
            oa.timer_id = timer(cs, "action", action_id, when, out)
        cs.agents.open[action_id] = oa
        return action_id

    def await_approval(
        self, oa: OpenAction, cs: CustomerState, now: datetime, out: Decisions
    ) -> None:
        """Queue ``oa`` for a person's approval until it expires (``approval_expiry``)."""
        if oa.timer_id:
            cs.timers.pop(oa.timer_id, None)
        expires = datetime.fromtimestamp(
            now.timestamp() + self.guardrails.config.approval_expiry.total_seconds(), now.tzinfo
        )
        oa.status, oa.due, oa.waits_for = "pending_approval", expires.timestamp(), None
        oa.timer_id = timer(cs, "action", oa.action_id, expires, out)
        cs.agents.open[oa.action_id] = oa

    def recheck(self, oa: OpenAction, cs: CustomerState, shared: Ledger, now: datetime) -> Verdict:
        """Judge an action decided earlier again now (kill switches, budgets); a person's
        approval (``oa.approved_by``) still passes its threshold."""
        return self.guardrails.check(
            oa.tool, oa.params, oa.playbook, oa.idempotency_key, cs.agents, shared,
            now.timestamp(), recheck=True, approved_by=oa.approved_by,
        )  # fmt: skip

    def recheck_announced(
        self, announces: list[str], cs: CustomerState, shared: Ledger, now: datetime
    ) -> str:
        """Why a waiting offer may no longer be made (budgets move overnight), or ''."""
        for action_id in announces:
            oa = cs.agents.open.get(action_id)
            if oa is None:
                continue
            verdict = self.recheck(oa, cs, shared, now)
            if verdict.status != "executed":
                return f"the offer it announces is no longer allowed ({verdict.reason})"
        return ""

    def perform(
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

    def fire_action(
        self, action_id: str, cs: CustomerState, shared: Ledger, now: datetime, out: Decisions
    ) -> None:
        """An action's timer fell due: expire, cancel or execute it, by its status."""
        oa = cs.agents.open.pop(action_id, None)
        if oa is None:
            return
        if oa.status == "pending_approval":  # nobody approved it in time
            until = utc_iso(datetime.fromtimestamp(oa.due or now.timestamp(), now.tzinfo))
            record(cs, oa, "expired", f"no approval by {until}: not performed", now, out)
            return
        if oa.status != "scheduled":
            return
        if oa.awaiting_reply:  # the window closed with no answer: no discount
            until = utc_iso(datetime.fromtimestamp(oa.due or now.timestamp(), now.tzinfo))
            record(cs, oa, "cancelled", f"offer expired: no YES by {until}", now, out)
            return
        verdict = self.recheck(oa, cs, shared, now)
        if verdict.status == "pending_approval":
            oa.timer_id = None  # the timer that fired
            self.await_approval(oa, cs, now, out)
        reason = "due; guardrails passed" if verdict.status == "executed" else verdict.reason
        record(cs, oa, verdict.status, reason, now, out, verdict)
        if verdict.status == "executed":
            self.perform(oa, verdict, cs, shared, now, out)


def record(
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
    out.actions.append(action_record(oa, cs.customer_id, status, reason, now, verdict, decided_by))
    entity = cs.agents.entities.get(oa.entity)
    if entity is not None:
        entity.outcomes[oa.action_id] = (oa.tool, oa.target, status)


def timer(cs: CustomerState, kind: str, ref: str, due: datetime, out: Decisions) -> str:
    """Set a timer for ``ref`` at ``due`` (in state and in the outbox); returns its id."""
    timer_id = make_id("tmr", ref, str(due.timestamp()))
    cs.timers[timer_id] = TimerRef(kind, ref, due.timestamp())
    out.timers.append(Timer(timer_id, cs.customer_id, due))
    return timer_id


def cancel_action(
    action_id: str, cs: CustomerState, reason: str, now: datetime, out: Decisions
) -> None:
    """Cancel an open action (and its timer), if it is still open."""
    oa = cs.agents.open.pop(action_id, None)
    if oa is None:
        return
    if oa.timer_id:
        cs.timers.pop(oa.timer_id, None)
    record(cs, oa, "cancelled", reason, now, out)


def ask(oa: OpenAction, cs: CustomerState, now: datetime, out: Decisions) -> None:
    """Its announcement just went by SMS: wait for the customer's YES until the window ends."""
    assert oa.accept_within is not None
    until, reason = _yes_by(now, oa.accept_within)
    oa.waits_for, oa.due = None, until.timestamp()
    oa.timer_id = timer(cs, "action", oa.action_id, until, out)
    record(cs, oa, "scheduled", reason, now, out)


def announce_approved(
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
        verdict, due = awaiting_answer(verdict, now, accept)
    if verdict.status != "scheduled":
        return verdict
    assert due is not None
    oa.status, oa.due, oa.accept_within = "scheduled", due.timestamp(), accept
    if choice.decision.status == "deferred":  # its announcement sends it
        oa.waits_for = choice.msg.message_id
    else:  # announced now by SMS: waits for the YES until the window ends
        oa.timer_id = timer(cs, "action", oa.action_id, due, out)
    cs.agents.open[oa.action_id] = oa
    return verdict


def one_question(verdict: Verdict, cs: CustomerState) -> Verdict:
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


def awaiting_answer(
    verdict: Verdict, now: datetime, accept_within: float
) -> tuple[Verdict, datetime]:
    """An offer announced by SMS now that asks for a YES: (scheduled verdict, end of window)."""
    until, why = _yes_by(now, accept_within)
    checks = [*verdict.checks, Check("acceptance", "wait", why)]
    return Verdict("scheduled", why, checks, verdict.params, verdict.value, verdict.currency), until
