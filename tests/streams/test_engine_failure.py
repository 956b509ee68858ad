"""An event or timer the decision core raises on (an engine defect, not bad input) is skipped
with a dead letter saying what failed, in the live runtime and in replay alike, instead of
failing the batch for ever (every worker that takes the partition would meet it again).

The defect is injected: a core that raises on chosen inputs after changing the state, so the
tests also see that a skipped input leaves no half-made change behind."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import msgspec
import orjson
import pytest
import sqlalchemy as sa
from livesupport import (
    Feed,
    declined,
    drain_records,
    log_lines,
    make_processor,
    run_to_quiescence,
    sorted_lines,
)
from support import make_event, payment_failed, profile, shipment_exception

from outreach.agents.connectors import FakeConnector
from outreach.core import DecisionCore
from outreach.decisions import Decisions, DeliveryRecord
from outreach.events import Event, TimerFired
from outreach.replay import replay
from outreach.rulebook import RuleBook
from outreach.rules.evaluate import RuleRuntimeError
from outreach.sample import generate
from outreach.state import CustomerState
from outreach.store import Store
from outreach.store.operator import Operator
from outreach.streams.processor import timer_event

Failing = Callable[[Event], bool]


class FaultyCore(DecisionCore):
    """The real core, except that it raises on the events ``fails`` picks, after a change to
    the state that a skipped event must not leave behind."""

    def __init__(self, book: RuleBook, fails: Failing, error: Exception | None = None) -> None:
        super().__init__(book)
        self.fails = fails
        self.error = error or ZeroDivisionError("division by zero")
        self.raised = 0
        self.calls = 0  # evaluations, failed or not (each pass over a batch calls again)

    def evaluate(self, event: Event, state: CustomerState, *args: Any, **kw: Any) -> Decisions:
        self.calls += 1
        if self.fails(event):
            state.rules.seen[f"half-made:{event.event_id}"] = 0.0
            state.timers.clear()
            self.raised += 1
            raise self.error
        return super().evaluate(event, state, *args, **kw)


def state_of(store: Store, customer: str = "cus_1") -> CustomerState:
    return msgspec.json.decode(store.load_state(customer) or b"", type=CustomerState)


def line(event: dict[str, Any]) -> bytes:
    return orjson.dumps(event)


def letters(store: Store) -> list[dict[str, Any]]:
    return [orjson.loads(v) for v in drain_records(store).get("dlq", [])]


def test_an_event_the_core_raises_on_is_dead_lettered_and_the_rest_of_the_batch_applied(
    book: RuleBook, store: Store
) -> None:
    core = FaultyCore(book, lambda e: e.event_id == "evt_bad")
    feed = Feed()
    bad_event = payment_failed("2026-10-01T10:00:00Z", "cus_1") | {"event_id": "evt_bad"}
    records = [
        feed.line(line(profile("2026-10-01T09:00:00Z", "cus_1"))),
        bad := feed.line(line(bad_event)),
        feed.line(line(payment_failed("2026-10-01T10:00:00Z", "cus_2"))),
        feed.line(line(profile("2026-10-01T11:00:00Z", "cus_1"))),
    ]
    result = make_processor(core, store).apply(records)
    assert (result.events, result.dead_letters, result.engine_failures) == (3, 1, 1)
    (letter,) = letters(store)
    assert (letter["topic"], letter["partition"], letter["offset"]) == (
        bad.topic, bad.partition, bad.offset,
    )  # fmt: skip
    assert orjson.loads(letter["raw"])["event_id"] == "evt_bad"
    assert letter["error"].startswith(
        "the engine failed on this event (evt_bad): ZeroDivisionError: division by zero at "
        "test_engine_failure.py:"
    )
    # skipped as if it had never come: no half-made change, no retries for cus_1
    state = state_of(store)
    assert "evt_bad" not in state.rules.seen
    assert not any(key.startswith("half-made") for key in state.rules.seen)
    assert state.timers == {}
    # the rest applied: cus_2's decline schedules its retries
    assert state_of(store, "cus_2").timers
    assert store.count("timers") == len(state_of(store, "cus_2").timers)
    assert {r.customer_id for r in store.outbox_rows()} <= {"cus_2"}
    tallies = Operator(store).tallies()
    assert tallies[("events", "engine_failure")] == 1
    assert tallies.get(("events", "dead_letter"), 0) == 0
    assert tallies[("events", "applied")] == 3
    # applied is applied: a redelivery neither retries the event nor dead-letters it again
    again = make_processor(core, store).apply(records)
    assert again.redelivered == 4 and core.raised == 1
    assert letters(store) == []


class AlertingCore(FaultyCore):
    """A ``FaultyCore`` whose evaluations of cus_2's events also ask an operator to look: a
    receipt with an alert, and a rule that raised."""

    def evaluate(self, event: Event, state: CustomerState, *args: Any, **kw: Any) -> Decisions:
        decisions = super().evaluate(event, state, *args, **kw)
        if event.customer_id == "cus_2":
            decisions.receipts.append(
                DeliveryRecord(
                    message_id="msg_1",
                    customer_id="cus_2",
                    channel="sms",
                    attempt=1,
                    status="failed",
                    at=event.occurred_at,
                    provider="dispatcher",
                    reaction="ALERT: the sms provider failed every attempt",
                    alert=True,
                )  # fmt: skip
            )
            decisions.errors.append(
                RuleRuntimeError(
                    rule_id="r1",
                    event_id=event.event_id,
                    customer_id="cus_2",
                    at=event.occurred_at,
                    error="KeyError: 'x'",
                )  # fmt: skip
            )
        return decisions


def test_alerts_and_rule_errors_are_logged_once_however_many_passes_the_batch_takes(
    book: RuleBook, store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    core = AlertingCore(book, lambda e: e.event_id == "evt_bad")
    feed = Feed()
    records = [
        feed.line(line(profile("2026-10-01T09:00:00Z", "cus_2") | {"event_id": "evt_2"})),
        feed.line(line(payment_failed("2026-10-01T10:00:00Z", "cus_1") | {"event_id": "evt_bad"})),
    ]
    with caplog.at_level(logging.WARNING, logger="outreach.streams"):
        result = make_processor(core, store).apply(records)
    assert (result.events, result.engine_failures, result.rule_errors) == (1, 1, 1)
    assert core.calls == 3  # cus_2's event in both passes: the first was rolled back
    lines = [r.getMessage() for r in caplog.records]
    assert [m for m in lines if m.startswith("ALERT for cus_2")] == [
        "ALERT for cus_2: ALERT: the sms provider failed every attempt"
    ]
    assert [m for m in lines if m.startswith("rule r1 raised")] == [
        "rule r1 raised on event evt_2: KeyError: 'x'"
    ]


def test_a_timer_the_core_raises_on_is_dropped_with_a_dead_letter_of_its_own(
    book: RuleBook, store: Store
) -> None:
    core = FaultyCore(book, lambda e: isinstance(e, TimerFired) and e.customer_id == "cus_1")
    feed = Feed()
    apply = make_processor(core, store).apply
    apply(declined(feed))
    retries = dict(state_of(store).timers)  # the payment retries and a message's
    assert len(retries) >= 3 and store.count("timers") == len(retries)
    drain_records(store)
    last = datetime.fromtimestamp(max(r.due for r in retries.values()), UTC)
    later = profile((last + timedelta(days=1)).isoformat(), "cus_1")
    result = apply([feed.line(line(later))])
    # every timer's firing raised: each dropped, in due order, with a dead letter naming it
    assert (result.events, result.timers_fired) == (1, 0)
    assert result.engine_failures == result.dead_letters == len(retries)
    dropped = letters(store)
    assert [orjson.loads(d["raw"])["event_id"] for d in dropped] == sorted(
        retries, key=lambda t: retries[t].due
    )
    for letter in dropped:
        assert (letter["topic"], letter["partition"], letter["offset"]) == ("timers", -1, -1)
        assert letter["error"].startswith("the engine failed on this timer (")
        assert "a dropped timer does not come back" in letter["error"]
    state = state_of(store)
    assert state.timers == {} and later["event_id"] in state.rules.seen
    assert not any(key.startswith("half-made") for key in state.rules.seen)
    assert store.count("timers") == 0, "the scheduler would deliver a dropped timer again"
    assert Operator(store).tallies()[("events", "engine_failure")] == len(retries)


def test_a_timer_record_the_core_raises_on_is_dead_lettered_and_its_timer_dropped(
    book: RuleBook, store: Store
) -> None:
    """The scheduler delivers a due timer as a record of the timers topic: a failure on it
    dead-letters that record, and the timer leaves the state and the timers table, or the
    scheduler would deliver it again every minute."""
    core = FaultyCore(book, lambda e: isinstance(e, TimerFired))
    feed = Feed()
    apply = make_processor(core, store).apply
    apply(declined(feed))
    drain_records(store)
    timer_id, ref = min(state_of(store).timers.items(), key=lambda item: item[1].due)
    fired = timer_event(timer_id, "cus_1", ref.due, "scheduler").model_dump_json().encode()
    record = feed.record("timers", b"cus_1", fired)
    result = apply([record])
    assert (result.dead_letters, result.engine_failures, result.timers_fired) == (1, 1, 0)
    (letter,) = letters(store)
    assert (letter["topic"], letter["offset"]) == ("timers", record.offset)
    assert letter["error"].startswith(f"the engine failed on this event ({timer_id}):")
    assert timer_id not in state_of(store).timers
    left = len(state_of(store).timers)
    assert left == store.count("timers") == 3


def test_a_database_error_inside_the_core_is_not_taken_for_a_bad_event(
    book: RuleBook, store: Store
) -> None:
    """The store's errors (an outage, a lock timeout) are the batch's to retry: the batch
    fails as a whole, nothing is dead-lettered and nothing is applied."""
    error = sa.exc.OperationalError("SELECT 1", {}, Exception("server closed the connection"))
    core = FaultyCore(book, lambda e: e.type == "payment.failed", error)
    feed = Feed()
    records = declined(feed)
    with pytest.raises(sa.exc.OperationalError):
        make_processor(core, store).apply(records)
    assert store.load_state("cus_1") is None
    assert drain_records(store) == {}


def test_live_and_replay_skip_the_same_failing_inputs_and_agree_on_everything_else(
    book: RuleBook, store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(days=40)
    lines = [raw.rstrip(b"\n") for raw in generate(80, 30, 3, start)]
    declines = [orjson.loads(raw) for raw in lines if b'"payment.failed"' in raw]
    assert len(declines) >= 4
    # one event of a customer, and the timers of another (its payment retries)
    bad_event, timers_of = declines[0]["event_id"], declines[-1]["customer_id"]

    def fails(event: Event) -> bool:
        if isinstance(event, TimerFired):
            return event.customer_id == timers_of
        return event.event_id == bad_event

    events = tmp_path / "events.jsonl"
    events.write_bytes(b"\n".join(lines) + b"\n")
    monkeypatch.setattr("outreach.replay.DecisionCore", lambda b: FaultyCore(b, fails))
    result = replay(events, book, tmp_path / "replay")
    feed = Feed()
    live = make_processor(FaultyCore(book, fails), store)
    run_to_quiescence(live, store, [feed.line(raw) for raw in lines], feed, 100)
    out = drain_records(store)
    for name in ("signals", "actions", "messages"):
        want = sorted_lines(log_lines(tmp_path / "replay", name))
        assert want, name
        assert sorted_lines(out[name]) == want, name
    skipped = [orjson.loads(raw) for raw in log_lines(tmp_path / "replay", "dlq")]
    live_skipped = [orjson.loads(raw) for raw in out["dlq"]]
    assert len(skipped) == len(live_skipped) == result.summary["events"]["engine_failures"] >= 2
    assert result.summary["events"]["invalid"] == 0
    assert sorted(d["error"] for d in skipped) == sorted(d["error"] for d in live_skipped)
    assert [d["line"] for d in skipped if d["line"]] == [
        1 + next(i for i, raw in enumerate(lines) if bad_event.encode() in raw)
    ]
    assert store.count("timers") == 0


def test_a_replay_restarted_after_a_failure_skips_exactly_the_failing_line(
    book: RuleBook, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The replay starts over with the failing line in the DLQ: every other line, the same
    customer's included, is decided as in a file without that line."""
    lines = [
        line(profile("2026-10-01T09:00:00Z", "cus_1")),
        line(make_event("usage.reported", "2026-10-01T09:30:00Z", "cus_1", event_id="evt_u",
                        metric="api_calls", value=1.0, period_start="2026-09-30T00:00:00Z",
                        period_end="2026-10-01T00:00:00Z")),
        line(payment_failed("2026-10-01T10:00:00Z", "cus_1")),
    ]  # fmt: skip
    events, without = tmp_path / "events.jsonl", tmp_path / "without.jsonl"
    events.write_bytes(b"\n".join(lines) + b"\n")
    without.write_bytes(b"\n".join(lines[:1] + lines[2:]) + b"\n")
    replay(without, book, tmp_path / "clean")
    monkeypatch.setattr(
        "outreach.replay.DecisionCore", lambda b: FaultyCore(b, lambda e: e.event_id == "evt_u")
    )
    result = replay(events, book, tmp_path / "faulty")
    (letter,) = [orjson.loads(raw) for raw in log_lines(tmp_path / "faulty", "dlq")]
    assert letter["line"] == 2 and letter["error"].startswith(
        "the engine failed on this event (evt_u): ZeroDivisionError"
    )
    assert result.summary["events"]["engine_failures"] == 1
    for name in ("signals", "actions", "messages"):
        assert log_lines(tmp_path / "faulty", name) == log_lines(tmp_path / "clean", name), name


