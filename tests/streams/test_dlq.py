"""``outreach dlq list`` and ``outreach dlq republish`` against the session's broker: dead
letters made by ``dead_letter_value`` from real records, read back, filtered, and published
again to their source topics (or refused, with the reason); and a live worker applying, once,
an event it had dead-lettered while its core was broken."""

from __future__ import annotations

import asyncio
import base64
import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
import orjson
import pytest
from aiokafka import AIOKafkaProducer, TopicPartition
from click.testing import Result
from livesupport import REPO, wait_for
from support import payment_failed, profile
from typer.testing import CliRunner

from outreach.cli import app
from outreach.core import DecisionCore
from outreach.errors import EngineFailure
from outreach.events import Event
from outreach.state import CustomerState
from outreach.streams.codec import DEFAULT_MAX_EVENT_BYTES, DeadLetter, Record, dead_letter_value
from outreach.streams.codec import decode as decode_record
from outreach.streams.dlq import StoredLetter, TopicReader, plan_republish
from outreach.streams.processor import timer_event
from outreach.streams.publish import EventPublisher
from outreach.streams.topics import Topics

pytestmark = pytest.mark.timeout(60)

OLD = int(datetime(2026, 1, 1, tzinfo=UTC).timestamp() * 1000)  # a Kafka timestamp, ms
NEW = int(datetime(2026, 9, 1, tzinfo=UTC).timestamp() * 1000)
SINCE = "2026-06-01T00:00:00Z"  # between OLD and NEW


def error_of(record: Record, topics: Topics) -> str:
    """What the engine's decoder says of ``record`` (it must be a dead letter)."""
    letter = decode_record(record, max_bytes=DEFAULT_MAX_EVENT_BYTES, timers_topic=topics.timers)
    assert isinstance(letter, DeadLetter), letter
    return str(letter)


def engine_failed(what: str, ident: str) -> str:
    return str(EngineFailure(ZeroDivisionError("division by zero"), what, ident))


@dataclass
class Seeded:
    """The dead letters written to a test's dlq topic, by name, and what republish must send."""

    records: dict[str, Record]
    resend: list[tuple[str, bytes | None, bytes]]  # (topic, key, value)


async def seed(bootstrap: str, topics: Topics) -> Seeded:
    """Nine dlq records: two sendable events from ``payments`` and one from ``customers`` (and
    a repeat of it), a value cut at 256 KiB, a timer, a webhook's, a tombstone, and a record
    that is not a dead letter. The first four are old (``OLD``), the rest new."""
    invalid_json = b'{"event_id": "evt_cut", "type": "payment.failed"'
    mismatch = orjson.dumps(payment_failed("2026-10-01T10:00:00Z", "cus_2"))
    failed_on = orjson.dumps(profile("2026-10-01T09:00:00Z", "cus_4") | {"event_id": "evt_fail"})
    fired = timer_event("tmr_1", "cus_1", 1.8e9, "worker").model_dump_json().encode()
    records = {
        "invalid": Record(topics.payments, 1, 7, b"cus_1", invalid_json),
        "mismatch": Record(topics.payments, 0, 3, b"cus_9", mismatch),
        "oversized": Record(topics.usage, 2, 5, b"cus_3", b'{"x": "' + b"x" * 300_000 + b'"}'),
        "timer": Record(topics.timers, -1, -1, b"cus_1", fired),
        "failed": Record(topics.customers, 3, 11, b"cus_4", failed_on),
        "webhook": Record("webhook:stripe", -1, 0, b"cus_5", b'{"id": "evt_stripe"}'),
        "tombstone": Record(topics.payments, 1, 8, b"cus_6", None),  # type: ignore[arg-type]
    }
    errors = {n: error_of(records[n], topics) for n in ("invalid", "mismatch", "oversized")}
    errors |= {
        "tombstone": error_of(records["tombstone"], topics),
        "timer": engine_failed("timer", "tmr_1"),
        "failed": engine_failed("event", "evt_fail"),
        "webhook": "Stripe invoice.paid evt_stripe does not fit the contract: no customer",
    }
    values = [(r.key, dead_letter_value(r, errors[name])) for name, r in records.items()]
    values.insert(5, values[4])  # the relay produced "failed" twice (a crash before its ack)
    values.append((None, b"not a dead letter"))
    stamps = [OLD] * 4 + [NEW] * 5
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=False, acks="all")
    await producer.start()
    try:
        for (key, value), stamp in zip(values, stamps, strict=True):
            await producer.send(topics.dlq, value, key=key, timestamp_ms=stamp)
        await producer.flush()
    finally:
        await producer.stop()
    resend = [(topics.payments, b"cus_1", invalid_json), (topics.payments, b"cus_9", mismatch),
              (topics.customers, b"cus_4", failed_on)]  # fmt: skip
    return Seeded(records, resend)


