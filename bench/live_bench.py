"""``make bench`` (live half): the Kafka runtime on ONE embedded broker, all figures from one run.

Measures, on one ``EmbeddedBroker`` started here, each on its own topic prefix and group:
  (a)  ceiling: a plain group-less ``AIOKafkaConsumer`` (assign + seek_to_beginning, getmany)
       reading the workload from the five input topics, ``json.loads`` on every value (the
       definition of the baseline in ARCHITECTURE.md); (a') the same read with ``orjson.loads``
       (a faster decoder, so a higher ceiling; both ratios are printed);
  (b)  engine: one worker process (aiokafka driver: ``LiveEngine`` with a fresh SQLite store,
       dispatcher on, export off) applying the same workload, published beforehand (backlog);
  (b') the same with the Faust driver (``WorkerSettings(runtime="faust")``), for the README,
       stopped after ``--faust-cap`` seconds (it is the slow driver; its rate is sustained);
  (c)  latency: a fresh worker (aiokafka driver) while this process publishes live events
       (``occurred_at`` = now; ``customer.updated`` then ~90% ``usage.reported``) at a fixed
       1,000 events/s: a warm-up (one profile per customer) and then the measured window.
The workload is ``outreach sample --customers N --days 30 --seed 1``. Its events are dated in
the past, so the timers the engine schedules are due by the wall clock: those the batches'
event-time clock does not fire, the timer relay re-injects (``timer.fired``), within (b).

Definitions (every time is this process's ``time.monotonic()``):
  sustained events/s = (n1 - n0) / (t1 - t0), over input events only (timers the engine
    re-injects are its own work, not counted). (a): t0 when the first fetch returned, n0 = 0,
    (t1, n1) when all N were decoded. (b): t0 when the worker first holds fetched records (it
    prints that moment; its fetching and decoding are in the window), n0 = 0; (b'): t0 when
    the first batch was applied, n0 = its size; (t1, n1) when the last (or, with the cap, the
    latest) batch was applied. "Applied" is read from the store the way the engine itself knows
    it: the worker's ``applied_offsets`` (next offset to apply per input partition, written in
    the batch's own transaction), polled every 20 ms by this process. Process start-up and the
    group join are left out; the relay's and dispatcher's work during the window is in.
  event -> decision latency (c) = (first poll that sees the event's partition's next_offset pass
    the event's offset, i.e. the commit of the store transaction that applied it) - (the moment
    just before this process handed the event to ``EventPublisher``; its 5 ms linger is in).
    The poll time is taken just before the read that saw the commit, so it overstates the
    commit time by at most the poll interval (10 ms); ``applied_offsets.updated_at`` is not
    used: it is when the transaction *began*, which would understate. Most events produce no
    decision record, so "decision" means "the batch holding the event is decided and committed".
  peak RSS = ``ru_maxrss`` of the worker process itself (it runs alone in its interpreter).
The machine is shared (2 cores, broker included): compare ratios within one run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from bisect import bisect_right
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from replay_bench import ensure_sample  # same workload files as the replay bench

from outreach.streams.embedded import EmbeddedBroker
from outreach.streams.publish import EventPublisher, publish_file
from outreach.streams.topics import Topics, ensure_topics

REPO = Path(__file__).resolve().parent.parent
PARTITIONS = 4
THROUGHPUT_TARGET = 0.25  # (b) >= 25% of (a)
P99_TARGET_MS = 250.0
FETCH_MAX_BYTES = 16 * 1024 * 1024  # as WorkerOptions
LIVE_CUSTOMERS = 2000  # (c): the warm-up sends one profile each
STALL_SECONDS = 60  # a worker that applies nothing for this long has failed

# One worker process: LiveEngine until SIGTERM. Prints {"ready": true} once the aiokafka driver
# has fetched every assigned partition to its end (the Faust driver: once started),
# {"consuming": monotonic time} when the aiokafka driver first holds fetched records, and its
# totals and peak RSS as one JSON line when it has stopped.
RUNNER = r"""
import asyncio, contextlib, json, logging, resource, signal, sys, time
from pathlib import Path
from outreach.streams.runtime import LiveEngine, WorkerSettings
from outreach.streams.topics import KafkaSettings

