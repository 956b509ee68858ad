"""Wiring of the live runtime: broker (embedded or given), topics, store, worker, dispatcher.

``LiveEngine`` is what ``outreach worker`` runs: with no ``OUTREACH_KAFKA_URL`` it starts the
embedded Tansu broker on a free loopback port and creates the topics; it migrates the store,
builds the decision core from the rules folder, and runs the worker (consume, apply, relay)
and the effects dispatcher (file connector and file channel by default) until stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from outreach.agents.connectors import FileConnector
from outreach.core import DecisionCore
from outreach.outbound.channels import FileChannel
from outreach.rulebook import load_rulebook
from outreach.store import Store
from outreach.streams.codec import DEFAULT_MAX_EVENT_BYTES
from outreach.streams.dispatcher import Dispatcher
from outreach.streams.embedded import EmbeddedBroker
from outreach.streams.export import DecisionExporter
from outreach.streams.faust_app import make_app
from outreach.streams.processor import BatchProcessor, BatchResult
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
    dispatch: bool = Field(default=True, description="run the effects dispatcher in-process")
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
    exporter: DecisionExporter | None
    embedded: bool
    started: float = field(default_factory=time.monotonic)


class LiveEngine:
    """One worker process: ``async with engine.running() as parts`` then ``await stop``."""

    def __init__(self, worker: WorkerSettings, kafka: KafkaSettings) -> None:
        self.settings = worker
        self.kafka = kafka

    @contextlib.asynccontextmanager
    async def running(self, stop: asyncio.Event) -> AsyncIterator[Parts]:
        """Start everything; on exit (after ``stop`` is set) shut it all down cleanly."""
        settings, kafka = self.settings, self.kafka
        book = load_rulebook(settings.rules)  # a bad rules folder fails before anything starts
        with contextlib.ExitStack() as stack:
            bootstrap = kafka.kafka_url
            if bootstrap is None:
                settings.data_dir.mkdir(parents=True, exist_ok=True)
                broker = stack.enter_context(
                    EmbeddedBroker(log_path=settings.data_dir / "broker.log")
                )
                bootstrap = broker.bootstrap
            topics = Topics(kafka.topic_prefix)
            await ensure_topics(bootstrap, topics, kafka.partitions)
            store = Store(settings.database_url)
            stack.callback(store.close)
            await asyncio.to_thread(store.migrate)
            if kafka.kafka_url is None:
                # a new embedded broker (memory storage) starts with empty topics: positions
                # applied on a previous broker's offsets would skip its records
                forgotten = await asyncio.to_thread(store.forget_positions, kafka.group_id)
                if forgotten:
                    log.warning(
                        "embedded broker: forgot the applied positions of %d partitions from a "
                        "previous broker (customer states and the outbox are kept)",
                        forgotten,
                    )
            processor = BatchProcessor(
                DecisionCore(book), store, group=kafka.group_id, timers_topic=topics.timers,
                max_event_bytes=settings.max_event_bytes,
            )  # fmt: skip
            dispatcher = None
            if settings.dispatch:
                data = settings.data_dir
                dispatcher = Dispatcher(
                    store,
                    FileConnector(data / "effects.jsonl"),
                    FileChannel(data / "messages.jsonl"),
                )
            exporter = None
            if settings.export:
                exporter = DecisionExporter(bootstrap, topics, settings.data_dir / "decisions")
            tasks = []
            if settings.runtime == "faust":
                totals = BatchResult()
                relay = Relay(store, topics, bootstrap)
                app = make_app(processor, relay, topics, bootstrap, group=kafka.group_id,
                               totals=totals)  # fmt: skip
                await relay.start()
                await app.start()
                worker = None
                tasks.append(asyncio.create_task(relay.run(stop), name="relay"))
            else:
                worker = Worker(processor, store, topics, bootstrap, group=kafka.group_id)
                totals, relay, app = worker.stats.totals, worker.relay, None
                tasks.append(asyncio.create_task(worker.run(stop), name="worker"))
            parts = Parts(bootstrap, topics, store, totals, relay, worker, dispatcher, exporter,
                          kafka.kafka_url is None)  # fmt: skip
            if dispatcher is not None:
                tasks.append(asyncio.create_task(dispatcher.run(stop), name="dispatcher"))
            if exporter is not None:
                tasks.append(asyncio.create_task(exporter.run(stop), name="exporter"))
            try:
                yield parts
            finally:
                stop.set()
                if app is not None:
                    await app.stop()
                    await relay.stop()
                results = await asyncio.gather(*tasks, return_exceptions=True)
                for task, result in zip(tasks, results, strict=True):
                    if isinstance(result, BaseException) and not isinstance(
                        result, asyncio.CancelledError
                    ):
                        log.error("%s stopped with %r", task.get_name(), result)


def quiet(parts: Parts, *, since: float) -> bool:
    """Whether nothing is left to do now: every fetched record applied and relayed, no due
    outbox row, no due timer, and no new batch for ``since`` seconds."""
    worker = parts.worker
    if worker is not None and (not worker.caught_up or worker.aligner.buffered):
        return False
    last = max(worker.stats.last_batch if worker else 0.0, parts.totals.last_applied, parts.started)
    if time.monotonic() - last < since:
        return False
    store, now = parts.store, time.time()
    return not (store.count("pending_records") or store.due_count(now))
