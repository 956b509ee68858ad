"""The database away: the worker, its relay and clock, and the scheduler pause and resume.

The store is a PostgreSQL database reached through ``CutProxy`` (tests/livesupport.py), which
the test cuts (new connections refused, open ones reset) and restores; nothing else on the
machine is disturbed. Holding the cut open for a few seconds is the outage itself, not a
synchronisation: every wait for an outcome is a condition with a deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import sqlite3
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
import sqlalchemy as sa
from livesupport import (
    CutProxy,
    WorkerProcess,
    applied,
    expected_keys,
    log_lines,
    performed_keys,
    read_topic,
    split_in_halves,
    wait_for,
)

from outreach.replay import replay
from outreach.rulebook import RuleBook
from outreach.sample import generate
from outreach.scheduling import TimerScheduler
from outreach.scheduling.scheduler import SchedulerOptions
from outreach.store import Store
from outreach.streams.outage import Outage, unavailable
from outreach.streams.publish import publish_file
from outreach.streams.topics import Topics

pytestmark = pytest.mark.timeout(240)


@pytest.fixture
def postgres_db(postgres_url: str) -> Iterator[str]:
    """A PostgreSQL database of the test's own (``database_url`` without the SQLite half)."""
    import uuid

    server = sa.engine.make_url(postgres_url)
    name = f"outreach_t_{uuid.uuid4().hex}"
    admin = sa.create_engine(server, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        yield server.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture
def proxy(postgres_db: str) -> Iterator[CutProxy]:
    server = sa.engine.make_url(postgres_db)
    with CutProxy(server.host or "127.0.0.1", server.port or 5432) as made:
        yield made


def test_outage_logs_once_each_way_and_backs_off_to_a_cap(
    caplog: pytest.LogCaptureFixture,
) -> None:
    outage = Outage("part", logging.getLogger("test.outage"), first=0.5, cap=4.0)
    error = sa.exc.OperationalError("SELECT 1", {}, Exception("connection refused\nmore"))
    with caplog.at_level(logging.WARNING, logger="test.outage"):
        delays = [outage.failed(error) for _ in range(6)]
        outage.recovered()
        outage.recovered()
    assert delays == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2, messages
    assert "unavailable (Exception: connection refused)" in messages[0]
    assert "back after" in messages[1] and "6 failed tries" in messages[1]
    assert not outage.ongoing and outage.outages == 1


def test_only_connection_errors_count_as_an_outage() -> None:
    refused = sa.exc.OperationalError("x", {}, Exception("refused"))
    integrity = sa.exc.IntegrityError("x", {}, Exception("duplicate key"))
    dropped = sa.exc.DBAPIError("x", {}, Exception("gone"), connection_invalidated=True)
    assert unavailable(refused) and unavailable(dropped)
    assert not unavailable(integrity) and not unavailable(ValueError("no"))
    locked = sa.exc.OperationalError("x", {}, sqlite3.OperationalError("database is locked"))
    missing = sa.exc.OperationalError("x", {}, sqlite3.OperationalError("no such table: t"))
    assert unavailable(locked) and not unavailable(missing)  # a bug is not an outage


def test_the_proxy_refuses_and_resets_then_carries_again(proxy: CutProxy, postgres_db: str) -> None:
    engine = sa.create_engine(proxy.url_for(postgres_db), connect_args={"connect_timeout": 3})
    try:
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT 1")).scalar() == 1
            proxy.cut()
            with pytest.raises(sa.exc.OperationalError):
                conn.execute(sa.text("SELECT 1"))
        with pytest.raises(sa.exc.OperationalError), engine.connect():
            pass
        proxy.restore()
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT 2")).scalar() == 2
    finally:
        engine.dispose()


@contextlib.contextmanager
def silenced(port: int) -> Iterator[None]:
    """Drop every packet to and from ``port`` on this host (iptables): the peer neither answers
    nor resets, as when a network path or a failed-over server vanishes. Only connections
    through that port (the test's proxy) are touched."""
    if os.geteuid() != 0 or shutil.which("iptables") is None:
        why = "dropping packets needs root and iptables"
        if os.environ.get("OUTREACH_REQUIRE_IPTABLES") == "1":  # .ci/run: it must run there
            pytest.fail(f"{why} (OUTREACH_REQUIRE_IPTABLES=1): run as root with iptables")
        pytest.skip(f"{why}; CI sets OUTREACH_REQUIRE_IPTABLES=1 and runs it")
    rules = [["INPUT", "-p", "tcp", "--dport", str(port), "-j", "DROP"],
             ["INPUT", "-p", "tcp", "--sport", str(port), "-j", "DROP"]]  # fmt: skip
    added = []
    try:
        for rule in rules:
            subprocess.run(["iptables", "-I", *rule], check=True, capture_output=True)
            added.append(rule)
        yield
    finally:
        for rule in added:
            subprocess.run(["iptables", "-D", *rule], check=True, capture_output=True)


def test_a_silent_network_fails_as_the_database_away_instead_of_blocking(
    proxy: CutProxy, postgres_db: str
) -> None:
    # the defaults find a silent peer within ~60 s (POSTGRES_CONNECT); the URL's own libpq
    # parameters win, so a test can use a few seconds
    url = sa.engine.make_url(proxy.url_for(postgres_db)).update_query_dict({
        "keepalives_idle": "1", "keepalives_interval": "1", "keepalives_count": "2",
        "tcp_user_timeout": "2000", "connect_timeout": "2",
    })  # fmt: skip
    store = Store(url.render_as_string(hide_password=False), pool_size=1)
    outcome: list[BaseException | int] = []

    def write(offset: int) -> None:
        store.run(lambda b: b.set_positions("g", {("payments", 0): offset}), attempts=1)

    def attempt() -> None:
        try:
            write(2)
        except BaseException as exc:  # noqa: BLE001 - handed to the test's thread
            outcome.append(exc)
        else:
            outcome.append(2)

    try:
        store.migrate()
        write(1)  # the pool now holds an open connection through the proxy
        with silenced(proxy.port):
            started = time.monotonic()
            worker = threading.Thread(target=attempt, daemon=True)
            worker.start()
            worker.join(timeout=30)
            assert not worker.is_alive(), "the store call blocked on a silent connection"
            took = time.monotonic() - started
        [failure] = outcome
        assert isinstance(failure, sa.exc.DBAPIError) and unavailable(failure), failure
        assert took < 15
        write(3)  # the network is back: a new connection, and the call goes through
        assert store.run(lambda b: b.positions("g", [("payments", 0)])) == {("payments", 0): 3}
    finally:
        store.close()


def pending_timers(database_url: str) -> int:
    """Timers in the store not yet applied (the worker deletes each one it fires)."""
    engine = sa.create_engine(database_url)
    try:
        with engine.connect() as conn:
            return int(conn.execute(sa.text("SELECT COUNT(*) FROM timers")).scalar_one())
    finally:
        engine.dispose()


async def test_worker_pauses_while_the_database_is_cut_and_applies_everything_once(
    kafka_bootstrap: str,
    topics: Topics,
    group_id: str,
    tmp_path: Path,
    book: RuleBook,
    postgres_db: str,
    proxy: CutProxy,
) -> None:
    """`outreach worker` (with its relay, clock, in-process scheduler and dispatcher) on a
    store behind the proxy; the database is cut mid-stream for a few seconds. The same worker
    process must resume and apply every event once, with one log line per part each way."""
    from datetime import UTC, datetime, timedelta

    start = datetime.now(UTC).replace(microsecond=0) - timedelta(days=60)
    lines = [raw.rstrip(b"\n") for raw in generate(300, 20, 3, start)]
    events = tmp_path / "events.jsonl"
    events.write_bytes(b"\n".join(lines) + b"\n")
    url, data = proxy.url_for(postgres_db), tmp_path / "data"
    worker = WorkerProcess(kafka_bootstrap, topics, group_id, url, data).start()
    publishing = asyncio.create_task(publish_file(events, kafka_bootstrap, topics, 400))

    def progress() -> int:
        return applied(postgres_db, group_id, topics.inputs)

    await asyncio.to_thread(wait_for, lambda: progress() > len(lines) // 4, 120, "a quarter")
    proxy.cut()
    cut_at = progress()
    await asyncio.to_thread(
        wait_for, lambda: "worker: the database is unavailable" in worker.log(), 30,
        "the worker to notice the outage",
    )  # fmt: skip
    held_until = time.monotonic() + 4  # the outage lasts a few seconds more
    await asyncio.to_thread(wait_for, lambda: time.monotonic() > held_until, 10, "the outage")
    assert worker.process is not None and worker.process.poll() is None, worker.log()
    assert progress() == cut_at, "applied while the database was away"
    proxy.restore()
    await publishing
    await asyncio.to_thread(
        wait_for, lambda: progress() == len(lines), 180, "every event applied after the outage"
    )  # fmt: skip
    assert worker.process.poll() is None, worker.log()
    assert cut_at < len(lines), "the outage came too late to prove much"
    replay(events, book, tmp_path / "replay")
    want_effects = expected_keys(tmp_path / "replay")[0]
    await asyncio.to_thread(
        wait_for, lambda: set(performed_keys(data / "effects.jsonl")) >= want_effects, 120,
        "every effect performed",
    )  # fmt: skip
    # replay runs its clock on until nothing is pending; the live worker's last timers (an
    # approval expiring after the last event) fire once it is idle: wait for them too, or the
    # comparison below depends on the hour (it failed just after midnight UTC)
    await asyncio.to_thread(
        wait_for, lambda: pending_timers(postgres_db) == 0, 120, "every timer fired"
    )  # fmt: skip
    assert worker.stop() == 0, worker.log()
    log = worker.log()
    assert log.count("worker: the database is unavailable") == 1, log
    assert log.count("worker: the database is back") == 1, log
    for part in ("relay", "worker clock", "scheduler"):  # each says so at most once
        assert log.count(f"{part}: the database is unavailable") <= 1, log
    assert " stopped: " not in log, log  # no part of the process ended on its own
    # each event in the audit trail once: applied once, not once per retry of its batch
    ids = {orjson.loads(line)["event_id"] for line in lines}
    engine = sa.create_engine(postgres_db)
    try:
        with engine.connect() as conn:
            refs = (
                conn.execute(
                    sa.text("SELECT ref FROM audit WHERE kind = 'event' AND ref LIKE 'evt%'")
                )
                .scalars()
                .all()
            )
    finally:
        engine.dispose()
    assert len(refs) == len(set(refs)) == len(ids) and set(refs) == ids
    effects = performed_keys(data / "effects.jsonl")
    assert len(effects) == len(set(effects)), "an effect was performed twice"
    # and decided as replay decides: the pause must not cost the event-time alignment
    for name in ("signals", "actions", "messages"):
        want = set(log_lines(tmp_path / "replay", name))
        got = set(await read_topic(kafka_bootstrap, getattr(topics, name), len(want)))
        assert got == want, name
    assert set(effects) == want_effects


# APScheduler 3's own loop thread can die of the outage (a database error it does not catch
# between jobs); the scheduler notices and starts a fresh one, which is what is tested here
@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
async def test_scheduler_steps_down_in_an_outage_and_takes_over_again(
    kafka_bootstrap: str,
    topics: Topics,
    group_id: str,
    postgres_db: str,
    proxy: CutProxy,
    caplog: pytest.LogCaptureFixture,
) -> None:
    direct = Store(postgres_db)
    direct.migrate()
    direct.close()
    store = Store(proxy.url_for(postgres_db))
    scheduler = TimerScheduler(
        store, topics, kafka_bootstrap, group=group_id,
        options=SchedulerOptions(
            sync_every=0.05, sweep_every=0.2, standby_poll=0.1, outage_grace=1.0
        ),
    )  # fmt: skip
    stop = asyncio.Event()
    running = asyncio.create_task(scheduler.run(stop))

    async def until(condition: object, what: str) -> None:
        deadline = time.monotonic() + 30
        while not condition():  # type: ignore[operator]
            assert not running.done(), running.exception() if running.done() else what
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            await asyncio.sleep(0.05)

    try:
        with caplog.at_level(logging.WARNING, logger="outreach.scheduling.scheduler"):
            await until(lambda: scheduler.active, "the scheduler to become active")
            proxy.cut()
            await until(lambda: not scheduler.active, "the scheduler to step down")
            await until(
                lambda: any("database is unavailable" in r.getMessage() for r in caplog.records),
                "the outage logged",
            )
            proxy.restore()
            await until(lambda: scheduler.stats.takeovers >= 2, "the scheduler to take over")
            back, rounds = time.monotonic(), scheduler.stats.rounds
            # nothing armed until the workers have had outage_grace to report their clocks
            await until(lambda: scheduler.stats.rounds > rounds, "a look at the timers")
            assert time.monotonic() - back >= 0.9
        assert not running.done()
        said = [r.getMessage() for r in caplog.records]
        assert sum("database is unavailable" in m for m in said) == 1, said
        assert sum("database is back" in m for m in said) == 1, said
    finally:
        stop.set()
        await asyncio.gather(running, return_exceptions=True)
        store.close()


async def committed_offsets(
    bootstrap: str, group: str, partitions: list[tuple[str, int]]
) -> dict[tuple[str, int], int]:
    """Kafka's committed offsets of ``group`` (partitions with none left out)."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False
    )
    await consumer.start()
    try:
        found = {}
        for topic, partition in partitions:
            at = await consumer.committed(TopicPartition(topic, partition))
            if at is not None:
                found[(topic, partition)] = at
        return found
    finally:
        await consumer.stop()


@pytest.mark.parametrize("runtime", ["faust", "aiokafka"])
async def test_a_worker_stopped_in_an_outage_stops_and_the_next_start_applies_the_held_batch(
    runtime: str,
    kafka_bootstrap: str,
    topics: Topics,
    group_id: str,
    tmp_path: Path,
    postgres_db: str,
    proxy: CutProxy,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A worker whose store is behind the proxy: the database is cut while records are
    still coming, and the worker is stopped while it holds a batch for the outage. With
    `--runtime faust`, Faust's stop waits for every event of that batch to be acked, and the
    agent waited for the database: the stop never returned. Now (both drivers) the batch is
    given up, said in the log, nothing of it applied or committed, and the stop is clean; the
    next start applies every event exactly once."""
    from datetime import UTC, datetime, timedelta

    from livesupport import REPO

    from outreach.streams.runtime import LiveEngine, WorkerSettings
    from outreach.streams.topics import KafkaSettings

    start = datetime.now(UTC).replace(microsecond=0) - timedelta(days=60)
    lines = [raw.rstrip(b"\n") for raw in generate(200, 20, 3, start)]
    events = tmp_path / "events.jsonl"
    events.write_bytes(b"\n".join(lines) + b"\n")
    settings = WorkerSettings(
        rules=REPO / "rules", database_url=proxy.url_for(postgres_db),
        data_dir=tmp_path / "data", runtime=runtime,
    )  # fmt: skip
    kafka = KafkaSettings(kafka_url=kafka_bootstrap, topic_prefix=topics.prefix,
                          partitions=4, group_id=group_id)  # fmt: skip
    # the first half at once, the rest at a pace once the worker is applying: however long
    # the group takes to form, the cut then comes while records are still arriving
    before, after = split_in_halves(events, tmp_path)
    half = (await publish_file(before, kafka_bootstrap, topics)).total

    def progress() -> int:
        return applied(postgres_db, group_id, topics.inputs)

    def said(text: str) -> bool:
        return any(text in r.getMessage() for r in list(caplog.records))

    stop = asyncio.Event()
    with caplog.at_level(logging.WARNING):
        async with contextlib.AsyncExitStack() as stack:
            parts = await stack.enter_async_context(LiveEngine(settings, kafka).running(stop))
            await asyncio.to_thread(wait_for, lambda: progress() >= half, 120,
                                    "the first half applied")  # fmt: skip
            publishing = asyncio.create_task(publish_file(after, kafka_bootstrap, topics, 400))
            await asyncio.to_thread(wait_for, lambda: progress() > half + 100, 60,
                                    "the second half coming in")  # fmt: skip
            proxy.cut()
            cut_at = progress()
            assert cut_at < len(lines), "the outage came too late to prove much"
            await asyncio.to_thread(
                wait_for, lambda: said("worker: the database is unavailable"), 30,
                "the worker to hold a batch for the outage",
            )  # fmt: skip
            stop.set()
            # bounded, but not with asyncio.wait_for: cancelling a hung Faust stop never
            # completes (its wait for acks swallows CancelledError), so wait_for hung too
            stopping = asyncio.ensure_future(stack.aclose())
            if not (await asyncio.wait({stopping}, timeout=60))[0]:
                proxy.restore()  # the batch goes through, the stop ends: no hung teardown
                await stopping
                pytest.fail("the worker did not stop within 60 s with the database away")
        assert parts.failure is None, parts.failure  # a clean stop (exit code 0)
        assert said("was held and not applied"), caplog.text
    assert progress() == cut_at, "applied while the database was away"
    # nothing committed past what the store applied, or a start during the next outage
    # (positions unreadable: Kafka's committed offsets instead) would skip the held batch
    wanted = [(topic, p) for topic in topics.inputs for p in range(4)]
    store = Store(postgres_db)
    try:
        positions = store.run(lambda batch: batch.positions(group_id, wanted))
    finally:
        store.close()
    kafka_at = await committed_offsets(kafka_bootstrap, group_id, wanted)
    ahead = {tp: at for tp, at in kafka_at.items() if at > positions.get(tp, 0)}
    assert not ahead, (ahead, positions)

    proxy.restore()
    await publishing
    stop = asyncio.Event()
    async with LiveEngine(settings, kafka).running(stop) as parts:
        await asyncio.to_thread(
            wait_for, lambda: progress() == len(lines), 180, "every event applied on restart"
        )  # fmt: skip
        stop.set()
    assert parts.failure is None, parts.failure
    # each event in the audit trail once: the held batch applied once, nothing twice
    ids = {orjson.loads(line)["event_id"] for line in lines}
    engine = sa.create_engine(postgres_db)
    try:
        with engine.connect() as conn:
            refs = conn.execute(
                sa.text("SELECT ref FROM audit WHERE kind = 'event' AND ref LIKE 'evt%'")
            ).scalars().all()  # fmt: skip
    finally:
        engine.dispose()
    assert len(refs) == len(set(refs)) == len(ids) and set(refs) == ids