async def cli(*args: str, answer: str | None = None) -> Result:
    """``outreach ARGS`` (in a thread: the command runs its own event loop)."""
    runner = CliRunner()
    return await asyncio.to_thread(
        runner.invoke, app, list(args), input=answer, env={"COLUMNS": "250"}
    )


async def read_all(bootstrap: str, names: tuple[str, ...]) -> list[Any]:
    """Every record of ``names``, read to their end."""
    reader = TopicReader(bootstrap, names)
    found = [record async for record in reader.records()]
    assert not reader.unfinished
    return found


def sources(result: Result) -> list[tuple[str, int, int]]:
    """(topic, partition, offset) of each dead letter ``dlq list --json`` printed."""
    lines = [orjson.loads(line) for line in result.stdout.splitlines()]
    return sorted((d.get("topic", "?"), d.get("partition", 0), d.get("offset", 0)) for d in lines)


def place(record: Record) -> tuple[str, int, int]:
    return record.topic, record.partition, record.offset


async def test_list_shows_every_dead_letter_and_each_filter_narrows_it(
    kafka_bootstrap: str, topics: Topics
) -> None:
    seeded = await seed(kafka_bootstrap, topics)
    records = seeded.records
    where = ("--kafka-url", kafka_bootstrap, "--topic-prefix", topics.prefix)
    everything = await cli("dlq", "list", *where, "--json")
    assert everything.exit_code == 0, everything.output
    lines = [orjson.loads(line) for line in everything.stdout.splitlines()]
    assert len(lines) == 9
    assert len({(d["dlq_partition"], d["dlq_offset"]) for d in lines}) == 9
    failed = place(records["failed"])
    expected = sorted([*(place(r) for r in records.values()), failed, ("?", 0, 0)])
    assert sources(everything) == expected
    (invalid,) = [d for d in lines if d.get("offset") == 7]
    assert base64.b64decode(invalid["raw_base64"]) == records["invalid"].value
    assert invalid["dlq_timestamp"] == "2026-01-01T00:00:00Z"
    (garbage,) = [d for d in lines if "problem" in d]
    assert garbage["problem"].startswith("not a dead letter of this engine")

    payments = sorted(place(records[n]) for n in ("invalid", "mismatch", "tombstone"))
    for name in ("payments", topics.payments):  # with or without the prefix
        chosen = await cli("dlq", "list", *where, "--json", "--source-topic", name)
        assert sources(chosen) == payments, name
    chosen = await cli("dlq", "list", *where, "--json", "--match", "DOES NOT EQUAL customer_id")
    assert sources(chosen) == [place(records["mismatch"])]
    assert f"1 of 9 dead letters in {topics.dlq}" in chosen.stderr
    chosen = await cli("dlq", "list", *where, "--json", "--since", SINCE)
    new = [place(records[n]) for n in ("failed", "webhook", "tombstone")]
    assert sources(chosen) == sorted([*new, failed, ("?", 0, 0)])
    chosen = await cli(
        "dlq", "list", *where, "--json", "--since", SINCE, "--source-topic", "payments"
    )
    assert sources(chosen) == [place(records["tombstone"])]

    table = await cli("dlq", "list", *where, "--match", "oversized")
    assert table.exit_code == 0, table.output
    assert f"{topics.usage}[2]@5" in table.stdout and "cus_3" in table.stdout
    size = len(records["oversized"].value)
    assert f"{size:,} (cut)" in table.stdout
    assert "oversized: " in table.stdout and topics.payments not in table.stdout
    assert f"1 of 9 dead letters in {topics.dlq}" in table.stdout


