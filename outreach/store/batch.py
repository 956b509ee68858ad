"""One transaction of the live runtime (``Batch``) and the shared ledger inside it.

A batch locks what it reads: the partitions' applied positions and the customers' rows
(PostgreSQL ``SELECT ... FOR UPDATE``, missing rows reserved first with ``INSERT ... ON
CONFLICT DO NOTHING``; SQLite holds the database's write lock from ``BEGIN IMMEDIATE``), so two
workers touching one customer or one partition apply one after the other.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection

from outreach.store.schema import (
    applied_offsets,
    approvals,
    audit,
    contacts,
    controls,
    customer_state,
    ledger,
    outbox,
    pending_records,
    tallies,
    timers,
)


class AuditRow(NamedTuple):
    """One line of a customer's audit trail (see ``schema.audit``), in the table's column
    order: a row per event, so it goes to the driver as it is (no conversion)."""

    customer_id: str
    at: float
    kind: str
    ref: str
    status: str | None
    body: bytes


@dataclass(slots=True)  # read-only by convention: frozen would cost ~0.5 us more per row
class ApprovalRow:
    """An action record of an action that waits, or waited, for a person."""

    action_id: str
    customer_id: str
    rule_id: str
    tool: str
    status: str
    at: float
    expires_at: float | None
    decided_by: str | None
    record: bytes


class Stamp(NamedTuple):
    """Which write of a customer's state row this is: its ``version`` (one more per save) and
    ``updated_at`` (the saving batch's ``now``). A copy of the state kept in memory is the
    stored one while the row carries the stamp it was saved with."""

    version: int
    updated_at: float

    @staticmethod
    def after(before: Stamp | None, now: float) -> Stamp:
        """The stamp ``save_states`` gives a row read with ``before`` (None: no row) at
        ``now``."""
        return Stamp(1 if before is None else before.version + 1, now)


class StoredState(NamedTuple):
    """A locked state row: its stamp, and its bytes unless the caller holds them already."""

    stamp: Stamp
    state: bytes | None


@dataclass(frozen=True)
class TimerRow:
    """A pending timer: deliver ``timer.fired`` for the customer at ``due_at``."""

    timer_id: str
    customer_id: str
    due_at: float


class StoreLedger:
    """The shared ledger (global budgets) inside one transaction: rows are locked when first
    read and written back by ``flush``. Same two methods as ``SharedLedger``."""

    def __init__(self, batch: Batch) -> None:
        self._batch = batch
        self._totals: dict[str, float] = {}
        self._dirty: set[str] = set()
        self._controls: dict[tuple[str, str], str] | None = None  # read once per batch
        self._new_controls: dict[tuple[str, str], str] = {}

    def _read_controls(self) -> dict[tuple[str, str], str]:
        if self._controls is None:
            query = sa.select(controls.c.kind, controls.c.name, controls.c.reason)
            self._controls = {
                (str(k), str(n)): str(r) for k, n, r in self._batch.conn.execute(query)
            }
        return self._controls

    def control(self, kind: str, name: str) -> str | None:
        """Why ``name`` of ``kind`` is switched off, or ``None`` (as of this batch)."""
        return self._read_controls().get((kind, name))

    def set_control(self, kind: str, name: str, reason: str) -> None:
        """Switch ``name`` of ``kind`` off (written by ``flush``)."""
        self._read_controls()[(kind, name)] = reason
        self._new_controls[(kind, name)] = reason

    def total(self, key: str) -> float:
        """Spent so far under ``key`` (locks the row until the transaction ends)."""
        if key not in self._totals:
            query = sa.select(ledger.c.total).where(ledger.c.key == key)
            if self._batch.postgres:
                # reserve the row first: FOR UPDATE on a row that does not exist locks nothing,
                # and two workers would both start from 0
                self._batch.conn.execute(
                    postgresql.insert(ledger).on_conflict_do_nothing(), {"key": key, "total": 0.0}
                )
                query = query.with_for_update()
            found = self._batch.conn.execute(query).scalar()
            self._totals[key] = float(found) if found is not None else 0.0
        return self._totals[key]

    def add(self, key: str, amount: float) -> None:
        """Spend ``amount`` under ``key``."""
        self._totals[key] = self.total(key) + amount
        self._dirty.add(key)

    def flush(self) -> None:
        """Write the changed totals."""
        rows = [{"key": k, "total": self._totals[k]} for k in sorted(self._dirty)]
        if rows:
            self._batch.upsert(ledger, rows, ["key"], ["total"])
        self._dirty.clear()
        switched = [
            {"kind": k, "name": n, "reason": r, "at": self._batch.now}
            for (k, n), r in sorted(self._new_controls.items())
        ]
        if switched:
            self._batch.upsert(controls, switched, ["kind", "name"], ["reason", "at"])
        self._new_controls.clear()


class Batch:
    """One transaction of the live runtime: read and lock states, write everything back."""

    def __init__(self, conn: Connection, postgres: bool, now: float) -> None:
        self.conn = conn
        self.postgres = postgres
        self.now = now
        self.ledger = StoreLedger(self)

    def upsert(
        self, table: sa.Table, rows: list[dict[str, Any]], keys: list[str], update: list[str]
    ) -> None:
        """Insert rows, or update ``update`` columns where ``keys`` already exist."""
        insert = postgresql.insert(table) if self.postgres else sqlite.insert(table)
        excluded = insert.excluded
        self.conn.execute(
            insert.on_conflict_do_update(
                index_elements=keys, set_={c: excluded[c] for c in update}
            ),
            rows,
        )

    def _append(
        self, table: sa.Table, columns: tuple[str, ...], rows: Sequence[tuple[Any, ...]]
    ) -> None:
        """Insert plain rows (values in ``columns`` order). On SQLite straight through the
        driver's ``executemany``: SQLAlchemy's per-row parameter handling cost ~8 µs a row
        against ~3 µs, and the audit trail takes a row per event. PostgreSQL keeps
        SQLAlchemy's batched multi-row ``INSERT``."""
        if not rows:
            return
        if self.postgres:
            self.conn.execute(sa.insert(table), [dict(zip(columns, r, strict=True)) for r in rows])
            return
        self.conn.exec_driver_sql(_sqlite_insert(table, columns), rows)

    def _insert_new(self, table: sa.Table, rows: list[dict[str, Any]], keys: list[str]) -> int:
        insert = postgresql.insert(table) if self.postgres else sqlite.insert(table)
        statement = insert.on_conflict_do_nothing(index_elements=keys).returning(table.c[keys[0]])
        done = 0
        for row in rows:  # one by one: RETURNING says whether this row was new
            done += len(self.conn.execute(statement, row).all())
        return done

    def positions(
        self, group: str, partitions: Iterable[tuple[str, int]]
    ) -> dict[tuple[str, int], int]:
        """The next offset to apply for each (topic, partition) that has been applied before."""
        wanted = sorted(set(partitions))
        if not wanted:
            return {}
        table = applied_offsets
        query = (
            sa.select(table.c.topic, table.c.partition, table.c.next_offset)
            .where(table.c.consumer_group == group)
            .where(sa.tuple_(table.c.topic, table.c.partition).in_(wanted))
        )
        if self.postgres:
            # Lock the partitions' rows (reserving missing ones) before reading them: a worker
            # that has just been given a partition waits for the previous owner's last batch
            # to commit, then reads the position it left.
            self.conn.execute(
                postgresql.insert(table).on_conflict_do_nothing(),
                [{"consumer_group": group, "topic": t, "partition": p, "next_offset": 0,
                  "updated_at": self.now} for t, p in wanted],
            )  # fmt: skip
            query = query.order_by(table.c.topic, table.c.partition).with_for_update()
        return {(t, p): o for t, p, o in self.conn.execute(query)}

    def set_positions(self, group: str, positions: dict[tuple[str, int], int]) -> None:
        """Record that everything before these offsets has been applied."""
        rows = [
            {"consumer_group": group, "topic": t, "partition": p, "next_offset": o,
             "updated_at": self.now}
            for (t, p), o in sorted(positions.items())
        ]  # fmt: skip
        if rows:
            self.upsert(applied_offsets, rows, ["consumer_group", "topic", "partition"],
                        ["next_offset", "updated_at"])  # fmt: skip

    def lock_versions(
        self, customer_ids: Iterable[str], current: Mapping[str, Stamp] | None = None
    ) -> dict[str, StoredState]:
        """Lock the customers' rows (creating missing ones on PostgreSQL) and return, for each
        row there is, its stamp and its state, except where ``current`` holds that very stamp:
        the caller's copy is the stored one, so its bytes are not read (``state`` is None)."""
        ids = sorted(set(customer_ids))
        if not ids:
            return {}
        known = current or {}
        column, table = customer_state.c.customer_id, customer_state
        if self.postgres:
            insert = postgresql.insert(table).on_conflict_do_nothing(index_elements=["customer_id"])
            self.conn.execute(insert, [{"customer_id": c} for c in ids])
        found: dict[str, StoredState] = {}
        stale: list[str] = []
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            hits = [c for c in chunk if c in known]
            columns = [column, table.c.version, table.c.updated_at]
            if not hits:  # nothing to compare with: read the states at once
                columns.append(table.c.state)
            query = sa.select(*columns).where(column.in_(chunk))
            if self.postgres:
                query = query.order_by(column).with_for_update()
            for row in self.conn.execute(query):
                stamp = Stamp(int(row[1]), float(row[2]))
                state = row[3] if not hits else None
                found[row[0]] = StoredState(stamp, None if state is None else bytes(state))
                if hits and known.get(row[0]) != stamp:
                    stale.append(row[0])
        for start in range(0, len(stale), 500):
            chunk = stale[start : start + 500]
            query = sa.select(column, table.c.state).where(column.in_(chunk))
            for customer_id, state in self.conn.execute(query):
                if state is not None:
                    found[customer_id] = StoredState(found[customer_id].stamp, bytes(state))
        return found

    def save_states(self, states: dict[str, bytes]) -> None:
        """Write the customers' new states (each row's stamp becomes ``Stamp.after``)."""
        if not states:
            return
        rows = [(c, s, self.now) for c, s in sorted(states.items())]
        if self.postgres:
            self.conn.execute(_save_states(), [dict(zip(_SAVED, r, strict=True)) for r in rows])
        else:  # straight through the driver, as ``_append``: a row a customer in every batch
            self.conn.exec_driver_sql(_sqlite_save_states(), rows)

    def add_outbox(self, rows: Sequence[tuple[str, str, str, str, bytes, float]]) -> int:
        """Queue (idempotency_key, kind, customer_id, ref, payload, due) rows; a key already in
        the outbox is left as it is. Returns how many were new."""
        return self._insert_new(
            outbox,
            [
                {
                    "idempotency_key": k,
                    "kind": kind,
                    "customer_id": c,
                    "ref": ref,
                    "payload": payload,
                    "status": "pending",
                    "attempts": 0,
                    "next_at": due,
                    "created_at": self.now,
                }
                for k, kind, c, ref, payload, due in rows
            ],  # fmt: skip
            ["idempotency_key"],
        )

    def schedule_timers(self, rows: Iterable[TimerRow]) -> None:
        """Remember timers to deliver later (a timer id already known keeps one row, with the
        new due time, to be armed again by the scheduler)."""
        values = [
            {
                "timer_id": r.timer_id, "customer_id": r.customer_id, "due_at": r.due_at,
                "armed": False, "published_at": None,
            }
            for r in rows
        ]  # fmt: skip
        if values:
            self.upsert(timers, values, ["timer_id"], ["due_at", "armed", "published_at"])

    def drop_timers(self, timer_ids: Iterable[str]) -> None:
        """Forget timers that fired or that the core cancelled (the scheduler then removes
        their jobs)."""
        ids = sorted(set(timer_ids))
        for start in range(0, len(ids), 500):
            self.conn.execute(
                sa.delete(timers).where(timers.c.timer_id.in_(ids[start : start + 500]))
            )

    def set_addresses(
        self, gone: Sequence[dict[str, str]], added: Sequence[dict[str, str]]
    ) -> None:
        """Update the address book (``contacts``) for changed profiles."""
        for row in gone:
            self.conn.execute(
                sa.delete(contacts).where(
                    contacts.c.channel == row["channel"],
                    contacts.c.address == row["address"],
                    contacts.c.customer_id == row["customer_id"],
                )
            )
        if added:
            self._insert_new(contacts, list(added), ["channel", "address", "customer_id"])

    def add_records(self, rows: Iterable[tuple[str, bytes | None, bytes]]) -> None:
        """Queue (logical topic, key, value) records for the relay to Kafka, in order."""
        self._append(pending_records, ("topic", "key", "value"), list(rows))

    def add_audit(self, rows: Sequence[AuditRow]) -> None:
        """Append to the customers' audit trails, in order."""
        self._append(audit, AuditRow._fields, rows)

    def track_approvals(self, rows: Sequence[ApprovalRow]) -> None:
        """Keep the approvals queue: ``rows`` are this batch's action records in order; a
        ``pending_approval`` one (re)queues its action, a later one of a queued action
        records its outcome. Records of actions that never waited are ignored."""
        if not rows:
            return
        asked = {r.action_id for r in rows if r.status == "pending_approval"}
        others = sorted({r.action_id for r in rows} - asked)
        known: set[str] = set()
        for start in range(0, len(others), 500):
            chunk = others[start : start + 500]
            query = sa.select(approvals.c.action_id).where(approvals.c.action_id.in_(chunk))
            known.update(str(a) for (a,) in self.conn.execute(query))
        latest: dict[str, dict[str, Any]] = {}
        for r in rows:
            if r.action_id not in asked and r.action_id not in known:
                continue
            row = latest.setdefault(r.action_id, {"action_id": r.action_id})
            row.update(customer_id=r.customer_id, rule_id=r.rule_id, tool=r.tool,
                       status=r.status, updated_at=r.at, record=r.record,
                       decided_by=r.decided_by)  # fmt: skip
            if r.status == "pending_approval":
                row.update(requested_at=r.at, expires_at=r.expires_at, request=r.record)
        new = [row for row in latest.values() if "request" in row]
        if new:
            self.upsert(approvals, new, ["action_id"], [c for c in new[0] if c != "action_id"])
        for row in latest.values():
            if "request" not in row:
                update = {k: v for k, v in row.items() if k != "action_id"}
                self.conn.execute(
                    sa.update(approvals)
                    .where(approvals.c.action_id == row["action_id"])
                    .values(**update)
                )

    def add_tallies(self, counts: dict[tuple[str, str], int]) -> None:
        """Add to the running totals (``(name, label) -> n``)."""
        rows = [
            {"name": n, "label": label, "value": v} for (n, label), v in sorted(counts.items()) if v
        ]
        if not rows:
            return
        insert = postgresql.insert(tallies) if self.postgres else sqlite.insert(tallies)
        self.conn.execute(
            insert.on_conflict_do_update(
                index_elements=["name", "label"],
                set_={"value": tallies.c.value + insert.excluded.value},
            ),
            rows,
        )

    def tally_values(self, name: str, labels: Iterable[str]) -> dict[str, int]:
        """The running totals of ``name`` for these labels (absent: never added to)."""
        wanted = sorted(set(labels))
        if not wanted:
            return {}
        query = sa.select(tallies.c.label, tallies.c.value).where(
            tallies.c.name == name, tallies.c.label.in_(wanted)
        )
        return {label: int(value) for label, value in self.conn.execute(query)}

    def rules_reload(self) -> tuple[float, str] | None:
        """The latest rules reload an operator asked for: (when, fingerprint it validated)."""
        query = sa.select(controls.c.at, controls.c.reason).where(
            controls.c.kind == "rules", controls.c.name == "reload"
        )
        row = self.conn.execute(query).first()
        return (float(row[0]), str(row[1])) if row is not None else None


@functools.lru_cache(maxsize=32)
def _sqlite_insert(table: sa.Table, columns: tuple[str, ...]) -> str:
    """SQLAlchemy's ``INSERT`` of ``columns`` into ``table``, compiled for SQLite (``?``)."""
    insert = sa.insert(table).compile(dialect=sqlite.dialect(), column_keys=list(columns))
    return str(insert)


_SAVED = ("customer_id", "state", "updated_at")  # what ``save_states`` binds, in order


@functools.cache
def _save_states(dialect: str = "postgresql") -> sa.Insert:
    """``save_states``'s upsert: a new row starts at version 1, a saved one goes up by one;
    only ``_SAVED`` are bound."""
    insert = (postgresql.insert if dialect == "postgresql" else sqlite.insert)(customer_state)
    one: sa.ColumnElement[int] = sa.literal_column("1", sa.BigInteger)
    values: dict[str, Any] = {c: sa.bindparam(c) for c in _SAVED}
    return insert.values(values | {"version": one}).on_conflict_do_update(
        index_elements=["customer_id"],
        set_={
            "state": insert.excluded.state,
            "updated_at": insert.excluded.updated_at,
            "version": customer_state.c.version + one,
        },
    )


@functools.cache
def _sqlite_save_states() -> str:
    """``_save_states`` compiled for SQLite (``?`` in ``_SAVED`` order)."""
    compiled = _save_states("sqlite").compile(dialect=sqlite.dialect())
    assert tuple(compiled.positiontup or ()) == _SAVED, compiled.positiontup
    return str(compiled)
