"""What every scenario shares: the run's broker and databases, workloads and their replay, the
provider doubles, and the per-customer check against ``outreach replay``.

The expected outcome of a workload is what ``outreach replay`` of the same file decides: the
effect keys of its executed actions and the delivery keys of its sent messages, per customer.
A scenario passes its outcome check when, for every customer, each of those keys was performed
exactly once at the provider (the file connector's and file channel's logs, or the requests the
Twilio and SendGrid doubles accepted) and nothing else was.
"""

from __future__ import annotations

import asyncio
import random
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import orjson
import sqlalchemy as sa
from livesupport import (
    WorkerProcess,
    applied,
    log_lines,
    read_topic,
    without_global_running_total,
)
from outbound.doubles import Answer, SendGridDouble, TwilioDouble, status

from outreach.replay import replay
from outreach.rulebook import RuleBook, load_rulebook
from outreach.sample import generate
from outreach.streams.topics import Topics, ensure_topics

REPO = Path(__file__).resolve().parent.parent

SID, TOKEN, KEY = "AC" + "7" * 32, "reliability-token", "SG.reliability-key"
PARTITIONS = 4


@dataclass
class Result:
    """One scenario's line in the table."""

    name: str
    tried: str
    held: str
    ok: bool
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)


class ScenarioError(AssertionError):
    """An invariant did not hold (the message says which and by how much)."""


def check(condition: bool, message: str) -> None:
    """Raise ``ScenarioError(message)`` unless ``condition``."""
    if not condition:
        raise ScenarioError(message)


@dataclass
class Workload:
    """A sample file dated in the past (every timer is due by the wall clock) and its replay."""

    events: Path
    replay: Path
    count: int


class Run:
    """The run's shared parts: one embedded broker, a work folder, the database server."""

    def __init__(
        self, bootstrap: str, workdir: Path, database: str, postgres_url: str | None, seed: int,
        fast: bool,
    ) -> None:  # fmt: skip
        self.bootstrap = bootstrap
        self.workdir = workdir
        self.database = database
        self.postgres_url = postgres_url
        self.rng = random.Random(seed)  # noqa: S311 - kill points, not secrets
        self.seed = seed
        self.fast = fast
        self.book: RuleBook = load_rulebook(REPO / "rules")
        self._databases: list[str] = []

    async def topics(self) -> Topics:
        """Fresh topics (a unique prefix) on the run's broker."""
        made = Topics(f"r{uuid.uuid4().hex[:12]}.")
        await ensure_topics(self.bootstrap, made, PARTITIONS)
        return made

    def group(self) -> str:
        """A consumer group id nobody else uses."""
        return f"rel-{uuid.uuid4().hex[:12]}"

    def folder(self, name: str) -> Path:
        """A fresh folder for one scenario."""
        path = self.workdir / f"{name}-{uuid.uuid4().hex[:6]}"
        path.mkdir(parents=True)
        return path

    def database_url(self, folder: Path, kind: str | None = None) -> str:
        """An empty database of the run's kind (or ``kind``): a SQLite file in ``folder`` or a
        PostgreSQL database of its own (dropped at the end of the run)."""
        if (kind or self.database) == "sqlite":
            return f"sqlite:///{folder}/store.db"
        if self.postgres_url is None:
            raise ScenarioError("no PostgreSQL: set OUTREACH_TEST_POSTGRES_URL")
        server = sa.engine.make_url(self.postgres_url)
        name = f"outreach_rel_{uuid.uuid4().hex[:12]}"
        admin = sa.create_engine(server, isolation_level="AUTOCOMMIT")
        try:
            with admin.connect() as conn:
                conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
        finally:
            admin.dispose()
        self._databases.append(name)
        return server.set(database=name).render_as_string(hide_password=False)

    def drop_databases(self) -> None:
        """Drop the PostgreSQL databases the run made."""
        if self.postgres_url is None or not self._databases:
            return
        admin = sa.create_engine(self.postgres_url, isolation_level="AUTOCOMMIT")
        try:
            with admin.connect() as conn:
                for name in self._databases:
                    conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        finally:
            admin.dispose()

    def workload(self, folder: Path, customers: int, days: int) -> Workload:
        """``outreach sample`` dated in the past, and its replay (the expected outcome)."""
        start = datetime.now(UTC).replace(microsecond=0) - timedelta(days=days + 40)
        seed = self.rng.randrange(10_000)
        lines = [raw.rstrip(b"\n") for raw in generate(customers, days, seed, start)]
        events = folder / "events.jsonl"
        events.write_bytes(b"\n".join(lines) + b"\n")
        replay(events, self.book, folder / "replay")
        return Workload(events, folder / "replay", len(lines))