async def test_republish_sends_exactly_the_sendable_letters_and_names_the_refused(
    kafka_bootstrap: str, topics: Topics
) -> None:
    seeded = await seed(kafka_bootstrap, topics)
    where = ("--kafka-url", kafka_bootstrap, "--topic-prefix", topics.prefix)
    dry = await cli("dlq", "republish", *where, "--dry-run")
    assert dry.exit_code == 1, dry.output  # some would be refused
    assert "3 to republish, 5 refused; 1 repeat(s) of another, sent once" in dry.stdout
    declined = await cli("dlq", "republish", *where, answer="n\n")
    assert declined.exit_code == 1 and "Republish 3 dead letter(s)" in declined.stdout
    assert await read_all(kafka_bootstrap, topics.inputs) == [], "sent before a yes"

    done = await cli("dlq", "republish", *where, answer="y\n")
    assert done.exit_code == 1, done.output  # five were refused
    assert f"republished 3 (acknowledged by {kafka_bootstrap})" in done.stdout
    sent = await read_all(kafka_bootstrap, topics.inputs)
    assert sorted((r.topic, r.key, r.value) for r in sent) == sorted(seeded.resend)
    refused = done.stderr.split("refused 5:", 1)[1]
    size = len(seeded.records["oversized"].value)
    sha = hashlib.sha256(seeded.records["oversized"].value).hexdigest()
    for reason in (
        f"({topics.usage}[2]@5): only the first 262,144 of its {size:,} bytes were kept "
        f"(sha256 {sha} is of the whole value)",
        f"({topics.timers}[-1]@-1): a timer of the engine's own",
        "(webhook:stripe[-1]@0): its source 'webhook:stripe' is not one of the engine's input "
        "topics",
        f"({topics.payments}[1]@8): its value was empty (a tombstone)",
        "(?): not a dead letter of this engine",
    ):
        assert reason in refused, reason
    assert "not sent" not in done.stderr

    # only what the filters choose, and nothing refused among them: exit 0
    again = await cli("dlq", "republish", *where, "--yes", "--match", "ENGINE FAILED ON THIS EVENT")
    assert again.exit_code == 0, again.output
    assert "republished 1" in again.stdout
    sent = await read_all(kafka_bootstrap, topics.inputs)
    assert [r.value for r in sent].count(seeded.resend[2][2]) == 2


async def test_the_reader_reads_every_partition_to_its_end_over_many_fetches(
    kafka_bootstrap: str, topics: Topics
) -> None:
    """More records than one fetch returns (``getmany`` takes 1,000 at most), and partitions
    left empty: read to the end, not to the first fetch or the first empty answer."""
    async with EventPublisher(kafka_bootstrap, topics) as publisher:
        for i in range(2500):
            await publisher.publish_raw(topics.dlq, f"cus_{i % 3}".encode(), b"%d" % i)
    reader = TopicReader(kafka_bootstrap, (topics.dlq, topics.signals))
    found = [(r.partition, r.offset, r.value) async for r in reader.records()]
    assert reader.read == len(found) == 2500 and not reader.unfinished
    assert sorted(int(value) for *_, value in found) == list(range(2500))
    for partition in {p for p, *_ in found}:
        offsets = [o for p, o, _ in found if p == partition]
        assert offsets == list(range(len(offsets))), partition


class SilentConsumer:
    """A consumer whose fetches never answer for its partition (its leader is away)."""

    async def getmany(self, timeout_ms: int, max_records: int) -> dict[Any, list[Any]]:
        await asyncio.sleep(timeout_ms / 1000)  # what a fetch that times out takes
        return {}

    def highwater(self, tp: TopicPartition) -> int | None:
        return None

    async def position(self, tp: TopicPartition) -> int:
        return 0


async def test_a_partition_never_answered_for_ends_the_read_and_is_named() -> None:
    reader = TopicReader("127.0.0.1:9", ("p.dlq",), quiet=0.5)
    waiting = {TopicPartition("p.dlq", 2)}
    assert [r async for r in reader._to_the_end(SilentConsumer(), waiting)] == []
    assert reader.unfinished == ["p.dlq[2]"]


def test_a_letter_whose_bytes_or_key_are_not_whole_is_refused() -> None:
    topics = Topics("p.")
    value = b'{"event_id": "evt_1"}'

    def stored(key: bytes, error: str = "invalid event", **change: Any) -> StoredLetter:
        body = orjson.loads(dead_letter_value(Record(topics.payments, 0, 1, key, value), error))
        return StoredLetter.parse(0, 0, NEW, orjson.dumps(body | change))

    plan = plan_republish(
        [
            stored(b"cus_1", sha256=hashlib.sha256(b"other").hexdigest()),
            stored(b"k" * 2000),
            stored(b"cus_1", topic="other.payments"),
            stored(b"cus_1"),
            stored(b"cus_1", error="another error, the same record"),
        ],
        topics,
    )
    reasons = [refusal.reason for refusal in plan.refused]
    assert [r.split(":")[0] for r in reasons] == [
        "its raw bytes do not match its sha256",
        "its key may have been cut at 1,024 bytes in the dead letter",
        "its source 'other.payments' is not one of the engine's input topics (p.shipments, "
        "p.payments, p.usage, p.renewals, p.customers); check --topic-prefix",
    ]
    assert [(r.topic, r.key, r.value) for r in plan.resend] == [("p.payments", b"cus_1", value)]
    assert plan.repeats == 1


