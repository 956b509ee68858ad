"""The ``EventSink`` port: where the HTTP app sends the facts it receives.

``KafkaEventSink`` publishes each event to the engine's input topic for its type, keyed by
``customer_id``, and returns only once the brokers acknowledged it (acks=all), so a webhook
answers 200 only for facts that are safe in Kafka. ``FakeEventSink`` records what it was
given (and can be told to fail) for tests.

Must not import: faust, sqlalchemy, fastapi.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Protocol

from outreach.errors import OutreachError
from outreach.events import Event
from outreach.streams.publish import EventPublisher, PublishError
from outreach.streams.topics import Topics, ensure_topics

log = logging.getLogger(__name__)


class EventSink(Protocol):
    """Publishes one event; raises if it was not accepted (the caller answers 5xx)."""

    async def publish(self, event: Event) -> None:
        """Publish ``event``, keyed by its customer; returns once it is durable."""
        ...

    async def dead_letter(self, key: bytes | None, value: bytes) -> None:
        """Publish a dead letter (an invalid item posted to ``/v1/events``) to the DLQ."""
        ...

    def ready(self) -> bool:
        """Whether it can publish now."""
        ...


class FakeEventSink:
    """Records the events it is given, in order; raises ``failure`` instead if it is set."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.dead_letters: list[tuple[bytes | None, bytes]] = []
        self.failure: Exception | None = None

    async def publish(self, event: Event) -> None:
        """Record ``event`` (or raise ``failure``)."""
        if self.failure is not None:
            raise self.failure
        self.events.append(event)

    async def dead_letter(self, key: bytes | None, value: bytes) -> None:
        """Record a dead letter (or raise ``failure``)."""
        if self.failure is not None:
            raise self.failure
        self.dead_letters.append((key, value))

    def ready(self) -> bool:
        """Ready unless told to fail."""
        return self.failure is None


class KafkaEventSink:
    """Publishes to the engine's input topics; start it inside the running event loop."""

    def __init__(
        self, bootstrap: str, topics: Topics, partitions: int, replication: int | None = None
    ) -> None:
        self.bootstrap = bootstrap
        self.topics = topics
        self.partitions = partitions
        self.replication = replication  # None: ensure_topics's default
        self._publisher: EventPublisher | None = None

    async def start(self) -> None:
        """Create the topics that are missing (the worker's layout) and connect."""
        await ensure_topics(
            self.bootstrap, self.topics, self.partitions, replication_factor=self.replication
        )
        publisher = EventPublisher(self.bootstrap, self.topics, client_id="outreach-api")
        await publisher.start()
        self._publisher = publisher

    async def stop(self) -> None:
        """Disconnect (events not acknowledged were already reported to their callers)."""
        publisher, self._publisher = self._publisher, None
        if publisher is None:
            return
        try:
            await publisher.stop()
        except PublishError as exc:
            log.warning("api: %s", exc)

    @contextlib.asynccontextmanager
    async def lifespan(self, _app: object) -> AsyncIterator[None]:
        """Started while the server runs (``create_app(..., lifespan=sink.lifespan)``)."""
        await self.start()
        try:
            yield
        finally:
            await self.stop()

    async def publish(self, event: Event) -> None:
        """Publish ``event`` and wait for the brokers' acknowledgement."""
        if self._publisher is None:
            raise OutreachError("the Kafka event sink is not started")
        acked = await self._publisher.publish(event)
        await acked

    async def dead_letter(self, key: bytes | None, value: bytes) -> None:
        """Publish a dead letter to the DLQ topic and wait for the acknowledgement."""
        if self._publisher is None:
            raise OutreachError("the Kafka event sink is not started")
        acked = await self._publisher.publish_raw(self.topics.dlq, key, value)
        await acked

    def ready(self) -> bool:
        """Started (connected to the brokers)."""
        return self._publisher is not None
