"""The timer scheduler against the test broker and a real database: APScheduler jobs in the
store's database, one active scheduler with hot standbys, and a SIGKILL handover in which no
due job is lost and none runs twice."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest
import sqlalchemy as sa
from livesupport import REPO, WorkerProcess, read_topic, wait_for
from support import profile, shipment_exception

from outreach.scheduling import SchedulerOptions, TimerScheduler
from outreach.scheduling.scheduler import CLAIM
from outreach.store import Store, StoreBusyError, TimerRow
from outreach.store.operator import Operator
from outreach.store.schedule import DueTimer, Schedule
from outreach.store.schema import audit
from outreach.streams.publish import EventPublisher
from outreach.streams.topics import Topics

pytestmark = pytest.mark.timeout(240)

FAST = SchedulerOptions(sync_every=0.1, standby_poll=0.2, sweep_every=0.2, clock_ttl=600)


def fired(values: list[bytes]) -> Counter[str]:
    """How many times each timer's ``timer.fired`` event is on the topic."""
    found: Counter[str] = Counter()
    for value in values:
        event = orjson.loads(value)
        assert event["type"] == "timer.fired"
        found[event["data"]["timer_id"]] += 1
    return found


async def until(condition, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        await asyncio.sleep(0.05)


async def test_jobs_fire_at_their_time_follow_the_group_clock_and_die_with_their_timer(
    kafka_bootstrap: str, topics: Topics, store: Store
) -> None:
    schedule = Schedule(store)
    now = time.time()
    store.run(
        lambda b: b.schedule_timers(
            [
                TimerRow("due", "cus_1", now - 60),
                TimerRow("soon", "cus_2", now + 1.5),
                TimerRow("cancelled", "cus_4", now + 2.0),
            ]
        )  # fmt: skip
    )
    active = TimerScheduler(store, topics, kafka_bootstrap, group="g", options=FAST)
    standby = TimerScheduler(store, topics, kafka_bootstrap, group="g", options=FAST)
    stop = asyncio.Event()
    runs = [asyncio.create_task(active.run(stop))]
    await until(lambda: active.active, 30, "the first scheduler to become active")
    runs.append(asyncio.create_task(standby.run(stop)))
    try:
        await until(lambda: active.stats.armed >= 3, 30, "the timers to be armed")
        jobs = {job.id for job in active._aps.get_jobs()}  # type: ignore[union-attr]  # noqa: SLF001
        assert {"soon", "cancelled"} <= jobs  # persisted APScheduler jobs, due later
        store.run(lambda b: b.drop_timers(["cancelled"]))  # the core cancelled it
        await until(lambda: active.stats.produced >= 2, 30, "due and soon to be produced")
        rounds = active.stats.rounds
        await until(
            lambda: time.time() > now + 2.5 and active.stats.rounds >= rounds + 3, 30,
            "the scheduler to look again after cancelled's due time",
        )  # fmt: skip
        assert active.stats.cancelled == 1
        assert fired(await read_topic(kafka_bootstrap, topics.timers, 2)) == {"due": 1, "soon": 1}
        assert not standby.active and standby.stats.takeovers == 0
        # a worker is catching up on events of 45 s ago: a timer due 30 s ago must wait
        schedule.beat("g", "catching-up", time.time() - 45)
        store.run(lambda b: b.schedule_timers([TimerRow("held", "cus_3", time.time() - 30)]))
        rounds, armed = active.stats.rounds, active.stats.armed
        await until(lambda: active.stats.rounds >= rounds + 5, 30, "five looks at the table")
        assert active.stats.produced == 2 and active.stats.armed == armed  # not even armed
        schedule.beat("g", "catching-up", float("inf"))  # caught up: idle
        await until(lambda: active.stats.produced >= 3, 30, "held to be produced")
        values = await read_topic(kafka_bootstrap, topics.timers, 3)
        assert fired(values) == {"due": 1, "soon": 1, "held": 1}
        keys = {orjson.loads(v)["data"]["timer_id"]: orjson.loads(v)["customer_id"] for v in values}
        assert keys == {"due": "cus_1", "soon": "cus_2", "held": "cus_3"}
        # the active scheduler stops: the standby takes over with nothing left to do twice
        assert active.stats.takeovers == 1
        runs[0].cancel()
        await asyncio.gather(runs[0], return_exceptions=True)
        await until(lambda: standby.active, 30, "the standby to take over")
        await until(lambda: standby.stats.rounds >= 5, 30, "the new active one to look around")
        assert standby.stats.produced == 0 and standby.stats.recovered == 0
    finally:
        stop.set()
        await asyncio.gather(*runs, return_exceptions=True)


class SchedulerProcess(WorkerProcess):
    """``outreach scheduler`` in a child process (killed by the same teardown)."""

    def __init__(
        self, bootstrap: str, topics: Topics, group: str, database_url: str, data_dir: Path,
        name: str,
    ) -> None:  # fmt: skip
        super().__init__(bootstrap, topics, group, database_url, data_dir, name=name)
        self.args = [
            sys.executable, "-m", "outreach.cli", "scheduler", "--kafka-url", bootstrap,
            "--database-url", database_url, "--log-level", "info",
        ]  # fmt: skip


def expired_records(url: str) -> Counter[str]:
    """How many times the core recorded each action as ``expired`` (the audit trail holds
    every record a batch wrote, once per application)."""
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                sa.select(audit.c.ref).where(audit.c.kind == "action", audit.c.status == "expired")
            ).all()
    finally:
        engine.dispose()
    return Counter(r[0] for r in rows)


