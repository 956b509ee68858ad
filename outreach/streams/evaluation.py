"""One pass of the decision core over a batch's customers, for ``BatchProcessor``: the
per-customer event-time clock that fires timers before each event (``Clock``), what the pass
decided, gathered for the batch's writes (``Collected``) and counted (``BatchResult``), and
the inputs the core failed on (``Failure``; ``Failed`` carries them out of the pass, which the
store rolls back). ``outreach.streams.processor`` says what a batch does with them.

Must not import: faust, aiokafka, sqlalchemy (the store is reached through ``Batch``).
"""

from __future__ import annotations

import heapq
import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime

from outreach.core import DecisionCore
from outreach.decisions import Decisions
from outreach.errors import EngineFailure, engine_fault
from outreach.events import ContactSuppressed, Event, TimerFired, TimerFiredData, is_engine_type
from outreach.state import CustomerState
from outreach.store import ApprovalRow, AuditRow, Batch, TimerRow
from outreach.streams.codec import DeadLetter, Record, dead_letter_value, record_value
from outreach.streams.outage import store_error
from outreach.telemetry.logs import correlate, rebind

log = logging.getLogger(__name__)


@dataclass
class BatchResult:
    """What one batch did (for the live summary and metrics)."""

    records: int = 0
    redelivered: int = 0  # already applied before: skipped
    events: int = 0
    duplicates: int = 0
    dead_letters: int = 0  # engine failures included
    engine_failures: int = 0  # valid events and timers the core raised on (dead-lettered)
    timers_fired: int = 0
    signals: int = 0
    effects: int = 0
    deliveries: int = 0
    rule_errors: int = 0
    last_applied: float = 0.0  # time.monotonic() when the last batch was applied
    actions: Counter[str] = field(default_factory=Counter)
    messages: Counter[str] = field(default_factory=Counter)

    def add(self, other: BatchResult) -> None:
        """Accumulate another batch's counts."""
        for name in (
            "records", "redelivered", "events", "duplicates", "dead_letters", "engine_failures",
            "timers_fired", "signals", "effects", "deliveries", "rule_errors",
        ):  # fmt: skip
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.last_applied = time.monotonic()
        self.actions.update(other.actions)
        self.messages.update(other.messages)


class Collected:
    """Everything a batch writes besides states, gathered while evaluating."""

    def __init__(self) -> None:
        self.records: list[tuple[str, bytes | None, bytes]] = []
        self.outbox: list[tuple[str, str, str, str, bytes, float]] = []
        self.timers: list[TimerRow] = []
        self.fired: list[str] = []
        self.audit: list[AuditRow] = []
        self.approvals: list[ApprovalRow] = []
        self.tallies: Counter[tuple[str, str]] = Counter()
        self.result = BatchResult()
        # warnings for the log (message, args, extra), written once the batch has committed:
        # a pass that is rolled back and applied again would repeat them
        self.warnings: list[tuple[str, tuple[object, ...], dict[str, str]]] = []

    def log_warnings(self) -> None:
        """Log what the batch asks an operator to look at (once it has committed)."""
        for message, args, extra in self.warnings:
            log.warning(message, *args, extra=extra)

    def take(self, decisions: Decisions, at: float) -> None:
        """Collect what one evaluation at (event) time ``at`` decided."""
        result, records, audit, tallies = self.result, self.records, self.audit, self.tallies
        for signal in decisions.signals:
            value = record_value(signal)
            records.append(("signals", signal.customer_id.encode(), value))
            audit.append(AuditRow(signal.customer_id, at, "signal", signal.signal_id, None, value))
            tallies["signals", signal.rule_id] += 1
        for action in decisions.actions:
            value = record_value(action)
            records.append(("actions", action.customer_id.encode(), value))
            audit.append(
                AuditRow(action.customer_id, at, "action", action.action_id, action.status, value)
            )
            result.actions[action.status] += 1
            tallies["actions", f"{action.type}:{action.status}"] += 1
            self.approvals.append(
                ApprovalRow(
                    action.action_id,
                    action.customer_id,
                    action.rule_id,
                    action.type,
                    action.status,
                    at,
                    action.scheduled_for.timestamp() if action.scheduled_for else None,
                    action.decided_by,
                    value,
                )  # fmt: skip
            )
        for message in decisions.messages:
            value = record_value(message)
            records.append(("messages", message.customer_id.encode(), value))
            audit.append(
                AuditRow(
                    message.customer_id, at, "message", message.message_id, message.status, value
                )
            )
            result.messages[message.status] += 1
            tallies["messages", f"{message.channel}:{message.status}"] += 1
        for receipt in decisions.receipts:
            value = record_value(receipt)
            records.append(("receipts", receipt.customer_id.encode(), value))
            audit.append(
                AuditRow(
                    receipt.customer_id, at, "receipt", receipt.message_id, receipt.status, value
                )
            )
            if receipt.alert:
                self.warnings.append((
                    "ALERT for %s: %s", (receipt.customer_id, receipt.reaction),
                    {"customer_id": receipt.customer_id, "message_id": receipt.message_id},
                ))  # fmt: skip
        for effect in decisions.effects:
            self.outbox.append((
                effect.idempotency_key, "effect", effect.customer_id, effect.action_id,
                effect.model_dump_json().encode(), 0.0,
            ))  # fmt: skip
        for delivery in decisions.deliveries:
            self.outbox.append((
                delivery.key, "delivery", delivery.customer_id,
                delivery.message_id, delivery.model_dump_json().encode(), 0.0,
            ))  # fmt: skip
        for timer in decisions.timers:
            self.timers.append(
                TimerRow(timer.timer_id, timer.customer_id, timer.due_at.timestamp())
            )
        for error in decisions.errors:
            self.warnings.append((
                "rule %s raised on event %s: %s", (error.rule_id, error.event_id, error.error),
                {"event_id": error.event_id, "rule_id": error.rule_id},
            ))  # fmt: skip
        result.signals += len(decisions.signals)
        result.effects += len(decisions.effects)
        result.deliveries += len(decisions.deliveries)
        result.rule_errors += len(decisions.errors)


