"""How processes take turns on the store: exclusive claims on a name (a PostgreSQL session
advisory lock, or ``flock`` on a file beside a SQLite database), the relay's turn (one relay
at a time, across processes and threads), and SQLite's single writer (``BEGIN IMMEDIATE``).
``outreach.store.store`` uses them; nothing here reads or writes the store's tables."""

from __future__ import annotations

import contextlib
import fcntl
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from outreach.errors import OutreachError


class StoreBusyError(OutreachError):
    """Another process holds an exclusive claim on the store."""

    def __init__(self, name: str, url: str, why: str | None = None) -> None:
        super().__init__(f"another process holds {name!r} on the store {url}" + (
            f": {why}" if why else ""
        ))  # fmt: skip


@dataclass(frozen=True)
class Claim:
    """An exclusive claim on the store (``Store.hold_exclusive``). Calling it releases it."""

    release: Callable[[], None]
    alive: Callable[[], bool]  # False once the claim is lost (PostgreSQL: the session died)

    def __call__(self) -> None:
        self.release()


def hold_advisory(engine: Engine, name: str, where: str, why: str | None) -> Claim:
    """Claim ``name`` with a session advisory lock on a connection kept open (PostgreSQL at
    ``where``); ``StoreBusyError`` (with the advice ``why``) if another session holds it."""
    conn = engine.connect()
    key = {"name": name}
    got = conn.execute(sa.text("SELECT pg_try_advisory_lock(hashtext(:name))"), key)
    if not got.scalar():
        conn.close()
        raise StoreBusyError(name, where, why)
    conn.commit()

    def release_pg() -> None:
        with contextlib.suppress(sa.exc.DBAPIError):
            conn.execute(sa.text("SELECT pg_advisory_unlock(hashtext(:name))"), key)
        conn.close()

    def alive_pg() -> bool:
        try:
            conn.execute(sa.text("SELECT 1")).scalar()
            conn.commit()
        except sa.exc.DBAPIError:
            return False
        return True

    return Claim(release_pg, alive_pg)


def hold_file(path: Path | None, name: str, where: str, why: str | None) -> Claim:
    """Claim ``name`` with ``flock`` on ``path`` (the lock file beside the SQLite database at
    ``where``; None: an in-memory database, which no other process can open); a
    ``StoreBusyError`` (with the advice ``why``) if another process holds it."""
    if path is None:
        return Claim(lambda: None, lambda: True)
    handle = path.open("a")  # noqa: SIM115 - held until released
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise StoreBusyError(name, where, why) from None

    def release_file() -> None:
        fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()

    return Claim(release_file, lambda: True)


class FileTurn:
    """One holder at a time of ``path``: across processes (``flock``) and across this process's
    threads. The thread holding it may take it again (a call nested in ``publish``)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._mutex = threading.RLock()
        self._handle: IO[str] | None = None
        self._depth = 0

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        """Wait for the turn, hold it for the block."""
        with self._mutex:
            if self._depth == 0:
                handle = self.path.open("a")  # noqa: SIM115 - closed when the turn ends
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX)  # waits for another process's holder
                except BaseException:
                    handle.close()
                    raise
                self._handle = handle
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
                if self._depth == 0 and self._handle is not None:
                    self._handle.close()  # closing the file drops the flock
                    self._handle = None


def serialise_sqlite(engine: Engine) -> None:
    """SQLite: WAL, a busy timeout, and ``BEGIN IMMEDIATE`` so a batch holds the write lock
    from its first read (the pysqlite default would upgrade late and deadlock two writers)."""

    @sa.event.listens_for(engine, "connect")
    def _connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None
        cursor = dbapi_conn.cursor()
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.execute("PRAGMA synchronous=NORMAL")
        # switching to WAL needs the write lock and ignores the busy timeout: only switch if
        # needed, and wait for another process that is creating the same file
        deadline = time.monotonic() + 30
        while cursor.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
            try:
                cursor.execute("PRAGMA journal_mode=WAL")
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        cursor.close()

    @sa.event.listens_for(engine, "begin")
    def _begin(conn: Connection) -> None:
        read_only = conn.get_execution_options().get("read_only", False)
        conn.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")
