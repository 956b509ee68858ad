"""The timer scheduler: APScheduler 3 over the store's database, one active, others on standby.

What it schedules. The core decides all "later" work (a payment retry in three days, a message
deferred to the customer's morning, the expiry of an approval); a batch writes each pending
timer to the ``timers`` table and deletes it when it fires or when the core cancels it. The
active scheduler mirrors that table into APScheduler jobs (a ``date`` trigger at the due time,
job id = timer id) kept in APScheduler's ``SQLAlchemyJobStore`` (table ``scheduler_jobs``, same
database), and removes the jobs of timers that are gone.

What a job does. It never acts itself: it produces a ``timer.fired`` event, keyed by customer,
to the timers topic, and the worker that owns the customer's partition runs it through the
core. The core pops the timer from the customer's state when it fires, so a second delivery
does nothing: a fired job is idempotent like every other event.

One active scheduler. APScheduler 3 cannot share a job store between processes, so a
scheduler first takes the store's exclusive claim ``scheduler`` (PostgreSQL: a session
advisory lock; SQLite: ``flock`` on a lock file beside the database). The others wait as hot
standbys and retry every ``standby_poll`` seconds; the lock dies with its process (SIGKILL
included: PostgreSQL drops the session, the kernel drops the flock).

Takeover without loss. APScheduler removes a date job from its store when it hands it to its
executor, before the job runs. A scheduler killed in between loses the job, but the timer row
is still ``armed`` and never ``published``: the next active scheduler re-arms such rows first
(``Schedule.recover``). A job killed after producing and before marking its row is produced
again by the next one; the worker applies it once (see above). A produced timer that no worker
applies within ``redeliver_after`` seconds is produced again.

Event time. A timer is produced only once the group's clock (``Schedule.limit``: the earliest
event time any live worker is still applying, or the wall clock) has reached its due time, so a
recording published at full speed does not fire a three-day retry before the payment that
arrives a day later. A job that comes due by the wall clock earlier is put back (disarmed) and
armed again when the clock allows.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TypeVar

import orjson
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.jobstores.base import JobLookupError
from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
from apscheduler.schedulers.background import BackgroundScheduler
from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from outreach.core import DAY
from outreach.rules.durations import Duration, format_duration
from outreach.scheduling.webhook import ApprovalsWebhook
from outreach.store import Claim, Store, StoreBusyError
from outreach.store.contacts import Contacts
from outreach.store.operator import Operator
from outreach.store.schedule import DueTimer, Schedule
from outreach.streams.evaluation import timer_event
from outreach.streams.outage import Outage, unavailable
from outreach.streams.topics import Topics
from outreach.telemetry import metrics

log = logging.getLogger(__name__)

JOB_TABLE = "scheduler_jobs"
# provider callback ids (Twilio MessageSid, SendGrid sg_event_id, Stripe event ids) are kept
# this long to answer a retried webhook without acting twice; SendGrid retries for 72 hours
# and Stripe for three days, the longest of the providers
CALLBACK_MEMORY = 7 * DAY
CLAIM = "scheduler"
T = TypeVar("T")
_active: TimerScheduler | None = None  # the process's active scheduler, for fire_timer


@dataclass
class SchedulerOptions:
    """Tuning of the scheduler (defaults suit the embedded broker and a small cluster)."""

    sync_every: float = 0.25  # seconds between looks at the timers table
    standby_poll: float = 1.0  # seconds between a standby's tries to take over
    sweep_every: float = 5.0  # seconds between removals of cancelled timers' jobs
    redeliver_after: float = 60.0  # a produced timer no worker applied is produced again
    clock_ttl: float = 30.0  # a worker silent this long no longer holds timers back
    outage_grace: float = 3.0  # after a database outage, seconds for the workers to report
    # their clocks again before anything is armed (their last reports may be older than
    # clock_ttl only because the database was away: they would not hold timers back)
    threads: int = 4  # jobs producing at once
    chunk: int = 2000  # timers armed per look
    audit_retention: float | None = None  # seconds of audit trail to keep (None: all)
    outbox_retention: float = 30 * DAY  # seconds finished outbox rows are kept
    prune_every: float = 3600.0  # seconds between prunes (audit trail, outbox, callbacks)
    approvals_webhook: str | None = None  # URL announced new pending approvals are posted to
    approvals_webhook_secret: str | None = None  # HMAC-SHA256 key of X-Outreach-Signature
    announce_every: float = 2.0  # seconds between looks for approvals to announce


class SchedulerSettings(BaseSettings):
    """The scheduler's ``OUTREACH_*`` settings."""

    model_config = SettingsConfigDict(env_prefix="OUTREACH_")

    audit_retention: Duration | None = Field(
        default=None,
        description="how long audit entries are kept (event time), e.g. 365d; unset: forever. "
        "The active scheduler prunes older ones every hour.",
    )
    outbox_retention: Duration = Field(
        default=timedelta(days=30),
        description="how long outbox rows are kept once done or failed (wall clock), e.g. 90d. "
        "The active scheduler prunes older ones every hour; pending rows always stay.",
    )

    approvals_webhook_url: str | None = Field(
        default=None, description="POST each new pending approval here (JSON, signed)"
    )
    approvals_webhook_secret: SecretStr | None = Field(
        default=None, description="key of the webhook's X-Outreach-Signature (HMAC-SHA256)"
    )

    def options(self) -> SchedulerOptions:
        """The options these settings give."""
        keep, secret = self.audit_retention, self.approvals_webhook_secret
        return SchedulerOptions(
            audit_retention=keep.total_seconds() if keep else None,
            outbox_retention=self.outbox_retention.total_seconds(),
            approvals_webhook=self.approvals_webhook_url,
            approvals_webhook_secret=secret.get_secret_value() if secret else None,
        )


