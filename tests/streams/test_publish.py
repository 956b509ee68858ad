"""Topics, routing and publishing: settings, ``ensure_topics``, ``EventPublisher``,
``publish_file`` and ``outreach publish``, against the session's broker."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import InvalidReplicationFactorError, MessageSizeTooLargeError
from aiokafka.record.default_records import DefaultRecordBatchBuilder
from support import make_event, payment_failed, profile
from typer.testing import CliRunner

from outreach.api.sink import KafkaEventSink
from outreach.cli import app
from outreach.events import EVENT_TYPES, InvalidEventError, parse_event
from outreach.streams import publish as publish_module
from outreach.streams.publish import (
    EventPublisher,
    EventTooLargeError,
    PublishError,
    Unroutable,
    publish_file,
    route_line,
)
from outreach.streams.topics import (
    DEFAULT_REPLICAS,
    DLQ_RETENTION_MS,
    KafkaSettings,
    Topics,
    ensure_topics,
)

pytestmark = pytest.mark.timeout(30)

AT = "2026-03-02T10:00:00Z"


def shipment(customer: str) -> dict[str, Any]:
    return make_event(
        "shipment.updated", AT, customer, shipment_id="shp_1", order_id="ord_1", carrier="ups",
        status="in_transit", promised_delivery="2026-03-04T18:00:00Z",
    )  # fmt: skip


def usage(customer: str) -> dict[str, Any]:
    return make_event(
        "usage.reported", AT, customer, metric="api_calls", value=12.5,
        period_start="2026-03-01T00:00:00Z", period_end="2026-03-02T00:00:00Z",
    )  # fmt: skip


def renewal(customer: str) -> dict[str, Any]:
    return make_event(
        "renewal.upcoming", AT, customer, subscription_id="sub_1", plan="pro",
        renews_at="2026-03-20T00:00:00Z", amount=4900, currency="USD", auto_renew=True,
    )  # fmt: skip


def suppressed(customer: str) -> dict[str, Any]:
    return make_event("contact.suppressed", AT, customer, channel="sms", reason="stop")


def padded(customer: str, size: int) -> bytes:
    """A routable usage event line of exactly ``size`` bytes (an extra field pads it)."""
    line = orjson.dumps({**usage(customer), "pad": ""})
    return line[:-2] + b"x" * (size - len(line)) + line[-2:]


def record_size(line: bytes, customer: str) -> int:
    """What aiokafka counts against ``max_request_size`` for this line keyed by ``customer``."""
    return int(DefaultRecordBatchBuilder.estimate_size_in_bytes(customer.encode(), line, []))


def write_lines(path: Path, lines: Iterable[bytes | dict[str, Any]]) -> Path:
    encoded = (line if isinstance(line, bytes) else orjson.dumps(line) for line in lines)
    path.write_bytes(b"".join(line + b"\n" for line in encoded))
    return path


async def read_back(
    bootstrap: str, names: Iterable[str], count: int, seconds: float = 10.0
) -> list[ConsumerRecord[bytes, bytes]]:
    """Every record of ``names`` from the beginning (no group), until ``count`` or the deadline."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        await consumer.topics()  # loads the metadata partitions_for_topic reads
        parts = [
            TopicPartition(name, p)
            for name in names
            for p in sorted(consumer.partitions_for_topic(name) or ())
        ]
        consumer.assign(parts)
        await consumer.seek_to_beginning(*parts)
        records: list[ConsumerRecord[bytes, bytes]] = []
        deadline = time.monotonic() + seconds
        while len(records) < count and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=200)
            for part in batch.values():
                records.extend(part)
        return records
    finally:
        await consumer.stop()


# -- topics and settings (no broker) ----------------------------------------------------------


def test_every_event_type_has_its_topic() -> None:
    topics = Topics("p.")
    routes = {kind: topics.topic_for(kind) for kind in EVENT_TYPES}
    assert routes == {
        "customer.updated": "p.customers",
        "shipment.updated": "p.shipments",
        "payment.failed": "p.payments",
        "payment.succeeded": "p.payments",
        "usage.reported": "p.usage",
        "renewal.upcoming": "p.renewals",
        "renewal.renewed": "p.renewals",
        "renewal.cancelled": "p.renewals",
        "contact.suppressed": "p.customers",
        "contact.unsuppressed": "p.customers",
        "message.status": "p.customers",
        "message.received": "p.customers",
        "timer.fired": "p.timers",
        "approval.decided": "p.customers",
        "action.status": "p.customers",
    }
    assert topics.topic_for("shipment.created") == "p.shipments"  # the engine dead-letters it


