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
Kafka client of its own. One pass of the core over a batch (the clock, what it collects, the
failures it meets) is ``outreach.streams.evaluation``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Collection, Iterable, Sequence

import msgspec
import sqlalchemy as sa

from outreach.core import DecisionCore
from outreach.errors import EngineFailure, StoreRefusal
from outreach.events import Event, TimerFired
from outreach.rulebook import load_rulebook
from outreach.rules.yamlfile import RuleFileError
from outreach.state import CustomerState
from outreach.store import Batch, Stamp, Store, TimerRow
from outreach.store.contacts import address_rows
from outreach.streams.codec import DeadLetter, Record, dead_letter_value, decode
from outreach.streams.evaluation import (
    BatchResult,
    Clock,
    Collected,
    Failed,
    Failure,
    Skipped,
    timer_event,
)
from outreach.streams.latency import add_latencies
from outreach.streams.outage import unavailable
from outreach.telemetry import metrics

__all__ = [
    "DEFAULT_STATE_CACHE",
    "BatchProcessor",
    "BatchResult",
    "Decoded",
    "StateCache",
    "timer_event",
]
log = logging.getLogger(__name__)
Decoded = tuple[Record, Event | DeadLetter]


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


def _refused(exc: Exception) -> bool:
    """Whether ``exc`` is the database refusing what a batch wrote (a value too long for its
    column, a constraint), which may be one record's doing; never an outage."""
    return isinstance(exc, sa.exc.DataError | sa.exc.IntegrityError) and not unavailable(exc)


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
        loaded_at: float | None = None,
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
        # when the running rules were read (a reload asked for later makes it read them again;
        # one asked for between the read and this process's start must not be missed)
        self.loaded_at = time.time() if loaded_at is None else loaded_at
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
        self.core = DecisionCore(book, self.core.planner, self.core.composer)

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
        return self._commit([(record, Skipped(str(refusal)))], dropped)

    def _commit(
        self, items: Sequence[Decoded], dropped: dict[str, tuple[str, EngineFailure | None]]
    ) -> BatchResult:
        """Apply ``items`` in one transaction, in as many passes as the inputs the core fails
        on take; ``dropped``: timers to drop (id: customer, why)."""
        started = time.perf_counter()
        todo = list(items)
        while True:
            try:
                out, saved = self.store.run(lambda batch: self._apply(batch, todo, dropped))
                break
            except Failed as failed:  # rolled back: apply the batch again without them
                for found in failed.found:
                    self._skip(found, todo, dropped)
        self.states.put(saved)  # committed: these are the stored states now
        out.log_warnings()  # the committed pass's only: one line per alert or rule error
        result = out.result
        metrics.observe_batch(result, time.perf_counter() - started)
        return result

    @staticmethod
    def _skip(
        found: Failure, todo: list[Decoded], dropped: dict[str, tuple[str, EngineFailure | None]]
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
        todo[found.item] = (record, Skipped(str(found.failure)))
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
        out: Collected,
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
                if isinstance(event, Skipped):
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
    ) -> tuple[Collected, dict[str, tuple[Stamp, CustomerState]]]:
        """Apply ``items`` in ``batch``; what it collected (``result``: what it did), and the
        states it saved with their stamps (kept only once the transaction has committed).
        ``dropped``: timers the core failed on, to take out of their customers' states (with
        a dead letter when the failure is not told by a record's own)."""
        self._reload_rules(batch)
        out = Collected()
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
        clock = Clock(self.core, batch, out, self.audit_all, dropped, self.timers_topic)
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
        return out, {c: (saved[c], state) for c, state in states.items()}


def _addresses(state: CustomerState) -> list[tuple[str, str]]:
    """The customer's addresses per channel (for the address book of inbound webhooks)."""
    profile = state.profile
    found = []
    if profile.phone:
        found.append(("sms", profile.phone))
    if profile.email:
        found.append(("email", profile.email))
    return found