@dataclass
class SchedulerStats:
    """What the scheduler has done since it started (live summary, tests)."""

    takeovers: int = 0
    rounds: int = 0  # looks at the timers table while active
    armed: int = 0
    produced: int = 0
    held: int = 0  # jobs put back because the group's clock had not reached them
    cancelled: int = 0  # jobs removed because their timer was gone
    recovered: int = 0  # timers re-armed at takeover (their job died with the last scheduler)
    redelivered: int = 0
    pruned: int = 0  # audit entries deleted (OUTREACH_AUDIT_RETENTION)
    outbox_pruned: int = 0  # finished outbox rows deleted (OUTREACH_OUTBOX_RETENTION)
    callbacks_pruned: int = 0  # provider callback ids forgotten (after CALLBACK_MEMORY)
    last_produced: float = 0.0  # time.monotonic() of the last timer produced


async def _settled(call: Callable[[], T]) -> T:
    """``call`` in a thread; if the caller is cancelled meanwhile, the thread is still waited
    for (a store call cut loose would keep its connection, or a claim it just took)."""
    running = asyncio.ensure_future(asyncio.to_thread(call))
    try:
        return await asyncio.shield(running)
    except asyncio.CancelledError:
        await asyncio.wait([running])
        if not running.cancelled() and running.exception() is None:
            result = running.result()
            if isinstance(result, Claim):
                result.release()
        raise


def timer_value(row: DueTimer) -> bytes:
    """The ``timer.fired`` event for a due timer, as the JSON the timers topic carries."""
    event = timer_event(row.timer_id, row.customer_id, row.due_at, "scheduler")
    return orjson.dumps(event.model_dump(mode="json"))


def fire_timer(timer_id: str, customer_id: str, due: float) -> None:
    """APScheduler's job function (referenced by name in the job store, so a scheduler in
    another process can run a job this one stored)."""
    if _active is None:
        raise RuntimeError(f"timer {timer_id} came due with no active scheduler in this process")
    _active.fire(timer_id, customer_id, due)


