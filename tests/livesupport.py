"""Helpers for the live-runtime tests: feed records to a processor the way a worker would."""

from __future__ import annotations

import zlib
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path

import orjson

from outreach.store import Store
from outreach.streams.codec import Record
from outreach.streams.processor import BatchProcessor
from outreach.streams.relay import timer_value

TOPIC_OF = {
    "customer": "customers", "contact": "customers", "shipment": "shipments",
    "payment": "payments", "usage": "usage", "renewal": "renewals",
}  # fmt: skip


class Feed:
    """Turns event lines into records on topic partitions, with offsets, like a broker."""

    def __init__(self, partitions: int = 4) -> None:
        self.partitions = partitions
        self.offsets: dict[tuple[str, int], int] = defaultdict(int)

    def record(
        self, topic: str, key: bytes | None, value: bytes, partition: int | None = None
    ) -> Record:
        """The next record of ``topic`` (partition by key CRC unless given)."""
        if partition is None:
            partition = zlib.crc32(key or b"") % self.partitions
        offset = self.offsets[(topic, partition)]
        self.offsets[(topic, partition)] = offset + 1
        return Record(topic, partition, offset, key, value)

    def line(self, raw: bytes) -> Record:
        """A valid-looking event line routed by its type and keyed by its customer."""
        obj = orjson.loads(raw)
        topic = TOPIC_OF[obj["type"].split(".")[0]]
        return self.record(topic, obj["customer_id"].encode(), raw.rstrip(b"\n"))


def run_to_quiescence(
    processor: BatchProcessor, store: Store, records: Sequence[Record], feed: Feed, batch: int = 500
) -> None:
    """Apply ``records`` in batches, then fire every pending timer until none is left."""
    for start in range(0, len(records), batch):
        processor.apply(records[start : start + batch])
    while True:
        due: list = []
        store.take_due_timers(float("inf"), 1000, due.extend)
        if not due:
            return
        processor.apply(
            [feed.record("timers", r.customer_id.encode(), timer_value(r)) for r in due]
        )


def drain_records(store: Store) -> dict[str, list[bytes]]:
    """Every record waiting for the relay, by logical topic (and removes them)."""
    out: dict[str, list[bytes]] = defaultdict(list)
    store.take_records(10**9, lambda rows: [out[r.topic].append(r.value) for r in rows])
    return out


def log_lines(folder: Path, name: str) -> list[bytes]:
    """The non-blank lines of one decision-log file of a replay folder."""
    return [line for line in (folder / f"{name}.jsonl").read_bytes().splitlines() if line.strip()]


def sorted_lines(lines: Iterable[bytes]) -> list[bytes]:
    """Lines as a sorted list (decision logs compared as multisets)."""
    return sorted(line.rstrip(b"\n") for line in lines)
