"""The decision core: ``evaluate(event, state, shared, now) -> Decisions``.

Deterministic and transport-free; the replay runtime and the live runtime drive this same
object. Per event, in order: timer events fire their work; duplicates (an event id seen within
the dedup window) are dropped; the profile and suppressions are updated; rule windows take the
event; ``cancel_on`` closes subjects; triggered rules raise signals (by priority) and the
executor turns each into decisions; baselines take the event; state is pruned once a day.

``state`` is owned by the caller and updated in place (copying it per event would cost more
than all the rest); if ``evaluate`` raises, the caller must discard that state and reload it.

Must not import: faust, aiokafka, twilio, sendgrid, openai, fastapi, sqlalchemy.
"""

from __future__ import annotations

from datetime import datetime

from outreach.agents.aftercare import Aftercare
from outreach.agents.composing import Composer, policy_hook
from outreach.agents.executor import Executor
from outreach.agents.guardrails import Guardrails, Ledger
from outreach.agents.planner import Planner
from outreach.decisions import Decisions
from outreach.events import (
    ActionStatusChanged,
    ApprovalDecided,
    ContactSuppressed,
    ContactUnsuppressed,
    CustomerUpdated,
    Event,
    MessageReceived,
    MessageStatus,
    TimerFired,
)
from outreach.outbound.policy import ContactPolicy
from outreach.rulebook import RuleBook
from outreach.rules.evaluate import close_baselines, detect, ingest, open_baselines
from outreach.rules.state import CustomerView
from outreach.state import CustomerState

DAY = 86400.0
PRUNE_EVERY = 2 * DAY  # housekeeping per customer; ids are kept dedup_window + at most this
_CONTACT_FACTS = frozenset({"customer.updated", "contact.suppressed", "contact.unsuppressed"})
_ADDRESS = frozenset({"bounce", "unusable"})  # suppressions of an address, not of a person