config = json.loads(sys.argv[1])
logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
settings = WorkerSettings(
    rules=Path(config["rules"]), database_url=config["database_url"],
    data_dir=Path(config["data_dir"]), runtime=config["runtime"], dispatch=True, export=False,
)
kafka = KafkaSettings(
    kafka_url=config["bootstrap"], topic_prefix=config["prefix"],
    partitions=config["partitions"], group_id=config["group"],
)

def say(**fields):
    print(json.dumps(fields), flush=True)

async def main():
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    async with LiveEngine(settings, kafka).running(stop) as parts:
        ready = consuming = False
        while not stop.is_set():
            worker = parts.worker
            if not ready and (worker is None or worker.caught_up):
                ready = True
                say(ready=True)
            fetched = worker is not None and (worker.aligner.buffered or parts.totals.records)
            if fetched and not consuming:
                consuming = True
                say(consuming=time.monotonic())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.005 if worker and not consuming else 0.05)
    t = parts.totals
    say(failure=parts.failure, records=t.records, events=t.events,
        relayed=parts.relay.relayed,
        batches=parts.worker.stats.batches if parts.worker else 0,
        timers_published=parts.scheduler.stats.produced if parts.scheduler else 0,
        peak=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)

asyncio.run(main())
"""


class PositionPoller(threading.Thread):
    """Polls a worker's ``applied_offsets`` and keeps every change of each partition's next
    offset with the time just before the read that first saw it."""

    def __init__(self, db: Path, group: str, inputs: tuple[str, ...], interval: float) -> None:
        super().__init__(daemon=True)
        self.db, self.group, self.inputs, self.interval = db, group, set(inputs), interval
        self.changes: dict[tuple[str, int], list[tuple[float, int]]] = {}
        # (time, input events applied = sum of the input partitions' next offsets): when first
        # seen above zero, and at its latest change
        self.first: tuple[float, int] | None = None
        self.last: tuple[float, int] = (0.0, 0)
        self._halt = threading.Event()

    def run(self) -> None:
        conn: sqlite3.Connection | None = None
        query = "SELECT topic, partition, next_offset FROM applied_offsets WHERE consumer_group=?"
        while not self._halt.wait(self.interval):
            seen = time.monotonic()
            try:
                if conn is None:
                    if not self.db.exists():  # never create it: the worker makes it WAL
                        continue
                    conn = sqlite3.connect(f"file:{self.db}?mode=rw", uri=True, timeout=5)
                rows = conn.execute(query, (self.group,)).fetchall()
            except sqlite3.OperationalError:  # not migrated yet
                continue
            self._take(seen, rows)
        if conn is not None:
            conn.close()

    def _take(self, seen: float, rows: list[tuple[str, int, int]]) -> None:
        applied = 0
        for topic, partition, offset in rows:
            history = self.changes.setdefault((topic, partition), [])
            if not history or history[-1][1] != offset:
                history.append((seen, offset))
            if topic in self.inputs:
                applied += offset
        if applied != self.last[1]:
            self.last = (seen, applied)  # one assignment: readers see a consistent pair
            if self.first is None:
                self.first = self.last

    def committed_at(self, topic: str, partition: int, offset: int) -> float | None:
        """When ``offset`` was first seen applied, or None if it never was."""
        history = self.changes.get((topic, partition), [])
        index = bisect_right([o for _, o in history], offset)  # first next_offset > offset
        return history[index][0] if index < len(history) else None

    @property
    def applied(self) -> int:
        """Input events applied so far."""
        return self.last[1]

    def halt(self) -> None:
        """Stop polling and wait for the thread."""
        self._halt.set()
        self.join()


@dataclass
class WorkerProcess:
    """A worker subprocess and what it printed."""

    process: asyncio.subprocess.Process
    db: Path
    group: str
    lines: list[dict[str, Any]] = field(default_factory=list)
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    consuming: tuple[float, int] | None = None  # (time, 0) when it first held fetched records
    reader: asyncio.Task[None] | None = None

    async def read(self) -> None:
        """Collect the JSON lines the worker prints."""
        assert self.process.stdout is not None
        async for line in self.process.stdout:
            try:
                data = json.loads(line)
            except ValueError:  # not ours (a library printing to stdout)
                continue
            self.lines.append(data)
            if data.get("ready"):
                self.ready.set()
            if "consuming" in data:
                self.consuming = (data["consuming"], 0)

    async def stop(self) -> dict[str, Any]:
        """SIGTERM, wait, and return its final stats."""
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
        await asyncio.wait_for(self.process.wait(), 120)
        if self.reader is not None:
            await self.reader
        stats = [line for line in self.lines if "peak" in line]
        log = self.db.parent / "worker.log"
        if not stats:
            raise RuntimeError(f"the worker exited with {self.process.returncode}; see {log}")
        if stats[-1]["failure"]:
            raise RuntimeError(f"the worker failed: {stats[-1]['failure']}; see {log}")
        return stats[-1]


async def start_worker(bootstrap: str, topics: Topics, runtime: str, folder: Path) -> WorkerProcess:
    """A worker process of its own group on ``topics``, with a fresh store and data folder."""
    shutil.rmtree(folder, ignore_errors=True)  # the file channel keeps what it sent
    folder.mkdir(parents=True)
    db = folder / "outreach.db"
    name = topics.prefix.rstrip(".")
    config = {
        "bootstrap": bootstrap, "prefix": topics.prefix, "partitions": PARTITIONS,
        "group": f"{name}-group", "runtime": runtime, "rules": str(REPO / "rules"),
        "database_url": f"sqlite:///{db}", "data_dir": str(folder / "data"),
    }  # fmt: skip
    with (folder / "worker.log").open("wb") as log:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-c", RUNNER, json.dumps(config),
            stdout=subprocess.PIPE, stderr=log, cwd=REPO,
        )  # fmt: skip
    worker = WorkerProcess(process, db, str(config["group"]))
    worker.reader = asyncio.create_task(worker.read())
    return worker


async def publish_workload(bootstrap: str, topics: Topics, events: Path) -> tuple[int, float]:
    """Create ``topics`` and publish the file to them; (events, seconds)."""
    await ensure_topics(bootstrap, topics, PARTITIONS)
    report = await publish_file(events, bootstrap, topics)
    if report.unroutable:
        raise RuntimeError(f"{report.unroutable} lines of {events} were not sent")
    return report.total, report.elapsed


async def measure_ceiling(
    bootstrap: str, topics: Topics, expected: int, loads: Callable[[bytes], Any]
) -> dict[str, float]:
    """(a): read and JSON-decode every input record with ``loads``; sustained events/s."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
        fetch_max_bytes=FETCH_MAX_BYTES, max_partition_fetch_bytes=FETCH_MAX_BYTES // 4,
    )  # fmt: skip
    await consumer.start()
    try:
        partitions = [TopicPartition(t, p) for t in topics.inputs for p in range(PARTITIONS)]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        count, first = 0, None
        deadline = time.monotonic() + 300
        while count < expected and time.monotonic() < deadline:
            fetched = await consumer.getmany(timeout_ms=1000)
            if first is None and fetched:
                first = time.monotonic()  # as (b): from the moment records are in hand
            for messages in fetched.values():
                for message in messages:
                    loads(message.value)
                count += len(messages)
        last = time.monotonic()
    finally:
        await consumer.stop()
    if count < expected or first is None:
        raise RuntimeError(f"(a) read {count} of {expected} records")
    return {"events": count, "rate": count / (last - first)}


