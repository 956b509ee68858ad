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

from outreach.agents.executor import Executor
from outreach.agents.guardrails import Guardrails, SharedLedger
from outreach.decisions import Decisions
from outreach.events import (
    ContactSuppressed,
    ContactUnsuppressed,
    CustomerUpdated,
    Event,
    TimerFired,
)
from outreach.outbound.policy import ContactPolicy
from outreach.rulebook import RuleBook
from outreach.rules.evaluate import detect, ingest, ingest_baselines
from outreach.rules.state import CustomerView
from outreach.state import CustomerState

DAY = 86400.0


class DecisionCore:
    """The engine's decisions for one rules folder."""

    def __init__(self, book: RuleBook) -> None:
        self.book = book
        policy = book.policy
        self.rules = book.rules
        self.guardrails = Guardrails(policy.guardrails)
        self.contact = ContactPolicy(
            policy.contact,
            book.templates,
            frozenset(policy.guardrails.kill_switches.channels),
            policy.brand.model_dump(),
        )
        self.executor = Executor(self.guardrails, self.contact, book.playbooks, dict(policy.links))
        self.dedup_window = policy.engine.dedup_window.total_seconds()
        self.state_ttl = policy.engine.state_ttl.total_seconds()
        self.effect_memory = policy.guardrails.effect_memory.total_seconds()
        self.contact_memory = max(
            policy.contact.marketing_caps.rolling.window.total_seconds(),
            policy.contact.notice_dedup.total_seconds(),
            DAY * 2,
        )
        cooldowns = [s.cooldown_spec() for s, _ in book.specs.values()]
        self.cooldown_memory = max((c.period.total_seconds() for c in cooldowns if c), default=0.0)

    def new_state(self, customer_id: str) -> CustomerState:
        """The state of a customer never seen before."""
        return CustomerState(customer_id=customer_id)

    def evaluate(
        self, event: Event, state: CustomerState, shared: SharedLedger, now: datetime
    ) -> Decisions:
        """Decide what ``event`` calls for; updates ``state`` and ``shared`` in place."""
        out = Decisions()
        if isinstance(event, TimerFired):
            ref = state.timers.pop(event.data.timer_id, None)
            if ref is not None:
                self.executor.fire(ref, state, shared, now, out)
            return out
        occurred = event.occurred_at.timestamp()
        if not state.rules.first_sighting(event.event_id, occurred, self.dedup_window):
            out.duplicate = True
            return out
        now_ts = now.timestamp()
        state.last_seen = max(state.last_seen, now_ts)
        self._apply_contact_facts(event, state)
        ingest(self.rules, state.rules, event, occurred)
        self._cancel(event, state, now, out)
        view = CustomerView(
            state.profile, state.contact.suppressed, self.contact.config.default_timezone
        )
        for signal in detect(self.rules, event, state.rules, view, now, now_ts):
            self.executor.run(signal, event, state, shared, now, out)
        ingest_baselines(self.rules, state.rules, event)
        if now_ts - state.pruned_at >= DAY:
            self._prune(state, now_ts)
        return out

    def _apply_contact_facts(self, event: Event, state: CustomerState) -> None:
        if isinstance(event, CustomerUpdated):
            state.profile.apply(event.data)
        elif isinstance(event, ContactSuppressed):
            state.contact.suppressed[event.data.channel] = event.data.reason
        elif isinstance(event, ContactUnsuppressed):
            state.contact.suppressed.pop(event.data.channel, None)

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
                reason = f"{event.type} {event.event_id} for {key}"
                self.executor.cancel(state, entity, reason, now, out)

    def _prune(self, state: CustomerState, now: float) -> None:
        """Forget what no rule, cooldown, budget or dedup can need any more."""
        state.pruned_at = now
        agents = state.agents
        busy = {a.entity for a in agents.open.values()}
        busy |= {d.entity for d in state.contact.deferred.values()}
        for name, entity in list(agents.entities.items()):
            if name not in busy and now - entity.touched > self.state_ttl:
                del agents.entities[name]
        for key, when in list(agents.effects.items()):
            if now - when > self.effect_memory:
                del agents.effects[key]
        state.contact.prune(now, self.contact_memory)
        cooldowns = state.rules.cooldowns
        for slot, when in list(cooldowns.items()):
            if now - when > self.cooldown_memory:
                del cooldowns[slot]