@dataclass(frozen=True)
class Failure:
    """One input the core raised on in a pass over a batch: the batch's ``item`` (an index),
    or a timer fired by the batch's clock (``timer``: its id and customer)."""

    failure: EngineFailure
    item: int | None = None
    timer: tuple[str, str] | None = None


class Failed(Exception):  # noqa: N818 - carries a pass's EngineFailures out of the batch
    """The core raised on inputs of a batch (``found``, in the order met): the pass is rolled
    back, to be applied again with all of them skipped."""

    def __init__(self, found: list[Failure]) -> None:
        super().__init__(f"the engine failed on {len(found)} input(s) of the batch")
        self.found = found


class Skipped(DeadLetter):
    """A valid event's record the core failed on (``str(self)``: the ``EngineFailure``), or
    whose writes the store refused (``StoreRefusal``)."""


def engine_failure(exc: Exception, what: str, ident: str) -> EngineFailure | None:
    """The failure to skip the input with, when ``exc`` from the core is the engine failing
    on it; None when it is not the input's doing (a database error, memory): re-raise it."""
    if store_error(exc) or not engine_fault(exc):
        return None
    failure = EngineFailure(exc, what, ident)
    failure.__cause__ = exc
    return failure


def timer_event(timer_id: str, customer_id: str, due: float, source: str) -> TimerFired:
    """The ``timer.fired`` event for a due timer (what replay's clock and the relay deliver)."""
    when = datetime.fromtimestamp(due, UTC)
    return TimerFired.model_construct(
        event_id=timer_id,
        type="timer.fired",
        customer_id=customer_id,
        occurred_at=when,
        source=source,
        schema_version=1,
        data=TimerFiredData.model_construct(timer_id=timer_id, due_at=when),
    )


def always_audited(event: Event) -> bool:
    """Kept in the trail even when nothing was decided: profile and consent changes (they
    explain later choices of channel) and the engine's own facts (deliveries, replies,
    approvals)."""
    return event.type == "customer.updated" or is_engine_type(event)


