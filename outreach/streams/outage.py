"""Riding out a database outage in the long-running loops (worker, relay, clock, scheduler).

A database that is away (PostgreSQL down or unreachable, a connection cut mid-transaction, a
SQLite file that cannot be opened or stays locked) must pause the engine, not end it: a worker
that exits would be restarted into the same outage (a crash loop) and give up its partitions.
``unavailable`` says whether an exception means that; ``Outage`` paces the retries (capped
exponential backoff) and logs once when an outage starts and once when it ends, however many
retries fail in between.

Errors that are not about reaching the database (a constraint violated, SQL the database
refuses) are bugs or data problems: they are not ``unavailable`` and still stop the loop.

Must not import: faust, aiokafka, the decision core.
"""

from __future__ import annotations

import logging
import sqlite3
import time

import sqlalchemy as sa

# SQLite reports a missing table or a syntax error as OperationalError too: only these mean
# the file is (for now) out of reach
_SQLITE_AWAY = ("database is locked", "unable to open database", "disk i/o error", "busy")


def store_error(exc: BaseException) -> bool:
    """Whether ``exc`` came from the database (an outage, a lock timeout, a constraint): the
    batch's to retry or the process's to fail on, never one input's fault."""
    return isinstance(exc, sa.exc.SQLAlchemyError)


def unavailable(exc: BaseException) -> bool:
    """Whether ``exc`` says the database cannot be reached right now (worth waiting for)."""
    if isinstance(exc, sa.exc.DBAPIError):
        if exc.connection_invalidated:
            return True
        if isinstance(exc.orig, sqlite3.Error):
            return any(text in str(exc.orig).lower() for text in _SQLITE_AWAY)
        return isinstance(exc, sa.exc.OperationalError | sa.exc.InterfaceError)
    return isinstance(exc, sa.exc.DisconnectionError | sa.exc.TimeoutError)


class Outage:
    """Backoff and the two log lines of one part's database outages."""

    def __init__(
        self, part: str, logger: logging.Logger, *, first: float = 0.2, cap: float = 5.0
    ) -> None:
        self.part = part
        self.log = logger
        self.first = first
        self.cap = cap
        self.failures = 0  # consecutive failed tries of the current outage
        self.started = 0.0  # time.monotonic() when the current outage was first seen
        self.outages = 0  # outages seen since start (tests, the live summary)

    @property
    def ongoing(self) -> bool:
        """Whether the last try failed."""
        return self.failures > 0

    def failed(self, exc: BaseException) -> float:
        """Note a failed try; returns how long to wait before the next one."""
        if not self.failures:
            self.started = time.monotonic()
            self.outages += 1
            self.log.warning(
                "%s: the database is unavailable (%s); pausing and retrying until it is back",
                self.part, _short(exc),
            )  # fmt: skip
        self.failures += 1
        return float(min(self.cap, self.first * 2 ** (self.failures - 1)))

    def recovered(self) -> None:
        """Note a successful try (logs the end of an outage, if one was going on)."""
        if self.failures:
            self.log.warning(
                "%s: the database is back after %.1f s (%d failed tries); resuming",
                self.part, time.monotonic() - self.started, self.failures,
            )  # fmt: skip
            self.failures = 0


def _short(exc: BaseException) -> str:
    """The first line of an exception's message (SQLAlchemy appends the SQL and a link)."""
    orig = getattr(exc, "orig", None) or exc
    text = str(orig).strip().splitlines()
    return f"{type(orig).__name__}: {text[0] if text else ''}"
