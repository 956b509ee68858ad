"""An append-only JSONL file that holds each idempotency key at most once.

What the file-backed fakes of the side-effect ports stand on (``FileChannel``,
``FileConnector``): the embedded default writes what it would have sent or done to a file, and
a retry after a crash finds the key already there instead of writing it twice. Several
processes may share a file: appends take an exclusive ``flock`` and re-read what others wrote
since, so the check-then-append is atomic across processes.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import Any

import orjson


class KeyedLog:
    """JSONL records, each with a unique ``key`` field."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch(exist_ok=True)
        self._known: dict[str, dict[str, Any]] = {}
        self._read_to = 0

    def _catch_up(self, handle: Any) -> None:
        handle.seek(self._read_to)
        data = handle.read()
        complete = data[: data.rfind(b"\n") + 1]  # a torn last line (crash mid-write) is ignored
        for line in complete.splitlines():
            if line.strip():
                record = orjson.loads(line)
                self._known[record["key"]] = record
        self._read_to += len(complete)

    def get(self, key: str) -> dict[str, Any] | None:
        """The record written under ``key``, by any process, if there is one."""
        with self.path.open("rb") as handle:
            fcntl.flock(handle, fcntl.LOCK_SH)
            self._catch_up(handle)
        return self._known.get(key)

    def append_once(self, record: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        """Write ``record`` unless its key is there; returns (the record kept, written now)."""
        with self.path.open("r+b") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            self._catch_up(handle)
            found = self._known.get(record["key"])
            if found is not None:
                return found, False
            handle.seek(0, os.SEEK_END)
            end = handle.tell()
            if end > self._read_to:  # drop a torn line left by a crash so the file stays valid
                handle.truncate(self._read_to)
                handle.seek(self._read_to)
            line = orjson.dumps(record, option=orjson.OPT_SORT_KEYS) + b"\n"
            handle.write(line)
            handle.flush()
            os.fsync(handle.fileno())
            self._read_to += len(line)
            self._known[record["key"]] = record
            return record, True

    def records(self) -> list[dict[str, Any]]:
        """Every record, in file order."""
        self.get("")
        return list(self._known.values())
