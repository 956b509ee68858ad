"""The API's consumer-lag probe against the session's broker: a partition's high watermark
(from a fetch) minus the store's applied position, for the records a batching producer wrote."""

from __future__ import annotations

import asyncio
from pathlib import Path

from aiokafka import AIOKafkaProducer

from outreach.api.metrics import kafka_lag
from outreach.store import Store
from outreach.store.operator import Operator
from outreach.streams.topics import Topics


async def produce(bootstrap: str, topic: str, counts: dict[int, int]) -> None:
    """``counts[p]`` records to partition ``p``, sent without waiting for each (so the
    producer batches them, as any real producer does)."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=False, acks="all")
    await producer.start()
    try:
        sent = [
            await producer.send(topic, b"x" * 100, key=b"k", partition=partition)
            for partition, count in counts.items()
            for _ in range(count)
        ]
        await asyncio.gather(*sent)
    finally:
        await producer.stop()


def applied(store: Store, group: str, topic: str, positions: dict[int, int]) -> None:
    store.run(
        lambda batch: batch.set_positions(group, {(topic, p): o for p, o in positions.items()})
    )


async def test_lag_is_the_high_watermark_minus_the_applied_position(
    kafka_bootstrap: str, topics: Topics, group_id: str, tmp_path: Path
) -> None:
    await produce(kafka_bootstrap, topics.payments, {0: 1000, 1: 3, 2: 250})
    store = Store(f"sqlite:///{tmp_path / 'outreach.db'}")
    store.migrate()
    try:
        # partition 3 has no records and nothing applied; partition 1 is applied to its end
        applied(store, group_id, topics.payments, {0: 400, 1: 3, 2: 0, 3: 0})
        applied(store, group_id, "no-such-topic", {0: 5})  # gone from the brokers: left out
        lag = await kafka_lag(kafka_bootstrap, Operator(store), group_id)
        assert lag == {
            (topics.payments, 0): 600,
            (topics.payments, 1): 0,
            (topics.payments, 2): 250,
            (topics.payments, 3): 0,
        }
        assert await kafka_lag(kafka_bootstrap, Operator(store), "other-group") == {}
    finally:
        store.close()