@pytest.mark.parametrize("kind", ["order.placed", "payment", "payment.", "", "Payment.failed"])
def test_an_unknown_type_is_refused_naming_the_known_ones(kind: str) -> None:
    with pytest.raises(ValueError, match=f"unknown event type '{kind}'.*payment.failed"):
        Topics().topic_for(kind)


def test_the_topic_layout() -> None:
    topics = Topics("staging.")
    assert topics.inputs == (
        "staging.shipments", "staging.payments", "staging.usage", "staging.renewals",
        "staging.customers",
    )  # fmt: skip
    assert topics.outputs == tuple(
        f"staging.{n}" for n in ("signals", "actions", "messages", "receipts", "dlq")
    )
    assert topics.all == (*topics.inputs, "staging.timers", *topics.outputs)
    assert Topics().payments == "payments"


@pytest.mark.parametrize("prefix", ["has space.", "slash/", "x" * 241])
def test_a_prefix_kafka_cannot_use_is_refused(prefix: str) -> None:
    with pytest.raises(ValueError, match="not usable in Kafka topic names"):
        Topics(prefix)


def test_kafka_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("KAFKA_URL", "TOPIC_PREFIX", "PARTITIONS", "GROUP_ID"):
        monkeypatch.delenv(f"OUTREACH_{name}", raising=False)
    assert KafkaSettings() == KafkaSettings(
        kafka_url=None, topic_prefix="", partitions=4, group_id="outreach"
    )
    monkeypatch.setenv("OUTREACH_KAFKA_URL", "k1:9092,k2:9092")
    monkeypatch.setenv("OUTREACH_TOPIC_PREFIX", "prod.")
    monkeypatch.setenv("OUTREACH_PARTITIONS", "12")
    settings = KafkaSettings()
    assert (settings.kafka_url, settings.topic_prefix, settings.partitions) == (
        "k1:9092,k2:9092", "prod.", 12,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        (b"{not json", "not JSON"),
        (b"[1, 2]", "not a JSON object but list"),
        (b'{"customer_id": "c"}', 'no "type" string'),
        (b'{"type": 7, "customer_id": "c"}', 'no "type" string'),
        (b'{"type": "order.placed", "customer_id": "c"}', "unknown event type 'order.placed'"),
        (b'{"type": "payment.failed"}', 'no "customer_id" string'),
        (b'{"type": "payment.failed", "customer_id": 42}', 'no "customer_id" string'),
        (b'{"type": "timer.fired", "customer_id": "c"}', "produced by the engine only"),
    ],
)
def test_route_line_says_why_a_line_cannot_be_routed(line: bytes, reason: str) -> None:
    route = route_line(line, Topics())
    assert isinstance(route, str) and reason in route


def test_route_line_routes_by_type_and_keys_by_customer() -> None:
    line = b'{"type": "usage.reported", "customer_id": "cus_\xc3\xa9", "data": {}}'
    assert route_line(line, Topics("p.")) == ("p.usage", "cus_é".encode())


# -- against the broker -----------------------------------------------------------------------


async def test_ensure_topics_is_idempotent(kafka_bootstrap: str, topics: Topics) -> None:
    await ensure_topics(kafka_bootstrap, topics, 4)  # the fixture created them already
    await ensure_topics(kafka_bootstrap, topics, 4)
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    try:
        described = await admin.describe_topics(list(topics.all))
    finally:
        await admin.close()
    assert {t["topic"]: len(t["partitions"]) for t in described} == {name: 4 for name in topics.all}


async def test_the_dead_letter_topic_keeps_letters_30_days(
    kafka_bootstrap: str, topics: Topics
) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    try:
        names = [topics.dlq, topics.payments]
        [described] = await admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, name) for name in names]
        )
    finally:
        await admin.close()
    retention = {
        resource[3]: {e[0]: e[1] for e in resource[4]}.get("retention.ms")
        for resource in described.resources
    }
    assert retention[topics.dlq] == str(30 * 24 * 3600 * 1000) == str(DLQ_RETENTION_MS)
    assert retention[topics.payments] != retention[topics.dlq]  # the brokers' default


