"""The batch processor against a real database (SQLite and PostgreSQL), without a broker:
parity with replay, redelivery, dead letters, concurrent workers on one customer."""

from __future__ import annotations

import base64
import threading
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import msgspec
import orjson
import pytest
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

from outreach.agents.composing import TemplateComposer
from outreach.core import DecisionCore
from outreach.replay import replay
from outreach.rulebook import RuleBook, load_rulebook
from outreach.sample import generate
from outreach.state import CustomerState
from outreach.store import Batch, Stamp, Store
from outreach.store.operator import Operator
from outreach.streams.codec import DLQ_MAX_BYTES, DLQ_RAW_LIMIT, Record, dead_letter_value
from outreach.streams.processor import StateCache


def line(event: dict) -> bytes:
    return orjson.dumps(event)


def usage(at: str, event_id: str, customer: str = "cus_1", value: float = 1.0) -> dict:
    """An ``api_calls`` usage report of one day."""
    return make_event(
        "usage.reported", at, customer, event_id=event_id, metric="api_calls", value=value,
        period_start="2026-09-30T00:00:00Z", period_end="2026-10-01T00:00:00Z",
    )  # fmt: skip


def test_live_decisions_equal_replay_of_the_same_file(
    book: RuleBook, store: Store, tmp_path: Path
) -> None:
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(days=60)
    lines = [raw.rstrip(b"\n") for raw in generate(150, 20, 11, start)]
    events = tmp_path / "events.jsonl"
    events.write_bytes(b"\n".join(lines) + b"\n")
    summary = replay(events, book, tmp_path / "replay").summary
    feed = Feed()
    records = [feed.line(raw) for raw in lines]
    fired = run_to_quiescence(make_processor(book, store), store, records, feed, 300)
    out = drain_records(store)
    for name in ("signals", "actions", "messages"):
        want = sorted_lines(log_lines(tmp_path / "replay", name))
        assert want, name
        assert sorted_lines(out[name]) == want, name
    assert store.count("timers") == 0
    # the same count: neither fires a timer cancelled before its time (the sample cancels some)
    assert summary["events"]["timers_fired"] == fired > 0


def test_a_redelivered_batch_is_not_applied_twice(book: RuleBook, store: Store) -> None:
    feed = Feed()
    records = declined(feed)
    proc = make_processor(book, store)
    first = proc.apply(records)
    state_after_first = store.load_state("cus_1")
    outbox_after_first = store.outbox_rows()
    records_after_first = drain_records(store)
    second = proc.apply(records)
    assert first.events == 2 and first.redelivered == 0
    assert second.redelivered == 2 and second.events == 0
    assert store.load_state("cus_1") == state_after_first
    assert store.outbox_rows() == outbox_after_first
    assert drain_records(store) == {}
    assert records_after_first["signals"]


