"""Sustained load: a fixed offered rate for minutes, with the worker's memory sampled.

One ``outreach worker`` (SQLite store, dispatcher and scheduler in-process) while this process
publishes live events (bench/live_bench.py's shape: each customer's profile, then mostly usage
reports) at exactly ``rate`` events/s for ``seconds``. Measured as in ``make bench`` (c):

- latency: from handing an event to the producer to the first poll of the store that sees the
  transaction which applied it committed (``applied_offsets``, polled every 10 ms);
- throughput: input events applied per second over the offered window;
- lag: published minus applied, sampled every second (its maximum);
- memory: the worker's resident set size (``/proc/<pid>/status``: VmRSS sampled every second,
  VmHWM the kernel's peak).

What must hold: every offered event is applied, and the worker keeps up (applied throughput at
least 95% of the offered rate, lag back to zero at the end). Latency figures are reported, not
judged: the machine is shared.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from pathlib import Path
from typing import Any

from live_bench import PositionPoller, live_event, percentile

from outreach.streams.publish import EventPublisher
from reliability.harness import Result, Run, check, inputs_applied, tail, wait_until, worker


def rss_mb(pid: int) -> tuple[float, float]:
    """(current, peak) resident set size of ``pid`` in MB, from ``/proc``."""
    fields: dict[str, float] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            fields[name] = int(value.split()[0]) / 1024
    return fields.get("VmRSS", 0.0), fields.get("VmHWM", 0.0)


async def sustained_load(run: Run, rate: float, seconds: float, customers: int = 2000) -> Result:
    """Offer ``rate`` events/s for ``seconds`` to one worker; report the table's figures."""
    folder = run.folder("load")
    topics, group = await run.topics(), run.group()
    db = folder / "store.db"
    url = f"sqlite:///{db}"
    own = worker(run, topics, group, url, folder, name="worker").start()
    assert own.process is not None
    pid = own.process.pid
    await wait_until(lambda: "worker: assigned" in own.log(), 120, "the worker to join")
    poller = PositionPoller(db, group, topics.inputs, 0.01)
    poller.start()
    sent: list[tuple[asyncio.Future[Any], float]] = []
    samples: list[tuple[float, int, float]] = []  # (time, lag, rss)
    rng = random.Random(run.seed)  # noqa: S311 - load shape, not secret
    tag = uuid.uuid4().hex[:8]
    warmup = customers
    total = warmup + int(rate * seconds)
    try:
        async with EventPublisher(run.bootstrap, topics, client_id="reliability") as publisher:
            start = next_sample = time.monotonic()
            for index in range(total):
                due = start + index / rate
                now = time.monotonic()
                if due > now:
                    await asyncio.sleep(due - now)  # the offered rate, not a synchronisation
                    now = time.monotonic()
                sent.append((await publisher.publish(live_event(index, customers, tag, rng)), now))
                if now >= next_sample:
                    next_sample = now + 1.0
                    samples.append((now, len(sent) - poller.applied, rss_mb(pid)[0]))
                    check(own.process.poll() is None, f"the worker died: {tail(own.log())}")
            await publisher.flush()
        offered_until = time.monotonic()
        await wait_until(
            lambda: poller.applied >= total, 120, "every offered event applied", every=0.02
        )
        drained = time.monotonic() - offered_until
        _, peak = rss_mb(pid)
    finally:
        poller.halt()
    code = own.stop()
    check(code == 0, f"the worker did not stop cleanly ({code}): {tail(own.log())}")
    check(inputs_applied(url, group, topics) == total, "not every offered event was applied")
    produced = [(f.result().topic, f.result().partition, f.result().offset, t) for f, t in sent]
    measured = produced[warmup:]
    latencies = sorted(
        (done - at) * 1000
        for topic, partition, offset, at in measured
        if (done := poller.committed_at(topic, partition, offset)) is not None
    )
    check(len(latencies) == len(measured), "some offered events were never seen applied")
    span = measured[-1][3] - measured[0][3]
    offered = (len(measured) - 1) / span
    finished = max(poller.committed_at(t, p, o) or 0.0 for t, p, o, _ in measured)
    throughput = len(measured) / max(finished - measured[0][3], 1e-9)
    lag_max = max((lag for _, lag, _ in samples), default=0)
    check(throughput >= 0.95 * offered, f"applied {throughput:,.0f}/s of {offered:,.0f}/s offered")
    return Result(
        "sustained load",
        f"{len(measured):,} events at {offered:,.0f}/s for {span:,.0f} s "
        f"({customers:,} customers; +{warmup:,} warm-up)",
        f"throughput {throughput:,.0f}/s; latency p50 {percentile(latencies, 0.5):,.0f} ms, "
        f"p99 {percentile(latencies, 0.99):,.0f} ms, max {latencies[-1]:,.0f} ms; lag max "
        f"{lag_max:,}; peak RSS {peak:,.0f} MB; all applied {drained:.1f} s after the last "
        "event was acked",
        True,
    )