async def test_without_kafka_or_without_the_topic_the_commands_say_what_to_do(
    kafka_bootstrap: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OUTREACH_KAFKA_URL", raising=False)
    result = await cli("dlq", "list")
    assert result.exit_code == 2 and "--kafka-url" in result.stderr
    result = await cli("dlq", "republish", "--kafka-url", kafka_bootstrap, "--topic-prefix", "nx.")
    assert result.exit_code == 2
    assert "there is no topic 'nx.dlq'" in result.stderr and "--topic-prefix" in result.stderr
    result = await cli("dlq", "list", "--kafka-url", kafka_bootstrap, "--since", "yesterday")
    assert result.exit_code == 2 and "not an ISO 8601 time" in result.output


class BrokenCore(DecisionCore):
    """The real core, except that it raises on ``evt_bad`` until ``fixed`` is set."""

    fixed = False

    def evaluate(self, event: Event, state: CustomerState, *args: Any, **kw: Any) -> Any:
        if event.event_id == "evt_bad" and not BrokenCore.fixed:
            raise ZeroDivisionError("division by zero")
        return super().evaluate(event, state, *args, **kw)


@pytest.mark.timeout(120)
async def test_an_event_the_worker_failed_on_is_applied_once_after_the_fix(
    kafka_bootstrap: str, topics: Topics, group_id: str, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """The defect is "fixed" in the running worker (a flag the core reads): the dead letter's
    event is then published again, applied once, and a second republish is a duplicate."""
    from outreach.streams.runtime import LiveEngine, WorkerSettings, quiet
    from outreach.streams.topics import KafkaSettings

    monkeypatch.setattr("outreach.streams.runtime.DecisionCore", BrokenCore)
    monkeypatch.setattr(BrokenCore, "fixed", False)
    settings = WorkerSettings(
        rules=REPO / "rules", database_url=f"sqlite:///{tmp_path}/store.db",
        data_dir=tmp_path / "data", scheduler=False, dispatch=False,
    )  # fmt: skip
    kafka = KafkaSettings(kafka_url=kafka_bootstrap, topic_prefix=topics.prefix,
                          partitions=4, group_id=group_id)  # fmt: skip
    where = ("--kafka-url", kafka_bootstrap, "--topic-prefix", topics.prefix)
    stop = asyncio.Event()
    async with LiveEngine(settings, kafka).running(stop) as parts:

        async def settle(what: str) -> None:
            await asyncio.to_thread(wait_for, lambda: quiet(parts, since=0.5), 40, what)

        def seen() -> dict[str, float]:
            raw = parts.store.load_state("cus_1") or b""
            return msgspec.json.decode(raw, type=CustomerState).rules.seen

        async with EventPublisher(kafka_bootstrap, topics) as publisher:
            await publisher.publish(profile("2026-10-01T09:00:00Z", "cus_1"))
            await publisher.publish(
                payment_failed("2026-10-01T10:00:00Z", "cus_1") | {"event_id": "evt_bad"}
            )
        await asyncio.to_thread(
            wait_for, lambda: parts.totals.engine_failures == 1, 40, "the engine to fail"
        )
        await settle("the dead letter relayed")
        assert "evt_bad" not in seen() and parts.totals.signals == 0
        listed = await cli("dlq", "list", *where, "--json", "--match", "engine failed")
        (letter,) = [orjson.loads(line) for line in listed.stdout.splitlines()]
        assert letter["key"] == "cus_1" and orjson.loads(letter["raw"])["event_id"] == "evt_bad"

        BrokenCore.fixed = True
        done = await cli("dlq", "republish", *where, "--match", "engine failed", "--yes")
        assert done.exit_code == 0 and "republished 1" in done.stdout, done.output
        await asyncio.to_thread(
            wait_for, lambda: parts.totals.signals == 1, 40, "the republished event applied"
        )
        await settle("the decisions relayed")
        assert "evt_bad" in seen()
        assert (parts.totals.events, parts.totals.duplicates) == (2, 0)
        signals = [
            orjson.loads(r.value) for r in await read_all(kafka_bootstrap, (topics.signals,))
        ]
        assert [s["customer_id"] for s in signals] == ["cus_1"]

        again = await cli("dlq", "republish", *where, "--match", "engine failed", "--yes")
        assert again.exit_code == 0, again.output
        await asyncio.to_thread(
            wait_for, lambda: parts.totals.duplicates == 1, 40, "the repeat dropped"
        )
        await settle("nothing more to do")
        assert parts.totals.signals == 1 and parts.totals.engine_failures == 1
        stop.set()
    assert parts.failure is None
