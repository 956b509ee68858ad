"""The offline runtime: replay/backtest a JSONL file through the decision core.

Events are processed in ``occurred_at`` order (ties keep file order) with an event-time clock:
before each event, every timer due at or before its time fires at its own due time; after the
last event the clock runs on until nothing scheduled remains. A malformed line goes to
``dlq.jsonl`` with its 1-based line number and the run continues.

Ordering without holding the file in memory: the file is replayed in file order, checking
that ``occurred_at`` never goes backwards; a file in order (the usual case: recordings and
``outreach sample``) is thus read once. At the first event out of order the partial output is
discarded and the file is sorted externally in chunks of ``chunk_lines`` lines (temporary
files, heap merge) and replayed from the start. Memory grows with customers and pending
timers, not with events.

An event the engine fails on (the core raises on a valid event: an engine defect) is skipped
as the live runtime skips it (``outreach.streams.processor``), with its line in ``dlq.jsonl``
saying what failed, so the customer's state is as if the event had never come. A timer whose
firing raises is dropped the same way (its ``dlq.jsonl`` entry has line 0 and the
``timer.fired`` event as ``raw``). A pass goes on after a failure without that customer (its
later lines and timers are not evaluated: its state is suspect); after a pass with failures,
its output is discarded and the file replayed from the start with all of them skipped. A
customer's later lines may fail too, found only by the next pass: a replay takes one pass
more than the most failures of any one customer, not one per failure.

By default no effect is performed: a backtest must not touch customers; executed actions and
sent messages are recorded and counted. Given a ``Connector`` (tests, the fake connector, a
staging system), every executed action's effect is handed to it as it is decided.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import orjson

from outreach.agents.connectors import Connector
from outreach.agents.guardrails import SharedLedger
from outreach.core import DecisionCore
from outreach.decisionlog import DecisionLog, Summary
from outreach.decisions import Decisions, Timer
from outreach.errors import EngineFailure, engine_fault
from outreach.events import Event, InvalidEventError, TimerFired, TimerFiredData, parse_event
from outreach.rulebook import RuleBook
from outreach.state import CustomerState

_log = logging.getLogger(__name__)
Line = tuple[float, int, bytes]  # (occurred_at or -inf, 1-based line number, raw bytes)
Progress = Callable[[int], None]  # called with bytes consumed so far


def _occurred(raw: bytes) -> float:
    """The line's ``occurred_at`` as epoch seconds, or -inf if it is not a valid event
    (-> DLQ). The common RFC 3339 form is read directly; any other the contract's parser
    accepts (a numeric string of epoch seconds) is read by it, so the sort agrees with it."""
    try:
        value = orjson.loads(raw).get("occurred_at")
        stamp = datetime.fromisoformat(value.replace("z", "Z").replace("t", "T"))
        if stamp.tzinfo is not None:
            return stamp.timestamp()
    except (orjson.JSONDecodeError, AttributeError, TypeError, ValueError):
        pass
    try:
        return parse_event(raw).occurred_at.timestamp()
    except InvalidEventError:
        return float("-inf")


def _lines(path: Path, progress: Progress | None = None) -> Iterator[tuple[int, bytes]]:
    """(line number, raw line without newline) for non-blank lines; reports bytes read."""
    consumed = 0
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            consumed += len(raw)
            if progress is not None and not number & 4095:
                progress(consumed)
            line = raw.rstrip(b"\r\n")
            if line.strip():
                yield number, line


class Skips:
    """Inputs the engine failed on, each with the failure: input lines by number and timers
    by id (what a replay skips, kept across its passes, or what one pass found)."""

    def __init__(self) -> None:
        self.lines: dict[int, EngineFailure] = {}
        self.timers: dict[str, EngineFailure] = {}

    def __bool__(self) -> bool:
        return bool(self.lines or self.timers)

    def add(self, found: Skips) -> None:
        """Skip what a pass ``found`` as well (each failure logged with its traceback)."""
        for failure in (*found.lines.values(), *found.timers.values()):
            _log.error("%s", failure, exc_info=failure.__cause__)
        self.lines.update(found.lines)
        self.timers.update(found.timers)


class OutOfOrderError(Exception):
    """An event older than one already replayed: the file must be sorted first."""


def _spill(chunk: list[Line], folder: Path, index: int) -> Path:
    chunk.sort(key=lambda item: (item[0], item[1]))
    path = folder / f"chunk-{index:05d}.bin"
    with path.open("wb") as handle:
        for stamp, number, raw in chunk:
            handle.write(orjson.dumps([stamp if stamp != float("-inf") else None, number]))
            handle.write(b"\t" + raw + b"\n")
    return path


def _read_chunk(path: Path) -> Iterator[Line]:
    with path.open("rb") as handle:
        for row in handle:
            head, raw = row.rstrip(b"\n").split(b"\t", 1)
            stamp, number = orjson.loads(head)
            yield (float("-inf") if stamp is None else stamp, number, raw)


def sorted_lines(path: Path, chunk_lines: int, progress: Progress | None = None) -> Iterator[Line]:
    """Every non-blank line of ``path`` in (occurred_at, line number) order (external sort)."""
    with tempfile.TemporaryDirectory(prefix="outreach-replay-") as tmp:
        folder = Path(tmp)
        chunks: list[Path] = []
        chunk: list[Line] = []
        for number, raw in _lines(path):
            chunk.append((_occurred(raw), number, raw))
            if len(chunk) >= chunk_lines:
                chunks.append(_spill(chunk, folder, len(chunks)))
                chunk = []
        if chunk:
            chunks.append(_spill(chunk, folder, len(chunks)))
        done = 0
        total = path.stat().st_size
        for item in heapq.merge(*(_read_chunk(c) for c in chunks), key=lambda i: (i[0], i[1])):
            done += len(item[2]) + 1
            if progress is not None and item[1] % 4096 == 0:
                progress(min(done, total))
            yield item


@dataclass
class ReplayResult:
    """What a replay did."""

    summary: dict[str, Any]
    customers: int
    out: Path


class DecisionSink(Protocol):
    """Where a replay's decisions go: the decision-log folder, or memory (rule test cases)."""

    summary: Summary

    def write(self, decisions: Decisions) -> None:
        """Keep one evaluation's records."""

    def dead_letter(
        self, line: int, raw: bytes, error: str, *, engine_failure: bool = False
    ) -> None:
        """Keep an input line that is not a valid event (``engine_failure``: one the core
        raised on, or a timer, line 0)."""


