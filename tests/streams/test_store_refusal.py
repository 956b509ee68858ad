"""A write the store refuses (a value the schema does not take but the contract does, a
constraint): the batch is applied in halves down to the record whose writes are refused,
which is dead-lettered; before, the batch failed on every worker that took its partition.

The refusal is real: the database's own NOT NULL check, on rows a patched ``Batch.add_audit``
writes without their time for chosen records (no value of the contract reaches the columns
it does not fit as yet, on both databases)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import msgspec
import orjson
import pytest
import sqlalchemy as sa
from livesupport import Feed, drain_records, make_processor
from support import payment_failed, profile

from outreach.rulebook import RuleBook
from outreach.state import CustomerState
from outreach.store import AuditRow, Batch, Store
from outreach.store.operator import Operator
from outreach.streams.processor import timer_event


def refuse(
    monkeypatch: pytest.MonkeyPatch, refused: Callable[[AuditRow], bool] | None
) -> list[int]:
    """Make the store refuse the audit rows ``refused`` picks, every audit write if None;
    the sizes of the audit writes tried, in order."""
    add, tried = Batch.add_audit, []

    def add_audit(self: Batch, rows: Sequence[AuditRow]) -> None:
        tried.append(len(rows))
        if refused is None:
            rows = [*rows, AuditRow("cus_0", None, "event", "x", None, b"{}")]  # type: ignore[arg-type]
        add(self, [r._replace(at=None) if refused and refused(r) else r for r in rows])

    monkeypatch.setattr(Batch, "add_audit", add_audit)
    return tried


def state_of(store: Store, customer: str = "cus_1") -> CustomerState:
    return msgspec.json.decode(store.load_state(customer) or b"", type=CustomerState)


def line(event: dict[str, Any]) -> bytes:
    return orjson.dumps(event)


def updates(customers: int, hours: int) -> list[dict[str, Any]]:
    return [
        profile(f"2026-10-01T{9 + hour:02d}:00:00Z", f"cus_{n}") | {"event_id": f"evt_{n}_{hour}"}
        for hour in range(hours)
        for n in range(customers)
    ]


def test_an_event_whose_writes_the_store_refuses_is_dead_lettered_and_the_rest_applied(
    book: RuleBook, store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    events = updates(4, 4)
    feed = Feed()
    records = [feed.line(line(e)) for e in events]
    tried = refuse(monkeypatch, lambda row: row.ref == "evt_2_1")
    result = make_processor(book, store).apply(records)
    assert (result.records, result.events, result.dead_letters) == (16, 15, 1)
    assert result.engine_failures == 1  # counted and alerted on as one
    assert len(tried) <= 2 + 2 * 4, "in halves: about 2 log2(16) tries, not one per record"
    (letter,) = [orjson.loads(v) for v in drain_records(store)["dlq"]]
    (bad,) = [r for r in records if b'"evt_2_1"' in r.value]
    assert (letter["topic"], letter["partition"], letter["offset"]) == (
        bad.topic, bad.partition, bad.offset,
    )  # fmt: skip
    assert letter["error"].startswith("the store refused what this event (evt_2_1) produced: ")
    assert "It was skipped" in letter["error"] and "publish the event again" in letter["error"]
    # as if it had never come: the states are those of the batch without it
    clean = Store(f"sqlite:///{tmp_path}/clean.db")
    clean.migrate()
    try:
        again = Feed()
        good = [again.line(line(e)) for e in events if e["event_id"] != "evt_2_1"]
        assert len(good) == 15
        make_processor(book, clean).apply(good)
        for n in range(4):
            assert store.load_state(f"cus_{n}") == clean.load_state(f"cus_{n}")
    finally:
        clean.close()
    assert Operator(store).tallies()[("events", "engine_failure")] == 1
    # applied is applied: a redelivery skips every record, the refused one included
    assert make_processor(book, store).apply(records).redelivered == 16
    assert drain_records(store) == {}


def test_a_store_refusing_every_batch_fails_it_whole(
    book: RuleBook, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not one record's doing: even its dead letter cannot be written, so nothing is skipped
    and nothing applied (the worker stops, as before)."""
    tried = refuse(monkeypatch, None)
    feed = Feed()
    with pytest.raises(sa.exc.IntegrityError):
        make_processor(book, store).apply([feed.line(line(e)) for e in updates(2, 4)])
    assert tried == [8, 4, 2, 1, 0]  # the batch, halves down to its first record, its letter
    assert all(store.load_state(f"cus_{n}") is None for n in range(2))
    assert drain_records(store) == {}


def test_a_refused_timer_record_is_dead_lettered_and_its_timer_dropped(
    book: RuleBook, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Or the scheduler would deliver it again, and the store refuse it again, for ever."""
    feed = Feed()
    apply = make_processor(book, store).apply
    apply([
        feed.line(line(profile("2026-10-01T09:00:00Z", "cus_1"))),
        feed.line(line(payment_failed("2026-10-01T10:00:00Z", "cus_1"))),
    ])  # fmt: skip
    drain_records(store)
    timers = state_of(store).timers
    timer_id, ref = min(timers.items(), key=lambda item: item[1].due)
    fired = timer_event(timer_id, "cus_1", ref.due, "scheduler")
    record = feed.record("timers", b"cus_1", fired.model_dump_json().encode())
    tried = refuse(monkeypatch, lambda row: row.customer_id == "cus_1")
    result = apply([record])
    assert tried[0], "the timer's firing writes to the trail"
    assert (result.dead_letters, result.engine_failures, result.timers_fired) == (1, 1, 0)
    (letter,) = [orjson.loads(v) for v in drain_records(store)["dlq"]]
    assert (letter["topic"], letter["offset"]) == ("timers", record.offset)
    assert letter["error"].startswith(f"the store refused what this event ({timer_id}) ")
    left = state_of(store).timers
    assert timer_id not in left and store.count("timers") == len(left) == len(timers) - 1
