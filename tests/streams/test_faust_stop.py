"""Stopping the Faust driver while its agent is still busy with a batch.

Faust's stop waits for every event the agent took to be acked, so whatever the agent does with
the batch in hand happens after ``stop`` is set: the runtime must still hear of it.
"""

from __future__ import annotations

import asyncio
import gc
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from livesupport import REPO, applied, wait_for

from outreach.sample import generate
from outreach.streams.processor import BatchProcessor, BatchResult
from outreach.streams.publish import publish_file
from outreach.streams.runtime import LiveEngine, WorkerSettings
from outreach.streams.topics import KafkaSettings, Topics

pytestmark = pytest.mark.timeout(180)


async def test_a_batch_failing_as_the_faust_worker_stops_fails_the_run(
    kafka_bootstrap: str,
    topics: Topics,
    group_id: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The batch in hand when the worker is told to stop fails (not a database outage). The
    runtime watched the agent's ``failed`` only until ``stop``: the failure went unheard, the
    worker exited 0, and asyncio logged "Future exception was never retrieved"."""
    loop = asyncio.get_running_loop()
    unhandled: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _, context: unhandled.append(context))
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(days=60)
    events = tmp_path / "events.jsonl"
    events.write_bytes(b"\n".join(generate(20, 5, 3, start)) + b"\n")
    await publish_file(events, kafka_bootstrap, topics)
    url = f"sqlite:///{tmp_path}/store.db"
    settings = WorkerSettings(
        rules=REPO / "rules", database_url=url, data_dir=tmp_path / "data", runtime="faust",
        scheduler=False, dispatch=False,
    )  # fmt: skip
    kafka = KafkaSettings(kafka_url=kafka_bootstrap, topic_prefix=topics.prefix,
                          partitions=4, group_id=group_id)  # fmt: skip
    tasks: dict[str, asyncio.Task[Any]] = {}
    applying = threading.Event()

    def failing(self: BatchProcessor, records: list[Any]) -> BatchResult:
        applying.set()
        # fail once the rest of the engine has seen the stop: the relay's task ends on it (a
        # second at most), well after the runtime's old watch of ``failed`` did, and the
        # app's stop is waiting for this batch by then
        wait_for(lambda: "relay" in tasks and tasks["relay"].done(), 60, "the relay to stop")
        raise RuntimeError("injected: the batch in hand fails as the worker stops")

    monkeypatch.setattr(BatchProcessor, "apply", failing)
    stop = asyncio.Event()
    async with LiveEngine(settings, kafka).running(stop) as parts:
        tasks.update({task.get_name(): task for task in asyncio.all_tasks()})
        assert "relay" in tasks, sorted(tasks)
        await asyncio.to_thread(wait_for, applying.is_set, 120, "a batch to apply")
        stop.set()
    assert parts.failure is not None, "a failed batch let the worker exit 0"
    assert "could not be applied" in parts.failure and "injected" in parts.failure
    assert applied(url, group_id, topics.inputs) == 0
    del parts
    tasks.clear()
    gc.collect()  # the agent's ``failed`` future goes with the app: unretrieved, it is logged
    assert not [c for c in unhandled if "never retrieved" in str(c.get("message"))], unhandled
