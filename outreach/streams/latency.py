"""Decision latency as tallies: how long a record waited between Kafka and the batch applying it.

Latency is wall time when the batch that applied a record was applied (inside its transaction,
just before commit) minus the record's Kafka timestamp (CreateTime, the producer's clock, or
LogAppendTime, the broker's), clamped at 0 against clock skew. It includes the consumer lag,
the wait for event-time alignment and the batch's own work: the time from Kafka to decided.

Measured (by ``BatchProcessor``): every record a batch newly applies, events and dead letters
alike (a dead letter is decided too). Not measured: redelivered records (counted when first
applied), records without a timestamp (``Record.timestamp`` None, or negative: Kafka's -1 for
"none"), and the timers topic's records: the scheduler produces a ``timer.fired`` record when
it releases a due timer; what matters of a timer is its lateness against its due time, which
this wait does not show, and mixing them in would blur the events' figures (timers that fall
due within a batch have no record at all).

A histogram with fixed bounds kept in the ``tallies`` table (integers, added to in each batch's
transaction, so right however many workers there are): ``("latency", <le>)`` counts the
observations of each bucket NON-cumulatively (only buckets with observations have a row),
``("latency", "count")`` all of them (for reading the table; the export takes the count from
the buckets), ``("latency_ms", "sum")`` their sum in whole milliseconds (rounded per batch).
``read`` turns the rows into Prometheus' cumulative buckets.

Must not import: sqlalchemy, faust, aiokafka, the decision core (the API reads this too).
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections import Counter
from collections.abc import Iterable

# upper bounds in seconds (Prometheus' ``le``: a bucket holds the observations <= its bound);
# from the batch time of a caught-up worker (ms) up to minutes of lag
BOUNDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
LABELS = (*(f"{b:g}" for b in BOUNDS), "+Inf")  # the tally label of each bucket, then +Inf
NAME, SUM_NAME = "latency", "latency_ms"


def add_latencies(tallies: Counter[tuple[str, str]], now: float, stamps: Iterable[float]) -> None:
    """Add to ``tallies`` how long each record waited: ``now`` minus its Kafka timestamp (in
    ``stamps``), 0 if negative (clocks differ)."""
    buckets = [0] * len(LABELS)
    count, total = 0, 0.0
    for stamp in stamps:
        waited = now - stamp
        if waited < 0:
            waited = 0.0
        buckets[bisect_left(BOUNDS, waited)] += 1
        count += 1
        total += waited
    if not count:
        return
    for label, n in zip(LABELS, buckets, strict=True):
        if n:
            tallies[NAME, label] += n
    tallies[NAME, "count"] += count
    tallies[SUM_NAME, "sum"] += round(total * 1000)


def read(tallies: dict[tuple[str, str], int]) -> tuple[list[tuple[float, int]], float]:
    """Cumulative ``(upper bound, count)`` of every bucket, ending with ``inf`` (the count of
    all), and the sum in seconds, from the stored tallies (zeros before any measurement)."""
    buckets, running = [], 0
    for bound, label in zip((*BOUNDS, math.inf), LABELS, strict=True):
        running += tallies.get((NAME, label), 0)
        buckets.append((bound, running))
    return buckets, tallies.get((SUM_NAME, "sum"), 0) / 1000
