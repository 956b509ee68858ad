"""The records relay from the store to Kafka, run beside every driver.

Decision records and dead letters that batches queued in the store are produced to the output
topics (``signals``, ``actions``, ``messages``, ``receipts``, ``dlq``; acks=all) and deleted
from the store only after the broker acknowledged them: at least once, never lost (ids are
deterministic, so a consumer can drop a repeat). Timers are not relayed here: the scheduler
(``outreach.scheduling``) produces them.

Several workers' relays on one store take turns (``Store.take_records``: a PostgreSQL advisory
lock, or ``flock`` on ``<database file>.relay.lock`` for a SQLite file), so each id's records
reach their topic in the order they were written. A turn is waited for in the store's thread,
never on the event loop, and taken only while there are records to relay, one chunk at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from outreach.store import PendingRecord, Store
from outreach.streams.outage import Outage, unavailable
from outreach.streams.topics import Topics

log = logging.getLogger(__name__)
_CHUNK = 2000


class Relay:
    """Moves what the store holds for Kafka to Kafka."""

    def __init__(
        self,
        store: Store,
        topics: Topics,
        bootstrap: str,
    ) -> None:
        self.store = store
        self.topics = topics
        self.producer = AIOKafkaProducer(
            bootstrap_servers=bootstrap, acks="all", enable_idempotence=False, linger_ms=5
        )
        self.relayed = 0
        self.last_published = 0.0  # time.monotonic() of the last record produced
        self._wake = asyncio.Event()
        self.outage = Outage("relay", log)  # the database away: records wait in the store
        self._loop: asyncio.AbstractEventLoop | None = None
        self._names = {
            "signals": topics.signals, "actions": topics.actions,
            "messages": topics.messages, "receipts": topics.receipts, "dlq": topics.dlq,
            # events from the dispatcher: delivery outcomes, new states a connector reported
            "customers": topics.customers, "shipments": topics.shipments,
            "payments": topics.payments, "usage": topics.usage, "renewals": topics.renewals,
        }  # fmt: skip

    async def start(self) -> None:
        """Connect the producer."""
        self._loop = asyncio.get_running_loop()
        await self.producer.start()

    async def stop(self) -> None:
        """Relay what is left, then disconnect."""
        try:
            await self.relay_once()
        except KafkaError as exc:  # what stopped the relay, if anything: said once already
            log.warning("relay: stopping with records not relayed (%r); they wait in the store "
                        "for the next worker", exc)  # fmt: skip
        except Exception as exc:
            if not unavailable(exc):
                raise
            log.warning("relay: stopping with the database away; its records wait in the store")
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

    async def run(self, stop: asyncio.Event) -> None:
        """Relay records when woken (or every second) until ``stop``."""
        wait = 1.0
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=wait)
            self._wake.clear()
            wait = 1.0
            try:
                await self.relay_once()
                self.outage.recovered()
            except KafkaError as exc:
                if not exc.retriable:  # e.g. a record too large, no authorisation: say so, stop
                    log.error("relay: producing records failed, and retrying cannot mend "
                              "it: %r", exc)  # fmt: skip
                    raise
                log.warning("relay: producing records failed (%r); will retry", exc)
            except Exception as exc:  # the records stay in the store; the next round retries
                if unavailable(exc):  # one line per outage, not one per second
                    wait = max(wait, self.outage.failed(exc))
                else:
                    log.exception("relay: producing records failed; will retry")


async def _drain(take: Callable[[], int]) -> int:
    """Call ``take`` (a store call handing out at most ``_CHUNK`` rows) in a thread until it
    hands out less than a full chunk; returns the total."""
    total = 0
    while True:
        done = await asyncio.to_thread(take)
        total += done
        if done < _CHUNK:
            return total