async def replicas(bootstrap: str, names: Iterable[str]) -> tuple[int, dict[str, set[int]]]:
    """How many brokers there are, and the replica counts of each topic's partitions."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        brokers = len((await admin.describe_cluster())["brokers"])
        described = await admin.describe_topics(list(names))
    finally:
        await admin.close()
    return brokers, {t["topic"]: {len(p["replicas"]) for p in t["partitions"]} for t in described}


async def test_topics_are_created_with_the_replication_asked_for_or_three_at_most_the_brokers(
    kafka_bootstrap: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not 1 whatever the cluster: one lost broker would lose inputs, timers and letters."""
    default = Topics(f"t{uuid.uuid4().hex}.")
    await ensure_topics(kafka_bootstrap, default, 2)
    brokers, found = await replicas(kafka_bootstrap, default.all)
    assert found == {name: {min(DEFAULT_REPLICAS, brokers)} for name in default.all}
    monkeypatch.setenv("OUTREACH_REPLICATION_FACTOR", "2")
    asked = KafkaSettings().replication_factor
    assert asked == 2
    made = Topics(f"t{uuid.uuid4().hex}.")
    sink = KafkaEventSink(kafka_bootstrap, made, 2, asked)  # as `outreach api` builds it
    try:
        await sink.start()
    except InvalidReplicationFactorError as exc:  # a real single broker refuses 2 replicas
        assert brokers < 2 and "cannot create topic" in str(exc)
        return
    await sink.stop()
    assert (await replicas(kafka_bootstrap, made.all))[1] == {name: {2} for name in made.all}


async def test_publish_file_sends_raw_lines_to_their_topics_keyed_by_customer(
    kafka_bootstrap: str, topics: Topics, tmp_path: Path
) -> None:
    events: list[dict[str, Any]] = []
    for n in range(8):
        customer = f"cus_{n}"
        events += [profile(AT, customer), shipment(customer), payment_failed(AT, customer)]
        events += [usage(customer), renewal(customer), suppressed(customer)]
    broken = b'{"type":"payment.failed","customer_id":"cus_0","data":{"amount":"lots"}}'
    path = write_lines(tmp_path / "events.jsonl", [*events[:3], b"", b"  ", *events[3:], broken])
    sent = path.read_bytes().splitlines()
    calls: list[tuple[int, int]] = []

    report = await publish_file(path, kafka_bootstrap, topics, progress=lambda *c: calls.append(c))

    assert report.unroutable == 0
    assert report.published == {
        topics.customers: 16, topics.shipments: 8, topics.payments: 9, topics.usage: 8,
        topics.renewals: 8,
    }  # fmt: skip
    assert calls[-1] == (path.stat().st_size, path.stat().st_size)
    records = await read_back(kafka_bootstrap, topics.inputs, report.total)
    assert len(records) == report.total == len(events) + 1
    assert sorted(r.value for r in records) == sorted(v for v in sent if v.strip())  # byte for byte
    partitions: dict[bytes, set[int]] = {}
    for record in records:
        obj = orjson.loads(record.value)
        assert record.topic == topics.topic_for(obj["type"])
        assert record.key == obj["customer_id"].encode()
        partitions.setdefault(record.key, set()).add(record.partition)
    assert all(len(p) == 1 for p in partitions.values())  # co-partitioned across topics
    assert len(set().union(*partitions.values())) > 1  # and spread over the partitions


async def test_unroutable_lines_are_reported_with_their_line_numbers_and_not_sent(
    kafka_bootstrap: str, topics: Topics, tmp_path: Path
) -> None:
    bad = [b"{not json", b'{"type": "order.placed", "customer_id": "c"}', b'{"type": "usage.x"}']
    bad += [b'{"type": "timer.fired", "customer_id": "c"}'] + [b"[]"] * 22
    path = write_lines(tmp_path / "events.jsonl", [usage("cus_1"), *bad, usage("cus_2")])

    report = await publish_file(path, kafka_bootstrap, topics)

    assert report.unroutable == 26
    assert [u.line for u in report.unroutable_lines] == list(range(2, 22))  # the first 20
    assert report.unroutable_lines[1:4] == [
        Unroutable(3, "unknown event type 'order.placed'"),
        Unroutable(4, 'no "customer_id" string'),
        Unroutable(5, "timer.fired is produced by the engine only"),
    ]
    assert report.published == {topics.usage: 2}
    records = await read_back(kafka_bootstrap, topics.all, 2)
    assert sorted(r.key for r in records) == [b"cus_1", b"cus_2"]


