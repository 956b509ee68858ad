"""The store's side of scheduling: which timers the scheduler must arm, and the group's clock.

The ``timers`` table is the truth about pending work: a batch writes a row for every timer the
core set and deletes the rows of timers that fired or that the core cancelled, in the batch's
transaction. The active scheduler mirrors it into APScheduler's job store (same database):

- ``to_arm``: rows without a job yet that may be armed now (due later by the wall clock, or
  already due by the group's event-time clock), marked ``armed`` once their job exists;
- ``disarm``: a job ran before the group's clock reached its due time; the row waits again;
- ``mark_published``: a job produced its ``timer.fired`` event; the row stays until a worker
  applies it (the processor deletes it) and is re-armed by ``redeliver`` if none did;
- ``recover``: on takeover, armed rows whose job is gone and that were never published (the
  previous scheduler died between taking the job and producing it) are re-armed.

The group clock (``clocks``): every worker reports the latest event time it has applied while
catching up (NULL once idle); ``limit`` is the earliest among live workers, so a timer is not
released while any worker is still applying events that come before it.
"""

from __future__ import annotations

import time
from collections.abc import Collection
from dataclasses import dataclass

import sqlalchemy as sa

from outreach.store.schema import clocks, timers
from outreach.store.store import Store


@dataclass(frozen=True)
class DueTimer:
    """A timer row as the scheduler sees it."""

    timer_id: str
    customer_id: str
    due_at: float
    published_at: float | None
    armed: bool


class Schedule:
    """Timer and clock operations on one store (each call is its own short transaction)."""

    def __init__(self, store: Store) -> None:
        self.store = store

    # -- the group clock ---------------------------------------------------------------------

    def beat(self, group: str, member: str, event_time: float | None) -> None:
        """Report ``member``'s clock: the latest event time it applied, None when idle."""
        row = {
            "consumer_group": group,
            "member": member,
            "event_time": None if event_time == float("inf") else max(event_time or 0.0, 0.0),
            "seen_at": time.time(),
        }
        with self.store.batch() as batch:
            batch.upsert(clocks, [row], ["consumer_group", "member"], ["event_time", "seen_at"])

    def leave(self, group: str, member: str) -> None:
        """``member`` stopped cleanly: its clock no longer holds anything back."""
        with self.store.batch() as batch:
            batch.conn.execute(
                sa.delete(clocks).where(clocks.c.consumer_group == group, clocks.c.member == member)
            )

    def limit(self, group: str, *, ttl: float, now: float | None = None) -> float:
        """The event time up to which timers may be released: the wall clock, or earlier while
        a live worker (seen within ``ttl`` seconds) is applying events older than that. A
        worker that died stops holding timers back ``ttl`` seconds after its last report."""
        wall = time.time() if now is None else now
        query = sa.select(sa.func.min(clocks.c.event_time)).where(
            clocks.c.consumer_group == group,
            clocks.c.seen_at >= wall - ttl,
            clocks.c.event_time.is_not(None),
        )
        with self.store.engine.connect().execution_options(read_only=True) as conn:
            earliest = conn.execute(query).scalar()
        return wall if earliest is None else min(wall, float(earliest))

    # -- timers --------------------------------------------------------------------------

    def to_arm(self, limit: float, wall: float, chunk: int) -> list[DueTimer]:
        """Unarmed, unpublished timers that may get a job now: due after the wall clock (the
        job waits for its time) or due by the group's event-time ``limit``."""
        query = (
            sa.select(timers)
            .where(
                timers.c.armed.is_(False),
                timers.c.published_at.is_(None),
                sa.or_(timers.c.due_at > wall, timers.c.due_at <= limit),
            )
            .order_by(timers.c.due_at, timers.c.timer_id)
            .limit(chunk)
        )
        with self.store.engine.connect().execution_options(read_only=True) as conn:
            return [_due(r) for r in conn.execute(query)]

    def mark_armed(self, rows: list[DueTimer]) -> None:
        """Their jobs exist. A row rescheduled meanwhile (another due time) stays unarmed."""
        if not rows:
            return
        statement = (
            sa.update(timers)
            .where(timers.c.timer_id == sa.bindparam("tid"), timers.c.due_at == sa.bindparam("due"))
            .values(armed=True)
        )
        with self.store.batch() as batch:
            batch.conn.execute(statement, [{"tid": r.timer_id, "due": r.due_at} for r in rows])

    def timer(self, timer_id: str) -> DueTimer | None:
        """One timer row (None: it fired inside a batch, or the core cancelled it)."""
        query = sa.select(timers).where(timers.c.timer_id == timer_id)
        with self.store.engine.connect().execution_options(read_only=True) as conn:
            found = conn.execute(query).first()
        return None if found is None else _due(found)

    def disarm(self, timer_id: str) -> None:
        """Its job ran too early for the group's clock: arm it again when the clock allows."""
        self._set(timer_id, armed=False)

    def mark_published(self, timer_id: str, at: float) -> None:
        """Its ``timer.fired`` event is on the timers topic (acknowledged)."""
        self._set(timer_id, published_at=at)

    def _set(self, timer_id: str, **values: object) -> None:
        with self.store.batch() as batch:
            batch.conn.execute(
                sa.update(timers).where(timers.c.timer_id == timer_id).values(**values)
            )

    def redeliver(self, wall: float, after: float) -> int:
        """Timers published ``after`` seconds ago and still not applied (a worker died, the
        topic was lost): unpublish and disarm them, so they are armed and produced again.
        Returns how many."""
        with self.store.batch() as batch:
            result = batch.conn.execute(
                sa.update(timers)
                .where(timers.c.published_at <= wall - after)
                .values(published_at=None, armed=False)
            )
        return max(result.rowcount, 0)

    def recover(self, jobs: sa.Table, skip: Collection[str] = ()) -> int:
        """Armed, unpublished timers with no job in ``jobs`` (APScheduler's table) lost their
        job (with the previous scheduler, or a run that failed); disarm them, but for those in
        ``skip`` (running now). Returns how many."""
        orphaned = sa.and_(
            timers.c.armed.is_(True),
            timers.c.published_at.is_(None),
            ~sa.exists().where(jobs.c.id == timers.c.timer_id),
            *([timers.c.timer_id.not_in(sorted(skip))] if skip else []),
        )
        with self.store.batch() as batch:
            result = batch.conn.execute(sa.update(timers).where(orphaned).values(armed=False))
        return max(result.rowcount, 0)

    def stale_jobs(self, jobs: sa.Table, chunk: int = 5000) -> list[str]:
        """Ids of jobs in ``jobs`` whose timer row is gone (cancelled by the core, or fired
        inside a batch before its job ran)."""
        query = (
            sa.select(jobs.c.id)
            .where(~sa.exists().where(timers.c.timer_id == jobs.c.id))
            .limit(chunk)
        )
        with self.store.engine.connect().execution_options(read_only=True) as conn:
            return [str(r[0]) for r in conn.execute(query)]

    def pending(self) -> list[DueTimer]:
        """Every timer row, by due time (tests and reports)."""
        query = sa.select(timers).order_by(timers.c.due_at, timers.c.timer_id)
        with self.store.engine.connect().execution_options(read_only=True) as conn:
            return [_due(r) for r in conn.execute(query)]


def _due(r: sa.Row[tuple[object, ...]]) -> DueTimer:
    m = r._mapping
    return DueTimer(m["timer_id"], m["customer_id"], m["due_at"], m["published_at"], m["armed"])
