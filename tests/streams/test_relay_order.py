"""Several relays on one store publish one at a time, so each id's records reach Kafka in the
order they were written (readers take the last record of an action or message as its state).
PostgreSQL: an advisory lock; a SQLite file: ``flock`` on ``<database file>.relay.lock``.

Each test makes the dangerous interleaving happen on purpose: the first relay has read its
rows and not yet published them; a second relay (another ``Store``, as another process would
have) starts, and the first goes on only once the second waits for the lock (seen in
``pg_stat_activity`` or ``/proc/locks``) or has published without waiting (the bug: the
assertions after say so)."""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from livesupport import read_topic, wait_for

from outreach.store import PendingRecord, Store
from outreach.streams.relay import Relay
from outreach.streams.topics import Topics


@pytest.fixture
def stores(database_url: str) -> Iterator[tuple[Store, Store]]:
    """Two stores on one migrated database: two workers' relays."""
    made = Store(database_url), Store(database_url)
    made[0].migrate()
    yield made
    for store in made:
        store.close()


def waits_for_relay_lock(store: Store) -> Callable[[], bool]:
    """Whether a session or thread now waits for the relay lock of ``store``'s database."""
    if store.postgres:
        query = sa.text(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND wait_event_type = 'Lock' AND wait_event = 'advisory'"
        )

        def waiting_session() -> bool:
            with store.engine.connect() as conn:
                return bool(conn.execute(query).scalar())

        return waiting_session
    locks = Path("/proc/locks")
    if not locks.exists():
        pytest.skip("needs Linux's /proc/locks to see a thread wait for a flock")
    lock_file = Path(f"{store.url.database}.relay.lock")

    def waiting_thread() -> bool:
        if not lock_file.exists():  # nobody took the lock (a store without one)
            return False
        # a waiter's line: "1: -> FLOCK  ADVISORY  WRITE <pid> <major:minor:inode> 0 EOF"
        mine = ["->", "FLOCK", "ADVISORY", "WRITE", str(os.getpid())]
        inode = f":{lock_file.stat().st_ino}"
        lines = (line.split() for line in locks.read_text().splitlines())
        return any(f[1:6] == mine and f[6].endswith(inode) for f in lines)

    return waiting_thread


def test_a_second_relay_does_not_publish_while_the_first_holds_the_records(
    stores: tuple[Store, Store],
) -> None:
    first, second = stores
    first.run(lambda b: b.add_records([("actions", b"act_1", bytes([i])) for i in range(4)]))
    first_holds, second_done = threading.Event(), threading.Event()
    published: list[tuple[str, list[bytes]]] = []
    second_waits = waits_for_relay_lock(second)

    def slow_publish(rows: list[PendingRecord]) -> None:
        first_holds.set()
        wait_for(lambda: second_done.is_set() or second_waits(), 10, "the second relay")
        published.append(("first", [r.value for r in rows]))

    def second_relay() -> None:
        assert first_holds.wait(10)
        second.take_records(2, lambda rows: published.append(("second", [r.value for r in rows])))
        second_done.set()

    errors: list[BaseException] = []

    def guarded(work: Callable[[], object]) -> None:
        try:
            work()
        except BaseException as exc:  # handed to the test thread below
            errors.append(exc)
            first_holds.set()  # neither side waits for a partner that failed

    threads = [
        threading.Thread(target=guarded, args=(lambda: first.take_records(2, slow_publish),)),
        threading.Thread(target=guarded, args=(second_relay,)),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(20)
    assert not any(t.is_alive() for t in threads), "a relay is still running (deadlock?)"
    if errors:
        raise errors[0]
    assert published == [("first", [b"\x00", b"\x01"]), ("second", [b"\x02", b"\x03"])]
    assert first.count("pending_records") == 0


class HeldRelay(Relay):
    """A relay that stops after reading its rows, before producing them, until ``go``."""

    def __init__(self, store: Store, topics: Topics, bootstrap: str) -> None:
        super().__init__(store, topics, bootstrap)
        self.read, self.go = threading.Event(), threading.Event()

    def _publish_sync(self, sends: list[tuple[str, bytes | None, bytes]]) -> None:
        self.read.set()
        assert self.go.wait(20), "never told to go on"
        super()._publish_sync(sends)


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_two_relays_on_one_sqlite_file_keep_an_actions_statuses_in_order(
    stores: tuple[Store, Store], kafka_bootstrap: str, topics: Topics
) -> None:
    """A reviewer's finding: two workers' relays on one SQLite file interleaved, and an older
    status of an action reached the topic after the newer one."""
    older, newer = (
        b'{"action_id": "act_1", "status": "pending_approval"}',
        (b'{"action_id": "act_1", "status": "approved"}'),
    )
    first = HeldRelay(stores[0], topics, kafka_bootstrap)
    second = Relay(stores[1], topics, kafka_bootstrap)
    await first.start()
    await second.start()
    try:
        stores[0].run(lambda b: b.add_records([("actions", b"cus_1", older)]))
        first_relays = asyncio.create_task(first.relay_once())
        assert await asyncio.to_thread(first.read.wait, 20)  # read, not yet produced
        stores[0].run(lambda b: b.add_records([("actions", b"cus_1", newer)]))  # next batch
        second_done = threading.Event()
        second_relays = asyncio.create_task(second.relay_once())
        second_relays.add_done_callback(lambda _: second_done.set())
        waiting = waits_for_relay_lock(stores[1])

        def second_waits_or_went_on() -> bool:
            return second_done.is_set() or waiting()

        await asyncio.to_thread(wait_for, second_waits_or_went_on, 20, "the second relay")
        first.go.set()
        counts = await first_relays, await second_relays
    finally:
        first.go.set()
        await first.stop()
        await second.stop()
    assert await read_topic(kafka_bootstrap, topics.actions, at_least=2) == [older, newer]
    assert counts == (1, 1)  # the second read only the newer: the older was gone by then
