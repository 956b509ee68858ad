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

Must not import: faust, sqlalchemy.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer  # type: ignore[import-untyped,unused-ignore]

from outreach.errors import OutreachError
from outreach.events import Event, parse_event
from outreach.streams.topics import Topics

ENGINE_ONLY_TYPES = frozenset({"timer.fired"})
REPORTED_UNROUTABLE = 20  # lines kept for display; all are counted
_PROGRESS_EVERY = 1024  # lines between progress callbacks
_MAX_CATCH_UP = 1.0  # seconds of sends a paced publisher may make up at full speed after a stall


class PublishError(OutreachError):
    """An event that was not published: it cannot be routed, or the brokers did not ack it."""


@dataclass(frozen=True)
class Unroutable:
    """A line of a JSONL file that was not sent, and why."""

    line: int
    reason: str


@dataclass
class PublishReport:
    """What ``publish_file`` did: acknowledged events per topic, lines not sent."""

    published: dict[str, int] = field(default_factory=dict)
    unroutable: int = 0
    unroutable_lines: list[Unroutable] = field(default_factory=list)  # the first 20
    elapsed: float = 0.0

    @property
    def total(self) -> int:
        """Events acknowledged, all topics together."""
        return sum(self.published.values())


class EventPublisher:
    """An async context manager that publishes events to the engine's input topics."""

    def __init__(
        self,
        bootstrap: str,
        topics: Topics | None = None,
        *,
        validate: bool = True,
        linger_ms: int = 5,
        client_id: str = "outreach-publisher",
    ) -> None:
        self.topics = topics or Topics()
        self.validate = validate
        self.delivered: Counter[str] = Counter()  # topic -> events acknowledged
        self._options: dict[str, Any] = {
            "bootstrap_servers": bootstrap,
            "client_id": client_id,
            "acks": "all",
            "enable_idempotence": False,  # Tansu refuses InitProducerId; keys keep the order
            "linger_ms": linger_ms,
            "max_batch_size": 256 * 1024,
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

    async def publish_raw(self, topic: str, key: bytes | None, value: bytes) -> asyncio.Future[Any]:
        """Queue bytes for a topic as they are; the returned future resolves when it is acked."""
        if self._producer is None:
            raise RuntimeError("the publisher is not started: use `async with EventPublisher(...)`")
        future: asyncio.Future[Any] = await self._producer.send(topic, value=value, key=key)
        self._pending.add(future)
        future.add_done_callback(lambda done: self._settle(topic, done))
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

    def _settle(self, topic: str, future: asyncio.Future[Any]) -> None:
        self._pending.discard(future)
        error = None if future.cancelled() else future.exception()
        if future.cancelled() or error is not None:
            self._failures.append(error or asyncio.CancelledError())
        else:
            self.delivered[topic] += 1


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
) -> PublishReport:
    """Send a JSONL file's events, raw, at ``rate`` events/s (None: at once); wait for acks.

    ``progress(bytes_read, file_size)`` is called as the file is read.
    """
    if rate is not None and rate <= 0:
        raise ValueError(f"rate must be positive (events per second), not {rate}")
    report = PublishReport()
    size = path.stat().st_size
    pacer = _Pacer(rate) if rate is not None else None
    started = time.monotonic()
    async with EventPublisher(bootstrap, topics, validate=False) as publisher:
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
                    report.unroutable += 1
                    if len(report.unroutable_lines) < REPORTED_UNROUTABLE:
                        report.unroutable_lines.append(Unroutable(number, route))
                    continue
                if pacer is not None:
                    await pacer.wait()
                await publisher.publish_raw(route[0], route[1], value)
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
