"""What an operator reads and sets: timelines, the approvals queue, API keys, kill switches,
running tallies.

``Operator(store)`` reads what the workers wrote in their batch transactions (``audit``,
``approvals``, ``tallies``) and owns ``api_keys`` and the operator's rows in ``controls`` (kill
switches). It never decides anything: approving an action is a fact published to the
customer's partition (``approval.decided``), applied by the worker that owns it.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import orjson
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from outreach.events import utc_iso
from outreach.store.schema import api_keys, applied_offsets, approvals, audit, controls, tallies
from outreach.store.store import Store

Scope = Literal["ingest", "operator", "admin"]
SCOPES: tuple[Scope, ...] = ("ingest", "operator", "admin")
# what each scope may do: ingest posts events; operator reads, approves and explains;
# admin also reloads rules, throws kill switches and manages keys
GRANTS: dict[Scope, frozenset[Scope]] = {
    "ingest": frozenset({"ingest"}),
    "operator": frozenset({"operator"}),
    "admin": frozenset({"ingest", "operator", "admin"}),
}
KEY_PREFIX = "ok_"  # "outreach key": easy to spot in a secret scanner
KILL_KINDS = ("tool", "channel")


@dataclass(frozen=True)
class ApiKey:
    """A key as listed (never its secret)."""

    key_id: str
    name: str
    scope: Scope
    created_at: float
    revoked_at: float | None


@dataclass(frozen=True)
class Approval:
    """One entry of the approvals queue (``record``: the action's latest record)."""

    action_id: str
    customer_id: str
    rule_id: str
    tool: str
    status: str
    requested_at: float
    expires_at: float | None
    decided_by: str | None
    updated_at: float
    record: dict[str, Any]
    request: dict[str, Any]

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: times as RFC 3339 UTC."""
        return {
            "action_id": self.action_id,
            "customer_id": self.customer_id,
            "rule_id": self.rule_id,
            "tool": self.tool,
            "status": self.status,
            "requested_at": iso(self.requested_at),
            "expires_at": iso(self.expires_at) if self.expires_at is not None else None,
            "decided_by": self.decided_by,
            "updated_at": iso(self.updated_at),
            "params": self.record.get("params", {}),
            "reason": self.record.get("reason", ""),
            "request_reason": self.request.get("reason", ""),
            "checks": self.record.get("checks", []),
        }


def iso(stamp: float) -> str:
    """Epoch seconds as RFC 3339 UTC (``Z``), as the decision log writes times."""
    return utc_iso(datetime.fromtimestamp(stamp, UTC))


def hash_secret(secret: str) -> str:
    """What is stored for a key's secret."""
    return hashlib.sha256(secret.encode()).hexdigest()


class Operator:
    """Operator-facing reads and controls over one ``Store``."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def _insert(self, table: sa.Table) -> postgresql.Insert | sqlite.Insert:
        return postgresql.insert(table) if self.store.postgres else sqlite.insert(table)

    # -- timeline -------------------------------------------------------------------------
    def timeline(self, customer_id: str, limit: int = 1000) -> list[dict[str, Any]]:
        """The customer's audit trail in time order (ties: the order it was written, so an
        event comes before what it caused): ``{"at", "kind", "ref", "status", "record"}``.
        The most recent ``limit`` entries."""
        query = (
            sa.select(audit.c.at, audit.c.kind, audit.c.ref, audit.c.status, audit.c.body)
            .where(audit.c.customer_id == customer_id)
            .order_by(audit.c.at.desc(), audit.c.seq.desc())
            .limit(limit)
        )
        with self.store.engine.connect() as conn:
            rows = list(conn.execute(query))
        rows.reverse()
        return [
            {"at": iso(at), "kind": kind, "ref": ref, "status": status,
             "record": orjson.loads(bytes(body))}
            for at, kind, ref, status, body in rows
        ]  # fmt: skip

    # -- approvals ------------------------------------------------------------------------
    def approvals(
        self, status: str | None = "pending_approval", limit: int = 200
    ) -> list[Approval]:
        """Queue entries, oldest request first (``status`` None: every entry)."""
        query = sa.select(approvals).order_by(approvals.c.requested_at, approvals.c.action_id)
        if status is not None:
            query = query.where(approvals.c.status == status)
        with self.store.engine.connect() as conn:
            return [_approval(r) for r in conn.execute(query.limit(limit))]

    def approval(self, action_id: str) -> Approval | None:
        """One entry, or ``None``."""
        query = sa.select(approvals).where(approvals.c.action_id == action_id)
        with self.store.engine.connect() as conn:
            row = conn.execute(query).first()
        return _approval(row) if row is not None else None

    # -- API keys -------------------------------------------------------------------------
    def create_key(self, name: str, scope: Scope) -> tuple[ApiKey, str]:
        """A new key; returns it with its full token, shown this once and never stored."""
        if scope not in SCOPES:
            raise ValueError(f"unknown scope {scope!r}: use one of {', '.join(SCOPES)}")
        key_id = secrets.token_hex(6)
        secret = secrets.token_urlsafe(32)
        token = f"{KEY_PREFIX}{key_id}_{secret}"
        now = time.time()
        row = {
            "key_id": key_id, "name": name, "scope": scope, "secret_sha256": hash_secret(token),
            "created_at": now, "revoked_at": None,
        }  # fmt: skip
        with self.store.engine.begin() as conn:
            conn.execute(sa.insert(api_keys), row)
        return ApiKey(key_id, name, scope, now, None), token

    def keys(self) -> list[ApiKey]:
        """Every key, revoked ones included."""
        query = sa.select(api_keys).order_by(api_keys.c.created_at)
        with self.store.engine.connect() as conn:
            return [
                ApiKey(r.key_id, r.name, r.scope, r.created_at, r.revoked_at)
                for r in conn.execute(query)
            ]

    def revoke_key(self, key_id: str) -> bool:
        """Revoke a key at once; False if there is no such live key."""
        with self.store.engine.begin() as conn:
            done = conn.execute(
                sa.update(api_keys)
                .where(api_keys.c.key_id == key_id, api_keys.c.revoked_at.is_(None))
                .values(revoked_at=time.time())
            )
        return bool(done.rowcount)

    def authenticate(self, token: str) -> ApiKey | None:
        """The live key ``token`` is, or ``None`` (unknown, malformed or revoked)."""
        if not token.startswith(KEY_PREFIX):
            return None
        key_id = token[len(KEY_PREFIX) :].split("_", 1)[0]
        query = sa.select(api_keys).where(api_keys.c.key_id == key_id)
        with self.store.engine.connect() as conn:
            row = conn.execute(query).first()
        if row is None or row.revoked_at is not None:
            return None
        if not hmac.compare_digest(row.secret_sha256, hash_secret(token)):
            return None
        return ApiKey(row.key_id, row.name, row.scope, row.created_at, row.revoked_at)

    # -- kill switches --------------------------------------------------------------------
    def kill_switches(self) -> dict[tuple[str, str], dict[str, Any]]:
        """Active switches ``(kind, name) -> {"reason", "at"}`` (tools and channels)."""
        query = sa.select(controls).where(controls.c.kind.in_(KILL_KINDS))
        with self.store.engine.connect() as conn:
            return {
                (r.kind, r.name): {"reason": r.reason, "at": iso(r.at)} for r in conn.execute(query)
            }

    def set_kill_switch(self, kind: str, name: str, active: bool, reason: str) -> None:
        """Switch a tool or channel off (``active``) or back on; workers read the switches
        at the start of each batch, the dispatcher before each send."""
        if kind not in KILL_KINDS:
            raise ValueError(f"unknown kill switch kind {kind!r}: use tool or channel")
        if active:
            self._set_control(kind, name, reason)
            return
        with self.store.engine.begin() as conn:
            conn.execute(
                sa.delete(controls).where(controls.c.kind == kind, controls.c.name == name)
            )

    def request_rules_reload(self, fingerprint: str) -> None:
        """Ask every worker to re-read its rules folder (``fingerprint``: the set validated)."""
        self._set_control("rules", "reload", fingerprint)

    def _set_control(self, kind: str, name: str, reason: str) -> None:
        """Write the ``controls`` row ``(kind, name)``, stamped now."""
        insert = self._insert(controls)
        with self.store.engine.begin() as conn:
            conn.execute(
                insert.on_conflict_do_update(
                    index_elements=["kind", "name"],
                    set_={"reason": insert.excluded.reason, "at": insert.excluded.at},
                ),
                {"kind": kind, "name": name, "reason": reason, "at": time.time()},
            )

    def unannounced_approvals(self, limit: int = 100) -> list[Approval]:
        """Pending approvals the approvals webhook has not announced yet, oldest first."""
        query = (
            sa.select(approvals)
            .where(approvals.c.status == "pending_approval", approvals.c.notified_at.is_(None))
            .order_by(approvals.c.requested_at, approvals.c.action_id)
            .limit(limit)
        )
        with self.store.engine.connect() as conn:
            return [_approval(r) for r in conn.execute(query)]

    def mark_announced(self, action_id: str, at: float) -> None:
        """The webhook accepted the announcement of ``action_id``."""
        with self.store.batch() as batch:
            batch.conn.execute(
                sa.update(approvals)
                .where(approvals.c.action_id == action_id)
                .values(notified_at=at)
            )

    def prune_audit(self, before: float, *, chunk: int = 5000) -> int:
        """Delete audit entries recorded for times before ``before`` (event time, seconds),
        and approvals queue entries decided before it (pending ones always stay); in chunks,
        so a large prune never holds the write lock for long. Returns the audit rows deleted.
        The customers' states, the outbox and the tallies are untouched."""
        deleted = self.store.delete_chunked(audit, audit.c.at < before, chunk)
        with self.store.batch() as batch:
            batch.conn.execute(
                sa.delete(approvals).where(
                    approvals.c.status != "pending_approval", approvals.c.requested_at < before
                )
            )
        return deleted

    def ping(self) -> None:
        """Raises if the database does not answer."""
        with self.store.engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))

    # -- tallies --------------------------------------------------------------------------
    def tallies(self) -> dict[tuple[str, str], int]:
        """Running totals ``(name, label) -> n`` the workers keep."""
        with self.store.engine.connect() as conn:
            return {(n, label): int(v) for n, label, v in conn.execute(sa.select(tallies))}

    def positions(self, group: str) -> dict[tuple[str, int], int]:
        """The next offset to apply of every partition the consumer group has applied."""
        query = sa.select(
            applied_offsets.c.topic, applied_offsets.c.partition, applied_offsets.c.next_offset
        ).where(applied_offsets.c.consumer_group == group)
        with self.store.engine.connect() as conn:
            return {(str(t), int(p)): int(o) for t, p, o in conn.execute(query)}

    def pending_approvals(self) -> int:
        """How many actions wait for a person now."""
        query = sa.select(sa.func.count()).where(approvals.c.status == "pending_approval")
        with self.store.engine.connect() as conn:
            return int(conn.execute(query).scalar() or 0)


def _approval(r: Any) -> Approval:
    return Approval(
        action_id=r.action_id, customer_id=r.customer_id, rule_id=r.rule_id, tool=r.tool,
        status=r.status, requested_at=r.requested_at, expires_at=r.expires_at,
        decided_by=r.decided_by, updated_at=r.updated_at,
        record=orjson.loads(bytes(r.record)), request=orjson.loads(bytes(r.request)),
    )  # fmt: skip
