"""Apply a batch of Kafka records to the store through the decision core, in ONE transaction.

Per batch: read which offsets each partition has applied (records below are redeliveries and
are skipped), decode (invalid records become dead letters), lock and load the states of the
customers in the batch, evaluate each customer's events in ``occurred_at`` order (ties keep
arrival order), and write back states, outbox rows (effects and deliveries), timers, decision
records and dead letters for the relay, and the new positions. Kafka offsets are committed
after this returns. On redelivery nothing is applied twice: the positions say what was.

Time. An event is evaluated at its own ``occurred_at``, as replay does, so a backtest
previews production. Before each event, the customer's timers due at or before its time fire
first, at their own due times (as replay's event-time clock does); timers still pending are
delivered later by the scheduler (``outreach.scheduling``) as ``timer.fired`` events on the
timers topic. The ``timers`` table mirrors the states' pending timers: a batch adds the new
ones and removes those that fired or that the core cancelled.

Decision latency. Each newly applied record's wait from its Kafka timestamp to the moment its
batch is applied (``self.clock()``, once per batch, just before the transaction commits) is
added to a histogram in the tallies (``outreach.streams.latency`` says what is measured and what
is not: redeliveries, records without a timestamp and the timers topic's records are not).

An event the engine fails on. If the decision core raises on a valid event (an engine
defect: a rule's own failure is caught inside the core), the event is skipped as if it had
never come, with a dead letter saying what failed (``outreach.errors.EngineFailure``): the
customer's state stays as it was before it, and the rest of the batch is applied. A timer
whose firing raises is dropped from its customer's state (and the timers table) with a dead
letter of its own, so the scheduler does not deliver it again. A pass over the batch goes on
after a failure, but without that customer: its state is now suspect, so its later events and
timers wait. After a pass with failures the transaction is rolled back and the batch applied
again with every failure found skipped. A customer's later inputs may fail too, which only
the next pass can tell: a batch takes one pass more than the most failures of any one
customer, not one per failure (a pass per failure made a 10,000-record batch with 5% failing
take 95 s instead of 1, and asked the core, an LLM planner maybe, again each time). Replay
does the same (``outreach.replay``), so the two still agree. Database errors are not the
event's fault and propagate as before, even after a failure in the same pass.

A write the store refuses. A batch whose writes the database refuses without being away
(``sqlalchemy.exc.DataError`` or ``IntegrityError``: a value its schema does not take though
the contract does, a constraint) would fail on every worker taking its partition, for ever. It
is applied in halves instead (a prefix, then the rest: each partition keeps its order, as with
smaller batches), down to the records whose own batch is refused, each skipped as an engine
failure is, with a dead letter saying what the store refused (``outreach.errors.StoreRefusal``)
and counted as one. When even that dead letter cannot be written, the error is not the
record's and propagates. A timer the batch's clock fires has no record of its own: what the
store refuses of its firing is put on the event it fired before.

Complaints. A ``contact.suppressed`` event with reason ``complaint`` (a spam report, see
``outreach.outbound.feedback``) adds to the tally ``("complaints", channel)``, which the API
exports as ``outreach_complaints_total`` for the complaint-rate alerts.

Logs and metrics. Each event is evaluated with its ``event_id`` and ``customer_id`` bound for
log lines (``outreach.telemetry.logs.correlate``); a dead letter is logged with its topic,
partition and offset. Each applied batch adds to this process's metrics
(``outreach.telemetry.metrics``: batches, apply time, records by result).

This module is the runtime glue shared by every driver (aiokafka loop, Faust agent): it has no
Kafka client of its own.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

import msgspec
import sqlalchemy as sa

from outreach.core import DecisionCore
from outreach.decisions import Decisions
from outreach.errors import EngineFailure, StoreRefusal, engine_fault
from outreach.events import ContactSuppressed, Event, TimerFired, TimerFiredData, is_engine_type
from outreach.rulebook import load_rulebook
from outreach.rules.yamlfile import RuleFileError
from outreach.state import CustomerState
from outreach.store import ApprovalRow, AuditRow, Batch, Stamp, Store, TimerRow
from outreach.store.contacts import address_rows
from outreach.streams.codec import DeadLetter, Record, dead_letter_value, decode, record_value
from outreach.streams.latency import add_latencies
from outreach.streams.outage import store_error, unavailable
from outreach.telemetry import metrics
from outreach.telemetry.logs import correlate, rebind

log = logging.getLogger(__name__)
Decoded = tuple[Record, Event | DeadLetter]


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


class _Collected:
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
                log.warning(
                    "ALERT for %s: %s", receipt.customer_id, receipt.reaction,
                    extra={"customer_id": receipt.customer_id, "message_id": receipt.message_id},
                )  # fmt: skip
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
            log.warning(
                "rule %s raised on event %s: %s", error.rule_id, error.event_id, error.error,
                extra={"event_id": error.event_id, "rule_id": error.rule_id},
            )  # fmt: skip
        result.signals += len(decisions.signals)
        result.effects += len(decisions.effects)
        result.deliveries += len(decisions.deliveries)
        result.rule_errors += len(decisions.errors)


DEFAULT_STATE_CACHE = 20_000  # customers; ~5 KB each in memory for the sample workload


class StateCache:
    """The decoded states this process saved last, most recently used last, at most
    ``capacity`` customers (0: none kept).

    Decoding a state from its JSON was the largest single cost of a batch (~8 us a customer,
    more under the collector), and a worker meets the same customers batch after batch (its
    partitions). A kept state is used only while its row carries the stamp it was saved with
    (``outreach.store.Stamp``, read under the batch's row lock): a write by any other worker
    or process changes the stamp and the row is read again. Entries are taken out for a
    batch and put back only after it committed, so a batch that fails or is retried leaves
    no half-evaluated state behind."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._entries: OrderedDict[str, tuple[Stamp, CustomerState]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def take(self, customer_ids: Iterable[str]) -> dict[str, tuple[Stamp, CustomerState]]:
        """Remove and return the kept entries of these customers."""
        pop, taken = self._entries.pop, {}
        for customer_id in customer_ids:
            entry = pop(customer_id, None)
            if entry is not None:
                taken[customer_id] = entry
        return taken

    def put(self, entries: dict[str, tuple[Stamp, CustomerState]]) -> None:
        """Keep these (as the most recently used), dropping the least recently used beyond
        the capacity."""
        if not self.capacity:
            return
        kept = self._entries
        for customer_id, entry in entries.items():
            kept[customer_id] = entry
            kept.move_to_end(customer_id)
        while len(kept) > self.capacity:
            kept.popitem(last=False)


@dataclass(frozen=True)
class _Failure:
    """One input the core raised on in a pass over a batch: the batch's ``item`` (an index),
    or a timer fired by the batch's clock (``timer``: its id and customer)."""

    failure: EngineFailure
    item: int | None = None
    timer: tuple[str, str] | None = None


class _Failed(Exception):  # noqa: N818 - carries a pass's EngineFailures out of the batch
    """The core raised on inputs of a batch (``found``, in the order met): the pass is rolled
    back, to be applied again with all of them skipped."""

    def __init__(self, found: list[_Failure]) -> None:
        super().__init__(f"the engine failed on {len(found)} input(s) of the batch")
        self.found = found


class _Skipped(DeadLetter):
    """A valid event's record the core failed on (``str(self)``: the ``EngineFailure``), or
    whose writes the store refused (``StoreRefusal``)."""


def _refused(exc: Exception) -> bool:
    """Whether ``exc`` is the database refusing what a batch wrote (a value too long for its
    column, a constraint), which may be one record's doing; never an outage."""
    return isinstance(exc, sa.exc.DataError | sa.exc.IntegrityError) and not unavailable(exc)


def _failed(exc: Exception, what: str, ident: str) -> EngineFailure | None:
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


class BatchProcessor:
    """Applies record batches for one consumer group through one decision core."""

    def __init__(
        self,
        core: DecisionCore,
        store: Store,
        *,
        group: str,
        timers_topic: str,
        max_event_bytes: int,
        audit_events: str = "all",
        state_cache: int = DEFAULT_STATE_CACHE,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.core = core
        self.clock = clock  # wall time, for the decision latency only (events use their own)
        self.store = store
        self.group = group
        self.timers_topic = timers_topic
        self.max_event_bytes = max_event_bytes
        self.audit_all = audit_events == "all"  # else only events that led to decisions
        self._decode_state = msgspec.json.Decoder(CustomerState).decode
        self._encode = msgspec.json.Encoder().encode
        self.loaded_at = time.time()  # when the running rules were loaded
        self.states = StateCache(state_cache)

    def _reload_rules(self, batch: Batch) -> None:
        """Re-read the rules folder if an operator asked for a reload since it was loaded
        (``POST /v1/rules/reload``); a folder that does not load leaves the running rules."""
        asked = batch.rules_reload()
        if asked is None or asked[0] <= self.loaded_at:
            return
        at, validated = asked
        self.loaded_at = at
        folder = self.core.book.folder
        try:
            book = load_rulebook(folder)
        except RuleFileError as exc:
            log.error("rules reload refused, the running rules stay: %s", exc)
            return
        if book.fingerprint != validated:
            log.warning(
                "rules reload: %s holds rule set %s, not %s as validated by the API (the "
                "folder differs on this host or changed since); running %s",
                folder, book.fingerprint, validated, book.fingerprint,
            )  # fmt: skip
        log.info("rules reloaded: %s -> %s", self.core.book.fingerprint, book.fingerprint)
        self.core = DecisionCore(book, self.core.planner)

    async def applied_positions(
        self, wanted: list[tuple[str, int]], part: str
    ) -> dict[tuple[str, int], int] | None:
        """What the store says was applied of the ``wanted`` partitions (for a driver to seek
        to on assignment); None while the database is unavailable, logged: ``part`` then
        starts them from Kafka's committed offsets, which are never ahead of the store's but
        for a batch whose failure stopped the process (the store skips the rest). Waiting for
        the database here would hold up the rebalance and the group's heartbeats."""
        try:
            return await asyncio.to_thread(
                self.store.run, lambda batch: batch.positions(self.group, wanted)
            )
        except Exception as exc:
            if not unavailable(exc):
                raise
            log.warning(
                "%s: assigned %s; the database is unavailable, so starting from Kafka's "
                "committed offsets", part, sorted(f"{t}[{p}]" for t, p in wanted),
            )  # fmt: skip
            return None

    def decode(self, record: Record) -> Decoded:
        """The record with its event or dead letter."""
        return record, decode(
            record, max_bytes=self.max_event_bytes, timers_topic=self.timers_topic
        )

    def apply(self, records: Sequence[Record]) -> BatchResult:
        """Apply ``records`` (any topics and partitions, each partition in offset order)."""
        return self.apply_decoded([self.decode(r) for r in records])

    def apply_decoded(self, items: Sequence[Decoded]) -> BatchResult:
        """Apply already decoded records, in the order given (per partition: offset order).
        The inputs the core raises on are skipped with dead letters and the batch applied
        again without them; a batch whose writes the store refuses is applied in halves, down
        to the records it refuses, which are skipped the same way (module docstring, "An
        event the engine fails on", "A write the store refuses")."""
        if not items:
            return BatchResult()
        try:
            return self._commit(items, {})
        except Exception as exc:
            if not _refused(exc):
                raise
            if len(items) == 1:
                return self._refuse(items[0], exc)
            log.warning(
                "the store refused a batch of %d records (%s): applying it in halves to find "
                "the records it refuses", len(items), type(exc).__name__,
            )  # fmt: skip
        half = len(items) // 2  # a prefix and the rest: each partition keeps its order
        result = self.apply_decoded(items[:half])
        result.add(self.apply_decoded(items[half:]))
        return result

    def _refuse(self, item: Decoded, exc: Exception) -> BatchResult:
        """Apply one record whose batch the store refused (``exc``) as a dead letter saying
        so; ``exc`` again when the record is already a dead letter: then its writes are not
        what the store refuses."""
        record, event = item
        if isinstance(event, DeadLetter):
            raise exc
        refusal = StoreRefusal(exc, event.event_id)
        log.error("%s", refusal, exc_info=exc)
        dropped: dict[str, tuple[str, EngineFailure | None]] = {}
        if isinstance(event, TimerFired):  # or the scheduler delivers it again
            dropped[event.data.timer_id] = (event.customer_id, None)
        return self._commit([(record, _Skipped(str(refusal)))], dropped)

    def _commit(
        self, items: Sequence[Decoded], dropped: dict[str, tuple[str, EngineFailure | None]]
    ) -> BatchResult:
        """Apply ``items`` in one transaction, in as many passes as the inputs the core fails
        on take; ``dropped``: timers to drop (id: customer, why)."""
        started = time.perf_counter()
        todo = list(items)
        while True:
            try:
                result, saved = self.store.run(lambda batch: self._apply(batch, todo, dropped))
                break
            except _Failed as failed:  # rolled back: apply the batch again without them
                for found in failed.found:
                    self._skip(found, todo, dropped)
        self.states.put(saved)  # committed: these are the stored states now
        metrics.observe_batch(result, time.perf_counter() - started)
        return result

    @staticmethod
    def _skip(
        found: _Failure, todo: list[Decoded], dropped: dict[str, tuple[str, EngineFailure | None]]
    ) -> None:
        """Skip, in the batch's next pass, an input the core failed on: its record becomes a
        dead letter, a timer is dropped."""
        log.error("%s", found.failure, exc_info=found.failure.__cause__)
        if found.timer is not None:
            timer_id, customer_id = found.timer
            dropped[timer_id] = (customer_id, found.failure)
            return
        assert found.item is not None
        record, event = todo[found.item]
        todo[found.item] = (record, _Skipped(str(found.failure)))
        if isinstance(event, TimerFired):  # or the scheduler delivers it again
            dropped[event.data.timer_id] = (event.customer_id, None)

    def _lock_states(
        self, batch: Batch, customers: Collection[str]
    ) -> tuple[dict[str, CustomerState], dict[str, Stamp]]:
        """Lock the customers' rows; their states (kept, decoded or new, in the order given)
        and the stamps their rows will have once saved."""
        # taken out of the cache: evaluating changes them, and a failed attempt must leave
        # nothing behind (the next reads the stored rows again)
        kept = self.states.take(customers)
        stored = batch.lock_versions(customers, {c: stamp for c, (stamp, _) in kept.items()})
        states: dict[str, CustomerState] = {}
        saved: dict[str, Stamp] = {}
        for customer_id in customers:
            row, copy = stored.get(customer_id), kept.get(customer_id)
            if row is not None and row.state is not None:
                state = self._decode_state(row.state)
            elif row is not None and copy is not None and copy[0] == row.stamp:
                state = copy[1]  # the row still holds what this process saved last
            else:  # no row yet, or one reserved by this very transaction
                state = self.core.new_state(customer_id)
            saved[customer_id] = Stamp.after(None if row is None else row.stamp, batch.now)
            states[customer_id] = state
        return states, saved

    def _new_records(
        self,
        items: Sequence[Decoded],
        applied: dict[tuple[str, int], int],
        positions: dict[tuple[str, int], int],
        stamps: list[float],
        out: _Collected,
    ) -> list[tuple[Event, bytes, int]]:
        """The batch's events not applied before (with their JSON and index in ``items``);
        dead letters go to ``out``. Moves ``applied`` and ``positions`` past every record, and
        adds the new records' Kafka timestamps to ``stamps``."""
        result, timers_topic = out.result, self.timers_topic
        events: list[tuple[Event, bytes, int]] = []
        for index, (record, event) in enumerate(items):
            tp = (record.topic, record.partition)
            positions[tp] = max(positions.get(tp, 0), record.offset + 1)
            if record.offset < applied.get(tp, 0):
                result.redelivered += 1
                continue
            applied[tp] = record.offset + 1  # the same offset twice in one batch counts once
            stamp = record.timestamp
            if stamp is not None and stamp >= 0 and record.topic != timers_topic:
                stamps.append(stamp)
            if isinstance(event, DeadLetter):
                out.records.append(("dlq", record.key, dead_letter_value(record, str(event))))
                result.dead_letters += 1
                if isinstance(event, _Skipped):
                    result.engine_failures += 1
                log.info(
                    "dead letter: %s", event,
                    extra={"topic": record.topic, "partition": record.partition,
                           "offset": record.offset},
                )  # fmt: skip
            else:
                events.append((event, record.value, index))
        return events

    def _apply(
        self,
        batch: Batch,
        items: Sequence[Decoded],
        dropped: dict[str, tuple[str, EngineFailure | None]],
    ) -> tuple[BatchResult, dict[str, tuple[Stamp, CustomerState]]]:
        """Apply ``items`` in ``batch``; what it did, and the states it saved with their
        stamps (kept only once the transaction has committed). ``dropped``: timers the core
        failed on, to take out of their customers' states (with a dead letter when the
        failure is not told by a record's own)."""
        self._reload_rules(batch)
        out = _Collected()
        result = out.result
        result.records = len(items)
        applied = batch.positions(self.group, {(r.topic, r.partition) for r, _ in items})
        positions: dict[tuple[str, int], int] = {}
        stamps: list[float] = []  # Kafka timestamps of the applied records (latency)
        events = self._new_records(items, applied, positions, stamps, out)
        customers = dict.fromkeys(e.customer_id for e, _, _ in events)  # arrival order
        for customer_id, _ in dropped.values():
            customers.setdefault(customer_id)
        states, saved = self._lock_states(batch, customers)
        before: dict[str, list[tuple[str, str]]] = {}
        timers_before: dict[str, set[str]] = {}
        clock = _Clock(self.core, batch, out, self.audit_all, dropped, self.timers_topic)
        for customer_id, state in states.items():
            before[customer_id] = _addresses(state)
            timers_before[customer_id] = set(state.timers)
            clock.watch(state)
        events.sort(key=lambda item: item[0].occurred_at)  # stable: ties keep arrival order
        clock.run(events, states)
        for timer_id, (customer_id, _) in dropped.items():  # those no event passed
            clock.drop(states[customer_id], timer_id)
        batch.save_states({c: self._encode(s) for c, s in states.items()})
        gone: list[dict[str, str]] = []
        added: list[dict[str, str]] = []
        for customer_id, state in states.items():
            now_has = _addresses(state)
            if now_has != before[customer_id]:
                old, new = address_rows(customer_id, before[customer_id], now_has)
                gone += old
                added += new
        batch.set_addresses(gone, added)
        batch.add_outbox(out.outbox)
        # the timers table mirrors the states' pending timers: new ones are added, fired and
        # cancelled ones removed (the scheduler drops their jobs)
        pending: dict[str, TimerRow] = {}
        for row in out.timers:
            ref = states[row.customer_id].timers.get(row.timer_id)
            if ref is not None and ref.due == row.due_at:
                pending[row.timer_id] = row
        batch.schedule_timers(pending.values())
        finished = set(out.fired)
        for customer_id, had in timers_before.items():
            finished |= had - states[customer_id].timers.keys()
        batch.drop_timers(finished)
        batch.add_records(out.records)
        batch.add_audit(out.audit)
        batch.track_approvals(out.approvals)
        tallies = out.tallies
        tallies["events", "applied"] += result.events
        tallies["events", "duplicate"] += result.duplicates
        tallies["events", "dead_letter"] += result.dead_letters - result.engine_failures
        if result.engine_failures:
            tallies["events", "engine_failure"] += result.engine_failures
        tallies["timers", "fired"] += result.timers_fired
        add_latencies(tallies, self.clock(), stamps)  # the work is done, only writes are left
        batch.add_tallies(tallies)
        batch.set_positions(
            self.group, {tp: max(o, applied.get(tp, 0)) for tp, o in positions.items()}
        )
        return result, {c: (saved[c], state) for c, state in states.items()}


def _always_audited(event: Event) -> bool:
    """Kept in the trail even when nothing was decided: profile and consent changes (they
    explain later choices of channel) and the engine's own facts (deliveries, replies,
    approvals)."""
    return event.type == "customer.updated" or is_engine_type(event)


def _addresses(state: CustomerState) -> list[tuple[str, str]]:
    """The customer's addresses per channel (for the address book of inbound webhooks)."""
    profile = state.profile
    found = []
    if profile.phone:
        found.append(("sms", profile.phone))
    if profile.email:
        found.append(("email", profile.email))
    return found


class _Clock:
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
        out: _Collected,
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
        self.failures: list[_Failure] = []
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

    def _fail(self, customer_id: str, found: _Failure) -> None:
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
                if (failure := _failed(exc, "timer", timer_id)) is None:
                    raise
                self._fail(customer_id, _Failure(failure, timer=(timer_id, customer_id)))
                return False
        return True

    def run(self, events: list[tuple[Event, bytes, int]], states: dict[str, CustomerState]) -> None:
        """Evaluate the batch's events (in order, with their JSON and index in the batch); if
        the core failed on any input, raise ``_Failed`` with them all (the store then rolls
        the batch back, to be applied again with all of them skipped)."""
        tainted = self.tainted  # customers an input failed on: the rest of theirs waits
        with correlate():  # each evaluation rebinds its event's ids; restored after the loop
            for event, raw, index in events:
                if tainted and event.customer_id in tainted:
                    continue
                self.evaluate(event, states[event.customer_id], raw, index)
        if self.failures:
            raise _Failed(self.failures)

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
            if (failure := _failed(exc, "event", event.event_id)) is None:
                raise
            self._fail(event.customer_id, _Failure(failure, item=item))

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
        elif not self.audit_all and not _always_audited(event):
            out.audit.pop()  # decided nothing: kept only with OUTREACH_AUDIT_EVENTS=all
