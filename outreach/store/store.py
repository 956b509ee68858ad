"""The store's operations: one transaction per batch, the outbox, timers and the Kafka relay.

Concurrency. Several workers may apply events of the same customer at once (producers that do
not partition by murmur2 spread a customer over partitions). Every batch locks the rows of the
customers it touches before reading them: PostgreSQL ``SELECT ... FOR UPDATE`` in customer-id
order (rows of new customers are reserved first with ``INSERT ... ON CONFLICT DO NOTHING``, so
two workers cannot both create one); SQLite ``BEGIN IMMEDIATE`` (one writer at a time). A
deadlock or lock timeout rolls the batch back and it is tried again (``Store.run``).

Outbox rows are claimed with ``FOR UPDATE SKIP LOCKED`` on PostgreSQL, so several
dispatchers never take the same row (timers belong to the one active scheduler:
``outreach.store.schedule``). Records for Kafka are relayed by one relay at a time (PostgreSQL:
an advisory lock; a SQLite file: ``flock`` on ``<database file>.relay.lock``), so they reach
Kafka in the order they were written.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy.engine import Engine

from outreach.store.batch import Batch, TimerRow
from outreach.store.locking import (
    Claim,
    FileTurn,
    hold_advisory,
    hold_file,
    serialise_sqlite,
)
from outreach.store.schema import (
    applied_offsets,
    customer_state,
    ledger,
    outbox,
    pending_records,
    timers,
)

log = logging.getLogger(__name__)
T = TypeVar("T")
R = TypeVar("R")
_RETRY_SQLSTATES = {"40P01", "40001", "55P03"}  # deadlock, serialization failure, lock timeout
# libpq parameters of every PostgreSQL connection, unless the URL sets them: without them a
# connection whose peer vanished (a failover, a dropped NAT entry, a cut network) blocks a
# worker for the kernel's two hours. With them a silent peer is found within ~60 s whether
# the connection is idle (keepalives) or waiting for an answer to what it sent
# (tcp_user_timeout), the call fails as "database away" and the outage path retries it.
POSTGRES_CONNECT: dict[str, int] = {
    "connect_timeout": 10,
    "keepalives": 1,
    "keepalives_idle": 30,
    "keepalives_interval": 10,
    "keepalives_count": 3,
    "tcp_user_timeout": 60_000,  # milliseconds
}
FINISHED = ("done", "failed")  # an outbox row's statuses for good (pending, in_flight before)


class StoreSettings(BaseSettings):
    """Where the store lives (``OUTREACH_DATABASE_URL``)."""

    model_config = SettingsConfigDict(env_prefix="OUTREACH_")

    database_url: str = "sqlite:///outreach.db"


@dataclass(frozen=True)
class OutboxRow:
    """One effect or delivery to perform, as claimed by a dispatcher."""

    id: int
    idempotency_key: str
    kind: str
    customer_id: str
    ref: str
    payload: bytes
    attempts: int
    created_at: float = 0.0  # when the core decided it (wall clock, epoch seconds)
    first_tried_at: float | None = None  # when a dispatcher first called the provider for it


@dataclass(frozen=True)
class PendingRecord:
    """A record waiting to be produced to Kafka; ``topic`` is the logical name."""

    seq: int
    topic: str
    key: bytes | None
    value: bytes


def _retryable(exc: sa.exc.DBAPIError) -> bool:
    code = getattr(exc.orig, "sqlstate", None)
    if code in _RETRY_SQLSTATES:
        return True
    return "database is locked" in str(exc.orig)


class Store:
    """The database behind the live runtime."""

    def __init__(self, url: str, *, pool_size: int = 5) -> None:
        self.url = sa.engine.make_url(url)
        self.postgres = self.url.get_backend_name() == "postgresql"
        if self.postgres:
            given = self.url.query  # the URL's own libpq parameters win over these defaults
            connect = {k: v for k, v in POSTGRES_CONNECT.items() if k not in given}
            self.engine: Engine = sa.create_engine(
                self.url, pool_pre_ping=True, pool_size=pool_size, connect_args=connect
            )
        elif self.url.get_backend_name() == "sqlite":
            self.engine = sa.create_engine(self.url, connect_args={"timeout": 30})
            serialise_sqlite(self.engine)
        else:
            raise ValueError(
                f"unsupported database URL {self.url.render_as_string()!r}: use sqlite:///FILE "
                "or postgresql+psycopg://USER:PASSWORD@HOST/DB"
            )
        relay_lock = None if self.postgres else self._lock_file("relay")
        self._relay_turn = None if relay_lock is None else FileTurn(relay_lock)

    def _lock_file(self, name: str) -> Path | None:
        """SQLite: the file beside the database that processes ``flock`` to claim ``name``
        (None for an in-memory database, which no other process can open)."""
        if not self.url.database or self.url.database == ":memory:":
            return None
        safe = "".join(c if c.isalnum() else "-" for c in name)
        return Path(f"{self.url.database}.{safe}.lock")

    def hold_exclusive(self, name: str, *, why: str | None = None) -> Claim:
        """Claim ``name`` on this store for this process until the claim is released (or the
        process dies); ``StoreBusyError`` if another process holds it. PostgreSQL: a session
        advisory lock on a connection kept open; SQLite: ``flock`` on
        ``<database file>.<name>.lock``. ``why``: the advice the error gives."""
        where = self.url.render_as_string()
        if self.postgres:
            return hold_advisory(self.engine, name, where, why)
        return hold_file(self._lock_file(name), name, where, why)

    def migrate(self) -> None:
        """Bring the schema to the latest Alembic revision (safe to call from every process)."""
        config = Config()
        config.set_main_option(
            "script_location", str(resources.files("outreach.store") / "migrations")
        )
        with self.engine.begin() as conn:
            if self.postgres:  # two processes starting at once must not both create tables
                conn.execute(sa.text("SELECT pg_advisory_xact_lock(727274)"))
            config.attributes["connection"] = conn
            command.upgrade(config, "head")

    def close(self) -> None:
        """Release the connection pool."""
        self.engine.dispose()

    @contextlib.contextmanager
    def batch(self, now: float | None = None) -> Iterator[Batch]:
        """One transaction: committed when the block ends, rolled back if it raises."""
        with self.engine.begin() as conn:
            yield Batch(conn, self.postgres, time.time() if now is None else now)

    def run(self, work: Callable[[Batch], T], *, attempts: int = 8) -> T:
        """``work`` in one transaction, tried again after a deadlock or lock timeout. ``work``
        must not keep anything from a failed attempt."""
        for attempt in range(1, attempts + 1):
            try:
                with self.batch() as batch:
                    result = work(batch)
                    batch.ledger.flush()
                    return result
            except sa.exc.DBAPIError as exc:
                if attempt == attempts or not _retryable(exc):
                    raise
                log.warning("store: transaction retried (%s), attempt %d", exc.orig, attempt)
                time.sleep(min(0.05 * 2**attempt, 1.0))
        raise AssertionError("unreachable")

    def delete_chunked(self, table: sa.Table, where: sa.ColumnElement[bool], chunk: int) -> int:
        """Delete ``table``'s rows matching ``where``, ``chunk`` rows (by primary key) per
        transaction, so a large prune never holds the write lock for long. Returns how many."""
        columns = list(table.primary_key.columns)
        key = columns[0] if len(columns) == 1 else sa.tuple_(*columns)
        deleted = 0
        while True:
            with self.batch() as batch:
                keys = sa.select(*columns).where(where).limit(chunk)
                done = batch.conn.execute(sa.delete(table).where(key.in_(keys))).rowcount
            deleted += max(done, 0)
            if done < chunk:
                return deleted

    # -- the outbox (dispatcher side) ------------------------------------------------------

    def claim_due(self, now: float, limit: int, lease: float) -> list[OutboxRow]:
        """Take up to ``limit`` due rows (pending, or in flight with an expired lease), leased
        for ``lease`` seconds; each claim counts as an attempt."""
        due = sa.or_(
            sa.and_(outbox.c.status == "pending", outbox.c.next_at <= now),
            sa.and_(outbox.c.status == "in_flight", outbox.c.lease_until <= now),
        )
        query = sa.select(outbox).where(due).order_by(outbox.c.next_at, outbox.c.id).limit(limit)
        if self.postgres:
            query = query.with_for_update(skip_locked=True)
        with self.batch(now) as batch:
            rows = list(batch.conn.execute(query).mappings())
            if not rows:
                return []
            batch.conn.execute(
                sa.update(outbox)
                .where(outbox.c.id.in_([r["id"] for r in rows]))
                .values(status="in_flight", lease_until=now + lease, attempts=outbox.c.attempts + 1)
            )
        return [
            OutboxRow(r["id"], r["idempotency_key"], r["kind"], r["customer_id"], r["ref"],
                      bytes(r["payload"]), r["attempts"] + 1, r["created_at"],
                      r["first_tried_at"])
            for r in rows
        ]  # fmt: skip

    def finish(
        self,
        row_id: int,
        status: str,
        result: bytes | None,
        error: str | None,
        *,
        claim: int | None = None,
        records: Sequence[tuple[str, bytes | None, bytes]] = (),
        tried_at: float | None = None,
    ) -> bool:
        """Mark a claimed row ``done`` or ``failed`` for good. With ``claim`` (the row's
        ``attempts`` when it was claimed) only if it is still that claim: a dispatcher whose
        lease ran out must not overwrite what the next claimant did. ``records`` (topic, key,
        value) go to the relay in the same transaction (feedback events about the row).
        ``tried_at``: when this attempt called the provider (``_tried``). Returns whether it
        did."""
        with self.batch() as batch:
            result_ = batch.conn.execute(
                sa.update(outbox).where(*self._fence(row_id, claim)).values(
                    status=status, result=result, last_error=error, done_at=batch.now,
                    lease_until=None, **_tried(tried_at),
                )
            )  # fmt: skip
            if result_.rowcount > 0 and records:
                batch.add_records(records)
        return result_.rowcount > 0

    def renew(self, row_id: int, claim: int, until: float) -> bool:
        """Extend a claimed row's lease to ``until``, only if it is still that claim (no other
        dispatcher took it after the lease ran out); whether it did. Called right before each
        provider call: a claim covers a whole round, which can outlast one lease."""
        with self.batch() as batch:
            result = batch.conn.execute(
                sa.update(outbox).where(*self._fence(row_id, claim)).values(lease_until=until)
            )
        return result.rowcount > 0

    def retry_later(
        self,
        row_id: int,
        at: float,
        error: str,
        *,
        claim: int | None = None,
        hold: bool = False,
        tried_at: float | None = None,
    ) -> bool:
        """Put a claimed row back, due again at ``at`` (a transient failure); with ``claim``,
        only if it is still that claim. ``hold``: it was not tried at all (a kill switch), so
        the claim does not count as an attempt. ``tried_at``: when this attempt called the
        provider (``_tried``). Returns whether it did."""
        values: dict[str, Any] = {
            "status": "pending",
            "next_at": at,
            "last_error": error,
            "lease_until": None,
            **_tried(tried_at),
        }
        if hold:
            values["attempts"] = outbox.c.attempts - 1
        with self.batch() as batch:
            result = batch.conn.execute(
                sa.update(outbox).where(*self._fence(row_id, claim)).values(**values)
            )
        return result.rowcount > 0

    @staticmethod
    def _fence(row_id: int, claim: int | None) -> list[sa.ColumnElement[bool]]:
        where = [outbox.c.id == row_id]
        if claim is not None:
            where += [outbox.c.status == "in_flight", outbox.c.attempts == claim]
        return where

    def prune_outbox(self, before: float, *, chunk: int = 5000) -> int:
        """Delete outbox rows finished (``done`` or ``failed``) before ``before`` (wall clock,
        seconds). Rows still pending or in flight always stay. Returns how many went.

        A finished row only keeps its idempotency key from being queued again; the customer's
        state remembers the same key for ``guardrails.effect_memory`` and every applied event
        for ``engine.dedup_window``, so the core never decides that effect again meanwhile."""
        finished = sa.and_(outbox.c.done_at < before, outbox.c.status.in_(FINISHED))
        return self.delete_chunked(outbox, finished, chunk)

    def outbox_rows(self, customer_id: str | None = None) -> list[dict[str, Any]]:
        """Every outbox row (optionally one customer's), oldest first: for tests and reports."""
        query = sa.select(outbox).order_by(outbox.c.id)
        if customer_id is not None:
            query = query.where(outbox.c.customer_id == customer_id)
        with self.engine.connect().execution_options(read_only=True) as conn:
            return [dict(r) for r in conn.execute(query).mappings()]

    def due_count(self, now: float, *, rows: bool = True, timers_due: bool = True) -> int:
        """Outbox rows a dispatcher could claim now (``rows``), plus timers due now
        (``timers_due``)."""
        due = sa.or_(
            sa.and_(outbox.c.status == "pending", outbox.c.next_at <= now),
            sa.and_(outbox.c.status == "in_flight", outbox.c.lease_until <= now),
        )
        counts = []
        if rows:
            counts.append(sa.select(sa.func.count()).select_from(outbox).where(due))
        if timers_due:
            counts.append(
                sa.select(sa.func.count()).select_from(timers).where(timers.c.due_at <= now)
            )
        with self.engine.connect().execution_options(read_only=True) as conn:
            return sum(int(conn.execute(query).scalar() or 0) for query in counts)

    def outbox_counts(self) -> dict[tuple[str, str], int]:
        """Outbox rows by (kind, status)."""
        query = sa.select(outbox.c.kind, outbox.c.status, sa.func.count()).group_by(
            outbox.c.kind, outbox.c.status
        )
        with self.engine.connect().execution_options(read_only=True) as conn:
            return {(k, s): n for k, s, n in conn.execute(query)}

    # -- records (relay side) ---------------------------------------------------

    def take_records(self, limit: int, publish: Callable[[list[PendingRecord]], None]) -> int:
        """Hand the oldest waiting records to ``publish`` and delete them once it returns.
        One relay at a time (PostgreSQL: an advisory lock; a SQLite file: ``flock`` on
        ``<database file>.relay.lock``), taken only once there is something to relay and held
        from the read to the delete: two relays publishing side by side could put a later
        status of an action on the topic before an earlier one, and readers take the last
        record of an id as its state."""
        if not self._any(pending_records):  # no write lock just to find nothing to do
            return 0
        query = sa.select(pending_records).order_by(pending_records.c.seq).limit(limit)

        def delete(batch: Batch, rows: list[PendingRecord]) -> None:
            seqs = [r.seq for r in rows]
            batch.conn.execute(sa.delete(pending_records).where(pending_records.c.seq.in_(seqs)))

        return self._relay(query, _pending_record, publish, delete, lock=727275)

    def _relay(
        self,
        query: sa.Select[Any],
        row: Callable[[Any], R],
        publish: Callable[[list[R]], None],
        done: Callable[[Batch, list[R]], None],
        *,
        lock: int | None = None,
    ) -> int:
        """Read rows, ``publish`` them, then ``done`` (delete or mark) them. PostgreSQL: in one
        transaction holding the rows (and the advisory ``lock``). SQLite: the rows are read
        without the write lock and marked in a second transaction, so the database's single
        write lock is never held across a broker round trip; with ``lock``, the relay's file
        lock is held from the read to the mark instead (in this thread: the relay calls this
        in a worker thread, so waiting for another process's relay never blocks its loop)."""
        if self.postgres:
            with self.batch() as batch:
                if lock is not None:
                    batch.conn.execute(sa.text(f"SELECT pg_advisory_xact_lock({lock})"))
                rows = [row(r) for r in batch.conn.execute(query)]
                if rows:
                    publish(rows)
                    done(batch, rows)
            return len(rows)
        turn = self._relay_turn if lock is not None else None
        with contextlib.nullcontext() if turn is None else turn.held():
            with self.engine.connect().execution_options(read_only=True) as conn:
                rows = [row(r) for r in conn.execute(query)]  # SQLite ignores FOR UPDATE
            if rows:
                publish(rows)
                with self.batch() as batch:
                    done(batch, rows)
        return len(rows)

    def forget_positions(self, group: str) -> int:
        """Drop the group's applied positions (the topics were recreated empty, e.g. a new
        embedded broker); returns how many partitions were forgotten."""
        with self.batch() as batch:
            result = batch.conn.execute(
                sa.delete(applied_offsets).where(applied_offsets.c.consumer_group == group)
            )
        return max(result.rowcount, 0)

    def _any(self, table: sa.Table, *where: sa.ColumnElement[bool]) -> bool:
        """Whether ``table`` has a row (matching ``where``), read without the write lock."""
        query = sa.select(sa.literal(1)).select_from(table).where(*where).limit(1)
        with self.engine.connect().execution_options(read_only=True) as conn:
            return conn.execute(query).first() is not None

    def load_state(self, customer_id: str) -> bytes | None:
        """One customer's stored state, without locking (reports, tests)."""
        query = sa.select(customer_state.c.state).where(customer_state.c.customer_id == customer_id)
        with self.engine.connect().execution_options(read_only=True) as conn:
            found = conn.execute(query).scalar()
        return None if found is None else bytes(found)

    def count(self, table: str) -> int:
        """Rows in one of the store's tables."""
        target = {t.name: t for t in (customer_state, outbox, timers, pending_records, ledger)}[
            table
        ]
        with self.engine.connect().execution_options(read_only=True) as conn:
            return int(conn.execute(sa.select(sa.func.count()).select_from(target)).scalar() or 0)


def _tried(at: float | None) -> dict[str, Any]:
    """The update that records an outbox row's first call to its provider: ``at`` (when this
    attempt called it), unless an earlier attempt already did."""
    if at is None:
        return {}
    return {"first_tried_at": sa.func.coalesce(outbox.c.first_tried_at, at)}


def _timer_row(r: Any) -> TimerRow:
    return TimerRow(r.timer_id, r.customer_id, r.due_at)


def _pending_record(r: Any) -> PendingRecord:
    return PendingRecord(r.seq, r.topic, None if r.key is None else bytes(r.key), bytes(r.value))