async def test_sigkill_of_the_active_scheduler_the_standby_takes_over_nothing_lost_or_doubled(
    kafka_bootstrap: str,
    topics: Topics,
    group_id: str,
    database_url: str,
    rules_copy: Path,
    tmp_path: Path,
) -> None:
    """Sixty actions wait for approval with a 20 s expiry, their expiries due one every 0.2 s
    from 5 s on. Two `outreach scheduler` processes run, one active; the active one is killed
    (SIGKILL) while the expiries are coming due. Every action must expire, exactly once, and
    every expiry job must have produced its event."""
    policy = rules_copy / "policy.yaml"
    text = policy.read_text()
    policy.write_text(text.replace("guardrails:\n", "guardrails:\n  approval_expiry: 20s\n", 1))
    delay = rules_copy / "shipment-delay.yaml"  # credits above the automatic limit
    old, new = "credit: {standard: 500, premium: 1000}", "credit: {standard: 1500, premium: 1000}"
    delay.write_text(delay.read_text().replace(old, new))
    count = 60
    start = datetime.now(UTC) - timedelta(seconds=15)
    events = []
    for i in range(count):
        at = start + timedelta(seconds=0.2 * i)
        customer = f"cus_{i:03d}"
        events.append(profile(at - timedelta(minutes=5), customer))
        events.append(shipment_exception(at.isoformat(), customer, f"shp_{i}"))
    data = tmp_path / "data"
    worker = WorkerProcess(
        kafka_bootstrap, topics, group_id, database_url, data, "--rules", str(rules_copy),
        "--no-scheduler", "--no-dispatch",
    ).start()  # fmt: skip
    first = SchedulerProcess(kafka_bootstrap, topics, group_id, database_url, data, "first")
    first.start()
    await asyncio.to_thread(
        wait_for, lambda: "scheduler: active" in first.log(), 60, "the first scheduler"
    )
    second = SchedulerProcess(kafka_bootstrap, topics, group_id, database_url, data, "second")
    second.start()
    await asyncio.to_thread(
        wait_for, lambda: "scheduler: standby" in second.log(), 60, "the standby"
    )
    async with EventPublisher(kafka_bootstrap, topics) as publisher:
        for event in events:
            await publisher.publish(event)
        await publisher.flush()
    store = Store(database_url)
    operator = Operator(store)
    try:
        await asyncio.to_thread(
            wait_for, lambda: len(operator.approvals()) == count, 90, "every approval request"
        )
        await asyncio.to_thread(
            wait_for, lambda: 5 <= sum(expired_records(database_url).values()) < count - 15, 90,
            "a few expiries to have run",
        )  # fmt: skip
        first.kill()  # mid-stream: jobs are coming due every 0.2 s
        await asyncio.to_thread(
            wait_for, lambda: "scheduler: active" in second.log(), 30, "the standby to take over"
        )
        await asyncio.to_thread(
            wait_for, lambda: not operator.approvals(), 120, "every approval to expire"
        )
        expired = expired_records(database_url)
        assert len(expired) == count, "an expiry was lost"
        assert set(expired.values()) == {1}, f"an expiry ran twice: {expired}"
        assert {a.status for a in operator.approvals(None)} == {"expired"}
        produced = fired(await read_topic(kafka_bootstrap, topics.timers, count))
        assert len(produced) == count
        # at-least-once production: only a job killed between producing and marking its row
        # is produced again (the worker applied it once, above)
        assert sum(produced.values()) - count <= SchedulerOptions().threads + 1
        assert [t for t in Schedule(store).pending() if t.due_at <= time.time()] == []
        assert second.stop() == 0, second.log()
        assert worker.stop() == 0, worker.log()
    finally:
        store.close()