async def test_a_line_over_the_producer_limit_is_named_and_the_rest_of_the_file_is_sent(
    kafka_bootstrap: str, topics: Topics, tmp_path: Path
) -> None:
    """aiokafka refuses a record over its ``max_request_size`` (1 MiB) by raising from send:
    that aborted the whole file without naming the line."""
    big = padded("cus_big", 1_100_000)
    path = write_lines(tmp_path / "events.jsonl", [usage("cus_1"), big, usage("cus_2")])

    report = await publish_file(path, kafka_bootstrap, topics)

    assert report.unroutable == 1
    [line] = report.unroutable_lines
    assert line.line == 2
    assert f"{record_size(big, 'cus_big'):,} bytes as a Kafka record" in line.reason
    assert "over the producer's limit of 1,048,576 bytes (max_request_size)" in line.reason
    assert "shrink the event" in line.reason
    assert report.published == {topics.usage: 2}
    records = await read_back(kafka_bootstrap, topics.all, 2)
    assert sorted(r.key for r in records) == [b"cus_1", b"cus_2"]


async def test_the_size_limit_is_aiokafkas_to_the_byte(
    kafka_bootstrap: str, topics: Topics, tmp_path: Path
) -> None:
    limit = 4096
    lines = [padded("cus_1", size) for size in range(3990, 4020)]
    path = write_lines(tmp_path / "events.jsonl", lines)

    report = await publish_file(path, kafka_bootstrap, topics, max_request_size=limit)

    sizes = [record_size(line, "cus_1") for line in lines]
    assert limit in sizes and limit + 1 in sizes  # the boundary is in the file
    too_large = [n for n, size in enumerate(sizes, 1) if size > limit]
    assert [u.line for u in report.unroutable_lines] == too_large
    assert report.published == {topics.usage: len(lines) - len(too_large)}


class BrokerLimitProducer(AIOKafkaProducer):  # type: ignore[misc]
    """A real producer behind a broker whose ``message.max.bytes`` is 2,000: the future of a
    bigger record fails with ``MessageSizeTooLargeError``, as a produce response carrying that
    error fails its batch's futures (Tansu enforces no such limit, so it is played here)."""

    async def send(self, topic: str, value: bytes, key: bytes | None) -> asyncio.Future[Any]:
        if len(value) > 2000:
            refused: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            refused.set_exception(MessageSizeTooLargeError())
            return refused
        future: asyncio.Future[Any] = await super().send(topic, value=value, key=key)
        return future