def test_decisions_that_cannot_be_written_skip_their_event_live_and_in_replay(
    book: RuleBook, store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Encoding what was decided is part of the evaluation: before the contract bounded
    amounts, a 2**64 amount passed the core and failed the JSON encoding of its records, which
    failed the batch (live) or stopped the run (replay)."""
    import outreach.streams.evaluation as evaluation_module
    from outreach.decisionlog import DecisionLog

    def unwritable(decisions: Decisions) -> bool:
        return any(s.customer_id == "cus_1" for s in decisions.signals)

    encode, write = evaluation_module.record_value, DecisionLog.write

    def failing_encode(record: Any) -> bytes:
        if getattr(record, "customer_id", None) == "cus_1" and hasattr(record, "signal_id"):
            raise TypeError("Integer exceeds 64-bit range")
        return encode(record)

    def failing_write(self: DecisionLog, decisions: Decisions) -> None:
        if unwritable(decisions):
            raise TypeError("Integer exceeds 64-bit range")
        write(self, decisions)

    monkeypatch.setattr(evaluation_module, "record_value", failing_encode)
    monkeypatch.setattr(DecisionLog, "write", failing_write)
    lines = [
        line(profile("2026-10-01T09:00:00Z", "cus_1")),
        line(payment_failed("2026-10-01T10:00:00Z", "cus_1") | {"event_id": "evt_decline"}),
        line(profile("2026-10-01T09:00:00Z", "cus_2")),
        line(payment_failed("2026-10-01T10:00:00Z", "cus_2")),
    ]
    events = tmp_path / "events.jsonl"
    events.write_bytes(b"\n".join(lines) + b"\n")
    result = replay(events, book, tmp_path / "replay")
    feed = Feed()
    core = DecisionCore(book)
    run_to_quiescence(make_processor(core, store), store, [feed.line(raw) for raw in lines], feed)
    out = drain_records(store)
    (letter,) = [orjson.loads(v) for v in out["dlq"]]
    (skipped,) = [orjson.loads(raw) for raw in log_lines(tmp_path / "replay", "dlq")]
    assert letter["error"].split(" at ")[0] == skipped["error"].split(" at ")[0]
    assert letter["error"].startswith(
        "the engine failed on this event (evt_decline): TypeError: Integer exceeds 64-bit range"
    )
    assert skipped["line"] == 2 and result.summary["events"]["engine_failures"] == 1
    for name in ("signals", "actions", "messages"):
        want = sorted_lines(log_lines(tmp_path / "replay", name))
        assert want and sorted_lines(out[name]) == want, name
        assert b"cus_1" not in b"".join(want)


# -- the cost of failures: passes grow with one customer's failures, not with their total ------


def updates(plan: dict[str, str]) -> list[dict[str, Any]]:
    """Profile updates an hour apart per customer, ``plan`` saying for each customer which
    of its events fail ("x", with event id ``evt_bad_<customer>_<n>``) and which do not
    ("."); customers interleaved in arrival order."""
    events = []
    for hour in range(max(len(p) for p in plan.values())):
        for customer, marks in plan.items():
            if hour < len(marks):
                kind = "bad" if marks[hour] == "x" else "ok"
                at = f"2026-10-01T{9 + hour:02d}:00:00Z"
                events.append(profile(at, customer) | {"event_id": f"evt_{kind}_{customer}_{hour}"})
    return events


def failing(event: Event) -> bool:
    return event.event_id.startswith("evt_bad_")


def applied_without_failures(
    book: RuleBook, store: Store, tmp_path: Path, events: list[dict[str, Any]]
) -> tuple[list[dict[str, Any]], FaultyCore]:
    """Apply ``events`` in one batch with a core failing on the bad ones, and check the
    outcome is that of a batch without them; the dead letters and the core."""
    core = FaultyCore(book, failing)
    feed = Feed()
    result = make_processor(core, store).apply([feed.line(line(e)) for e in events])
    good = [e for e in events if not e["event_id"].startswith("evt_bad_")]
    assert (result.events, result.engine_failures) == (len(good), len(events) - len(good))
    clean = Store(f"sqlite:///{tmp_path}/clean.db")
    clean.migrate()
    try:
        again = Feed()
        make_processor(DecisionCore(book), clean).apply([again.line(line(e)) for e in good])
        for customer in {e["customer_id"] for e in events}:
            assert store.load_state(customer) == clean.load_state(customer), customer
    finally:
        clean.close()
    return letters(store), core


def test_failures_of_many_customers_cost_one_more_pass_not_one_each(
    book: RuleBook, store: Store, tmp_path: Path
) -> None:
    """Each failure used to cost a pass over the whole batch, and each pass asks the core (an
    LLM planner, maybe) again: a 10,000-record batch with 5% failing took minutes. One pass
    now finds the failures of every customer, and one more applies the batch without them."""
    plan = {f"cus_{n}": ".x." for n in range(12)}
    dead, core = applied_without_failures(book, store, tmp_path, updates(plan))
    assert sorted(orjson.loads(d["raw"])["event_id"] for d in dead) == sorted(
        f"evt_bad_{customer}_1" for customer in plan
    )
    # first pass: each customer's first event and its failing one (the last waits: the
    # customer's state is suspect); second: the first and the last
    assert core.calls == 2 * 12 + 2 * 12


def test_a_customer_failing_twice_costs_a_pass_per_failure_of_its_own(
    book: RuleBook, store: Store, tmp_path: Path
) -> None:
    """The second failure of a customer is met only once its first is skipped (its events
    after a failure are not evaluated in that pass), so it takes one more pass; the failures
    of the other customers do not add any."""
    plan = {"cus_1": ".x.x."} | {f"cus_{n}": ".x." for n in range(2, 5)}
    dead, core = applied_without_failures(book, store, tmp_path, updates(plan))
    assert sorted(orjson.loads(d["raw"])["event_id"] for d in dead) == sorted(
        ["evt_bad_cus_1_1", "evt_bad_cus_1_3"] + [f"evt_bad_cus_{n}_1" for n in range(2, 5)]
    )
    # cus_1 evaluates 2, 3 and 3 events in its three passes; the others 2 in each
    assert core.calls == (2 + 3 + 3) + 3 * (2 + 2 + 2)


def test_timers_failing_for_many_customers_cost_one_more_pass(book: RuleBook, store: Store) -> None:
    """A timer fired by the batch's clock that fails taints its customer as an event does."""
    customers = [f"cus_{n}" for n in range(8)]
    feed = Feed()
    setup = [record for customer in customers for record in declined(feed, customer)]
    make_processor(DecisionCore(book), store).apply(setup)
    drain_records(store)
    first = {  # each customer's first timer to fire fails
        min(state.timers, key=lambda t: state.timers[t].due)
        for state in (state_of(store, c) for c in customers)
    }
    last = max(r.due for c in customers for r in state_of(store, c).timers.values())
    after = datetime.fromtimestamp(last, UTC) + timedelta(days=1)
    batch = [feed.line(line(profile(after.isoformat(), c))) for c in customers]
    core = FaultyCore(book, lambda e: isinstance(e, TimerFired) and e.event_id in first)
    result = make_processor(core, store).apply(batch)
    assert (result.events, result.engine_failures) == (len(customers), len(first))
    assert sorted(orjson.loads(d["raw"])["event_id"] for d in letters(store)) == sorted(first)
    # first pass: one evaluation per customer (its failing timer); second: the rest
    second = result.events + result.timers_fired
    assert core.calls == len(customers) + second
    for customer in customers:
        assert not first & set(state_of(store, customer).timers)


def test_a_database_error_after_an_engine_failure_still_fails_the_batch(
    book: RuleBook, store: Store
) -> None:
    """Going on after a failure must not turn the store's errors into dead letters: the
    batch fails as a whole, and nothing of it is applied."""
    error = sa.exc.OperationalError("SELECT 1", {}, Exception("server closed the connection"))

    class Core(FaultyCore):
        def evaluate(self, event: Event, *args: Any, **kw: Any) -> Decisions:
            if event.event_id == "evt_ok_cus_2_2":  # after cus_1's failure
                raise error
            return super().evaluate(event, *args, **kw)

    core = Core(book, failing)
    feed = Feed()
    events = updates({"cus_1": ".x.", "cus_2": "..."})
    with pytest.raises(sa.exc.OperationalError):
        make_processor(core, store).apply([feed.line(line(e)) for e in events])
    assert core.raised == 1
    assert store.load_state("cus_1") is None
    assert drain_records(store) == {}


def replayed(
    book: RuleBook, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, events: list[dict[str, Any]]
) -> tuple[list[dict[str, Any]], list[FaultyCore]]:
    """Replay ``events`` with a core failing on the bad ones and check the decision log is
    that of a file without them; the ``dlq.jsonl`` entries and the cores, one per pass."""
    good = [e for e in events if not e["event_id"].startswith("evt_bad_")]
    files = tmp_path / "events.jsonl", tmp_path / "good.jsonl"
    files[0].write_bytes(b"\n".join(map(line, events)) + b"\n")
    files[1].write_bytes(b"\n".join(map(line, good)) + b"\n")
    replay(files[1], book, tmp_path / "clean")
    cores: list[FaultyCore] = []

    def core(b: RuleBook) -> FaultyCore:
        cores.append(FaultyCore(b, failing))
        return cores[-1]

    monkeypatch.setattr("outreach.replay.DecisionCore", core)
    result = replay(files[0], book, tmp_path / "faulty")
    assert result.summary["events"]["engine_failures"] == len(events) - len(good)
    for name in ("signals", "actions", "messages"):
        assert log_lines(tmp_path / "faulty", name) == log_lines(tmp_path / "clean", name)
    return [orjson.loads(raw) for raw in log_lines(tmp_path / "faulty", "dlq")], cores


def test_a_replay_finds_the_failures_of_many_customers_in_one_pass(
    book: RuleBook, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Replay used to start the file over once per failure."""
    plan = {f"cus_{n}": ".x." for n in range(12)}
    events = updates(plan)
    dead, cores = replayed(book, tmp_path, monkeypatch, events)
    assert [d["line"] for d in dead] == [
        n for n, e in enumerate(events, start=1) if e["event_id"].startswith("evt_bad_")
    ]
    assert len(cores) == 2
    assert [c.calls for c in cores] == [2 * 12, 2 * 12]


def test_a_replay_takes_a_pass_per_failure_of_one_customer(
    book: RuleBook, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    plan = {"cus_1": ".x.x."} | {f"cus_{n}": ".x." for n in range(2, 5)}
    events = updates(plan)
    dead, cores = replayed(book, tmp_path, monkeypatch, events)
    assert [orjson.loads(d["raw"])["event_id"] for d in dead] == [
        e["event_id"] for e in events if e["event_id"].startswith("evt_bad_")
    ]
    assert [c.calls for c in cores] == [2 + 3 * 2, 3 + 3 * 2, 3 + 3 * 2]


def test_a_replay_performs_no_effect_after_a_failure_in_a_pass_it_replays(
    book: RuleBook, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pass with a failure goes on to find the other customers' failures, but what it
    decides after the first one may differ from the next pass (shared budgets), so it hands
    no effect to the connector from then on: each effect is performed by one pass only."""
    lines = [
        line(profile("2026-03-02T09:00:00Z", "cus_1")),
        line(profile("2026-03-02T09:00:00Z", "cus_2")),
        line(profile("2026-03-02T10:00:00Z", "cus_1") | {"event_id": "evt_bad"}),
        line(shipment_exception("2026-03-02T11:00:00Z", "cus_2")),
    ]
    events = tmp_path / "events.jsonl"
    events.write_bytes(b"\n".join(lines) + b"\n")
    monkeypatch.setattr(
        "outreach.replay.DecisionCore", lambda b: FaultyCore(b, lambda e: e.event_id == "evt_bad")
    )
    connector = FakeConnector()
    result = replay(events, book, tmp_path / "replay", connector=connector)
    assert result.summary["events"]["engine_failures"] == 1
    assert connector.performed, "the shipment exception's remediations"
    assert sorted(c.idempotency_key for c in connector.calls) == sorted(connector.performed)