def worker(
    run: Run,
    topics: Topics,
    group: str,
    url: str,
    folder: Path,
    *extra: str,
    name: str = "worker",
    bootstrap: str | None = None,
) -> WorkerProcess:
    """An ``outreach worker`` child (not started) on the run's broker, or on ``bootstrap``
    (a scenario's own broker)."""
    return WorkerProcess(
        bootstrap or run.bootstrap, topics, group, url, folder / "data", *extra, name=name
    )


def scheduler(run: Run, topics: Topics, group: str, url: str, folder: Path, name: str) -> Any:
    """An ``outreach scheduler`` child (not started), killed by the same teardown."""
    made = WorkerProcess(run.bootstrap, topics, group, url, folder / "data", name=name)
    made.args = [
        sys.executable, "-m", "outreach.cli", "scheduler", "--kafka-url", run.bootstrap,
        "--database-url", url, "--log-level", "info",
    ]  # fmt: skip
    return made


def alive(process: WorkerProcess) -> bool:
    """Whether a started child is still running."""
    return process.process is not None and process.process.poll() is None


def inputs_applied(url: str, group: str, topics: Topics) -> int:
    """Input records the group has applied (the store's positions)."""
    return applied(url, group, topics.inputs)


async def wait_until(condition: Any, timeout: float, what: str, every: float = 0.1) -> None:
    """Poll ``condition`` (sync, run in a thread) until it holds; ``ScenarioError`` at the
    deadline."""
    deadline = time.monotonic() + timeout
    while not await asyncio.to_thread(condition):
        if time.monotonic() > deadline:
            raise ScenarioError(f"timed out after {timeout:.0f} s waiting for {what}")
        await asyncio.sleep(every)


def outbox_settled(url: str) -> bool:
    """Whether every outbox row is finished (none pending or in flight)."""
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            left = conn.execute(
                sa.text("SELECT COUNT(*) FROM outbox WHERE status NOT IN ('done', 'failed')")
            ).scalar()
    except sa.exc.DBAPIError:
        return False
    finally:
        engine.dispose()
    return left == 0


def outbox_counts(url: str) -> Counter[str]:
    """Outbox rows by status."""
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(sa.text("SELECT status, COUNT(*) FROM outbox GROUP BY status"))
            return Counter({str(s): int(n) for s, n in rows})
    finally:
        engine.dispose()


# -- the providers ------------------------------------------------------------------------------


