"""Helpers for the live-runtime tests: feed records to a processor the way a worker would."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import orjson
import sqlalchemy as sa
from aiokafka import AIOKafkaConsumer, TopicPartition
from support import payment_failed, profile

from outreach.core import DecisionCore
from outreach.rulebook import RuleBook
from outreach.scheduling import timer_value
from outreach.store import Store
from outreach.store.schedule import Schedule
from outreach.streams.codec import Record
from outreach.streams.embedded import EmbeddedBroker, free_port
from outreach.streams.processor import BatchProcessor
from outreach.streams.topics import Topics

TOPIC_OF = {
    "customer": "customers", "contact": "customers", "shipment": "shipments",
    "payment": "payments", "usage": "usage", "renewal": "renewals", "approval": "customers",
    "message": "customers",
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


def declined(feed: Feed, customer: str = "cus_1") -> list[Record]:
    """The customer's profile, then a payment of theirs failing: its retries become timers."""
    return [
        feed.line(orjson.dumps(profile("2026-10-01T09:00:00Z", customer))),
        feed.line(orjson.dumps(payment_failed("2026-10-01T10:00:00Z", customer))),
    ]


def make_processor(
    rules: RuleBook | DecisionCore,
    store: Store,
    *,
    group: str = "g",
    timers_topic: str = "timers",
    max_event_bytes: int = 65536,
    **options: Any,
) -> BatchProcessor:
    """The worker's processor over ``rules`` (a book, or a core a test made itself) on
    ``store``; ``options`` go to ``BatchProcessor`` as they are (``clock``, ``state_cache`` ...)."""
    core = rules if isinstance(rules, DecisionCore) else DecisionCore(rules)
    return BatchProcessor(
        core, store, group=group, timers_topic=timers_topic, max_event_bytes=max_event_bytes,
        **options,
    )  # fmt: skip


def run_to_quiescence(
    processor: BatchProcessor, store: Store, records: Sequence[Record], feed: Feed, batch: int = 500
) -> int:
    """Apply ``records`` in batches, then fire every pending timer until none is left; how
    many timers fired (cancelled ones are delivered too, and not fired)."""
    fired = 0
    for start in range(0, len(records), batch):
        fired += processor.apply(records[start : start + batch]).timers_fired
    while True:
        due = Schedule(store).pending()
        if not due:
            return fired
        fired += processor.apply(
            [feed.record("timers", r.customer_id.encode(), timer_value(r)) for r in due]
        ).timers_fired


def drain_records(store: Store) -> dict[str, list[bytes]]:
    """Every record waiting for the relay, by logical topic (and removes them)."""
    out: dict[str, list[bytes]] = defaultdict(list)
    store.take_records(10**9, lambda rows: [out[r.topic].append(r.value) for r in rows])
    return out


