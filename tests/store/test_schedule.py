"""The store's side of the scheduler (SQLite and PostgreSQL): which timers may be armed, the
group's event-time clock, takeover recovery, redelivery, and the timers table following the
core (cancelled timers leave it)."""

from __future__ import annotations

import time
from pathlib import Path

import orjson
import pytest
import sqlalchemy as sa
from livesupport import Feed, make_processor
from pydantic import ValidationError
from support import make_event, payment_failed, profile

from outreach.rulebook import RuleBook
from outreach.scheduling import SchedulerSettings, TimerScheduler
from outreach.store import AuditRow, Store, TimerRow
from outreach.store.contacts import Contacts
from outreach.store.operator import Operator
from outreach.store.schedule import Schedule
from outreach.store.schema import outbox
from outreach.streams.topics import Topics

WALL = 1_000_000.0


def schedule_rows(store: Store, *rows: TimerRow) -> None:
    store.run(lambda b: b.schedule_timers(list(rows)))


def ids(rows: list) -> list[str]:
    return [r.timer_id for r in rows]


def test_to_arm_takes_future_timers_and_past_ones_the_group_clock_has_reached(
    store: Store,
) -> None:
    schedule = Schedule(store)
    schedule_rows(
        store,
        TimerRow("past_reached", "cus_1", WALL - 100),
        TimerRow("past_beyond_clock", "cus_2", WALL - 10),
        TimerRow("future", "cus_3", WALL + 50),
    )
    limit = WALL - 50  # a worker is still applying events of WALL - 50
    assert ids(schedule.to_arm(limit, WALL, 100)) == ["past_reached", "future"]
    assert ids(schedule.to_arm(WALL, WALL, 100)) == ["past_reached", "past_beyond_clock", "future"]
    assert ids(schedule.to_arm(WALL, WALL, 2)) == ["past_reached", "past_beyond_clock"]
    schedule.mark_armed(schedule.to_arm(limit, WALL, 100))
    assert ids(schedule.to_arm(limit, WALL, 100)) == []
    assert ids(schedule.to_arm(WALL, WALL, 100)) == ["past_beyond_clock"]
    # a job that ran before the clock reached it is put back, and armed again later
    schedule.disarm("past_reached")
    assert ids(schedule.to_arm(limit, WALL, 100)) == ["past_reached"]
    # published: never armed again until redelivered
    schedule.mark_published("past_reached", WALL)
    assert "past_reached" not in ids(schedule.to_arm(WALL, WALL, 100))


def test_a_rescheduled_timer_is_armed_again_with_its_new_due_time(store: Store) -> None:
    schedule = Schedule(store)
    schedule_rows(store, TimerRow("t1", "cus_1", WALL + 10))
    first = schedule.to_arm(WALL, WALL, 10)
    schedule_rows(store, TimerRow("t1", "cus_1", WALL + 99))  # moved before it was marked
    schedule.mark_armed(first)  # the old due time's job: the row must stay unarmed
    (again,) = schedule.to_arm(WALL, WALL, 10)
    assert (again.due_at, again.armed) == (WALL + 99, False)
    schedule.mark_armed([again])
    schedule.mark_published("t1", WALL)
    schedule_rows(store, TimerRow("t1", "cus_1", WALL + 200))  # the core set it again
    (row,) = schedule.pending()
    assert (row.due_at, row.armed, row.published_at) == (WALL + 200, False, None)


def test_the_group_clock_is_the_earliest_live_worker_and_forgets_the_silent(
    store: Store,
) -> None:
    schedule = Schedule(store)
    now = time.time()  # beats are stamped with the wall clock
    assert schedule.limit("g", ttl=30, now=now) == now  # no worker: the wall clock
    schedule.beat("g", "a", now - 500)
    schedule.beat("g", "b", now - 100)
    schedule.beat("g", "idle", float("inf"))  # idle: holds nothing back
    schedule.beat("other-group", "c", 5.0)
    assert schedule.limit("g", ttl=3600) == now - 500
    schedule.beat("g", "fresh", float("-inf"))  # just (re)assigned: has applied nothing yet
    assert schedule.limit("g", ttl=3600) == 0.0
    schedule.leave("g", "fresh")
    schedule.leave("g", "a")
    assert schedule.limit("g", ttl=3600) == now - 100
    # a worker that stopped reporting (killed) holds timers back only for ``ttl`` seconds
    assert schedule.limit("g", ttl=3600, now=now + 7200) == now + 7200


def test_redeliver_unpublishes_timers_nobody_applied(store: Store) -> None:
    schedule = Schedule(store)
    schedule_rows(store, TimerRow("t1", "cus_1", WALL - 5), TimerRow("t2", "cus_1", WALL - 5))
    schedule.mark_armed(schedule.to_arm(WALL, WALL, 10))
    schedule.mark_published("t1", WALL - 100)
    schedule.mark_published("t2", WALL - 1)
    assert schedule.redeliver(WALL, 60) == 1
    assert ids(schedule.to_arm(WALL, WALL, 10)) == ["t1"]


def jobs_table(store: Store) -> sa.Table:
    """A table shaped like APScheduler's SQLAlchemyJobStore's (id is the job id)."""
    jobs = sa.Table(
        "scheduler_jobs",
        sa.MetaData(),
        sa.Column("id", sa.Unicode(191), primary_key=True),
        sa.Column("next_run_time", sa.Float(25), index=True),
        sa.Column("job_state", sa.LargeBinary, nullable=False),
    )
    jobs.create(store.engine, checkfirst=True)
    return jobs


