"""Publishing events to the engine's input topics: the helper for backend teams.

    from outreach.streams.publish import EventPublisher
    from outreach.streams.topics import Topics

    async with EventPublisher("kafka-1:9092", Topics()) as publisher:
        await publisher.publish({"event_id": "evt_1", "type": "payment.failed",
                                 "customer_id": "cus_42", "occurred_at": "...", "data": {...}})
    # leaving the block waits until the brokers acknowledged every event (acks=all)

Each event goes to the topic of its type (``Topics.topic_for``), keyed by its ``customer_id``
(UTF-8) so that one customer's events stay in order on one partition, as compact JSON. A dict
is checked against the event contract before it is sent, exactly as the engine will check it
(``InvalidEventError`` names each bad field); pass ``validate=False`` to leave that to the
engine's dead-letter topic. ``timer.fired`` is refused: only the engine writes its timers.

``publish_file`` (the ``outreach publish`` command) sends a JSONL file line by line without
re-encoding: a line that is invalid but routable (a JSON object with a known ``type`` family
and a string ``customer_id``) reaches the engine unchanged, which dead-letters it with the
reason; a line that cannot be routed is not sent and is reported with its line number.

Size: an event over the producer's ``max_request_size`` as a Kafka record (1 MiB, aiokafka's
default; the limit it checks, to the byte) is refused before it is queued
(``EventTooLargeError``); a line of a file is then reported as not sent, and the rest goes
on. A record the brokers refuse (over the broker's ``message.max.bytes`` or the topic's
``max.message.bytes``) fails its ack: ``flush`` raises, unless the publisher was given
``on_refused``, which ``publish_file`` uses to report those lines too.

    PublishError                 an event that was not published (unroutable, not acked)
    └── EventTooLargeError       over the producer's max_request_size: never queued

Must not import: faust, sqlalchemy.
"""

from __future__ import annotations

import asyncio
import bisect
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer  # type: ignore[import-untyped,unused-ignore]
from aiokafka.errors import (  # type: ignore[import-untyped,unused-ignore]
    BrokerResponseError,
    CorruptRecordException,
    MessageSizeTooLargeError,
    RecordListTooLargeError,
)
from aiokafka.record.default_records import (  # type: ignore[import-untyped,unused-ignore]
    DefaultRecordBatchBuilder,
)

from outreach.errors import OutreachError
from outreach.events import Event, parse_event
from outreach.streams.codec import DEFAULT_MAX_EVENT_BYTES
from outreach.streams.topics import Topics

ENGINE_ONLY_TYPES = frozenset({"timer.fired"})
REPORTED_UNROUTABLE = 20  # lines kept for display; all are counted
MAX_REQUEST_SIZE = 1024 * 1024  # aiokafka's default max_request_size
# a record batch's header (61 bytes) and one record's framing (at most 21, two 5-byte length
# varints and 1): a record this much under the limit needs no exact count
_RECORD_OVERHEAD = 93
# what the brokers say of one record (or of the batch it went in), not of the connection
_REFUSALS = (MessageSizeTooLargeError, RecordListTooLargeError, CorruptRecordException)
_PROGRESS_EVERY = 1024  # lines between progress callbacks
_MAX_CATCH_UP = 1.0  # seconds of sends a paced publisher may make up at full speed after a stall


class PublishError(OutreachError):
    """An event that was not published: it cannot be routed, or the brokers did not ack it."""