def split_in_halves(events: Path, folder: Path) -> tuple[Path, Path]:
    """``events`` (JSONL) as two files in ``folder``: its first half of lines, and the rest."""
    lines = events.read_bytes().splitlines(keepends=True)
    halves = folder / "before.jsonl", folder / "after.jsonl"
    halves[0].write_bytes(b"".join(lines[: len(lines) // 2]))
    halves[1].write_bytes(b"".join(lines[len(lines) // 2 :]))
    return halves


def log_lines(folder: Path, name: str) -> list[bytes]:
    """The non-blank lines of one decision-log file of a replay folder."""
    return [line for line in (folder / f"{name}.jsonl").read_bytes().splitlines() if line.strip()]


def sorted_lines(lines: Iterable[bytes]) -> list[bytes]:
    """Lines as a sorted list (decision logs compared as multisets)."""
    return sorted(line.rstrip(b"\n") for line in lines)


# -- live worker processes (integration and fault tests) ------------------------------------

REPO = Path(__file__).resolve().parent.parent


class WorkerProcess:
    """``outreach worker`` in a child process against the test's broker, topics and store."""

    running: list[WorkerProcess] = []  # noqa: RUF012 - killed by the tests' teardown

    @classmethod
    def kill_all(cls) -> None:
        """Kill every child still alive (a failed test must not leave workers behind)."""
        for worker in cls.running:
            if worker.process is not None and worker.process.poll() is None:
                worker.process.kill()
                worker.process.wait(timeout=10)
        cls.running.clear()

    def __init__(
        self, bootstrap: str, topics: Topics, group: str, database_url: str, data_dir: Path,
        *extra: str, name: str = "worker",
    ) -> None:  # fmt: skip
        self.args = [
            sys.executable, "-m", "outreach.cli", "worker", "--kafka-url", bootstrap,
            "--database-url", database_url, "--data-dir", str(data_dir),
            "--rules", str(REPO / "rules"), "--log-level", "info", *extra,
        ]  # fmt: skip
        self.env = {
            **os.environ, "OUTREACH_TOPIC_PREFIX": topics.prefix, "OUTREACH_GROUP_ID": group,
            "OUTREACH_DISPATCH_LEASE": "2", "COLUMNS": "200",
        }  # fmt: skip
        self.log_path = data_dir / f"{name}.log"
        data_dir.mkdir(parents=True, exist_ok=True)
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> WorkerProcess:
        """Start the child (its output goes to ``<data_dir>/<name>.log``)."""
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(self.args, env=self.env, stdout=log, stderr=log, cwd=REPO)
        log.close()
        WorkerProcess.running.append(self)
        return self

    @property
    def pid(self) -> int:
        """The started child's process id."""
        assert self.process is not None
        return self.process.pid

    def kill(self) -> None:
        """SIGKILL: no clean-up of any kind, like a crashed machine."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self) -> int:
        """SIGTERM (what Ctrl-C does) and wait for a clean exit; returns the exit code."""
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=60)

    def wait(self, timeout: float) -> int:
        """Wait for the child to exit by itself (``--until-idle``)."""
        assert self.process is not None
        return self.process.wait(timeout=timeout)

    def log(self) -> str:
        """What the child printed so far."""
        return self.log_path.read_text(errors="replace")


def applied(database_url: str, group: str, topics: Iterable[str]) -> int:
    """Records the group has applied from ``topics`` (from the store's positions)."""
    engine = sa.create_engine(database_url)
    query = sa.text(
        "SELECT COALESCE(SUM(next_offset), 0) FROM applied_offsets "
        "WHERE consumer_group = :g AND topic IN :t"
    ).bindparams(sa.bindparam("t", expanding=True))
    try:
        with engine.connect() as conn:
            total = conn.execute(query, {"g": group, "t": list(topics)}).scalar()
    except sa.exc.DBAPIError:  # the worker has not created the tables yet
        return 0
    finally:
        engine.dispose()
    return int(total or 0)


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``condition`` until it holds (a deadline, not a sleep as synchronisation)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.05)


async def until(
    condition: Callable[[], bool],
    timeout: float,
    what: str,
    running: asyncio.Task[Any] | None = None,
) -> None:
    """``wait_for`` on the event loop (the polled part runs meanwhile); fails at once if
    ``running`` (the task under test) ends first."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        if running is not None and running.done():
            raise AssertionError(f"{running.get_name()} ended before {what}: {running!r}")
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        await asyncio.sleep(0.05)


async def read_topic(bootstrap: str, topic: str, at_least: int, timeout: float = 60) -> list[bytes]:
    """Every value of ``topic`` once at least ``at_least`` distinct values arrived (then what
    is left is drained until a fetch comes back empty)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        await consumer._client.force_metadata_update()  # noqa: SLF001
        partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        values: list[bytes] = []
        deadline = time.monotonic() + timeout
        while True:
            fetched = await consumer.getmany(timeout_ms=300)
            for messages in fetched.values():
                values.extend(m.value for m in messages)
            if not fetched and len(set(values)) >= at_least:
                return values
            if time.monotonic() > deadline:
                return values
    finally:
        await consumer.stop()


def performed_keys(path: Path) -> list[str]:
    """The idempotency keys a file connector/channel wrote, in order (repeats kept)."""
    if not path.exists():
        return []
    return [orjson.loads(line)["key"] for line in path.read_bytes().splitlines() if line.strip()]


def expected_keys(replay_folder: Path) -> tuple[set[str], set[str]]:
    """(effect keys of executed actions, delivery keys of sent messages) of a replay."""
    effects = {
        r["idempotency_key"] for r in map(orjson.loads, log_lines(replay_folder, "actions"))
        if r["status"] == "executed"
    }  # fmt: skip
    deliveries = {
        f"msg:{r['message_id']}" for r in map(orjson.loads, log_lines(replay_folder, "messages"))
        if r["status"] == "sent"
    }  # fmt: skip
    return effects, deliveries


def without_global_running_total(record: bytes) -> bytes:
    """An action record with the global budget check's running total left out: with several
    workers the customers' actions reach the shared ledger in an order no replay can know, so
    "500 + 1000 of 1000000" may read "0 + 1000 of 1000000"; the verdict must still agree."""
    action = orjson.loads(record)
    for check in action["checks"]:
        if check["check"] == "global_budget":
            check["detail"] = check["detail"].split(" + ", 1)[-1]
    return orjson.dumps(action, option=orjson.OPT_SORT_KEYS)


# -- a TCP proxy that can be cut (database outages) ------------------------------------------


class CutProxy:
    """A TCP proxy on ``127.0.0.1:<port>`` to ``upstream`` that can be cut and restored: cut,
    it refuses new connections (nothing listens) and drops the ones it carries (RST), like a
    database that went away; restored, it listens on the same port again. Only what goes
    through it is disturbed. Use as a context manager."""

    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.port = free_port()
        self._lock = threading.Lock()
        self._conns: set[socket.socket] = set()
        self._listener: socket.socket | None = None
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._accept_loop, daemon=True)
        self.accepted = 0
        self.dropped = 0

    def __enter__(self) -> CutProxy:
        self.restore()
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._closed.set()
        self.cut()
        self._thread.join(timeout=5)

    @property
    def is_cut(self) -> bool:
        """Whether the proxy refuses connections now."""
        return self._listener is None

    def url_for(self, url: str) -> str:
        """``url`` (a SQLAlchemy URL of the upstream) pointed at this proxy instead."""
        return (
            sa.engine.make_url(url)
            .set(host="127.0.0.1", port=self.port)
            .render_as_string(hide_password=False)
        )

    def cut(self) -> None:
        """Stop listening and reset every carried connection."""
        with self._lock:
            listener, self._listener = self._listener, None
            conns, self._conns = self._conns, set()
        if listener is not None:
            listener.close()
        for conn in conns:
            with contextlib.suppress(OSError):  # RST rather than FIN: a connection lost
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            with contextlib.suppress(OSError):  # wakes the pump blocked in recv (close would not)
                conn.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                conn.close()
        self.dropped += len(conns) // 2

    def restore(self) -> None:
        """Listen again on the same port."""
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        listener.settimeout(0.05)
        with self._lock:
            self._listener = listener

    def _accept_loop(self) -> None:
        while not self._closed.is_set():
            listener = self._listener
            if listener is None:
                self._closed.wait(0.05)
                continue
            try:
                client, _ = listener.accept()
            except (TimeoutError, OSError):
                continue
            try:
                server = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                client.close()
                continue
            server.settimeout(None)
            client.settimeout(None)
            with self._lock:
                if self._listener is not listener:  # cut meanwhile
                    client.close()
                    server.close()
                    continue
                self._conns |= {client, server}
                self.accepted += 1
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, source: socket.socket, target: socket.socket) -> None:
        try:
            while chunk := source.recv(65536):
                target.sendall(chunk)
        except OSError:
            pass
        finally:
            for conn in (source, target):
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)
            with self._lock:
                gone = {source, target} & self._conns
                self._conns -= gone
            for conn in gone:
                conn.close()


# -- a broker that survives a restart (an S3 double for its storage) --------------------------


class ObjectStore:
    """A local S3 (moto's server, a child process) with one bucket, for the embedded broker's
    ``s3://`` storage: what the broker stored survives the broker's restart. Use as a context
    manager; ``env`` is what the broker needs to reach it."""

    def __init__(self, bucket: str = "tansu") -> None:
        self.bucket = bucket
        self.port = free_port()
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def storage(self) -> str:
        """The broker's storage URL."""
        return f"s3://{self.bucket}/"

    @property
    def env(self) -> dict[str, str]:
        """The environment the broker reads its S3 endpoint and credentials from."""
        return {
            "AWS_ENDPOINT": self.endpoint, "AWS_ALLOW_HTTP": "true",
            "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
            "AWS_DEFAULT_REGION": "us-east-1",
        }  # fmt: skip

    def __enter__(self) -> ObjectStore:
        command = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)]
        self._process = subprocess.Popen(  # noqa: S603
            command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
        try:
            wait_for(self._bucket_made, 30, f"the S3 double on port {self.port}")
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *_: object) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
            self._process.wait()

    def _bucket_made(self) -> bool:
        import urllib.error
        import urllib.request

        assert self._process is not None
        assert self._process.poll() is None, "the S3 double exited"
        put = urllib.request.Request(f"{self.endpoint}/{self.bucket}", method="PUT")
        try:
            with urllib.request.urlopen(put, timeout=2):  # noqa: S310 (our loopback endpoint)
                return True
        except (urllib.error.URLError, ConnectionError):
            return False


@contextlib.contextmanager
def stopped(*pids: int) -> Iterator[None]:
    """The processes stop (SIGSTOP, their connections open) for the block and go on after it
    (SIGCONT), however the block ends."""
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGCONT)


def hung(broker: EmbeddedBroker) -> contextlib.AbstractContextManager[None]:
    """The broker stops answering (a hung or partitioned broker, its connections open) for
    the block, and answers again after it."""
    assert broker.pid is not None
    return stopped(broker.pid)


@contextlib.contextmanager
def persistent_broker(log_path: Path | None = None) -> Iterator[EmbeddedBroker]:
    """An embedded broker whose records, topics and committed offsets survive ``restart()``."""
    with (
        ObjectStore() as s3,
        EmbeddedBroker(storage=s3.storage, env=s3.env, log_path=log_path) as broker,
    ):
        yield broker
