"""The live worker: an aiokafka consumer-group member that applies batches through the store.

Loop: fetch (``getmany``) -> decode -> align by event time -> apply in one store transaction
(in a thread, so heartbeats go on) -> commit the Kafka offsets -> wake the relay. Positions in
the store are the truth: on assignment each partition is moved to the store's position, and
a batch re-fetched after a crash is recognised and skipped record by record.

Beside the loop:
- the records relay: decision records and dead letters the batches queued in the store are
  produced to the output topics (``signals``, ``actions``, ``messages``, ``dlq``; acks=all) and
  deleted from the store after the broker acknowledged them (at least once; ids are
  deterministic);
- the clock: every ``beat_every`` seconds the worker reports in the store the latest event
  time it has applied while catching up (none once idle). The scheduler releases a timer only
  when every live worker's clock has reached it (``outreach.scheduling``).

The database away (``outreach.streams.outage``): a batch that cannot be applied is tried again,
the SAME batch, with capped backoff, while the consumer stays in its group with every partition
paused (it keeps polling, so Kafka does not think it dead) and no offset is committed; one log
line when the outage starts, one when it ends. Other database errors still stop the worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid
from dataclasses import dataclass, field

from aiokafka import (
    AIOKafkaConsumer,
    ConsumerRebalanceListener,
    ConsumerRecord,
    TopicPartition,
)
from aiokafka.errors import KafkaError

from outreach.store import Store
from outreach.store.schedule import Schedule
from outreach.streams.align import Aligner
from outreach.streams.codec import DeadLetter, Record
from outreach.streams.outage import Outage, unavailable
from outreach.streams.processor import BatchProcessor, BatchResult, Decoded
from outreach.streams.relay import Relay
from outreach.streams.topics import Topics
from outreach.telemetry import metrics

log = logging.getLogger(__name__)


class RelayStoppedError(RuntimeError):
    """The relay met an error retrying cannot mend; the worker stopped with it."""

    def __init__(self, why: str) -> None:
        super().__init__(
            f"the relay cannot produce to Kafka ({why}); the worker stopped. The decisions "
            "wait in the store (pending_records) and are relayed once the cause is fixed "
            "(the topic's ACLs, its max.message.bytes) and a worker runs again"
        )


@dataclass
class WorkerOptions:
    """Tuning of one worker (defaults suit the embedded broker and a small cluster)."""

    batch_max: int = 20_000  # records per store transaction at most (each customer's state is
    # read and written once per batch: larger batches amortise it; measured in `make bench`)
    partition_buffer: int = 5_000  # fetched, unreleased records per partition before pausing it
    poll_ms: int = 100  # getmany wait when nothing is buffered
    fetch_max_wait_ms: int = 100  # the broker's long-poll; aiokafka's 500 ms default sets p99
    align_wait: float = 2.0  # see Aligner.max_wait
    align_stall: float = 60.0  # see Aligner.max_stall
    beat_every: float = 0.5  # seconds between reports of the worker's clock to the store
    idle_after: float = 2.0  # caught up with nothing applied for this long: wall-clock timers
    session_timeout_ms: int = 10_000
    heartbeat_interval_ms: int = 2_000
    fetch_max_bytes: int = 16 * 1024 * 1024


@dataclass
class WorkerStats:
    """What the worker has done since it started (read by the live summary)."""

    totals: BatchResult = field(default_factory=BatchResult)
    batches: int = 0
    started: float = field(default_factory=time.monotonic)


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, worker: Worker) -> None:
        self.worker = worker

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        return None

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        inputs = set(self.worker.topics.inputs)
        metrics.WORKER_PARTITIONS.set(sum(1 for tp in assigned if tp.topic in inputs))
        await self.worker.assigned(assigned)


class Worker:
    """One process of the engine's consumer group."""

    def __init__(
        self,
        processor: BatchProcessor,
        store: Store,
        topics: Topics,
        bootstrap: str,
        *,
        group: str,
        options: WorkerOptions | None = None,
    ) -> None:
        self.processor = processor
        self.store = store
        self.topics = topics
        self.bootstrap = bootstrap
        self.group = group
        self.options = options or WorkerOptions()
        self.stats = WorkerStats()
        self.aligner = Aligner(max_wait=self.options.align_wait, max_stall=self.options.align_stall)
        self.relay = Relay(store, topics, bootstrap)
        self.schedule = Schedule(store)
        self.member = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.watermark = float("-inf")  # the latest occurred_at applied since the assignment
        self.assignments = 0  # assignments so far: a batch begun before the latest one is older
        self._consumer: AIOKafkaConsumer | None = None
        # every assigned partition fetched to its high watermark, by a fetch answered lately
        self.caught_up = False
        self._quiet_since: float | None = None  # monotonic start of the current caught-up spell
        self._unaligned: str | None = None  # why the aligner's last release was out of order
        self._unaligned_logged = float("-inf")  # when that was last logged as a warning
        self.applying = False  # a batch is being applied right now
        self.outage = Outage("worker", log)  # applying batches while the database is away
        # a short cap: the scheduler waits a few seconds after an outage for clocks to come back
        self._beat_outage = Outage("worker clock", log, cap=1.0)
        self._stop = asyncio.Event()  # the run's stop event (set by ``run``)
        # seconds spent paused in database outages: the aligner's clock leaves them out, or
        # every partition (paused by us, not stalled) would look stuck and alignment be dropped
        self._paused = 0.0

    async def _commit(self, consumer: AIOKafkaConsumer, offsets: dict[TopicPartition, int]) -> None:
        """Commit Kafka offsets: a hint only (the store's positions are the truth), so a
        partition lost in a rebalance meanwhile or a commit refused during one is logged, not
        fatal; its next owner starts from the store's position anyway."""
        owned = consumer.assignment()
        mine = {tp: offset for tp, offset in offsets.items() if tp in owned}
        if not mine:
            return
        try:
            await consumer.commit(mine)
        except KafkaError as exc:  # CommitFailedError, IllegalStateError, broker errors
            log.warning("worker: offset commit skipped (%r); the store has the positions", exc)

    def timer_limit(self) -> float:
        """Event time up to which timers may fire as far as this worker knows: the latest
        event applied since its last assignment (nothing before a partition it was just given
        has been applied yet); unlimited (the wall clock rules) once idle for ``idle_after``
        seconds."""
        since = self._quiet_since
        if since is None or not self.caught_up or self.aligner.buffered or self.applying:
            return self.watermark
        idle = time.monotonic() - max(self.stats.totals.last_applied, since)  # since >= start
        return float("inf") if idle >= self.options.idle_after else self.watermark

    def _fresh(self, consumer: AIOKafkaConsumer, tp: TopicPartition, now_ms: float) -> bool:
        """Whether ``tp``'s high watermark comes from a fetch the broker answered lately. A
        hung or unreachable broker leaves the last one standing, which looks caught up: the
        worker then passed for idle and the scheduler fired by the wall clock timers that the
        records still to come (published through the same outage) precede in event time."""
        polled = consumer.last_poll_timestamp(tp)
        limit = self.options.fetch_max_wait_ms + 1000  # a long-poll, plus a busy event loop
        return polled is not None and now_ms - polled <= limit

    async def assigned(self, partitions: list[TopicPartition]) -> None:
        """Seek every assigned partition to what the store says was applied (the beginning if
        nothing was): the aligner has just dropped what it had buffered, so the consumer must
        read it again, kept partitions included, whatever Kafka's committed offsets say."""
        consumer = self._consumer
        assert consumer is not None
        self.aligner.assign((tp.topic, tp.partition) for tp in partitions)
        self.watermark = float("-inf")  # new partitions may hold older events: hold timers
        self.assignments += 1
        wanted = [(tp.topic, tp.partition) for tp in partitions]
        positions = await self.processor.applied_positions(wanted, "worker")
        if positions is None:
            return
        fresh = []
        for tp in partitions:
            at = positions.get((tp.topic, tp.partition))
            if at:
                consumer.seek(tp, at)
            else:
                fresh.append(tp)
        if fresh:
            await consumer.seek_to_beginning(*fresh)
        log.info("worker: assigned %s", sorted(f"{t}[{p}]" for t, p in wanted))

    async def run(self, stop: asyncio.Event) -> None:
        """Consume, apply and relay until ``stop`` is set; then finish the batch in hand,
        relay what it queued, commit, and leave the group."""
        opts = self.options
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap,
            group_id=self.group,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            session_timeout_ms=opts.session_timeout_ms,
            heartbeat_interval_ms=opts.heartbeat_interval_ms,
            rebalance_timeout_ms=opts.session_timeout_ms,
            fetch_max_bytes=opts.fetch_max_bytes,
            fetch_max_wait_ms=opts.fetch_max_wait_ms,
            max_partition_fetch_bytes=opts.fetch_max_bytes // 4,
        )
        self._consumer = consumer
        self._stop = stop
        consumer.subscribe([*self.topics.inputs, self.topics.timers], listener=_Rebalance(self))
        relaying: asyncio.Future[tuple[None, None]] | None = None
        try:
            await self.relay.start()
            await consumer.start()
            relaying = asyncio.gather(self.relay.run(stop), self._beat(stop))
            # the relay stops only on an error retrying cannot mend (a record too large, no
            # authorisation): then so does the worker, or decisions would pile up unrelayed
            relaying.add_done_callback(lambda _: stop.set())
            await self.relay.relay_once()  # what a previous run committed but had not relayed
            while not stop.is_set():
                await self._step()
            if relaying.done() and not relaying.cancelled() and relaying.exception():
                raise RelayStoppedError(str(relaying.exception())) from relaying.exception()
        finally:
            if relaying is not None:
                relaying.cancel()
                await asyncio.gather(relaying, return_exceptions=True)
            try:
                await consumer.stop()
            finally:
                try:
                    await self.relay.stop()
                finally:
                    try:
                        await asyncio.to_thread(self.schedule.leave, self.group, self.member)
                    except Exception:  # its clock ages out of the scheduler's view instead
                        log.warning("worker: could not withdraw the clock", exc_info=True)

    async def _beat(self, stop: asyncio.Event) -> None:
        """Report this worker's clock (``timer_limit``) to the store until ``stop``."""
        outage = self._beat_outage
        while not stop.is_set():
            wait = self.options.beat_every
            try:
                limit = self.timer_limit()
                await asyncio.to_thread(self.schedule.beat, self.group, self.member, limit)
                outage.recovered()
            except Exception as exc:  # the database is away: the scheduler treats us as silent
                if not unavailable(exc):
                    log.exception("worker: reporting the clock failed; will retry")
                else:
                    wait = max(wait, outage.failed(exc))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=wait)

    async def _step(self) -> None:
        consumer = self._consumer
        assert consumer is not None
        wait = self.options.poll_ms if not self.aligner.buffered else 10
        # memory stays bounded: a partition with a batch's worth buffered is not fetched
        # further until the aligner has released some of it
        full = [
            tp for tp in consumer.assignment()
            if self.aligner.backlog((tp.topic, tp.partition)) >= self.options.partition_buffer
        ]  # fmt: skip
        consumer.resume(*(set(consumer.assignment()) - set(full)))
        if full:
            consumer.pause(*full)
        fetched = await consumer.getmany(timeout_ms=wait, max_records=self.options.batch_max)
        self._buffer(fetched)
        caught_up = set()
        now_ms = time.time() * 1000
        for tp in consumer.assignment():
            high = consumer.highwater(tp)
            if high is not None and await consumer.position(tp) >= high:
                caught_up.add((tp.topic, tp.partition))
        assignment = consumer.assignment()
        self.caught_up = (
            bool(assignment) and len(caught_up) == len(assignment)
            and all(self._fresh(consumer, tp, now_ms) for tp in assignment)
        )  # fmt: skip
        if not self.caught_up or self.aligner.buffered:
            self._quiet_since = None
        elif self._quiet_since is None:
            self._quiet_since = time.monotonic()
        now = time.monotonic() - self._paused
        ready = self.aligner.release(caught_up, now, self.options.batch_max)
        self._note_alignment()
        if not ready:
            return
        if self.aligner.unaligned_by is not None:
            metrics.WORKER_UNALIGNED.labels(self.aligner.unaligned_by).inc()
        self.applying = True
        generation = self.assignments
        try:
            result = await self._apply(consumer, ready)
        finally:
            self.applying = False
        if result is None:  # stopped during a database outage: nothing applied or committed
            return
        # a rebalance that completed while the batch applied reset the clock for partitions
        # that may hold older events; the batch's times (some of partitions now gone) must not
        # set it again, or timers would be released ahead of those events
        for _, event in reversed(ready if generation == self.assignments else ()):
            if not isinstance(event, DeadLetter):
                self.watermark = max(self.watermark, event.occurred_at.timestamp())
                break
        offsets: dict[TopicPartition, int] = {}
        for record, _ in ready:
            tp = TopicPartition(record.topic, record.partition)
            offsets[tp] = max(offsets.get(tp, 0), record.offset + 1)
        await self._commit(consumer, offsets)
        self.stats.totals.add(result)
        self.stats.batches += 1
        self.relay.wake()

    def _note_alignment(self) -> None:
        """Log when the aligner stops keeping event-time order (decisions taken meanwhile may
        differ from replay's, docs/live-runtime.md) and when it keeps it again; at most one
        warning a minute, the others at debug level."""
        why, was = self.aligner.unaligned, self._unaligned
        self._unaligned = why
        if why is not None and was is None:
            now = time.monotonic()
            loud = now - self._unaligned_logged >= 60.0
            if loud:
                self._unaligned_logged = now
            log.log(logging.WARNING if loud else logging.DEBUG,
                    "worker: applying records out of event-time order: %s", why)  # fmt: skip
        elif why is None and was is not None:
            log.debug("worker: event-time order kept again")

    async def _apply(self, consumer: AIOKafkaConsumer, ready: list[Decoded]) -> BatchResult | None:
        """Apply ``ready`` in one transaction; while the database is away, try the same batch
        again with backoff (None if ``stop`` came first). Meanwhile every partition is paused
        and the consumer keeps polling, so it stays in its group without fetching more."""
        began = time.monotonic()
        while True:
            try:
                result = await asyncio.to_thread(self.processor.apply_decoded, ready)
            except Exception as exc:
                if not unavailable(exc):
                    raise
                delay = self.outage.failed(exc)
            else:
                if self.outage.ongoing:
                    self._paused += time.monotonic() - began
                self.outage.recovered()
                return result
            if self._stop.is_set():
                self._give_up(ready)
                return None
            consumer.pause(*consumer.assignment())
            # a rebalance meanwhile may hand over new partitions (not paused yet): keep what
            # they bring in the aligner rather than dropping it
            self._buffer(await consumer.getmany(timeout_ms=int(delay * 1000)))
            if self._stop.is_set():
                self._give_up(ready)
                return None

    def _give_up(self, ready: list[Decoded]) -> None:
        """Say that the batch held for a database outage was not applied, as the worker stops
        (no Kafka offset of it is committed; the next start reads it again from the store's
        positions)."""
        first = ready[0][0]
        log.warning(
            "worker: stopping with the database away: a batch of %d records from %s[%d] "
            "offset %d on was held and not applied; no Kafka offset of it was committed, and "
            "what the store has not applied is applied on the next start (from its positions)",
            len(ready), first.topic, first.partition, first.offset,
        )  # fmt: skip

    def _buffer(self, fetched: dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]) -> None:
        """Decode fetched messages into the aligner."""
        decode = self.processor.decode
        for tp, msgs in fetched.items():
            self.aligner.add((tp.topic, tp.partition), [decode(_record(m)) for m in msgs])


def _record(message: ConsumerRecord[bytes, bytes]) -> Record:
    """An aiokafka ``ConsumerRecord`` as a ``Record`` (its timestamp is in milliseconds)."""
    stamp = message.timestamp
    return Record(
        message.topic, message.partition, message.offset, message.key, message.value,
        None if stamp is None else stamp / 1000,
    )  # fmt: skip