class Replayer:
    """Drives the core over ordered lines with an event-time clock and a timer heap."""

    def __init__(
        self,
        book: RuleBook,
        log: DecisionSink,
        require_order: bool = False,
        connector: Connector | None = None,
        skips: Skips | None = None,
    ) -> None:
        """``skips``: inputs the engine failed on in earlier passes (skipped). With it, a
        new failure is kept in ``failed`` and its customer tainted: the customer's later
        inputs are not evaluated in this pass (its state is suspect), the others' are, and
        the caller replays again skipping them all. Without it, the core's exception
        propagates."""
        self.core = DecisionCore(book)
        self.skips = skips
        self.failed = Skips()
        self.tainted: set[str] = set()
        self.log = log
        self.require_order = require_order
        self.connector = connector
        self._loop = asyncio.new_event_loop() if connector is not None else None
        self.clock = float("-inf")
        self.states: dict[str, CustomerState] = {}
        self.shared = SharedLedger()
        self.timers: list[tuple[float, int, str, str]] = []  # (due, seq, timer id, customer)
        self._seq = 0

    def _state(self, customer_id: str) -> CustomerState:
        state = self.states.get(customer_id)
        if state is None:
            state = self.states[customer_id] = self.core.new_state(customer_id)
        return state

    def _record(self, decisions: Decisions) -> None:
        self._write(decisions)
        self._perform(decisions)

    def _write(self, decisions: Decisions) -> None:
        """Log what one evaluation decided and schedule its timers."""
        if decisions:
            self.log.write(decisions)
            for timer in decisions.timers:
                self._schedule(timer)

    def _perform(self, decisions: Decisions) -> None:
        """Hand the executed actions' effects to the connector, if there is one (its failure
        is not the event's: it stops the replay). Not once an input failed in this pass: the
        pass is replayed, and what it decides from then on is not what the next decides (the
        failing customer's later events do not spend the shared budgets), so only that pass
        performs it."""
        if self.connector is not None and self._loop is not None and not self.tainted:
            for effect in decisions.effects:
                self._loop.run_until_complete(self.connector.perform(effect))

    def close(self) -> None:
        """Release the event loop used to call the connector, if any."""
        if self._loop is not None:
            self._loop.close()

    def _schedule(self, timer: Timer) -> None:
        self._seq += 1
        heapq.heappush(
            self.timers, (timer.due_at.timestamp(), self._seq, timer.timer_id, timer.customer_id)
        )

    def _fail(self, exc: Exception, customer_id: str, what: str, ident: str) -> EngineFailure:
        """The failure to skip an input the core raised ``exc`` on with (kept by the caller in
        ``failed``), tainting its customer for the rest of the pass; re-raises ``exc`` when
        it is not to be skipped (no ``skips``, or not the engine failing on its input)."""
        if self.skips is None or not engine_fault(exc):
            raise exc
        failure = EngineFailure(exc, what, ident)
        failure.__cause__ = exc
        self.tainted.add(customer_id)
        return failure

    def fire_until(self, until: float) -> None:
        """Fire, in due order, every timer due at or before ``until``."""
        timers, tainted = self.timers, self.tainted
        while timers and timers[0][0] <= until:
            due, _, timer_id, customer_id = heapq.heappop(timers)
            if tainted and customer_id in tainted:
                continue  # an input of the customer failed in this pass
            state = self._state(customer_id)
            if timer_id not in state.timers:
                continue  # cancelled meanwhile (ids name their due time): as live, not fired
            when = datetime.fromtimestamp(due, UTC)
            event = TimerFired.model_construct(
                event_id=timer_id,
                type="timer.fired",
                customer_id=customer_id,
                occurred_at=when,
                source="replay",
                schema_version=1,
                data=TimerFiredData.model_construct(timer_id=timer_id, due_at=when),
            )
            skips = self.skips
            if skips is not None and timer_id in skips.timers:
                state.timers.pop(timer_id, None)  # dropped, as the live runtime drops it
                raw = event.model_dump_json().encode()
                self.log.dead_letter(0, raw, str(skips.timers[timer_id]), engine_failure=True)
                continue
            self.log.summary.timers_fired += 1
            try:  # what it decided is written (encoded) in the try too
                decisions = self.core.evaluate(event, state, self.shared, when)
                self._write(decisions)
            except Exception as exc:
                self.failed.timers[timer_id] = self._fail(exc, customer_id, "timer", timer_id)
                continue
            self._perform(decisions)

    def feed_lines(self, lines: Iterable[tuple[int, bytes]]) -> None:
        """Process input lines in order; invalid lines go to the DLQ. ``feed_event`` does the
        same for one parsed event; this is the hot loop, kept flat on purpose (profiled)."""
        log, summary, timers, states = self.log, self.log.summary, self.timers, self.states
        evaluate, new_state, shared = self.core.evaluate, self.core.new_state, self.shared
        fromtimestamp, clock, require_order = datetime.fromtimestamp, self.clock, self.require_order
        skipped = self.skips.lines if self.skips is not None else {}
        failed, tainted = self.failed.lines, self.tainted
        events = duplicates = 0
        try:
            for number, raw in lines:
                if skipped and number in skipped:
                    log.dead_letter(number, raw, str(skipped[number]), engine_failure=True)
                    continue
                try:
                    event = parse_event(raw)
                except InvalidEventError as exc:
                    log.dead_letter(number, raw, str(exc))
                    continue
                stamp = event.occurred_at.timestamp()
                if stamp < clock:
                    if require_order:
                        raise OutOfOrderError(event.event_id)
                else:
                    clock = stamp
                if timers and timers[0][0] <= stamp:
                    self.fire_until(stamp)
                if tainted and event.customer_id in tainted:
                    continue  # an input of the customer failed in this pass
                state = states.get(event.customer_id)
                if state is None:
                    state = states[event.customer_id] = new_state(event.customer_id)
                try:  # what it decided is written (encoded) in the try too
                    decisions = evaluate(event, state, shared, fromtimestamp(stamp, UTC), stamp)
                    if decisions and not decisions.duplicate:
                        self._write(decisions)
                except Exception as exc:
                    failed[number] = self._fail(exc, event.customer_id, "event", event.event_id)
                    continue
                events += 1
                duplicates += decisions.duplicate
                if decisions.effects:
                    self._perform(decisions)
        finally:
            self.clock = clock
            summary.events += events
            summary.duplicates += duplicates

    def feed_event(self, event: Event) -> None:
        """Process one validated event at its own time, after the timers due before it."""
        stamp = event.occurred_at.timestamp()
        if stamp < self.clock:
            if self.require_order:
                raise OutOfOrderError(event.event_id)
        else:
            self.clock = stamp
        if self.timers and self.timers[0][0] <= stamp:
            self.fire_until(stamp)
        now = datetime.fromtimestamp(stamp, UTC)
        state = self._state(event.customer_id)
        decisions = self.core.evaluate(event, state, self.shared, now, stamp)
        self.log.summary.events += 1
        if decisions.duplicate:
            self.log.summary.duplicates += 1
        self._record(decisions)

    def drain(self) -> None:
        """Run the clock on until nothing scheduled remains."""
        self.fire_until(float("inf"))