def test_takeover_rearms_timers_whose_job_died_and_sweeps_jobs_of_gone_timers(
    store: Store,
) -> None:
    schedule = Schedule(store)
    jobs = jobs_table(store)
    schedule_rows(
        store,
        TimerRow("has_job", "cus_1", WALL + 10),
        TimerRow("job_lost", "cus_1", WALL - 10),
        TimerRow("published", "cus_2", WALL - 10),
    )
    schedule.mark_armed(schedule.to_arm(WALL, WALL, 10))
    schedule.mark_published("published", WALL)
    with store.engine.begin() as conn:
        conn.execute(
            sa.insert(jobs),
            [
                {"id": "has_job", "next_run_time": WALL + 10, "job_state": b"x"},
                {"id": "cancelled", "next_run_time": WALL + 10, "job_state": b"x"},
            ],
        )
    assert schedule.recover(jobs) == 1  # job_lost: armed, never published, no job
    assert ids(schedule.to_arm(WALL, WALL, 10)) == ["job_lost"]
    assert schedule.stale_jobs(jobs) == ["cancelled"]


def test_the_timers_table_follows_the_core_fired_and_cancelled_timers_leave_it(
    book: RuleBook, store: Store, tmp_path: Path
) -> None:
    """A failed payment schedules its retries (timers); the payment succeeding cancels them
    in the core, and the same batch removes their rows (the scheduler drops their jobs)."""
    processor = make_processor(book, store)
    feed = Feed()
    processor.apply([
        feed.line(orjson.dumps(profile("2026-10-01T09:00:00Z", "cus_1"))),
        feed.line(orjson.dumps(payment_failed("2026-10-01T10:00:00Z", "cus_1"))),
    ])  # fmt: skip
    scheduled = Schedule(store).pending()
    assert scheduled and {r.customer_id for r in scheduled} == {"cus_1"}
    paid = make_event(
        "payment.succeeded", "2026-10-01T12:00:00Z", "cus_1", payment_id="pay_2",
        invoice_id="in_1", amount=2900, currency="USD",
    )  # fmt: skip
    result = processor.apply([feed.line(orjson.dumps(paid))])
    assert result.actions["cancelled"] >= 1
    assert Schedule(store).pending() == []


def test_the_active_scheduler_prunes_the_audit_trail_to_the_configured_retention(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OUTREACH_AUDIT_RETENTION", "2d")
    options = SchedulerSettings().options()
    assert options.audit_retention == 2 * 86400
    monkeypatch.setenv("OUTREACH_AUDIT_RETENTION", "two days")
    with pytest.raises(ValidationError, match="not a duration"):
        SchedulerSettings()
    now = time.time()
    rows = [
        AuditRow("cus_1", now - 3 * 86400, "event", "evt_old", None, b"{}"),
        AuditRow("cus_1", now - 1 * 86400, "event", "evt_new", None, b"{}"),
    ]
    store.run(lambda b: b.add_audit(rows))
    scheduler = TimerScheduler(store, Topics("unused."), "127.0.0.1:1", group="g", options=options)
    scheduler.prune()
    assert scheduler.stats.pruned == 1
    assert [e["ref"] for e in Operator(store).timeline("cus_1")] == ["evt_new"]


def test_the_active_scheduler_prunes_finished_outbox_rows_and_old_callback_ids(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert SchedulerSettings().options().outbox_retention == 30 * 86400  # the default
    monkeypatch.setenv("OUTREACH_OUTBOX_RETENTION", "forever")
    with pytest.raises(ValidationError, match="not a duration"):
        SchedulerSettings()
    monkeypatch.setenv("OUTREACH_OUTBOX_RETENTION", "2d")
    options = SchedulerSettings().options()
    assert (options.outbox_retention, options.audit_retention) == (2 * 86400, None)
    now = time.time()
    store.run(lambda b: b.add_outbox([
        (key, "effect", "cus_1", key, b"{}", 0.0) for key in ("old", "recent", "waiting")
    ]))  # fmt: skip
    claimed = {r.idempotency_key: r for r in store.claim_due(now, 10, lease=60.0)}
    for key, at in [("old", now - 3 * 86400), ("recent", now - 86400)]:
        with store.batch(at) as batch:  # finished at ``at``
            batch.conn.execute(
                sa.update(outbox).where(outbox.c.id == claimed[key].id)
                .values(status="done", done_at=batch.now)
            )  # fmt: skip
    contacts = Contacts(store)
    assert contacts.first_time("twilio", "SM_old", at=now - 8 * 86400)
    assert contacts.first_time("twilio", "SM_recent", at=now - 6 * 86400)
    store.run(lambda b: b.add_audit([AuditRow("cus_1", 0.0, "event", "evt_0", None, b"{}")]))
    scheduler = TimerScheduler(store, Topics("unused."), "127.0.0.1:1", group="g", options=options)
    scheduler.prune()
    assert (scheduler.stats.outbox_pruned, scheduler.stats.callbacks_pruned) == (1, 1)
    assert sorted(r["idempotency_key"] for r in store.outbox_rows()) == ["recent", "waiting"]
    assert contacts.first_time("twilio", "SM_old")  # forgotten: a callback this late is new
    assert not contacts.first_time("twilio", "SM_recent")
    for callback in ("a", "b", "c"):  # a composite key, deleted a chunk at a time
        assert contacts.first_time("sendgrid", callback, at=now - 9 * 86400)
    assert contacts.forget_seen(now - 7 * 86400, chunk=2) == 3
    assert not contacts.first_time("twilio", "SM_recent")
    assert scheduler.stats.pruned == 0  # no OUTREACH_AUDIT_RETENTION: the trail stays whole
    assert [e["ref"] for e in Operator(store).timeline("cus_1")] == ["evt_0"]
