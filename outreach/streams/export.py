"""Copy the output topics to decision-log files (``signals.jsonl``, ``actions.jsonl``,
``messages.jsonl``, ``dlq.jsonl``) as records arrive: the demo's and the tests' view of the
live decision log. A group-less consumer from the beginning of each topic.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

from aiokafka import AIOKafkaConsumer, TopicPartition

from outreach.streams.topics import Topics


class DecisionExporter:
    """Appends every record of the output topics to ``folder/<name>.jsonl``."""

    def __init__(self, bootstrap: str, topics: Topics, folder: Path) -> None:
        self.bootstrap = bootstrap
        self.folder = folder
        self.names = {
            topics.signals: "signals", topics.actions: "actions",
            topics.messages: "messages", topics.receipts: "receipts", topics.dlq: "dlq",
        }  # fmt: skip
        self.counts: Counter[str] = Counter()

    async def run(self, stop: asyncio.Event) -> None:
        """Export until ``stop`` is set (files are flushed after every fetch)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap, enable_auto_commit=False, group_id=None
        )
        await consumer.start()
        files = {n: (self.folder / f"{n}.jsonl").open("ab") for n in self.names.values()}
        try:
            partitions = []
            for topic in self.names:
                for p in sorted(
                    consumer.partitions_for_topic(topic) or await _partitions(consumer, topic)
                ):
                    partitions.append(TopicPartition(topic, p))
            consumer.assign(partitions)
            await consumer.seek_to_beginning(*partitions)
            while not stop.is_set():
                fetched = await consumer.getmany(timeout_ms=200, max_records=5000)
                for tp, messages in fetched.items():
                    name = self.names[tp.topic]
                    files[name].writelines(m.value + b"\n" for m in messages)
                    self.counts[name] += len(messages)
                for handle in files.values():
                    handle.flush()
        finally:
            for handle in files.values():
                handle.close()
            await consumer.stop()


async def _partitions(consumer: AIOKafkaConsumer, topic: str) -> set[int]:
    await consumer._client.force_metadata_update()  # noqa: SLF001 - aiokafka has no public call
    return consumer.partitions_for_topic(topic) or set()