async def measure_backlog(
    bootstrap: str,
    topics: Topics,
    runtime: str,
    expected: int,
    folder: Path,
    *,
    cap: float | None = None,
    profile: Path | None = None,
) -> dict[str, Any]:
    """(b)/(b'): a worker applies the published backlog (for at most ``cap`` seconds once it
    has begun); sustained events/s and the worker's own stats."""
    worker = await start_worker(bootstrap, topics, runtime, folder)
    poller = PositionPoller(worker.db, worker.group, topics.inputs, 0.02)
    poller.start()
    spy = None
    started = time.monotonic()
    try:
        while poller.applied < expected:
            now, (seen, applied) = time.monotonic(), poller.last
            if worker.process.returncode is not None or now - max(seen, started) > STALL_SECONDS:
                raise RuntimeError(
                    f"{runtime} worker: {applied:,} of {expected:,} events applied, then no "
                    f"progress for {STALL_SECONDS} s; see {worker.db.parent / 'worker.log'}"
                )
            begun = worker.consuming or poller.first
            if cap is not None and begun is not None and now - begun[0] >= cap:
                break
            if spy is None and profile is not None and begun is not None:
                spy = start_profile(worker.process.pid, profile)
            await asyncio.sleep(0.1)
    finally:
        poller.halt()
        stats = await worker.stop()
    if spy is not None:
        await asyncio.to_thread(spy.wait)
    begun = worker.consuming or poller.first
    assert begun is not None
    (t0, n0), (t1, n1) = begun, poller.last
    stats.update(rate=(n1 - n0) / (t1 - t0), window=t1 - t0, applied=n1)
    return stats