class TimerScheduler:
    """Standby until it holds the store's scheduler claim, then the active scheduler."""

    def __init__(
        self,
        store: Store,
        topics: Topics,
        bootstrap: str,
        *,
        group: str,
        options: SchedulerOptions | None = None,
    ) -> None:
        self.store = store
        self.schedule = Schedule(store)
        self.topics = topics
        self.bootstrap = bootstrap
        self.group = group
        self.options = options or SchedulerOptions()
        self.stats = SchedulerStats()
        self._firing: set[str] = set()  # timers whose job is running now (APScheduler threads)
        self.active = False
        self._limit = float("-inf")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._producer: AIOKafkaProducer | None = None
        self._aps: BackgroundScheduler | None = None
        self._jobs: SQLAlchemyJobStore | None = None
        self.webhook: ApprovalsWebhook | None = None
        if self.options.approvals_webhook:
            self.webhook = ApprovalsWebhook(
                store, self.options.approvals_webhook, self.options.approvals_webhook_secret
            )

    async def run(self, stop: asyncio.Event) -> None:
        """Wait on standby for the claim, then schedule until ``stop`` (or the claim is lost,
        then wait again). The database away: an active scheduler steps down, and every
        scheduler waits with backoff until it is back (one log line each way), then competes
        for the claim again; the one that wins re-arms what the outage interrupted."""
        self._loop = asyncio.get_running_loop()
        said_standby = False
        outage = Outage("scheduler", log)
        brokers_away = 0  # consecutive takeovers the brokers were away for
        while not stop.is_set():
            wait = self.options.standby_poll
            try:
                claim = await _settled(lambda: self.store.hold_exclusive(CLAIM))
            except StoreBusyError:
                outage.recovered()
                if not said_standby:
                    log.info("scheduler: standby (another scheduler is active on this store)")
                    said_standby = True
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=wait)
                continue
            except Exception as exc:
                if not unavailable(exc):
                    raise
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=outage.failed(exc))
                continue
            outage.recovered()
            said_standby = False
            takeovers = self.stats.takeovers
            try:
                grace = self.options.outage_grace if outage.outages else 0.0
                await self._run_active(stop, claim, grace)
                brokers_away = 0
            except KafkaError as exc:
                # the brokers away (its producer cannot start): step down and try again, as for
                # the database, instead of ending the worker that runs it (and, one after
                # another, every standby that takes over); fire() puts a timer back likewise
                active = self.stats.takeovers > takeovers  # it was: a new outage
                brokers_away = 1 if active else brokers_away + 1
                if brokers_away == 1:
                    log.warning(
                        "scheduler: Kafka is unreachable (%s); stepped down, retrying until it "
                        "is back", exc,
                    )  # fmt: skip
                wait = min(5.0, 0.2 * 2 ** (brokers_away - 1))
            except Exception as exc:
                if not unavailable(exc):
                    raise
                brokers_away = 0
                wait = outage.failed(exc)  # stepped down; the claim goes with the session
            finally:
                with contextlib.suppress(Exception):  # a dead session has released it already
                    await asyncio.to_thread(claim.release)
            if outage.ongoing or brokers_away:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=wait)
        if self.webhook is not None:
            self.webhook.close()

    async def _run_active(self, stop: asyncio.Event, claim: Claim, grace: float = 0.0) -> None:
        global _active
        if _active is not None:
            raise RuntimeError("only one active scheduler per process")
        opts = self.options
        self._producer = AIOKafkaProducer(
            bootstrap_servers=self.bootstrap, acks="all", enable_idempotence=False, linger_ms=2
        )
        try:
            await self._producer.start()
        except BaseException:  # Kafka away: close what start() opened, or it leaks
            await self._producer.stop()
            raise
        # its own engine on the same database (the job store disposes of it at shutdown)
        jobs_store = Store(self.store.url.render_as_string(hide_password=False), pool_size=2)
        self._jobs = SQLAlchemyJobStore(engine=jobs_store.engine, tablename=JOB_TABLE)
        self._aps = aps = BackgroundScheduler(
            jobstores={"default": self._jobs},
            executors={"default": ThreadPoolExecutor(opts.threads)},
            job_defaults={"coalesce": True, "misfire_grace_time": None, "max_instances": 1},
            timezone=UTC,
        )
        _active = self
        self.active = True
        metrics.SCHEDULER_ACTIVE.set(1)
        self.stats.takeovers += 1
        try:
            await asyncio.to_thread(aps.start)
            recovered = await asyncio.to_thread(self.schedule.recover, self._jobs.jobs_t)
            self.stats.recovered += recovered
            log.info("scheduler: active (%d timers re-armed from a previous scheduler)", recovered)
            swept = pruned = announced = 0.0
            arm_from = time.monotonic() + grace
            while not stop.is_set():
                if time.monotonic() >= arm_from:
                    await _settled(self.sync)
                if self.webhook and time.monotonic() - announced >= opts.announce_every:
                    announced = time.monotonic()
                    await _settled(self.announce)
                if time.monotonic() - pruned >= opts.prune_every:
                    pruned = time.monotonic()
                    await _settled(self.prune)
                if time.monotonic() - swept >= opts.sweep_every:
                    swept = time.monotonic()
                    await _settled(self.sweep)
                    if not await _settled(claim.alive):
                        log.error("scheduler: lost the claim on the store; back to standby")
                        return
                    thread = getattr(aps, "_thread", None)
                    if thread is not None and not thread.is_alive():
                        # APScheduler 3's loop thread dies on a database error between jobs
                        # (get_next_run_time): no job would run again; start afresh
                        log.error("scheduler: APScheduler's thread died; restarting it")
                        return
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=opts.sync_every)
        finally:
            self.active = False
            metrics.SCHEDULER_ACTIVE.set(0)
            with contextlib.suppress(Exception):
                await _settled(lambda: aps.shutdown(True) if aps.running else None)
            jobs_store.close()
            _active = None
            await self._producer.stop()

    def sync(self) -> int:
        """Arm the timers that may be armed now; returns how many."""
        assert self._aps is not None
        opts = self.options
        self._limit = self.schedule.limit(self.group, ttl=opts.clock_ttl)
        total = 0
        while True:
            rows = self.schedule.to_arm(self._limit, time.time(), opts.chunk)
            for row in rows:
                self._aps.add_job(
                    "outreach.scheduling.scheduler:fire_timer",
                    trigger="date",
                    run_date=datetime.fromtimestamp(row.due_at, UTC),
                    args=[row.timer_id, row.customer_id, row.due_at],
                    id=row.timer_id,
                    name=f"timer {row.timer_id} of {row.customer_id}",
                    replace_existing=True,
                )
            self.schedule.mark_armed(rows)
            total += len(rows)
            if len(rows) < opts.chunk:
                break
        self.stats.armed += total
        self.stats.rounds += 1
        metrics.SCHEDULER_ROUNDS.inc()
        return total

    def sweep(self) -> None:
        """Remove the jobs of timers the core cancelled; re-arm produced timers nobody applied."""
        assert self._aps is not None and self._jobs is not None
        for job_id in self.schedule.stale_jobs(self._jobs.jobs_t):
            with contextlib.suppress(JobLookupError):
                self._aps.remove_job(job_id)
                self.stats.cancelled += 1
        metrics.SCHEDULER_SWEEPS.inc()
        # a job that failed (the database away inside ``fire``) is gone from APScheduler's
        # table while its row stays armed and unpublished: arm it again rather than wait for
        # the next takeover (a job running now is skipped: it is not lost)
        lost = self.schedule.recover(self._jobs.jobs_t, skip=frozenset(self._firing))
        if lost:
            log.warning("scheduler: %d timers lost their job (its run failed); arming again", lost)
            self.stats.recovered += lost
        again = self.schedule.redeliver(time.time(), self.options.redeliver_after)
        if again:
            log.warning("scheduler: %d timers produced but never applied; producing again", again)
            self.stats.redelivered += again

    def announce(self) -> None:
        """Post new pending approvals to the approvals webhook (``outreach.scheduling.webhook``)."""
        assert self.webhook is not None
        try:
            self.webhook.announce_once()
        except Exception:  # the database is away: the next round tries again
            log.exception("scheduler: announcing approvals failed; will retry")

    def prune(self) -> None:
        """Housekeeping that must run once per store, so the active scheduler does it: delete
        audit entries older than ``audit_retention`` (if set), outbox rows finished longer
        than ``outbox_retention`` ago and provider callback ids older than ``CALLBACK_MEMORY``
        (the tables would otherwise grow with every event, effect and webhook)."""
        now, opts = time.time(), self.options
        try:
            if opts.audit_retention:
                deleted = Operator(self.store).prune_audit(now - opts.audit_retention)
                self.stats.pruned += deleted
                if deleted:
                    log.info("scheduler: pruned %d audit entries older than %s", deleted,
                             _age(opts.audit_retention))  # fmt: skip
            deleted = self.store.prune_outbox(now - opts.outbox_retention)
            self.stats.outbox_pruned += deleted
            if deleted:
                log.info("scheduler: pruned %d outbox rows finished more than %s ago", deleted,
                         _age(opts.outbox_retention))  # fmt: skip
            self.stats.callbacks_pruned += Contacts(self.store).forget_seen(now - CALLBACK_MEMORY)
        except Exception:
            log.exception("scheduler: pruning failed; will retry")

    def fire(self, timer_id: str, customer_id: str, due: float) -> None:
        """Run one job (in an APScheduler thread): produce the timer's event if it is still
        pending and the group's clock has reached it; put it back if the clock has not. A run
        that raises leaves its row armed with no job: the next ``sweep`` arms it again."""
        self._firing.add(timer_id)
        try:
            self._fire(timer_id, customer_id, due)
        finally:
            self._firing.discard(timer_id)

    def _fire(self, timer_id: str, customer_id: str, due: float) -> None:
        row = self.schedule.timer(timer_id)
        if row is None or row.published_at is not None or row.due_at != due:
            return  # fired inside a batch, cancelled, produced already, or moved (its own job)
        if due > self._limit:
            self.schedule.disarm(timer_id)
            self.stats.held += 1
            return
        loop, producer = self._loop, self._producer
        assert loop is not None and producer is not None
        send = producer.send_and_wait(
            self.topics.timers, timer_value(row), key=customer_id.encode()
        )
        try:
            asyncio.run_coroutine_threadsafe(send, loop).result(timeout=60)
        except Exception:  # Kafka away: the job is gone, so the row goes back to be re-armed
            log.warning(
                "scheduler: producing timer %s failed; will retry", timer_id, exc_info=True,
                extra={"timer_id": timer_id, "customer_id": customer_id},
            )  # fmt: skip
            self.schedule.disarm(timer_id)
            return
        self.schedule.mark_published(timer_id, time.time())
        self.stats.produced += 1
        self.stats.last_produced = time.monotonic()
        metrics.SCHEDULER_PRODUCED.inc()


def _age(seconds: float) -> str:
    return format_duration(timedelta(seconds=seconds))