class Providers:
    """Twilio and SendGrid doubles (real HTTP, the real SDKs talk to them) that can answer
    503 for a while (``fail_for``) or slowly (``delay``), and count what they accepted."""

    def __init__(self) -> None:
        self.twilio = _FlakyTwilio(SID, TOKEN)
        self.sendgrid = _FlakySendGrid(KEY)

    def __enter__(self) -> Providers:
        self.twilio.__enter__()
        self.sendgrid.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.twilio.__exit__(None, None, None)
        self.sendgrid.__exit__(None, None, None)

    def env(self) -> dict[str, str]:
        """What points ``outreach worker`` at the doubles."""
        return {
            "OUTREACH_SMS_CHANNEL": "twilio", "OUTREACH_TWILIO_ACCOUNT_SID": SID,
            "OUTREACH_TWILIO_AUTH_TOKEN": TOKEN, "OUTREACH_TWILIO_FROM_NUMBER": "+15005550006",
            "OUTREACH_TWILIO_API_BASE": self.twilio.url, "OUTREACH_TWILIO_RATE": "500",
            "OUTREACH_EMAIL_CHANNEL": "sendgrid", "OUTREACH_SENDGRID_API_KEY": KEY,
            "OUTREACH_SENDGRID_API_HOST": self.sendgrid.url, "OUTREACH_SENDGRID_RATE": "500",
            "OUTREACH_SENDGRID_FROM_EMAIL": "news@acme.example",
            "OUTREACH_SENDGRID_MARKETING_GROUP_ID": "1",
            "OUTREACH_PUBLIC_URL": "https://hooks.example.com",
            "OUTREACH_UNSUBSCRIBE_SECRET": "reliability-secret",
        }  # fmt: skip

    def fail_for(self, seconds: float) -> None:
        """Answer every request with 503 (no Retry-After) for ``seconds`` from now."""
        until = time.monotonic() + seconds
        self.twilio.failing_until = self.sendgrid.failing_until = until

    def delay(self, seconds: float) -> None:
        """Perform at once but answer each request only after ``seconds`` (a slow provider)."""
        self.twilio.delay = self.sendgrid.delay = seconds

    def in_flight(self) -> int:
        """Requests received and not answered yet."""
        return sum(
            1 for d in (self.twilio, self.sendgrid) for r in d.requests if r.answered is None
        )

    def refused(self) -> int:
        """Requests answered 5xx."""
        return sum(
            1 for d in (self.twilio, self.sendgrid) for r in d.requests if (r.answered or 0) >= 500
        )

    def accepted(self) -> Counter[tuple[str, str]]:
        """(customer, delivery key) of every message the providers accepted, with repeats."""
        seen: Counter[tuple[str, str]] = Counter()
        for request in self.twilio.creates():
            if request.answered is not None and 200 <= request.answered < 300:
                query = parse_qs(urlsplit(request.form.get("StatusCallback", "")).query)
                seen[query["customer_id"][0], f"msg:{query['message_id'][0]}"] += 1
        for _, body in self.sendgrid.accepted:
            custom = body.get("custom_args") or body["personalizations"][0]["custom_args"]
            seen[custom["customer_id"], f"msg:{custom['message_id']}"] += 1
        return seen


class _Flaky:
    """A provider double that answers 503 until ``failing_until`` and holds each answer at
    least ``delay`` seconds (mixed in before the double it changes)."""

    failing_until = 0.0
    delay = 0.0

    def handle(self, request: Any) -> Answer:
        if time.monotonic() < self.failing_until:
            return status(503)
        answer: Answer = super().handle(request)  # type: ignore[misc]
        return Answer(answer.status, answer.body, answer.headers, max(answer.delay, self.delay))


class _FlakyTwilio(_Flaky, TwilioDouble):
    pass


class _FlakySendGrid(_Flaky, SendGridDouble):
    pass


# -- the outcome: per customer, what replay decided, performed once --------------------------


def expected(replay_folder: Path) -> tuple[Counter[tuple[str, str]], Counter[tuple[str, str]]]:
    """(customer, effect key) of replay's executed actions; (customer, delivery key) of its
    sent messages."""
    effects = Counter(
        (r["customer_id"], r["idempotency_key"])
        for r in map(orjson.loads, log_lines(replay_folder, "actions"))
        if r["status"] == "executed"
    )
    deliveries = Counter(
        (r["customer_id"], f"msg:{r['message_id']}")
        for r in map(orjson.loads, log_lines(replay_folder, "messages"))
        if r["status"] == "sent"
    )
    return effects, deliveries


def performed(path: Path) -> Counter[tuple[str, str]]:
    """(customer, key) of every line a file connector or file channel wrote, with repeats."""
    if not path.exists():
        return Counter()
    return Counter(
        (r["customer_id"], r["key"]) for r in map(orjson.loads, path.read_bytes().splitlines())
    )