def start_profile(pid: int, out: Path) -> subprocess.Popen[bytes]:
    """py-spy on the worker for 15 s, only samples holding the GIL (the worker is CPU-bound:
    where its CPU goes); format from the suffix: .svg, .txt raw, .json."""
    fmt = {".txt": "raw", ".json": "speedscope"}.get(out.suffix, "flamegraph")
    spy = Path(sys.executable).parent / "py-spy"
    command = [str(spy), "record", "--pid", str(pid), "--duration", "15", "--gil", "--format", fmt]
    return subprocess.Popen([*command, "--output", str(out)], stdout=subprocess.DEVNULL)


def live_event(index: int, customers: int, run: str, rng: random.Random) -> dict[str, Any]:
    """Event ``index`` of the live load: each customer's profile first, then ~90% usage."""
    now = datetime.now(UTC)
    customer = f"cus_live_{index % customers:05d}"
    event: dict[str, Any] = {
        "event_id": f"evt_{run}_{index}", "customer_id": customer,
        "occurred_at": now.isoformat().replace("+00:00", "Z"), "source": "bench",
    }  # fmt: skip
    if index < customers or rng.random() < 0.1:
        marketing = rng.random() < 0.6
        event["type"], event["data"] = "customer.updated", {
            "email": f"{customer}@example.com", "phone": f"+1415555{index % customers:04d}",
            "timezone": rng.choice(("America/New_York", "Europe/Paris", "Asia/Tokyo")),
            "locale": "en-US", "tier": "standard",
            "consent": {"sms": {"transactional": True, "marketing": marketing},
                        "email": {"transactional": True, "marketing": marketing}},
        }  # fmt: skip
        return event
    base = 100 + (index % customers) % 900
    value = base * (0.3 if rng.random() < 0.05 else rng.uniform(0.9, 1.1))  # some declines
    start = (now - timedelta(hours=1)).isoformat().replace("+00:00", "Z")
    event["type"], event["data"] = "usage.reported", {
        "metric": "api_calls", "value": round(value, 2), "period_start": start,
        "period_end": event["occurred_at"],
    }  # fmt: skip
    return event


async def offer_load(
    bootstrap: str, topics: Topics, rate: float, total: int, customers: int
) -> list[tuple[str, int, int, float]]:
    """Publish ``total`` live events at exactly ``rate``/s; (topic, partition, offset, sent)."""
    rng, run = random.Random(7), uuid.uuid4().hex[:8]  # noqa: S311 - load shape, not secret
    sent: list[tuple[asyncio.Future[Any], float]] = []
    async with EventPublisher(bootstrap, topics, client_id="live-bench") as publisher:
        start = time.monotonic()
        for index in range(total):
            due = start + index / rate
            event = live_event(index, customers, run, rng)
            now = time.monotonic()
            if due > now:
                await asyncio.sleep(due - now)
                now = time.monotonic()
            sent.append((await publisher.publish(event), now))
        await publisher.flush()
    return [(f.result().topic, f.result().partition, f.result().offset, t) for f, t in sent]