def replay(
    events: Path,
    book: RuleBook,
    out: Path,
    *,
    chunk_lines: int = 200_000,
    progress: Progress | None = None,
    connector: Connector | None = None,
) -> ReplayResult:
    """Replay ``events`` through ``book`` into the decision-log folder ``out``; with a
    ``connector``, executed actions' effects are performed through it."""
    if not events.is_file() or not os.access(events, os.R_OK):
        raise FileNotFoundError(f"cannot read the events file {events}")
    in_order, skips = True, Skips()
    with DecisionLog(out) as log:
        while True:  # a restart discards the output; effects already sent stay sent (their
            # keys make them one-offs)
            replayer = Replayer(book, log, require_order=in_order, connector=connector, skips=skips)
            try:
                if in_order:
                    replayer.feed_lines(_lines(events, progress))
                else:
                    replayer.feed_lines(
                        (n, raw) for _, n, raw in sorted_lines(events, chunk_lines, progress)
                    )
                replayer.drain()
            except OutOfOrderError:  # only ever in the first pass: what it found was found
                in_order = False  # in file order, not in the order the next pass follows
            else:
                if not replayer.failed:
                    break
                skips.add(replayer.failed)
            finally:
                replayer.close()
            log.reset()
        summary = log.close({"rulebook": book.fingerprint})
    return ReplayResult(summary, len(replayer.states), out)
