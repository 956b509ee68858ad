"""Event-time alignment of several partitions (the way Kafka Streams picks its next record).

One customer's events arrive on several topics (and, with non-murmur2 producers, several
partitions). When a worker catches up on a backlog, a naive loop would apply an hour of
``payments`` before the ``customers`` update that came first. The aligner buffers what was
fetched and releases records in ``occurred_at`` order up to a horizon: the earliest "latest
time seen" among partitions that still have records to fetch. A partition that is caught up
(its buffer is empty and the consumer is at its high watermark) does not hold anything back,
so live traffic is never delayed; a partition that has not answered yet holds records back until
the horizon has stood still for ``max_wait`` seconds *while records kept arriving from the
others* (each within the last quarter of ``max_wait``: a partition that makes no progress does
not stall the others for ever). When nothing arrives from any partition (the broker hung or
restarting, the network away), releasing what is buffered would only apply it out of order with
what the stalled partitions hold, so the wait is ``max_stall`` instead: long enough for a
broker to come back, bounded all the same. The stall's time does not count towards
``max_wait``: when the broker is back, the partition holding the horizon gets ``max_wait`` for
its own fetch. ``unaligned`` says why the last release was not in event-time order.

Pure: no Kafka client here; the driver tells it which partitions are caught up.
"""

from __future__ import annotations

import heapq
from collections import Counter, deque
from collections.abc import Iterable, Iterator
from itertools import islice

from outreach.streams.codec import DeadLetter
from outreach.streams.processor import Decoded

TopicPartition = tuple[str, int]
_Item = tuple[float, int, Decoded]  # (occurred_at or -inf, arrival seq, item)


class Aligner:
    """Buffers decoded records per partition and releases them in event-time order."""

    def __init__(
        self, *, max_wait: float = 2.0, max_stall: float = 60.0, max_buffered: int = 100_000
    ) -> None:
        self.max_wait = max_wait
        self.max_stall = max(max_stall, max_wait)
        self.max_buffered = max_buffered
        self._arrived = False  # records were added since the last release
        self._arrived_at = float("-inf")  # the release clock when records last arrived
        self._buffers: dict[TopicPartition, deque[_Item]] = {}
        self._latest: dict[TopicPartition, float] = {}  # newest event time fetched per partition
        self._seq = 0
        self._horizon = float("-inf")
        self._stuck_since: float | None = None
        self._lag_since = float("-inf")  # since when the horizon stood still while others moved
        self.buffered = 0
        # why the last release did not keep event-time order (None: it did), for the log, and
        # the limit that ended the wait (max_wait, max_stall or max_buffered), for the metric
        self.unaligned: str | None = None
        self.unaligned_by: str | None = None

    def assign(self, partitions: Iterable[TopicPartition]) -> None:
        """The partitions this worker now owns. Every buffer is dropped: after a rebalance the
        consumer fetches again from the committed or stored position, kept partitions too, so
        what was buffered would come twice (the store would skip the repeat, but memory and
        counts would not)."""
        self._buffers = {tp: deque() for tp in partitions}
        self._latest = {}
        self.buffered = 0
        self._stuck_since = None

    def add(self, tp: TopicPartition, items: Iterable[Decoded]) -> None:
        """Records fetched from one partition, in offset order."""
        buffer = self._buffers.setdefault(tp, deque())
        before = len(buffer)
        for item in items:
            event = item[1]
            stamp = (
                float("-inf") if isinstance(event, DeadLetter) else event.occurred_at.timestamp()
            )
            self._seq += 1
            buffer.append((stamp, self._seq, item))
            if stamp > self._latest.get(tp, float("-inf")):
                self._latest[tp] = stamp
        self._arrived = self._arrived or len(buffer) > before
        self.buffered += len(buffer) - before

    def release(
        self, caught_up: set[TopicPartition], now: float, limit: int | None = None
    ) -> list[Decoded]:
        """The records that can be applied now, in event-time order, at most ``limit`` (each
        partition's released records are a prefix of it, in offset order)."""
        horizon, holder = float("inf"), None
        for tp in self._buffers:
            if tp not in caught_up:  # more may come from it, no older than what it gave last
                latest = self._latest.get(tp, float("-inf"))
                if holder is None or latest < horizon:
                    horizon, holder = latest, tp
        if self._arrived:
            if now - self._arrived_at > self.max_wait:
                # the first records after a silence (the driver may not have asked meanwhile,
                # its fetch blocked): a lag can only start now
                self._lag_since = now
            self._arrived, self._arrived_at = False, now
        if self._stuck_since is None or horizon > self._horizon or not self.buffered:
            self._stuck_since = now  # time is moving (or nothing waits): not stuck
            self._lag_since = now
        self._horizon = horizon
        stuck = now - self._stuck_since
        # records are arriving right now while the horizon stands still: a partition lags
        # behind the others. (Not "arrived since it stood still": when a broker hangs, what
        # the client had prefetched still trickles in for a moment, then nothing.) Only time
        # spent arriving counts: a stall of every partition (a hung broker) is not the
        # holder's lag, or the first records after the stall would end the wait at once
        # while the holder's own fetch is still on its way.
        others_moved = now - self._arrived_at <= self.max_wait / 4
        if not others_moved:
            self._lag_since = now
        lag = now - self._lag_since
        if self._waited_enough(holder, lag, stuck):
            horizon = float("inf")  # a partition makes no progress: stop waiting for it
        keys = list(self._buffers)
        streams = [_tagged(self._buffers[tp], index, horizon) for index, tp in enumerate(keys)]
        taken = list(islice(heapq.merge(*streams), limit))
        counts = Counter(index for _, _, index, _ in taken)
        for index, count in counts.items():
            buffer = self._buffers[keys[index]]
            for _ in range(count):
                buffer.popleft()
        self.buffered -= len(taken)
        return [item for _, _, _, item in taken]

    def _waited_enough(self, holder: TopicPartition | None, lag: float, stuck: float) -> bool:
        """Whether to stop waiting for the partition holding the horizon; sets ``unaligned``
        (why, if records are released out of order) and ``unaligned_by`` (the limit)."""
        self.unaligned = self.unaligned_by = None
        if self.buffered >= self.max_buffered:
            by, why = "max_buffered", f"{self.buffered:,} records buffered (max_buffered)"
        elif lag >= self.max_wait:
            by, why = "max_wait", f"no progress for {lag:.1f} s while the others delivered"
        elif stuck >= self.max_stall:
            by, why = "max_stall", f"nothing from any partition for {stuck:.1f} s (max_stall)"
        else:
            return False
        if holder is not None and self.buffered:
            self.unaligned = f"{holder[0]}[{holder[1]}] held the horizon: {why}"
            self.unaligned_by = by
        return True

    def backlog(self, tp: TopicPartition) -> int:
        """Records of one partition fetched and not yet released."""
        buffer = self._buffers.get(tp)
        return len(buffer) if buffer is not None else 0

    def first_unreleased(self) -> dict[TopicPartition, int]:
        """Per partition, the offset of the first record still buffered (commit no further)."""
        return {tp: b[0][2][0].offset for tp, b in self._buffers.items() if b}


def _tagged(
    buffer: deque[_Item], index: int, horizon: float
) -> Iterator[tuple[float, int, int, Decoded]]:
    """The buffer's records up to ``horizon``, tagged with the buffer's index."""
    for stamp, seq, item in buffer:
        if stamp > horizon:
            return
        yield stamp, seq, index, item