async def measure_latency(
    bootstrap: str, topics: Topics, folder: Path, rate: float, seconds: float, customers: int
) -> dict[str, Any]:
    """(c): a fresh worker under ``rate`` events/s; latency percentiles after the warm-up."""
    await ensure_topics(bootstrap, topics, PARTITIONS)
    worker = await start_worker(bootstrap, topics, "aiokafka", folder)
    poller = PositionPoller(worker.db, worker.group, topics.inputs, 0.01)
    poller.start()
    try:
        await asyncio.wait_for(worker.ready.wait(), 120)
        warmup = customers
        total = warmup + int(rate * seconds)
        produced = await offer_load(bootstrap, topics, rate, total, customers)
        deadline = time.monotonic() + 60
        while poller.applied < len(produced) and time.monotonic() < deadline:
            if worker.process.returncode is not None:
                break  # stop() says why
            await asyncio.sleep(0.1)
    finally:
        poller.halt()
        stats = await worker.stop()
    measured = produced[warmup:]
    latencies = []
    for topic, partition, offset, at in measured:
        done = poller.committed_at(topic, partition, offset)
        if done is not None:
            latencies.append((done - at) * 1000)
    if not latencies:
        raise RuntimeError(f"no event of (c) was applied; see {worker.db.parent / 'worker.log'}")
    latencies.sort()
    span = measured[-1][3] - measured[0][3]
    stats.update(
        offered=(len(measured) - 1) / span, measured=len(measured),
        missing=len(measured) - len(latencies), p50=percentile(latencies, 0.50),
        p99=percentile(latencies, 0.99), max=latencies[-1],
    )  # fmt: skip
    return stats


def percentile(ordered: list[float], q: float) -> float:
    """Nearest-rank percentile of sorted values."""
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


async def run(args: argparse.Namespace) -> dict[str, Any]:
    """Every measurement on one broker; the figures for the table."""
    events = ensure_sample(args.workdir, args.customers, args.days)
    tag = uuid.uuid4().hex[:6]
    results: dict[str, Any] = {"workload": events.name}
    with EmbeddedBroker(log_path=args.workdir / "broker.log") as broker:
        bootstrap = broker.bootstrap
        step("(a) ceiling: publish, then raw consume + json.loads, and + orjson.loads")
        topics = Topics(f"lb{tag}-a.")
        count, published = await publish_workload(bootstrap, topics, events)
        results["events"], results["publish_rate"] = count, count / published
        results["a"] = await measure_ceiling(bootstrap, topics, count, json.loads)
        results["a'"] = await measure_ceiling(bootstrap, topics, count, orjson.loads)
        step("(b) engine, aiokafka driver: publish, then apply the backlog")
        topics = Topics(f"lb{tag}-b.")
        await publish_workload(bootstrap, topics, events)
        results["b"] = await measure_backlog(
            bootstrap, topics, "aiokafka", count, args.workdir / "live-b", profile=args.profile
        )
        step(f"(b') engine, Faust driver: publish, then apply the backlog ({args.faust_cap:.0f} s)")
        topics = Topics(f"lb{tag}-bf.")
        await publish_workload(bootstrap, topics, events)
        results["b'"] = await measure_backlog(
            bootstrap, topics, "faust", count, args.workdir / "live-bf", cap=args.faust_cap
        )
        step(f"(c) latency: {args.rate:,.0f} events/s for {args.seconds:.0f} s")
        topics, folder = Topics(f"lb{tag}-c."), args.workdir / "live-c"
        results["c"] = await measure_latency(
            bootstrap, topics, folder, args.rate, args.seconds, LIVE_CUSTOMERS
        )
    return results