@dataclass
class Outcome:
    """The per-customer comparison of what was performed with what replay decided."""

    customers: int
    effects: int
    messages: int
    lost: list[tuple[str, str]]
    doubled: list[tuple[str, str]]
    unexpected: list[tuple[str, str]]

    @property
    def ok(self) -> bool:
        """Nothing lost, nothing doubled, nothing unexpected."""
        return not (self.lost or self.doubled or self.unexpected)

    def held(self) -> str:
        """The table's words for it."""
        return (
            f"{self.customers} customers with effects or messages: {self.effects} effects + "
            f"{self.messages} messages as replay; lost {len(self.lost)}, "
            f"doubled {len(self.doubled)}, unexpected {len(self.unexpected)}"
        )

    def require(self) -> None:
        """``ScenarioError`` unless ``ok`` (with a few examples)."""
        check(
            self.ok,
            f"{self.held()}; e.g. lost {self.lost[:3]} doubled {self.doubled[:3]} "
            f"unexpected {self.unexpected[:3]}",
        )


def held_in_files(workload: Workload, folder: Path) -> Outcome:
    """``compare`` with what the file connector and channel recorded in ``folder/data``;
    ``ScenarioError`` unless it held."""
    data = folder / "data"
    effects, messages = performed(data / "effects.jsonl"), performed(data / "messages.jsonl")
    outcome = compare(workload, effects, messages)
    outcome.require()
    return outcome


def compare(
    workload: Workload, effects: Counter[tuple[str, str]], messages: Counter[tuple[str, str]]
) -> Outcome:
    """Per customer: each expected key performed once, nothing else."""
    want_effects, want_messages = expected(workload.replay)
    lost, doubled, unexpected = [], [], []
    for want, got in ((want_effects, effects), (want_messages, messages)):
        lost += sorted(k for k in want if got[k] == 0)
        doubled += sorted(k for k, n in got.items() if n > 1)
        unexpected += sorted(k for k in got if k not in want)
    customers = {c for c, _ in want_effects} | {c for c, _ in want_messages}
    return Outcome(
        len(customers), sum(want_effects.values()), sum(want_messages.values()),
        lost, doubled, unexpected,
    )  # fmt: skip


async def same_decisions(
    bootstrap: str, topics: Topics, workload: Workload, *, strict: bool = True, workers: int = 1
) -> int:
    """Check the output topics hold exactly replay's decision records (as sets: the relay is
    at least once). Not ``strict``: return how many records differ instead of failing. With
    several ``workers`` the global budget's running total is left out of the comparison (the
    workers reach the shared ledger in an order no replay can know; the verdict must agree)."""
    differ = 0
    for name in ("signals", "actions", "messages"):
        want = set(log_lines(workload.replay, name))
        got = set(await read_topic(bootstrap, getattr(topics, name), len(want), timeout=120))
        if name == "actions" and workers > 1:
            want = {without_global_running_total(line) for line in want}
            got = {without_global_running_total(line) for line in got}
        missing, extra = want - got, got - want
        if missing or extra:  # kept beside the workload for a look
            (workload.replay.parent / f"{name}.missing.jsonl").write_bytes(b"\n".join(missing))
            (workload.replay.parent / f"{name}.extra.jsonl").write_bytes(b"\n".join(extra))
        check(
            not strict or not (missing or extra),
            f"{name}: {len(missing)} records missing, {len(extra)} extra "
            f"(see {workload.replay.parent}/{name}.missing.jsonl, .extra.jsonl)",
        )
        differ += len(missing)
    return differ


def tail(text: str, lines: int = 15) -> str:
    """The last lines of a log, for a failure's notes."""
    return "\n".join(text.splitlines()[-lines:])


def count_lines(text: str, needle: str) -> int:
    """How many lines of ``text`` contain ``needle``."""
    return sum(needle in line for line in text.splitlines())
