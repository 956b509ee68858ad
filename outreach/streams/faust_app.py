"""The Faust driver: a faust-streaming app whose agent applies batches through the store.

The agent consumes the five input topics and the timers topic as raw bytes, takes events in
batches (``stream.take_events``) and hands them to the same ``BatchProcessor`` as the aiokafka
driver, in a thread. Faust acks a batch's events only after the agent's loop body returns (that
is, after the store transaction committed) and commits acked offsets in the background; a
batch redelivered after a crash is skipped by the store's positions, so Faust's commit timing
never causes a double application. Faust's ``exactly_once`` mode is not used (broken upstream,
and the embedded broker rejects the transactional producer).

The store's positions are the truth, as with the aiokafka driver: whenever Faust seeks its
partitions to Kafka's committed offsets (on assignment, and when it resumes after a rebalance),
``StoreSeekingConsumer`` then seeks each to the position the store has applied (the beginning
if none), so a committed offset ahead of the store never skips a record.

A batch whose apply fails with anything but a database outage (which is waited out, the batch
held) stops the process: the agent reports the error through ``failed``, applies nothing more,
and from then on the consumer commits no offset. Letting the exception out lost the batch:
faust-streaming's ``take_events`` acks the buffered events in a ``finally``, the agent's
supervisor restarted it on the next records, and the acked offsets were committed. (Holding the
batch unacked instead hangs the app's stop, which waits for every event to be acked.)

Stopping while the database is away (``stop`` set while a batch is held for an outage): the
agent gives the batch up rather than wait for the database, since the app's stop waits for
that batch's events to be acked and would never return. As after a failed batch, it applies
nothing more and the consumer commits no offset from then on (``gave_up``), so Kafka's
committed offsets stay behind what the store applied; but this is a clean stop, not a failure
(exit code 0), logged as such: the batch is applied on the next start, which seeks to the
store's positions.

What the Faust driver does not do, and why ``outreach worker`` uses the aiokafka driver by
default: event-time alignment across partitions (Faust merges its topics' streams in fetch
order), and throughput: Faust's per-event machinery caps it well below the aiokafka driver
(see the README for the figures ``make bench`` printed).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path
from typing import Any, cast

import faust
from faust.transport.drivers.aiokafka import Consumer

from outreach.store.operator import Operator
from outreach.streams.codec import Record
from outreach.streams.outage import Outage, unavailable
from outreach.streams.processor import BatchProcessor, BatchResult
from outreach.streams.relay import Relay
from outreach.streams.topics import Topics

log = logging.getLogger(__name__)


class BatchFailedError(RuntimeError):
    """A batch could not be applied (not a database outage): the worker stops with it unacked."""


class OutreachApp(faust.App):
    """A Faust app whose consumer seeks to what ``processor`` has applied and commits nothing
    once ``failed`` is done or ``gave_up`` is true."""

    processor: BatchProcessor
    failed: asyncio.Future[None]
    gave_up: bool  # stopped during a database outage with a batch held, not applied


class StoreSeekingConsumer(Consumer):
    """Faust's aiokafka consumer, moving each assigned partition on to the store's position
    after Faust seeks them to Kafka's committed offsets (module docstring)."""

    async def commit(self, *args: Any, **kwargs: Any) -> bool:
        """Commit acked offsets, unless a batch failed or was given up at stop: its events are
        acked all the same (``take_events`` acks them in a ``finally``)."""
        app = cast(OutreachApp, self.app)
        if app.failed.done() or app.gave_up:
            return False
        return await super().commit(*args, **kwargs)

    async def perform_seek(self) -> None:
        await super().perform_seek()
        assigned = list(self.assignment())
        wanted = [(tp.topic, tp.partition) for tp in assigned]
        processor = cast(OutreachApp, self.app).processor
        positions = await processor.applied_positions(wanted, "faust worker")
        if positions is None:
            return
        # 0 (nothing applied) also clears Faust's read offset, or it would drop the records
        # below the committed offset as already seen; seek_wait seeks in the consumer's own
        # thread (aiokafka's consumer is not thread-safe) and waits for the positions
        wanted_at = {tp: positions.get((tp.topic, tp.partition), 0) for tp in assigned}
        await self.seek_wait(wanted_at)
        for tp, at in wanted_at.items():
            # and Faust's idea of the committed offset follows: left at Kafka's, a store more
            # than one record ahead reads to Faust as a gap before the first acked offset,
            # and it would never commit that partition again
            self._committed_offset[tp] = at or None