HOSTILE = {
    "not json": b"{not json",
    "not utf-8": b'{"event_id": "\xff\xfe"}',
    "wrong schema": orjson.dumps(
        make_event("shipment.updated", "2026-10-01T10:00:00Z", "cus_9", x=1)
    ),
    "oversized": b" " * 70_000,
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_invalid_records_go_to_the_dlq_with_raw_bytes_error_and_position(
    book: RuleBook, store: Store, case: str
) -> None:
    feed = Feed()
    good = feed.line(line(profile("2026-10-01T09:00:00Z", "cus_9")))
    bad = feed.record("shipments", b"cus_9", HOSTILE[case], partition=good.partition)
    result = make_processor(book, store).apply([bad, good])
    assert result.dead_letters == 1 and result.events == 1
    (letter,) = [orjson.loads(v) for v in drain_records(store)["dlq"]]
    assert base64.b64decode(letter["raw_base64"]) == HOSTILE[case]
    assert (letter["topic"], letter["partition"], letter["offset"]) == (
        "shipments",
        bad.partition,
        0,
    )
    assert letter["error"]
    assert store.load_state("cus_9") is not None


def test_key_must_equal_customer_id_and_timers_come_only_from_the_timers_topic(
    book: RuleBook, store: Store
) -> None:
    feed = Feed()
    event = line(profile("2026-10-01T09:00:00Z", "cus_1"))
    timer = line(make_event("timer.fired", "2026-10-01T10:00:00Z", "cus_1",
                            timer_id="tmr_x", due_at="2026-10-01T10:00:00Z"))  # fmt: skip
    records = [
        feed.record("customers", b"cus_2", event),
        feed.record("customers", None, event),
        feed.record("customers", b"cus_1", timer),
    ]
    result = make_processor(book, store).apply(records)
    errors = [orjson.loads(v)["error"] for v in drain_records(store)["dlq"]]
    assert result.dead_letters == 3
    assert "does not equal customer_id 'cus_1'" in errors[0]
    assert "key is missing" in errors[1]
    assert "timer.fired" in errors[2]


def test_one_customer_on_two_partitions_applied_by_two_workers_at_once(
    book: RuleBook, store: Store, database_url: str
) -> None:
    """Producers that do not partition by murmur2 split a customer; the store serialises."""
    feed = Feed()
    per_worker = 40
    batches = [
        [
            feed.record("usage", b"cus_1", line(
                usage(f"2026-10-01T{w:02d}:{i:02d}:00Z", f"evt_{w}_{i}", value=float(i))
            ), partition=w)
            for i in range(per_worker)
        ]
        for w in range(2)
    ]  # fmt: skip
    second = Store(database_url)
    workers = [make_processor(book, store), make_processor(book, second)]
    barrier = threading.Barrier(2)
    failures: list[BaseException] = []

    def work(index: int) -> None:
        try:
            barrier.wait()
            for record in batches[index]:  # many small transactions, to interleave
                workers[index].apply([record])
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            failures.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    second.close()
    assert not failures
    state = msgspec.json.decode(store.load_state("cus_1") or b"", type=CustomerState)
    assert len(state.rules.seen) == 2 * per_worker


def test_records_applied_in_event_time_order_within_a_batch(book: RuleBook, store: Store) -> None:
    """A profile that arrives after a payment failure in the same batch but happened before
    it is applied first (the message can then be addressed)."""
    feed = Feed()
    failed = payment_failed("2026-10-01T10:00:00Z", "cus_1")
    records = [feed.line(line(failed)), feed.line(line(profile("2026-10-01T09:00:00Z", "cus_1")))]
    make_processor(book, store).apply(records)
    messages = [orjson.loads(v) for v in drain_records(store)["messages"]]
    assert messages and all(m["to"] for m in messages)


def test_a_customers_timers_fire_only_before_its_own_events(book: RuleBook, store: Store) -> None:
    """Another customer's later event does not fire a customer's timers: a batch can run
    ahead of the partition that still holds this customer's next event (a backlog after a
    broker outage), and replay would run that event first. The timers fire before the
    customer's own next event, in due order, at their due times."""
    feed = Feed()
    apply = make_processor(book, store).apply
    apply(declined(feed))

    def pending() -> dict[str, float]:
        state = msgspec.json.decode(store.load_state("cus_1") or b"", type=CustomerState)
        return {timer_id: ref.due for timer_id, ref in state.timers.items()}

    retries = pending()
    assert retries, "a soft decline schedules retries"
    last = datetime.fromtimestamp(max(retries.values()), UTC)
    apply([
        feed.line(line(profile("2026-10-01T11:00:00Z", "cus_1"))),
        feed.line(line(profile((last + timedelta(days=1)).isoformat(), "cus_2"))),
    ])  # fmt: skip
    assert pending() == retries, "cus_2's event fired cus_1's timers"
    assert store.count("timers") == len(retries)
    apply([feed.line(line(profile((last + timedelta(hours=1)).isoformat(), "cus_1")))])
    assert pending() == {}
    actions = [orjson.loads(v) for v in drain_records(store)["actions"]]
    retried = [a for a in actions if a["type"] == "retry_payment" and a["status"] == "executed"]
    at = [datetime.fromisoformat(a["at"]).timestamp() for a in retried]
    assert len(at) == 3 and at == sorted(at) and set(at) <= set(retries.values())


def test_decision_latency_is_tallied_once_per_applied_record(book: RuleBook, store: Store) -> None:
    """Apply time minus Kafka timestamp, in non-cumulative buckets (``le``: at most the bound),
    with the count and the sum in ms; redeliveries, records without a timestamp and timer
    records are not measured."""
    now = 1_700_000_000.0
    proc = make_processor(book, store, clock=lambda: now)
    feed = Feed()
    timer = make_event("timer.fired", "2026-10-01T11:00:00Z", "cus_1",
                       timer_id="tmr_x", due_at="2026-10-01T11:00:00Z")  # fmt: skip
    waited = [
        (feed.line(line(profile("2026-10-01T09:00:00Z", "cus_1"))), now - 0.003),  # 0.005
        (feed.line(line(payment_failed("2026-10-01T10:00:00Z", "cus_1"))), now - 0.25),  # 0.25
        (feed.line(line(profile("2026-10-01T09:00:00Z", "cus_2"))), now - 0.7),  # 1
        (feed.record("customers", b"cus_3", b"{not json"), now - 400),  # a dead letter: +Inf
        (feed.line(line(profile("2026-10-01T09:00:00Z", "cus_4"))), now + 5),  # skew: 0
        (feed.line(line(profile("2026-10-01T09:00:00Z", "cus_5"))), None),
        (feed.line(line(profile("2026-10-01T09:00:00Z", "cus_6"))), -0.001),  # Kafka's -1 ms
        (feed.record("timers", b"cus_1", line(timer)), now - 30),
    ]
    records = [replace(record, timestamp=stamp) for record, stamp in waited]
    first = proc.apply(records)
    assert first.events == 7 and first.dead_letters == 1
    want = {
        ("latency", "0.005"): 2,
        ("latency", "0.25"): 1,
        ("latency", "1"): 1,
        ("latency", "+Inf"): 1,
        ("latency", "count"): 5,
        ("latency_ms", "sum"): 400_953,  # 3 + 0 + 250 + 700 + 400,000
    }

    def measured() -> dict[tuple[str, str], int]:
        return {k: v for k, v in Operator(store).tallies().items() if k[0].startswith("latency")}

    assert measured() == want
    now += 60  # a redelivery later counts nothing; a new record is measured by the new time
    late = replace(feed.line(line(profile("2026-10-01T12:00:00Z", "cus_7"))), timestamp=now - 2)
    second = proc.apply([*records, late])
    assert second.redelivered == len(records) and second.events == 1
    want["latency", "2.5"] = 1
    want["latency", "count"] += 1
    want["latency_ms", "sum"] += 2000
    assert measured() == want


@pytest.mark.parametrize("value", [b"\x00" * 300_000, b"\xff" * 900_000, b"x" * 2_000_000])
def test_a_dead_letter_always_fits_a_kafka_message(value: bytes) -> None:
    """300 KB of NUL is valid UTF-8 that JSON escapes six times over; the relay could never
    produce a 1.9 MB dead letter and would stop on it."""
    record = Record("usage", 0, 7, b"k" * 5000, value)
    letter = dead_letter_value(record, "oversized")
    assert len(letter) <= DLQ_MAX_BYTES
    body = orjson.loads(letter)
    assert body["size"] == len(value) and body["truncated"] == (len(value) > DLQ_RAW_LIMIT)
    assert base64.b64decode(body["raw_base64"]) == value[:DLQ_RAW_LIMIT]


def seen(store: Store, customer: str = "cus_1") -> set[str]:
    state = msgspec.json.decode(store.load_state(customer) or b"", type=CustomerState)
    return set(state.rules.seen)


def test_a_kept_state_is_used_while_its_row_is_unchanged_and_read_again_once_it_is_not(
    book: RuleBook, store: Store, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The state cache: a worker's next batch for a customer does not decode the row it
    saved itself; a row another worker (another process: another Store) wrote since is read
    again, so neither worker's events are lost."""
    feed = Feed()
    mine = make_processor(book, store)
    other_store = Store(database_url)
    other = make_processor(book, other_store)
    decoded: list[bytes] = []
    decode = mine._decode_state
    monkeypatch.setattr(mine, "_decode_state", lambda raw: decoded.append(raw) or decode(raw))
    try:
        mine.apply([feed.line(line(usage("2026-10-01T01:00:00Z", "evt_1")))])
        mine.apply([feed.line(line(usage("2026-10-01T02:00:00Z", "evt_2")))])
        assert decoded == [], "the state this worker saved was decoded again"
        assert len(mine.states) == 1
        other.apply([feed.line(line(usage("2026-10-01T03:00:00Z", "evt_3")))])
        mine.apply([feed.line(line(usage("2026-10-01T04:00:00Z", "evt_4")))])
    finally:
        other_store.close()
    assert len(decoded) == 1, "the row the other worker wrote was not read again"
    assert seen(store) == {"evt_1", "evt_2", "evt_3", "evt_4"}


def test_a_batch_that_fails_leaves_no_half_evaluated_state_behind(
    book: RuleBook, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The core changes a state in place while it evaluates: if the batch then fails (here its
    last write), the worker must not keep that state, or the batch's events would pass for
    duplicates when it is applied again."""
    feed = Feed()
    proc = make_processor(book, store)
    proc.apply([feed.line(line(profile("2026-10-01T09:00:00Z", "cus_1")))])
    again = [feed.line(line(payment_failed("2026-10-01T10:00:00Z", "cus_1")))]
    real = Batch.set_positions

    def broken(self: Batch, group: str, positions: dict[tuple[str, int], int]) -> None:
        raise RuntimeError("the database went away mid-batch")

    monkeypatch.setattr(Batch, "set_positions", broken)
    with pytest.raises(RuntimeError):
        proc.apply(again)
    monkeypatch.setattr(Batch, "set_positions", real)
    result = proc.apply(again)
    assert (result.events, result.duplicates) == (1, 0)
    actions = [orjson.loads(v) for v in drain_records(store)["actions"]]
    retries = [a["action_id"] for a in actions if a["type"] == "retry_payment"]
    assert retries and len(set(retries)) == len(retries)


def test_the_state_cache_keeps_the_most_recently_used_up_to_its_capacity() -> None:
    cache = StateCache(2)
    stamp = Stamp(1, 0.0)
    for name in ("a", "b", "c"):
        cache.put({name: (stamp, CustomerState(customer_id=name))})
    assert set(cache.take(["a", "b", "c"])) == {"b", "c"}
    assert len(cache) == 0, "taking removes"
    cache.put({"b": (stamp, CustomerState(customer_id="b"))})
    cache.put({"c": (stamp, CustomerState(customer_id="c"))})
    cache.put({"b": (stamp, CustomerState(customer_id="b"))})  # used again: now the newest
    cache.put({"d": (stamp, CustomerState(customer_id="d"))})
    assert set(cache.take(["b", "c", "d"])) == {"b", "d"}
    none = StateCache(0)
    none.put({"a": (stamp, CustomerState(customer_id="a"))})
    assert len(none) == 0


def test_a_rules_reload_keeps_the_composer_the_worker_was_started_with(
    rules_copy: Path, store: Store
) -> None:
    """``POST /v1/rules/reload`` makes each worker build its core again from the folder, with
    the planner and composer it runs (the model's, when an LLM is configured): before, the
    composer was dropped, and every message after a reload quietly lost its wording."""
    book = load_rulebook(rules_copy)
    composer = TemplateComposer()  # a real composer: the message record then says which
    proc = make_processor(DecisionCore(book, None, composer), store)
    feed = Feed()
    proc.apply([feed.line(line(profile("2026-03-01T09:00:00Z", "cus_1")))])
    path = rules_copy / "shipment-delay.yaml"
    path.write_text(path.read_text().replace("credit: {standard: 500", "credit: {standard: 400"))
    Operator(store).request_rules_reload(load_rulebook(rules_copy).fingerprint)
    proc.apply([feed.line(line(shipment_exception("2026-03-02T18:00:00Z", "cus_1")))])
    assert proc.core.book.fingerprint != book.fingerprint, "the rules were not reloaded"
    records = drain_records(store)
    credit = next(a for a in map(orjson.loads, records["actions"]) if a["type"] == "grant_credit")
    assert credit["params"]["amount"] == 400
    [message] = [orjson.loads(m) for m in records["messages"]]
    assert message["composer"] is not None and message["composer"]["source"] == "template"
    assert proc.core.composer is composer


def test_a_reload_asked_for_while_the_worker_started_is_not_missed(
    rules_copy: Path, store: Store
) -> None:
    """The worker reads its rules, then starts the broker, the topics and the store: a reload
    asked for in between must still be applied at its first batch."""
    read_at = time.time()
    book = load_rulebook(rules_copy)
    path = rules_copy / "shipment-delay.yaml"
    path.write_text(path.read_text().replace("credit: {standard: 500", "credit: {standard: 400"))
    Operator(store).request_rules_reload(load_rulebook(rules_copy).fingerprint)
    proc = make_processor(book, store, loaded_at=read_at)  # built after the request
    proc.apply([Feed().line(line(profile("2026-03-01T09:00:00Z", "cus_1")))])
    assert proc.core.book.fingerprint != book.fingerprint