class DecisionCore:
    """The engine's decisions for one rules folder."""

    def __init__(
        self, book: RuleBook, planner: Planner | None = None, composer: Composer | None = None
    ) -> None:
        """``planner``: who plans a signal (default: the deterministic playbook alone);
        ``composer``: who words a message that goes (default: the template text). The live
        runtime passes the model's when an LLM is configured; replay never does."""
        self.book = book
        self.planner = planner
        self.composer = composer  # kept for a rules reload, which builds the core again
        policy = book.policy
        self.rules = book.rules
        self.guardrails = Guardrails(policy.guardrails)
        self.contact = ContactPolicy(
            policy.contact,
            book.templates,
            frozenset(policy.guardrails.kill_switches.channels),
            policy.brand.model_dump(),
            policy_hook(composer, book.templates) if composer is not None else None,
        )
        self.aftercare = Aftercare(self.contact, frozenset(policy.guardrails.kill_switches.tools))
        self.executor = Executor(
            self.guardrails, self.contact, book.playbooks, dict(policy.links), self.aftercare,
            planner,
        )  # fmt: skip
        self.dedup_window = policy.engine.dedup_window.total_seconds()
        self.state_ttl = policy.engine.state_ttl.total_seconds()
        self.effect_memory = policy.guardrails.effect_memory.total_seconds()
        self.contact_memory = max(
            policy.contact.marketing_caps.rolling.window.total_seconds(),
            policy.contact.notice_dedup.total_seconds(),
            DAY * 2,
        )
        self._ingested = frozenset(self.rules.series_by_type) | frozenset(self.rules.latest_by_type)
        self._baselined = frozenset(self.rules.baselines_by_type)
        cooldowns = [s.cooldown for s, _ in book.specs.values()]
        self.cooldown_memory = max((c.period.total_seconds() for c in cooldowns if c), default=0.0)

    def new_state(self, customer_id: str) -> CustomerState:
        """The state of a customer never seen before."""
        return CustomerState(customer_id=customer_id)

    def evaluate(
        self,
        event: Event,
        state: CustomerState,
        shared: Ledger,
        now: datetime,
        occurred: float | None = None,
    ) -> Decisions:
        """Decide what ``event`` calls for; updates ``state`` and ``shared`` in place.

        ``occurred``: ``event.occurred_at`` as epoch seconds, if the caller has it already
        (it is the hot path's most expensive conversion)."""
        out = Decisions()
        if isinstance(event, TimerFired):
            ref = state.timers.pop(event.data.timer_id, None)
            if ref is not None:
                self.executor.fire(ref, state, shared, now, out)
            return out
        if occurred is None:
            occurred = event.occurred_at.timestamp()
        seen = state.rules.seen  # dedup by event id (pruned by RuleState.forget_seen)
        if event.event_id in seen:
            out.duplicate = True
            return out
        seen[event.event_id] = occurred
        now_ts = now.timestamp()
        self._decide(event, state, shared, now, now_ts, occurred, out)
        if now_ts - state.pruned_at >= PRUNE_EVERY:
            self._prune(state, now_ts)
        return out

    def _decide(
        self,
        event: Event,
        state: CustomerState,
        shared: Ledger,
        now: datetime,
        now_ts: float,
        occurred: float,
        out: Decisions,
    ) -> None:
        """A new (not duplicate) event: facts, windows, cancellations, rules, baselines."""
        etype = event.type
        rules = self.rules
        if etype in _CONTACT_FACTS:
            self._apply_contact_facts(event, state)
        elif isinstance(event, MessageStatus):
            self.aftercare.on_status(event, state, shared, now, out)
        elif isinstance(event, MessageReceived):
            self.aftercare.on_reply(event, state, shared, now, out, self.executor)
        elif isinstance(event, ActionStatusChanged):
            self.executor.effect_failed(event, state, now, out)
        elif isinstance(event, ApprovalDecided):
            d = event.data
            approve = d.decision == "approve"
            self.executor.decide_approval(
                state, shared, now, out, d.action_id, approve, d.by, d.note
            )
        if etype in self._ingested:
            ingest(rules, state.rules, event, occurred)
        if etype in rules.cancels:
            self._cancel(event, state, now, out)
        opened = open_baselines(rules, state.rules, event) if etype in self._baselined else {}
        if rules.by_trigger.get(etype):
            view = None  # built only for rules that read the customer (most never do)
            if etype in rules.read_customer:
                config = self.contact.config
                view = CustomerView(
                    state.profile,
                    state.contact.suppressed,
                    config.default_timezone,
                    config.default_locale,
                )
            found = detect(rules, event, state.rules, view, now, now_ts, opened, out.errors)
            for signal in found:
                self.executor.run(signal, event, state, shared, now, out)
        if opened:
            close_baselines(rules, opened)

    def _apply_contact_facts(self, event: Event, state: CustomerState) -> None:
        contact = state.contact
        if isinstance(event, CustomerUpdated):
            phone, email = state.profile.phone, state.profile.email
            state.profile.apply(event.data)
            # a number or address that could not receive says nothing about its successor;
            # an opt-out (STOP, unsubscribe, complaint) stays: it was the person's choice
            if state.profile.phone != phone and contact.suppressed.get("sms") == "unusable":
                del contact.suppressed["sms"]
            if state.profile.email != email and contact.suppressed.get("email") in _ADDRESS:
                del contact.suppressed["email"]
        elif isinstance(event, ContactSuppressed):
            if event.data.list_id is not None:
                contact.lists[event.data.list_id] = event.data.reason
            else:
                contact.suppressed[event.data.channel] = event.data.reason
        elif isinstance(event, ContactUnsuppressed):
            if event.data.list_id is not None:
                contact.lists.pop(event.data.list_id, None)
            else:
                contact.suppressed.pop(event.data.channel, None)

    def _cancel(self, event: Event, state: CustomerState, now: datetime, out: Decisions) -> None:
        cancels = self.rules.cancels.get(event.type)
        if not cancels:
            return
        args = (event, event.data, None, None, now)
        for cancel in cancels:
            if cancel.when is not None and not cancel.when(*args):
                continue
            key = cancel.key(*args)
            entity = f"{cancel.rule_id}|{'' if key is None else key}"
            if entity in state.agents.entities:
                reason = f"{cancel.reason} ({event.type} {event.event_id} for {key})"
                self.executor.cancel(state, entity, reason, now, out)

    def _prune(self, state: CustomerState, now: float) -> None:
        """Forget what no rule, cooldown, budget or dedup can need any more."""
        state.pruned_at = now
        state.rules.forget_seen(now - self.dedup_window)
        agents = state.agents
        if agents.entities:
            busy = {a.entity for a in agents.open.values()}
            busy |= {d.entity for d in state.contact.deferred.values()}
            for name, entity in list(agents.entities.items()):
                if name not in busy and now - entity.touched > self.state_ttl:
                    del agents.entities[name]
                elif entity.signals:
                    _forget_older(entity.signals, now - self.state_ttl)
        if agents.effects:
            _forget_older(agents.effects, now - self.effect_memory)
        if state.contact.marketing or state.contact.notices:
            state.contact.prune(now, self.contact_memory)
        if state.contact.sent or state.contact.conversation:
            self.aftercare.prune(state, now)
        if state.rules.cooldowns:
            _forget_older(state.rules.cooldowns, now - self.cooldown_memory)


def _forget_older(stamps: dict[str, float], before: float) -> None:
    """Drop entries whose timestamp is before ``before``."""
    for key in [k for k, when in stamps.items() if when < before]:
        del stamps[key]