def caught_up(app: OutreachApp) -> bool:
    """Whether every partition the app's consumer is assigned has been applied, as the store
    says, up to the high watermark its last fetch answered (False while nothing is assigned,
    as during a group join, or a partition has had no fetch answered yet). A plain read of
    the positions (the batch's read locks the partitions' rows, which would hold up the
    worker's next batch). Blocks on the store: call it from a thread."""
    consumer = app.consumer
    highs: dict[tuple[str, int], int] = {}
    for tp in consumer.assignment():
        high = consumer.highwater(tp)
        if high is None:
            return False
        highs[tp.topic, tp.partition] = high
    if not highs:
        return False
    applied = Operator(app.processor.store).positions(app.processor.group)
    return all(applied.get(tp, 0) >= high for tp, high in highs.items())


def make_app(
    processor: BatchProcessor,
    relay: Relay,
    topics: Topics,
    bootstrap: str,
    *,
    group: str,
    totals: BatchResult,
    datadir: Path,
    failed: asyncio.Future[None],
    stop: asyncio.Event,
    batch_max: int = 5000,
    within: float = 0.1,
) -> OutreachApp:
    """A Faust app applying the engine's topics through ``processor`` (start it with
    ``await app.start()``; ``await app.stop()`` leaves the group). Faust keeps its own files
    in ``datadir`` (by default it would write ``<group>-data`` into the working directory),
    created here with its parents: Faust makes only the last level. ``failed`` gets the
    ``BatchFailedError`` of a batch that could not be applied: stop the app then. Set
    ``stop`` before ``app.stop()``: a batch held for a database outage is given up then."""
    datadir.mkdir(parents=True, exist_ok=True)
    app = OutreachApp(
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
    app.processor, app.failed, app.gave_up = processor, failed, False
    # the transport's consumer class (a class attribute) for this app's transport only
    app.transport.Consumer = StoreSeekingConsumer  # type: ignore[misc]
    source = app.topic(
        *topics.inputs, topics.timers, key_type=bytes, value_type=bytes,
        key_serializer="raw", value_serializer="raw",
    )  # fmt: skip

    outage = Outage("faust worker", log)

    @app.agent(source, name="apply")
    async def apply(stream: Any) -> None:
        async for events in stream.take_events(batch_max, within=within):
            # stopping after a failed or given-up batch: apply nothing more (a later batch
            # would move the store's positions past the one not applied)
            if failed.done() or app.gave_up:
                continue
            records = [_record(e.message) for e in events]
            try:
                result = await _apply(processor, records, outage, stop)
            except Exception as exc:
                _report(events, exc, failed)
                continue
            if result is None:
                app.gave_up = True  # before the events are acked: none of them is committed
                _give_up(events)
                continue
            totals.add(result)
            relay.wake()

    return app


async def _apply(
    processor: BatchProcessor, records: list[Record], outage: Outage, stop: asyncio.Event
) -> BatchResult | None:
    """Apply ``records``; while the database is away, the same batch again (unacked) after a
    backoff, until ``stop``: None then, nothing applied. A try under way when ``stop`` comes
    is finished (a store call cannot be interrupted), so a batch in hand with the database up
    is still applied."""
    while True:
        try:
            result = await asyncio.to_thread(processor.apply, records)
        except Exception as exc:
            if not unavailable(exc):
                raise
            delay = outage.failed(exc)
        else:
            outage.recovered()
            return result
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=delay)
        if stop.is_set():
            return None


def _report(events: list[Any], exc: Exception, failed: asyncio.Future[None]) -> None:
    """Report a batch that could not be applied (the process stops, committing nothing)."""
    first = events[0].message
    why = BatchFailedError(
        f"a batch of {len(events)} records from {first.topic}[{first.partition}] offset "
        f"{first.offset} on could not be applied: {exc!r}; nothing of it was committed, and "
        f"the next worker to own these partitions starts again from the store's positions"
    )
    why.__cause__ = exc
    if not failed.done():
        failed.set_exception(why)


def _give_up(events: list[Any]) -> None:
    """Say that a batch held for a database outage was not applied, as the worker stops."""
    first = events[0].message
    log.warning(
        "faust worker: stopping with the database away: a batch of %d records from %s[%d] "
        "offset %d on was held and not applied; no Kafka offset of it was committed, and what "
        "the store has not applied is applied on the next start (from its positions)",
        len(events), first.topic, first.partition, first.offset,
    )  # fmt: skip


def _record(message: Any) -> Record:
    """A Faust ``ConsumerMessage`` as a ``Record`` (Faust gives its timestamp in seconds, None
    when the Kafka record had none)."""
    return Record(
        message.topic, message.partition, message.offset, message.key, message.value,
        message.timestamp,
    )  # fmt: skip