def step(text: str) -> None:
    """Progress on stderr, the table alone on stdout."""
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def verdict(ok: bool) -> str:
    """PASS or MISS."""
    return "PASS" if ok else "MISS"


def report(results: dict[str, Any], wall: float, profiled: bool) -> None:
    """The table."""
    a, a2, b, f, c = results["a"], results["a'"], results["b"], results["b'"], results["c"]
    mb = 2**20
    b_ratio, f_ratio = b["rate"] / a["rate"], f["rate"] / a["rate"]
    b_ratio2 = b["rate"] / a2["rate"]
    print()
    print(f"live engine on one embedded broker: {results['events']:,} events "
          f"({results['workload']}), {PARTITIONS} partitions per topic")  # fmt: skip
    print(f"{'measure':<46}{'result':>20}{'vs (a)':>9}{'peak RSS':>11}  target")
    rows = [
        ("(a) ceiling: raw aiokafka consume + json", f"{a['rate']:,.0f} ev/s", "100%", "", ""),
        ("(a') the same with orjson", f"{a2['rate']:,.0f} ev/s",
         f"{a2['rate'] / a['rate']:.0%}", "", ""),
        ("(b) engine, aiokafka driver, 1 process", f"{b['rate']:,.0f} ev/s", f"{b_ratio:.1%}",
         f"{b['peak'] / mb:.0f} MB", f">= 25% {verdict(b_ratio >= THROUGHPUT_TARGET)}"),
        ("    (b) vs the orjson ceiling (a')", "", f"{b_ratio2:.1%}", "",
         f">= 25% {verdict(b_ratio2 >= THROUGHPUT_TARGET)}"),
        ("(b') engine, Faust driver (README figure)", f"{f['rate']:,.0f} ev/s", f"{f_ratio:.1%}",
         f"{f['peak'] / mb:.0f} MB", "-"),
        (f"(c) latency p50 at {c['offered']:,.0f} ev/s offered", f"{c['p50']:,.0f} ms", "",
         f"{c['peak'] / mb:.0f} MB", ""),
        ("(c) latency p99", f"{c['p99']:,.0f} ms", "", "",
         f"<= {P99_TARGET_MS:.0f} ms {verdict(c['p99'] <= P99_TARGET_MS)}"),
        ("(c) latency max", f"{c['max']:,.0f} ms", "", "", ""),
    ]  # fmt: skip
    for label, value, ratio, peak, target in rows:
        print(f"{label:<46}{value:>20}{ratio:>9}{peak:>11}  {target}")
    print()
    print(f"(b)  {b['applied']:,} events applied in {b['window']:.1f} s from its first fetch, "
          f"in {b['batches']:,} store transactions ({b['timers_published']:,} due timers "
          f"re-injected, {b['relayed']:,} decision records relayed)")  # fmt: skip
    print(f"(b') {f['applied']:,} events applied in {f['window']:.1f} s from its first batch")
    print(f"(c) {c['measured']:,} events measured after a warm-up ({c['missing']} never applied); "
          "latency = produce -> commit of the batch that applied it")  # fmt: skip
    print(f"publish (outreach publish_file) ran at {results['publish_rate']:,.0f} events/s")
    if profiled:
        print("(b) ran under py-spy: its figures are perturbed")
    print(f"(benchmark wall time {wall:.0f}s; the machine is shared: compare ratios)")


def main() -> int:
    """Run the benchmark and print the table."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workdir", type=Path, default=REPO / ".bench")
    parser.add_argument("--customers", type=int, default=5000)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--rate", type=float, default=1000.0, help="(c) offered events/s")
    parser.add_argument("--seconds", type=float, default=20.0, help="(c) measured window")
    parser.add_argument("--faust-cap", type=float, default=40.0, help="(b') seconds at most")
    parser.add_argument("--profile", type=Path, help="py-spy (b) for 15 s into this .svg/.txt")
    args = parser.parse_args()
    args.workdir = args.workdir.resolve()
    args.workdir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    results = asyncio.run(run(args))
    report(results, time.monotonic() - started, args.profile is not None)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
