"""The relays from the store to Kafka, run beside every driver.

- records: decision records and dead letters that batches queued in the store are produced to
  the output topics (``signals``, ``actions``, ``messages``, ``dlq``; acks=all) and deleted
  from the store only after the broker acknowledged them: at least once, never lost (ids are
  deterministic, so a consumer can drop a repeat);
- timers: timers due are produced as ``timer.fired`` events to the timers topic, keyed by
  customer, and go through the core like any event. "Due" is the earlier of the wall clock and
  the driver's event-time limit (``limit``): while the worker is applying events older than the
  wall clock (a backlog, a recording), a timer is released only once the events before its due
  time have been applied, as replay's clock does; when the worker is idle the wall clock rules.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

import orjson
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from outreach.store import PendingRecord, Store, TimerRow
from outreach.streams.processor import timer_event
from outreach.streams.topics import Topics

log = logging.getLogger(__name__)
_CHUNK = 2000


def timer_value(row: TimerRow) -> bytes:
    """The ``timer.fired`` event for a due timer row, as the JSON the timers topic carries."""
    event = timer_event(row.timer_id, row.customer_id, row.due_at, "timer-relay")
    return orjson.dumps(event.model_dump(mode="json"))


class Relay:
    """Moves what the store holds for Kafka to Kafka."""

    def __init__(
        self,
        store: Store,
        topics: Topics,
        bootstrap: str,
        *,
        timer_poll: float = 0.5,
        limit: Callable[[], float] | None = None,
    ) -> None:
        self.store = store
        self.limit = limit  # the driver's event-time limit for timers (None: the wall clock)
        self.topics = topics
        self.timer_poll = timer_poll
        self.producer = AIOKafkaProducer(
            bootstrap_servers=bootstrap, acks="all", enable_idempotence=False, linger_ms=5
        )
        self.relayed = 0
        self.timers_published = 0
        self.last_published = 0.0  # time.monotonic() of the last timer or record produced
        self._wake = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._names = {
            "signals": topics.signals, "actions": topics.actions,
            "messages": topics.messages, "receipts": topics.receipts, "dlq": topics.dlq,
            "customers": topics.customers,  # feedback events from the dispatcher
        }  # fmt: skip

    async def start(self) -> None:
        """Connect the producer."""
        self._loop = asyncio.get_running_loop()
        await self.producer.start()

    async def stop(self) -> None:
        """Relay what is left, then disconnect."""
        try:
            await self.relay_once()
        finally:
            await self.producer.stop()

    def wake(self) -> None:
        """A batch committed records: relay them now rather than at the next tick."""
        self._wake.set()

    def _publish_sync(self, sends: list[tuple[str, bytes | None, bytes]]) -> None:
        """Produce and wait for the acks, from the store's thread (it holds the rows' lock)."""
        assert self._loop is not None
        asyncio.run_coroutine_threadsafe(self._send_all(sends), self._loop).result()

    async def _send_all(self, sends: list[tuple[str, bytes | None, bytes]]) -> None:
        pending = [await self.producer.send(topic, value, key=key) for topic, key, value in sends]
        await asyncio.gather(*pending)

    async def relay_once(self) -> int:
        """Relay every record waiting in the store; returns how many."""

        def publish(rows: list[PendingRecord]) -> None:
            self._publish_sync([(self._names[r.topic], r.key, r.value) for r in rows])

        total = await _drain(lambda: self.store.take_records(_CHUNK, publish))
        self.relayed += total
        if total:
            self.last_published = time.monotonic()
        return total

    async def publish_due_timers(self, now: float | None = None) -> int:
        """Publish every timer due by ``now`` (default: the wall clock); returns how many."""

        def publish(rows: list[TimerRow]) -> None:
            self._publish_sync([
                (self.topics.timers, r.customer_id.encode(), timer_value(r)) for r in rows
            ])  # fmt: skip

        at = time.time() if now is None else now
        if self.limit is not None:
            at = min(at, self.limit())
        total = await _drain(lambda: self.store.take_due_timers(at, _CHUNK, publish))
        self.timers_published += total
        if total:
            self.last_published = time.monotonic()
        return total

    async def run(self, stop: asyncio.Event) -> None:
        """Relay records when woken (or every second) and due timers every ``timer_poll``."""
        await asyncio.gather(self._records(stop), self._timers(stop))

    async def _records(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=1.0)
            self._wake.clear()
            try:
                await self.relay_once()
            except KafkaError as exc:
                if not exc.retriable:  # e.g. a record too large, no authorisation: say so, stop
                    raise
                log.warning("relay: producing records failed (%r); will retry", exc)
            except Exception:  # the records stay in the store; the next round retries them
                log.exception("relay: producing records failed; will retry")

    async def _timers(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self.publish_due_timers()
            except Exception:
                log.exception("relay: publishing due timers failed; will retry")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=self.timer_poll)


async def _drain(take: Callable[[], int]) -> int:
    """Call ``take`` (a store call handing out at most ``_CHUNK`` rows) in a thread until it
    hands out less than a full chunk; returns the total."""
    total = 0
    while True:
        done = await asyncio.to_thread(take)
        total += done
        if done < _CHUNK:
            return total