class Clock:
    """Replay's event-time clock over the customers of one batch: before each event, every
    timer of its customer due at or before its time fires, in due order, at its due time.

    Per customer, not across the batch: a customer's decisions depend on the order of its own
    events and timers only, and that order holds whatever order the batch's customers come in.
    A batch-wide clock fired a customer's timer as soon as *another* customer's later event
    passed it, so when the batch ran ahead of one partition (a backlog delivered after a
    broker outage) a payment retry ran before the failure that precedes it in event time. A
    timer with no later event of its customer in the batch waits for the scheduler."""

    def __init__(
        self,
        core: DecisionCore,
        batch: Batch,
        out: Collected,
        audit_all: bool = True,
        dropped: dict[str, tuple[str, EngineFailure | None]] | None = None,
        timers_topic: str = "timers",
    ) -> None:
        self.core = core
        self.audit_all = audit_all
        self.batch = batch
        self.out = out
        self.dropped = dropped or {}  # timers the core failed on: skipped, as replay does
        self.timers_topic = timers_topic
        self.heaps: dict[str, list[tuple[float, int, str]]] = {}  # (due, seq, timer id)
        self._seq = 0
        # inputs the core failed on in this pass, and their customers, whose later inputs are
        # not evaluated in this pass: their states are suspect (a pass with failures is
        # rolled back and the batch applied again with them skipped)
        self.failures: list[Failure] = []
        self.tainted: set[str] = set()

    def watch(self, state: CustomerState) -> None:
        """Take the customer's pending timers into the clock."""
        heap = self.heaps[state.customer_id] = []
        for timer_id, ref in state.timers.items():
            self._seq += 1
            heap.append((ref.due, self._seq, timer_id))
        heapq.heapify(heap)

    def _take(self, decisions: Decisions, at: float) -> None:
        for timer in decisions.timers:
            heap = self.heaps.get(timer.customer_id)
            if heap is not None:
                self._seq += 1
                heapq.heappush(heap, (timer.due_at.timestamp(), self._seq, timer.timer_id))
        self.out.take(decisions, at)

    def drop(self, state: CustomerState, timer_id: str) -> None:
        """Take a timer the core failed on out of ``state`` (so the timers table loses it
        too), with a dead letter saying why unless its own record has one."""
        ref = state.timers.pop(timer_id, None)
        why = self.dropped[timer_id][1]
        if ref is None or why is None:
            return
        key = state.customer_id.encode()
        fired = timer_event(timer_id, state.customer_id, ref.due, "worker")
        # fired by the worker's clock: no Kafka record of its own, so no partition or offset
        record = Record(self.timers_topic, -1, -1, key, fired.model_dump_json().encode())
        self.out.records.append(("dlq", key, dead_letter_value(record, str(why))))
        self.out.result.dead_letters += 1
        self.out.result.engine_failures += 1

    def _fail(self, customer_id: str, found: Failure) -> None:
        """Keep a failure of this pass and taint its customer."""
        self.failures.append(found)
        self.tainted.add(customer_id)

    def _fire_due(
        self, heap: list[tuple[float, int, str]], state: CustomerState, at: float
    ) -> bool:
        """Fire, in due order at their due times, the customer's timers due at or before
        ``at``; False when one failed (the customer is then tainted, the rest left)."""
        out, customer_id = self.out, state.customer_id
        while heap and heap[0][0] <= at:
            due, _, timer_id = heapq.heappop(heap)
            ref = state.timers.get(timer_id)
            if ref is None or ref.due != due:
                continue  # fired or cancelled meanwhile
            if timer_id in self.dropped:
                self.drop(state, timer_id)
                continue
            fired = timer_event(timer_id, customer_id, due, "worker")
            rebind(event_id=timer_id, customer_id=customer_id)
            try:  # what it decided is collected (encoded) in the try too
                decisions = self.core.evaluate(
                    fired, state, self.batch.ledger, fired.occurred_at, due
                )
                out.fired.append(timer_id)
                out.result.timers_fired += 1
                if decisions:
                    self._take(decisions, due)
            except Exception as exc:
                if (failure := engine_failure(exc, "timer", timer_id)) is None:
                    raise
                self._fail(customer_id, Failure(failure, timer=(timer_id, customer_id)))
                return False
        return True

    def run(self, events: list[tuple[Event, bytes, int]], states: dict[str, CustomerState]) -> None:
        """Evaluate the batch's events (in order, with their JSON and index in the batch); if
        the core failed on any input, raise ``Failed`` with them all (the store then rolls
        the batch back, to be applied again with all of them skipped)."""
        tainted = self.tainted  # customers an input failed on: the rest of theirs waits
        with correlate():  # each evaluation rebinds its event's ids; restored after the loop
            for event, raw, index in events:
                if tainted and event.customer_id in tainted:
                    continue
                self.evaluate(event, states[event.customer_id], raw, index)
        if self.failures:
            raise Failed(self.failures)

    def evaluate(self, event: Event, state: CustomerState, raw: bytes, item: int) -> None:
        """Fire the customer's timers that are due, then evaluate ``event`` (``raw``: its
        JSON; ``item``: its index in the batch) at its own time."""
        stamp = event.occurred_at.timestamp()
        out = self.out
        heap = self.heaps[event.customer_id]
        if heap and heap[0][0] <= stamp and not self._fire_due(heap, state, stamp):
            return  # a timer before it failed: the customer waits for the next pass
        if isinstance(event, TimerFired):
            out.fired.append(event.data.timer_id)
        else:  # the event first in the trail, then what it caused
            out.audit.append(AuditRow(event.customer_id, stamp, "event", event.event_id, None, raw))
        rebind(event_id=event.event_id, customer_id=event.customer_id)
        try:  # what it decided is collected (encoded) in the try too
            decisions = self.core.evaluate(
                event, state, self.batch.ledger, event.occurred_at, stamp
            )
            self._collect(event, decisions, stamp)
        except Exception as exc:
            if (failure := engine_failure(exc, "event", event.event_id)) is None:
                raise
            self._fail(event.customer_id, Failure(failure, item=item))

    def _collect(self, event: Event, decisions: Decisions, stamp: float) -> None:
        """Count what evaluating ``event`` decided and collect it for the batch's writes."""
        out = self.out
        out.result.events += 1
        if (
            not decisions.duplicate
            and isinstance(event, ContactSuppressed)
            and event.data.reason == "complaint"
        ):  # spam complaints, against messages sent: the bulk-sender thresholds
            out.tallies["complaints", event.data.channel] += 1
        if decisions.duplicate:
            out.result.duplicates += 1
            out.audit.pop()  # a redelivered copy: already in the trail
        elif decisions:
            self._take(decisions, stamp)
        elif not self.audit_all and not always_audited(event):
            out.audit.pop()  # decided nothing: kept only with OUTREACH_AUDIT_EVENTS=all
