"""One-shot start-up step of the compose file (service ``init``): wait for PostgreSQL and Kafka,
bring the store's schema to the latest Alembic revision, create the engine's topics, exit 0.

Every engine process would do both on its own (``Store.migrate`` holds a PostgreSQL advisory
lock, ``ensure_topics`` tolerates a topic another process created first); doing it once before
they start gives one place where a wrong URL, a refused password or a broker that refuses
topics shows up, and the other services start only if it succeeded.

Reads the engine's variables: ``OUTREACH_DATABASE_URL``, ``OUTREACH_KAFKA_URL``,
``OUTREACH_TOPIC_PREFIX``, ``OUTREACH_PARTITIONS``; ``OUTREACH_PREPARE_TIMEOUT`` (seconds,
default 120) bounds the wait. ``OUTREACH_REPLICATION_FACTOR`` (default: 3, or the number of
brokers if fewer, so 1 with the compose file's single broker) is the replication of the topics
it creates, as for the worker, the API and ``outreach publish``.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import Callable
from typing import TypeVar

from outreach.store.store import Store, StoreSettings
from outreach.streams.topics import KafkaSettings, Topics, ensure_topics

T = TypeVar("T")


def _retry(what: str, attempt: Callable[[], T], deadline: float) -> T:
    """``attempt()`` until it succeeds or ``deadline`` (monotonic) passes, then re-raise."""
    while True:
        try:
            return attempt()
        except Exception as exc:
            if time.monotonic() >= deadline:
                print(f"prepare: {what} failed for good: {exc}", file=sys.stderr)
                raise
            print(f"prepare: {what} not yet ({type(exc).__name__}); retrying", file=sys.stderr)
            time.sleep(2)


def main() -> int:
    """Migrate the store and create the topics; the exit code the compose file waits for."""
    deadline = time.monotonic() + float(os.environ.get("OUTREACH_PREPARE_TIMEOUT", "120"))
    kafka = KafkaSettings()
    if not kafka.kafka_url:
        print("prepare: OUTREACH_KAFKA_URL is not set", file=sys.stderr)
        return 2
    store = Store(StoreSettings().database_url)
    try:
        _retry("migrating the store", store.migrate, deadline)
    finally:
        store.close()
    topics = Topics(kafka.topic_prefix)
    replication = kafka.replication_factor

    def create() -> None:
        asyncio.run(
            ensure_topics(
                kafka.kafka_url or "", topics, kafka.partitions, replication_factor=replication
            )
        )

    _retry("creating the topics", create, deadline)
    print(
        f"prepare: store migrated; topics ready on {kafka.kafka_url} "
        f"({kafka.partitions} partitions): {', '.join(topics.all)}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