async def test_records_the_broker_refuses_are_named_by_line_and_the_rest_is_sent(
    kafka_bootstrap: str, topics: Topics, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A broker-side refusal failed ``flush`` for the whole file, with no line named."""
    monkeypatch.setattr(publish_module, "AIOKafkaProducer", BrokerLimitProducer)
    refused = [padded(f"cus_{n}", 3000) for n in range(5)]  # their refusals arrive last
    path = write_lines(tmp_path / "events.jsonl", [*refused, *[b"[]"] * 20, usage("cus_9")])

    report = await publish_file(path, kafka_bootstrap, topics)

    assert report.unroutable == 25
    assert [u.line for u in report.unroutable_lines] == list(range(1, 21))  # the first 20
    reason = report.unroutable_lines[0].reason
    assert reason.startswith("refused by the broker: MESSAGE_SIZE_TOO_LARGE")
    assert "message.max.bytes" in reason
    assert report.unroutable_lines[5] == Unroutable(6, "not a JSON object but list")
    assert report.published == {topics.usage: 1}


async def test_a_refusal_fails_flush_when_nobody_takes_refusals(
    kafka_bootstrap: str, topics: Topics, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(publish_module, "AIOKafkaProducer", BrokerLimitProducer)
    async with EventPublisher(kafka_bootstrap, topics, validate=False) as publisher:
        await publisher.publish(orjson.loads(padded("cus_1", 3000)))
        with pytest.raises(PublishError, match="1 event.*not acknowledged.*MessageSizeTooLarge"):
            await publisher.flush()


async def test_an_event_over_the_producer_limit_is_refused_before_it_is_queued(
    kafka_bootstrap: str, topics: Topics
) -> None:
    big = padded("cus_1", 3000)
    async with EventPublisher(
        kafka_bootstrap, topics, validate=False, max_request_size=2048
    ) as publisher:
        with pytest.raises(EventTooLargeError, match="over the producer's limit of 2,048") as too:
            await publisher.publish(orjson.loads(big))
        assert isinstance(too.value, PublishError)
        assert (too.value.size, too.value.limit) == (record_size(big, "cus_1"), 2048)
        await publisher.publish(usage("cus_2"))  # the publisher goes on
        await publisher.flush()
        assert publisher.delivered == {topics.usage: 1}


async def test_rate_paces_the_publishing(
    kafka_bootstrap: str, topics: Topics, tmp_path: Path
) -> None:
    path = write_lines(tmp_path / "events.jsonl", [usage(f"cus_{n}") for n in range(50)])
    started = time.monotonic()
    report = await publish_file(path, kafka_bootstrap, topics, rate=500)
    took = time.monotonic() - started
    assert report.published == {topics.usage: 50}
    assert min(took, report.elapsed) >= 49 / 500 - 0.005  # 49 gaps of 2 ms at the least


async def test_the_publisher_checks_dicts_and_routes_models(
    kafka_bootstrap: str, topics: Topics
) -> None:
    model = parse_event(orjson.dumps(renewal("cus_9")))
    async with EventPublisher(kafka_bootstrap, topics) as publisher:
        first = await publisher.publish(payment_failed(AT, "cus_8"))
        await publisher.publish(model)
        with pytest.raises(InvalidEventError, match="data.attempt"):
            await publisher.publish(make_event("payment.failed", AT, "cus_8", attempt=0))
        timer = make_event("timer.fired", AT, "cus_8", timer_id="t1", due_at=AT)
        with pytest.raises(PublishError, match="engine only"):
            await publisher.publish(timer)
        await publisher.flush()
        assert first.done() and publisher.delivered == {topics.payments: 1, topics.renewals: 1}
    records = await read_back(kafka_bootstrap, topics.all, 2)
    by_topic = {r.topic: r for r in records}
    assert set(by_topic) == {topics.payments, topics.renewals}
    assert parse_event(by_topic[topics.renewals].value) == model
    assert by_topic[topics.payments].key == b"cus_8"


def test_a_publisher_is_made_anywhere_and_refuses_to_send_before_it_starts() -> None:
    publisher = EventPublisher("127.0.0.1:9", Topics())  # no event loop needed to make one
    with pytest.raises(RuntimeError, match="not started"):
        asyncio.run(publisher.publish(usage("cus_1")))


# -- the command ------------------------------------------------------------------------------


def test_outreach_publish_prints_counts_and_unroutable_lines(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    prefix = f"cli{uuid.uuid4().hex}."
    path = write_lines(tmp_path / "events.jsonl", [profile(AT), b"oops", usage("cus_1")])
    result = CliRunner().invoke(
        app,
        ["publish", str(path), "--kafka-url", kafka_bootstrap, "--topic-prefix", prefix],
        env={"COLUMNS": "120"},
    )
    assert result.exit_code == 1, result.output  # a line was not sent
    assert f"{prefix}customers │ 1" in result.stdout
    assert f"{prefix}usage     │ 1" in result.stdout
    assert f"2 events acknowledged by {kafka_bootstrap}" in result.stdout
    assert f"{path}:2: not JSON" in result.stderr
    records = asyncio.run(read_back(kafka_bootstrap, Topics(prefix).inputs, 2))
    assert sorted(r.topic for r in records) == [f"{prefix}customers", f"{prefix}usage"]


def test_outreach_publish_names_a_line_over_the_size_limit_and_sends_the_rest(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    prefix = f"cli{uuid.uuid4().hex}."
    big = padded("cus_big", 1_100_000)
    path = write_lines(tmp_path / "events.jsonl", [profile(AT), big, usage("cus_1")])
    result = CliRunner().invoke(
        app,
        ["publish", str(path), "--kafka-url", kafka_bootstrap, "--topic-prefix", prefix],
        env={"COLUMNS": "120"},
    )
    assert result.exit_code == 1, result.output  # a line was not sent
    assert f"2 events acknowledged by {kafka_bootstrap}" in result.stdout
    assert "1 line(s) not sent" in result.stderr
    size = record_size(big, "cus_big")
    assert f"{path}:2: too large: {size:,} bytes as a Kafka record" in result.stderr


def test_outreach_publish_without_kafka_exits_2_saying_what_to_do(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OUTREACH_KAFKA_URL", raising=False)
    path = write_lines(tmp_path / "events.jsonl", [usage("cus_1")])
    result = CliRunner().invoke(app, ["publish", str(path)], env={"COLUMNS": "200"})
    assert result.exit_code == 2
    assert "--kafka-url" in result.stderr and "OUTREACH_KAFKA_URL" in result.stderr
    assert "outreach worker" in result.stderr


def test_outreach_publish_to_an_unreachable_kafka_exits_1(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "events.jsonl", [usage("cus_1")])
    result = CliRunner().invoke(
        app, ["publish", str(path), "--kafka-url", "127.0.0.1:9"], env={"COLUMNS": "200"}
    )
    assert result.exit_code == 1
    assert "publishing to 127.0.0.1:9 failed" in result.stderr
