"""The Faust driver: a faust-streaming app whose agent applies batches through the store.

The agent consumes the five input topics and the timers topic as raw bytes, takes events in
batches (``stream.take_events``) and hands them to the same ``BatchProcessor`` as the aiokafka
driver, in a thread. Faust acks a batch's events only after the agent's loop body returns (that
is, after the store transaction committed) and commits acked offsets in the background; a
batch redelivered after a crash is skipped by the store's positions, so Faust's commit timing
never causes a double application. Faust's ``exactly_once`` mode is not used (broken upstream,
and the embedded broker rejects the transactional producer).

What the Faust driver does not do, and why ``outreach worker`` uses the aiokafka driver by
default: event-time alignment across partitions (Faust merges its topics' streams in fetch
order), seeking to the store's positions on assignment (it trusts Kafka's committed offsets,
which are only a hint here), and throughput: Faust's per-event machinery caps it well below
the aiokafka driver (see the README for the figures ``make bench`` printed).
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import faust

from outreach.streams.codec import Record
from outreach.streams.outage import Outage, unavailable
from outreach.streams.processor import BatchProcessor, BatchResult
from outreach.streams.relay import Relay
from outreach.streams.topics import Topics

log = logging.getLogger(__name__)


def make_app(
    processor: BatchProcessor,
    relay: Relay,
    topics: Topics,
    bootstrap: str,
    *,
    group: str,
    totals: BatchResult,
    datadir: Path,
    batch_max: int = 5000,
    within: float = 0.1,
) -> faust.App:
    """A Faust app applying the engine's topics through ``processor`` (start it with
    ``await app.start()``; ``await app.stop()`` leaves the group). Faust keeps its own files
    in ``datadir`` (by default it would write ``<group>-data`` into the working directory),
    created here with its parents: Faust makes only the last level."""
    datadir.mkdir(parents=True, exist_ok=True)
    app = faust.App(
        group,
        broker=f"kafka://{bootstrap}",
        datadir=str(datadir),
        key_serializer="raw",
        value_serializer="raw",
        web_enabled=False,
        topic_allow_declare=False,  # the runtime creates the topics (same partitions for all)
        topic_disable_leader=True,  # no Faust-internal leader topic
        consumer_auto_offset_reset="earliest",
        producer_acks=-1,
        broker_session_timeout=10.0,
        broker_heartbeat_interval=2.0,
    )
    source = app.topic(
        *topics.inputs, topics.timers, key_type=bytes, value_type=bytes,
        key_serializer="raw", value_serializer="raw",
    )  # fmt: skip

    outage = Outage("faust worker", log)

    @app.agent(source, name="apply")
    async def apply(stream: Any) -> None:
        async for events in stream.take_events(batch_max, within=within):
            records = [_record(e.message) for e in events]
            while True:  # the database away: the same batch again, unacked, after a backoff
                try:
                    result = await asyncio.to_thread(processor.apply, records)
                except Exception as exc:
                    if not unavailable(exc):
                        raise
                    await asyncio.sleep(outage.failed(exc))
                    continue
                outage.recovered()
                break
            totals.add(result)
            relay.wake()

    return app


def _record(message: Any) -> Record:
    """A Faust ``ConsumerMessage`` as a ``Record`` (Faust gives its timestamp in seconds, None
    when the Kafka record had none)."""
    return Record(
        message.topic, message.partition, message.offset, message.key, message.value,
        message.timestamp,
    )  # fmt: skip