def test_scheduler_command_without_kafka_says_what_to_set(tmp_path: Path) -> None:
    import subprocess

    env = {k: v for k, v in os.environ.items() if k != "OUTREACH_KAFKA_URL"}
    done = subprocess.run(
        [sys.executable, "-m", "outreach.cli", "scheduler", "--database-url",
         f"sqlite:///{tmp_path}/s.db"],
        env=env, cwd=REPO, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2
    assert "OUTREACH_KAFKA_URL" in done.stderr


async def test_a_scheduler_taking_over_while_kafka_is_away_steps_down_and_waits_for_it(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    """Its producer cannot start: it must not end the worker that runs it (every standby would
    then take over and end in turn), but let the claim go and try again."""
    stop = asyncio.Event()
    scheduler = TimerScheduler(store, Topics("t."), "127.0.0.1:1", group="g")  # nobody there
    task = asyncio.create_task(scheduler.run(stop))

    def stepped_down() -> bool:
        if task.done() or "Kafka is unreachable" not in caplog.text:
            return False
        try:
            store.hold_exclusive(CLAIM)()  # free between tries: taken and given back
        except StoreBusyError:
            return False
        return True

    await until(stepped_down, 30, "the scheduler to step down and wait")
    assert not task.done()
    stop.set()
    await asyncio.wait_for(task, 10)  # ends cleanly, never having been active
    assert scheduler.stats.takeovers == 0


async def test_a_timer_whose_job_fails_once_is_armed_again_and_produced(
    kafka_bootstrap: str, topics: Topics, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """APScheduler drops a date job before running it: a run that fails on the database
    left the row armed with no job, and nothing produced it until the next takeover."""
    schedule = Schedule(store)
    failures: list[str] = []
    real = Schedule.timer

    def flaky(self: Schedule, timer_id: str) -> DueTimer | None:
        if not failures:  # the first read of a job's run: the database away for a moment
            failures.append(timer_id)
            raise sa.exc.OperationalError("SELECT", {}, Exception("database is locked"))
        return real(self, timer_id)

    monkeypatch.setattr(Schedule, "timer", flaky)
    store.run(lambda b: b.schedule_timers([TimerRow("once", "cus_1", time.time() - 1)]))
    active = TimerScheduler(store, topics, kafka_bootstrap, group="g", options=FAST)
    stop = asyncio.Event()
    run = asyncio.create_task(active.run(stop))
    try:
        await until(lambda: active.stats.produced >= 1, 30, "the timer to be produced")
        assert failures == ["once"] and active.stats.takeovers == 1
        assert active.stats.recovered == 1  # by a sweep, not by a takeover
        assert fired(await read_topic(kafka_bootstrap, topics.timers, 1)) == {"once": 1}
        assert schedule.pending()[0].published_at is not None
    finally:
        stop.set()
        await asyncio.gather(run, return_exceptions=True)