class EventTooLargeError(PublishError):
    """An event over the producer's ``max_request_size`` as a Kafka record: never queued."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(
            f"too large: {size:,} bytes as a Kafka record, over the producer's limit of "
            f"{limit:,} bytes (max_request_size); shrink the event (the engine dead-letters "
            f"events over OUTREACH_MAX_EVENT_BYTES, {DEFAULT_MAX_EVENT_BYTES // 1024} KiB by "
            f"default)"
        )
        self.size = size
        self.limit = limit


@dataclass(frozen=True)
class Unroutable:
    """A line of a JSONL file that was not sent, and why."""

    line: int
    reason: str


@dataclass
class PublishReport:
    """What ``publish_file`` did: acknowledged events per topic, lines not sent.

    ``unroutable`` counts every line not sent: it cannot be routed, it is over the producer's
    size limit, or the brokers refused it; ``unroutable_lines`` keeps the first 20 by number.
    """

    published: dict[str, int] = field(default_factory=dict)
    unroutable: int = 0
    unroutable_lines: list[Unroutable] = field(default_factory=list)  # the first 20
    elapsed: float = 0.0

    @property
    def total(self) -> int:
        """Events acknowledged, all topics together."""
        return sum(self.published.values())

    def add_not_sent(self, line: int, reason: str) -> None:
        """Count a line not sent; keep it if it is among the first 20 (refusals come late)."""
        self.unroutable += 1
        kept = self.unroutable_lines
        if len(kept) < REPORTED_UNROUTABLE or line < kept[-1].line:
            bisect.insort(kept, Unroutable(line, reason), key=_line_number)
            del kept[REPORTED_UNROUTABLE:]


def _line_number(unroutable: Unroutable) -> int:
    return unroutable.line


class EventPublisher:
    """An async context manager that publishes events to the engine's input topics.

    ``on_refused(ref, error)``: called for a record the brokers refuse (too large for them,
    corrupt), with the ``ref`` it was published with, instead of failing ``flush``.
    """

    def __init__(
        self,
        bootstrap: str,
        topics: Topics | None = None,
        *,
        validate: bool = True,
        linger_ms: int = 5,
        client_id: str = "outreach-publisher",
        max_request_size: int = MAX_REQUEST_SIZE,
        on_refused: Callable[[int, BrokerResponseError], None] | None = None,
    ) -> None:
        self.topics = topics or Topics()
        self.validate = validate
        self.max_request_size = max_request_size
        self.on_refused = on_refused
        self.delivered: Counter[str] = Counter()  # topic -> events acknowledged
        self._unchecked_size = max_request_size - _RECORD_OVERHEAD
        self._options: dict[str, Any] = {
            "bootstrap_servers": bootstrap,
            "client_id": client_id,
            "acks": "all",
            "enable_idempotence": False,  # Tansu refuses InitProducerId; keys keep the order
            "linger_ms": linger_ms,
            "max_batch_size": 256 * 1024,
            "max_request_size": max_request_size,
        }
        self._producer: Any = None  # made in start(): aiokafka needs the running loop
        self._pending: set[asyncio.Future[Any]] = set()
        self._failures: list[BaseException] = []

    async def start(self) -> None:
        """Connect to the brokers."""
        if self._producer is not None:
            raise RuntimeError("the publisher is already started")
        producer = AIOKafkaProducer(**self._options)
        try:
            await producer.start()
        except BaseException:
            await producer.stop()  # releases the connections a failed start left open
            raise
        self._producer = producer

    async def stop(self) -> None:
        """Flush and disconnect; raises ``PublishError`` if an event was not acknowledged."""
        try:
            await self.flush()
        finally:
            await self._close()

    async def __aenter__(self) -> EventPublisher:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if exc is None:
            await self.stop()
        else:
            await self._close()

    async def publish(self, event: Mapping[str, Any] | Event) -> asyncio.Future[Any]:
        """Queue one event for its topic; the returned future resolves when it is acked."""
        if isinstance(event, Mapping):
            value = orjson.dumps(event)
            kind, customer_id = event.get("type"), event.get("customer_id")
            if self.validate:
                parsed = parse_event(value)  # raises InvalidEventError, naming each bad field
                kind, customer_id = parsed.type, parsed.customer_id
        else:
            value = event.model_dump_json(exclude_unset=True).encode()
            kind, customer_id = event.type, event.customer_id
        if not isinstance(kind, str) or not isinstance(customer_id, str):
            raise PublishError('an event needs a string "type" and a string "customer_id"')
        if kind in ENGINE_ONLY_TYPES:
            raise PublishError(f"{kind} is produced by the engine only; it cannot be published")
        try:
            topic = self.topics.topic_for(kind)
        except ValueError as exc:
            raise PublishError(str(exc)) from None
        return await self.publish_raw(topic, customer_id.encode(), value)

    async def publish_raw(
        self, topic: str, key: bytes | None, value: bytes, ref: int = 0
    ) -> asyncio.Future[Any]:
        """Queue bytes for a topic as they are; the returned future resolves when it is acked.

        Raises ``EventTooLargeError`` (nothing queued) over ``max_request_size``; ``ref`` (a
        line number, say) is what ``on_refused`` gets if the brokers refuse the record.
        """
        if self._producer is None:
            raise RuntimeError("the publisher is not started: use `async with EventPublisher(...)`")
        if len(value) + len(key or b"") > self._unchecked_size:  # near the limit: count exactly
            size = DefaultRecordBatchBuilder.estimate_size_in_bytes(key, value, [])
            if size > self.max_request_size:
                raise EventTooLargeError(size, self.max_request_size)
        future: asyncio.Future[Any] = await self._producer.send(topic, value=value, key=key)
        self._pending.add(future)
        future.add_done_callback(lambda done: self._settle(topic, ref, done))
        return future

    async def flush(self) -> None:
        """Wait until every queued event is acked; raises ``PublishError`` if any was not."""
        if self._producer is not None:
            await self._producer.flush()
        if self._pending:
            await asyncio.wait(set(self._pending))
        if self._failures:
            failures, self._failures = self._failures, []
            raise PublishError(
                f"{len(failures)} event(s) were not acknowledged by the brokers: {failures[0]!r}"
            ) from failures[0]

    async def _close(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            await producer.stop()

    def _settle(self, topic: str, ref: int, future: asyncio.Future[Any]) -> None:
        self._pending.discard(future)
        error = None if future.cancelled() else future.exception()
        if future.cancelled() or error is not None:
            if self.on_refused is not None and isinstance(error, _REFUSALS):
                self.on_refused(ref, error)
            else:
                self._failures.append(error or asyncio.CancelledError())
        else:
            self.delivered[topic] += 1


def _refusal_reason(error: BrokerResponseError) -> str:
    """Why the brokers refused a record, and what to do."""
    if isinstance(error, MessageSizeTooLargeError | RecordListTooLargeError):
        return (
            f"refused by the broker: {error.message} (this record, or the batch it went in, "
            f"is over the broker's message.max.bytes or the topic's max.message.bytes); "
            f"shrink the event or raise that limit"
        )
    return f"refused by the broker: {error.message} ({error.description})"


def route_line(line: bytes, topics: Topics) -> tuple[str, bytes] | str:
    """(topic, key) for one JSONL line, or the reason it cannot be routed."""
    try:
        obj = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        return f"not JSON ({exc})"
    if not isinstance(obj, dict):
        return f"not a JSON object but {type(obj).__name__}"
    kind, customer_id = obj.get("type"), obj.get("customer_id")
    if not isinstance(kind, str):
        return 'no "type" string'
    if kind in ENGINE_ONLY_TYPES:
        return f"{kind} is produced by the engine only"
    try:
        topic = topics.topic_for(kind)
    except ValueError:
        return f"unknown event type {kind!r}"
    if not isinstance(customer_id, str):
        return 'no "customer_id" string'
    return topic, customer_id.encode()


async def publish_file(
    path: Path,
    bootstrap: str,
    topics: Topics,
    rate: float | None = None,
    progress: Callable[[int, int], None] | None = None,
    *,
    max_request_size: int = MAX_REQUEST_SIZE,
) -> PublishReport:
    """Send a JSONL file's events, raw, at ``rate`` events/s (None: at once); wait for acks.

    ``progress(bytes_read, file_size)`` is called as the file is read. A line that cannot be
    routed, is too large, or is refused by the brokers is reported, and the rest goes on.
    """
    if rate is not None and rate <= 0:
        raise ValueError(f"rate must be positive (events per second), not {rate}")
    report = PublishReport()
    size = path.stat().st_size
    pacer = _Pacer(rate) if rate is not None else None
    started = time.monotonic()
    publisher = EventPublisher(
        bootstrap, topics, validate=False, max_request_size=max_request_size,
        on_refused=lambda line, error: report.add_not_sent(line, _refusal_reason(error)),
    )  # fmt: skip
    async with publisher:
        done = 0
        with path.open("rb") as lines:
            for number, line in enumerate(lines, 1):
                done += len(line)
                if progress is not None and number % _PROGRESS_EVERY == 0:
                    progress(done, size)
                if not line.strip():
                    continue
                value = line.rstrip(b"\r\n")
                route = route_line(value, topics)
                if isinstance(route, str):
                    report.add_not_sent(number, route)
                    continue
                if pacer is not None:
                    await pacer.wait()
                try:
                    await publisher.publish_raw(route[0], route[1], value, number)
                except EventTooLargeError as exc:
                    report.add_not_sent(number, str(exc))
        await publisher.flush()
        report.published = dict(publisher.delivered)
    report.elapsed = time.monotonic() - started
    if progress is not None:
        progress(size, size)
    return report


class _Pacer:
    """Spaces calls ``1/rate`` apart on the monotonic clock, exact over the long run.

    Each call has a due time on a fixed schedule, so sleep overshoot is made up by the next
    calls instead of accumulating; after a stall it catches up at most ``_MAX_CATCH_UP``
    seconds' worth at full speed (the bucket's depth).
    """

    def __init__(self, rate: float) -> None:
        self.interval = 1.0 / rate
        self.due = time.monotonic()

    async def wait(self) -> None:
        now = time.monotonic()
        if self.due > now:
            await asyncio.sleep(self.due - now)
        elif now - self.due > _MAX_CATCH_UP:
            self.due = now - _MAX_CATCH_UP
        self.due += self.interval
