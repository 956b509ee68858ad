"""Wiring of the live runtime: broker (embedded or given), topics, store, worker, dispatcher.

``LiveEngine`` is what ``outreach worker`` runs: with no ``OUTREACH_KAFKA_URL`` it starts the
embedded Tansu broker on a free loopback port and creates the topics; it migrates the store,
builds the decision core from the rules folder, and runs the worker (consume, apply, relay)
and the effects dispatcher (file connector and file channel by default) until stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from outreach.agents.composing import Composer
from outreach.agents.connectors import Connector, FileConnector
from outreach.agents.planner import Planner
from outreach.core import DecisionCore
from outreach.outbound.channels import Channel, FileChannel
from outreach.rulebook import load_rulebook
from outreach.scheduling import SchedulerSettings, TimerScheduler
from outreach.store import Store
from outreach.streams.codec import DEFAULT_MAX_EVENT_BYTES
from outreach.streams.dispatcher import Dispatcher, DispatcherOptions
from outreach.streams.embedded import EmbeddedBroker
from outreach.streams.export import DecisionExporter
from outreach.streams.faust_app import OutreachApp, caught_up, make_app
from outreach.streams.outage import unavailable
from outreach.streams.processor import DEFAULT_STATE_CACHE, BatchProcessor, BatchResult
from outreach.streams.relay import Relay
from outreach.streams.topics import KafkaSettings, Topics, ensure_topics
from outreach.streams.worker import Worker

log = logging.getLogger(__name__)


class WorkerSettings(BaseSettings):
    """What one worker process runs (``OUTREACH_*`` variables; CLI options override)."""

    model_config = SettingsConfigDict(env_prefix="OUTREACH_")

    rules: Path = Field(default=Path("rules"), description="rules folder")
    database_url: str = Field(default="sqlite:///outreach.db", description="the store")
    data_dir: Path = Field(
        default=Path(".outreach"),
        description="where the file channel and file connector write (embedded defaults)",
    )
    max_event_bytes: int = Field(default=DEFAULT_MAX_EVENT_BYTES, ge=256)
    audit_events: Literal["all", "decisive"] = Field(
        default="all",
        description="events kept in the audit trail: all, or only those that led to a "
        "decision and the engine's own (deliveries, replies, approvals); all costs ~20% of "
        "the worker's throughput on SQLite",
    )
    state_cache: int = Field(
        default=DEFAULT_STATE_CACHE,
        ge=0,
        description="customers whose decoded state the worker keeps between batches (checked "
        "against the stored row's version before use; ~5 KB each; 0: decode every batch)",
    )
    dispatch: bool = Field(default=True, description="run the effects dispatcher in-process")
    dispatch_lease: float = Field(
        default=60.0, gt=0, description="seconds before a claimed, unmarked outbox row is retried"
    )
    scheduler: bool = Field(
        default=True,
        description="run the timer scheduler in-process (active, or standby behind another)",
    )
    export: bool = Field(
        default=False, description="also write the output topics to DATA_DIR/decisions/*.jsonl"
    )
    runtime: Literal["aiokafka", "faust"] = Field(
        default="aiokafka",
        description="the consumer driver: aiokafka (event-time aligned, fastest) or faust",
    )


@dataclass
class Parts:
    """The running pieces (for the live summary and tests)."""

    bootstrap: str
    topics: Topics
    store: Store
    totals: BatchResult  # what the driver applied so far
    relay: Relay
    worker: Worker | None  # the aiokafka driver (None with the Faust driver)
    dispatcher: Dispatcher | None
    scheduler: TimerScheduler | None
    exporter: DecisionExporter | None
    embedded: bool
    faust: OutreachApp | None = None  # the Faust driver's app (None with the aiokafka driver)
    started: float = field(default_factory=time.monotonic)
    failure: str | None = None  # why a part stopped on its own, if one did


class LiveEngine:
    """One worker process: ``async with engine.running() as parts`` then ``await stop``."""

    def __init__(
        self,
        worker: WorkerSettings,
        kafka: KafkaSettings,
        channel: Channel | None = None,
        connector: Connector | None = None,
    ) -> None:
        """``channel``: where deliveries go (default: the file channel in ``data_dir``);
        ``connector``: where effects go (default: the file connector in ``data_dir``)."""
        self.settings = worker
        self.kafka = kafka
        self.channel = channel
        self.connector = connector

    async def _store(self, embedded: bool, stack: contextlib.ExitStack) -> Store:
        store = Store(self.settings.database_url)
        stack.callback(store.close)
        if embedded:  # its own broker: nobody else may apply to this store
            stack.callback(
                store.hold_exclusive(
                    f"embedded worker {self.kafka.group_id}",
                    why="an embedded worker (no OUTREACH_KAFKA_URL) starts its own broker, so "
                    "two of them must not share one store; give each its own --database-url, "
                    "or point both at one Kafka",
                )
            )
        await asyncio.to_thread(store.migrate)
        if embedded:
            # a new embedded broker (memory storage) starts with empty topics: positions
            # applied on a previous broker's offsets would skip its records
            forgotten = await asyncio.to_thread(store.forget_positions, self.kafka.group_id)
            if forgotten:
                log.warning(
                    "embedded broker: forgot the applied positions of %d partitions from a "
                    "previous broker (customer states and the outbox are kept)",
                    forgotten,
                )
        return store

    def _dispatcher(self, store: Store) -> Dispatcher | None:
        settings = self.settings
        if not settings.dispatch:
            return None
        return Dispatcher(
            store,
            self.connector or FileConnector(settings.data_dir / "effects.jsonl"),
            self.channel or FileChannel(settings.data_dir / "messages.jsonl"),
            DispatcherOptions(lease=settings.dispatch_lease),
        )

    @contextlib.asynccontextmanager
    async def running(self, stop: asyncio.Event) -> AsyncIterator[Parts]:
        """Start everything; on exit (after ``stop`` is set) shut it all down cleanly. If a
        part fails on its own, ``stop`` is set and ``Parts.failure`` says why."""
        settings, kafka = self.settings, self.kafka
        loaded_at = time.time()  # a reload asked for from now on is applied at the first batch
        book = load_rulebook(settings.rules)  # a bad rules folder fails before anything starts
        with contextlib.ExitStack() as stack:
            bootstrap = kafka.kafka_url
            if bootstrap is None:
                settings.data_dir.mkdir(parents=True, exist_ok=True)
                broker = EmbeddedBroker(log_path=settings.data_dir / "broker.log")
                bootstrap = stack.enter_context(broker).bootstrap
            topics = Topics(kafka.topic_prefix)
            await ensure_topics(
                bootstrap, topics, kafka.partitions, replication_factor=kafka.replication_factor
            )
            store = await self._store(kafka.kafka_url is None, stack)
            processor = BatchProcessor(
                DecisionCore(book, *model_parts(store, stack)), store, group=kafka.group_id,
                timers_topic=topics.timers,
                max_event_bytes=settings.max_event_bytes, audit_events=settings.audit_events,
                state_cache=settings.state_cache, loaded_at=loaded_at,
            )  # fmt: skip
            _tune_gc()
            exporter = None
            if settings.export:
                exporter = DecisionExporter(bootstrap, topics, settings.data_dir / "decisions")
            app, app_stopped = None, asyncio.Event()
            if settings.runtime == "faust":
                relay = Relay(store, topics, bootstrap)
                totals, worker = BatchResult(), None
                failed = asyncio.get_running_loop().create_future()
                app = make_app(processor, relay, topics, bootstrap, group=kafka.group_id,
                               totals=totals, datadir=settings.data_dir / "faust",
                               failed=failed, stop=stop)  # fmt: skip
                await relay.start()
                await app.start()
                runs = {
                    "relay": relay.run(stop),
                    "faust agent": _failure(failed, app_stopped),
                }
            else:
                worker = Worker(processor, store, topics, bootstrap, group=kafka.group_id)
                totals, relay = worker.stats.totals, worker.relay
                runs = {"worker": worker.run(stop)}
            dispatcher = self._dispatcher(store)
            scheduler = None
            if settings.scheduler:
                scheduler = TimerScheduler(
                    store, topics, bootstrap, group=kafka.group_id,
                    options=SchedulerSettings().options(),
                )  # fmt: skip
            parts = Parts(bootstrap, topics, store, totals, relay, worker, dispatcher, scheduler,
                          exporter, kafka.kafka_url is None, app)  # fmt: skip
            if dispatcher is not None:
                runs["dispatcher"] = dispatcher.run(stop)
            if scheduler is not None:
                runs["scheduler"] = scheduler.run(stop)
            if exporter is not None:
                runs["exporter"] = exporter.run(stop)
            tasks = [asyncio.create_task(run, name=name) for name, run in runs.items()]
            for task in tasks:
                task.add_done_callback(lambda done: _ended(done, parts, stop))
            try:
                yield parts
            finally:
                stop.set()
                if app is not None:
                    try:
                        await app.stop()
                    finally:
                        app_stopped.set()
                    await relay.stop()
                await asyncio.gather(*tasks, return_exceptions=True)
                await self._close_ports()

    async def _close_ports(self) -> None:
        """Release the connectors' HTTP connections and the SMS and email providers'
        sessions."""
        closing = getattr(self.connector, "aclose", None)
        if closing is not None:
            await closing()
        release = getattr(self.channel, "close", None)
        if release is not None:
            done = release()
            if asyncio.iscoroutine(done):
                await done


async def _failure(failed: asyncio.Future[None], app_stopped: asyncio.Event) -> None:
    """Raise what the Faust agent reports through ``failed``, until the app has stopped, not
    merely until ``stop``: the app's stop waits for the batch in hand, and a failure of that
    one, left unawaited, let the process exit 0 (and asyncio log "Future exception was never
    retrieved")."""
    stopped = asyncio.ensure_future(app_stopped.wait())
    either: list[asyncio.Future[Any]] = [failed, stopped]
    try:
        await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopped.cancel()
    if failed.done():
        failed.result()


def _tune_gc() -> None:
    """The worker keeps many objects alive (fetched records waiting in the aligner, a batch of
    states): with the default thresholds, full collections scanning them took 38% of the
    worker's time (measured with a gc callback in `make bench`). Collect young objects less
    often and move everything loaded so far (modules, rules, templates) out of the collector's
    sight."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(100_000, 50, 1000)


def _ended(task: asyncio.Task[None], parts: Parts, stop: asyncio.Event) -> None:
    """A part that dies takes the process down: a half-running worker would hold its
    partitions and do nothing with them."""
    if not task.cancelled() and task.exception() is not None:
        parts.failure = f"{task.get_name()}: {task.exception()!r}"
        log.error("%s stopped: %r", task.get_name(), task.exception())
        stop.set()


def quiet(parts: Parts, *, since: float) -> bool:
    """Whether nothing is left to do now: every fetched record applied and relayed (with the
    Faust driver: every assigned partition applied to its high watermark), no due outbox row
    (when this process dispatches), no due timer (when it runs a scheduler), and no new batch
    for ``since`` seconds (never while the database cannot be asked). What
    another process is there to do is not waited for: with ``--no-scheduler`` and no
    scheduler running, a due timer would keep ``--until-idle`` up for ever."""
    worker = parts.worker
    if worker is not None and (not worker.caught_up or worker.aligner.buffered or worker.applying):
        return False
    last = max(
        parts.totals.last_applied,
        parts.relay.last_published,
        parts.scheduler.stats.last_produced if parts.scheduler else 0.0,  # yet to come back
        parts.started,
    )
    if time.monotonic() - last < since:
        return False
    store, now = parts.store, time.time()
    try:
        if parts.faust is not None and not caught_up(parts.faust):
            return False
        due = store.due_count(
            now, rows=parts.dispatcher is not None, timers_due=parts.scheduler is not None
        )
        return not (store.count("pending_records") or due)
    except Exception as exc:  # the database away is not "idle": wait for it like the rest
        if unavailable(exc):
            return False
        raise


def model_parts(
    store: Store, stack: contextlib.ExitStack
) -> tuple[Planner | None, Composer | None]:
    """The model planner and composer, each when an LLM is configured (``OPENAI_API_KEY`` or
    ``OPENAI_BASE_URL``) and used for it (``OUTREACH_LLM_USES``); else None: the playbooks
    and templates alone. Both share one gateway, so one request cap; the token budget is
    shared with every process on ``store`` (stopped with ``stack``)."""
    from outreach.agents.adapters.llm import LLMGateway, LLMSettings
    from outreach.agents.adapters.openai_composer import OpenAIComposer
    from outreach.agents.adapters.openai_planner import OpenAIPlanner
    from outreach.store.tokens import SharedTokens

    settings = LLMSettings()
    if not (settings.used_for("planner") or settings.used_for("composer")):
        return None, None
    tokens = SharedTokens(store).start()
    stack.callback(tokens.close)
    gateway = LLMGateway(settings, usage=tokens)
    uses = sorted(settings.uses - {"replies"})
    log.info("LLM: %s at %s for %s (vetted; deterministic fallback)", settings.model,
             settings.base_url or "api.openai.com", ", ".join(uses))  # fmt: skip
    planner = OpenAIPlanner(gateway) if settings.used_for("planner") else None
    composer = OpenAIComposer(gateway) if settings.used_for("composer") else None
    return planner, composer
