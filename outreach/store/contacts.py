"""Address-level facts the outbound edges need at once, before any worker has caught up.

``Contacts(store)`` owns three tables: ``suppressions`` (an address that must not receive a
channel, or one email list of it), ``contacts`` (which customers an address belongs to, so an
inbound SMS from a number reaches its customers) and ``inbound_seen`` (provider callbacks
already taken, so a retried webhook changes nothing twice). Addresses are normalised here:
emails lower-cased and stripped, phone numbers stripped.

The customer's own state (in ``customer_state``) still decides; these tables are the safety
net that makes STOP and unsubscribe work "at once, on every path": the webhook writes the
suppression before it answers, and the dispatcher reads it right before each send.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from outreach.store.schema import contacts, controls, inbound_seen, suppressions
from outreach.store.store import Store

WHOLE_CHANNEL = ""  # list_id of a suppression that covers every list of the channel


def normalise(channel: str, address: str) -> str:
    """The stored form of an address: emails lower-cased; both stripped of spaces."""
    address = address.strip()
    return address.lower() if channel == "email" else address


class Contacts:
    """Suppressions, the address book and seen callbacks, over one ``Store``."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def _insert(self, table: sa.Table) -> postgresql.Insert | sqlite.Insert:
        return postgresql.insert(table) if self.store.postgres else sqlite.insert(table)

    # -- suppressions ---------------------------------------------------------------------
    def suppress(
        self,
        channel: str,
        address: str,
        reason: str,
        list_id: str = WHOLE_CHANNEL,
        at: float | None = None,
    ) -> None:
        """Stop ``channel`` to ``address`` (or only its email list ``list_id``)."""
        row = {
            "channel": channel,
            "address": normalise(channel, address),
            "list_id": list_id,
            "reason": reason,
            "at": time.time() if at is None else at,
        }
        insert = self._insert(suppressions)
        statement = insert.on_conflict_do_update(
            index_elements=["channel", "address", "list_id"],
            set_={"reason": insert.excluded.reason, "at": insert.excluded.at},
        )
        with self.store.engine.begin() as conn:
            conn.execute(statement, row)

    def unsuppress(self, channel: str, address: str, list_id: str | None = None) -> int:
        """Lift suppressions of ``address`` (one list, or every one with ``None``)."""
        where = [
            suppressions.c.channel == channel,
            suppressions.c.address == normalise(channel, address),
        ]
        if list_id is not None:
            where.append(suppressions.c.list_id == list_id)
        with self.store.engine.begin() as conn:
            return int(conn.execute(sa.delete(suppressions).where(*where)).rowcount or 0)

    def suppressed(self, channel: str, address: str, list_id: str | None = None) -> str | None:
        """Why ``address`` must not receive ``channel`` (for ``list_id``), or ``None``.

        A whole-channel suppression covers every list; with ``list_id`` that list's own
        suppression counts too."""
        lists = [WHOLE_CHANNEL] if not list_id else [WHOLE_CHANNEL, list_id]
        query = (
            sa.select(suppressions.c.reason)
            .where(
                suppressions.c.channel == channel,
                suppressions.c.address == normalise(channel, address),
                suppressions.c.list_id.in_(lists),
            )
            .order_by(suppressions.c.list_id)
            .limit(1)
        )
        with self.store.engine.connect().execution_options(read_only=True) as conn:
            found = conn.execute(query).scalar()
        return None if found is None else str(found)

    # -- the address book -----------------------------------------------------------------
    def customers_for(self, channel: str, address: str) -> list[str]:
        """The customers whose profile has ``address`` on ``channel``, in id order."""
        query = (
            sa.select(contacts.c.customer_id)
            .where(contacts.c.channel == channel, contacts.c.address == normalise(channel, address))
            .order_by(contacts.c.customer_id)
        )
        with self.store.engine.connect().execution_options(read_only=True) as conn:
            return [str(c) for c in conn.execute(query).scalars()]

    # -- callbacks already taken ----------------------------------------------------------
    def first_time(self, source: str, callback_id: str, at: float | None = None) -> bool:
        """Record a provider callback; ``False`` if it was recorded before (a retry)."""
        row = {"source": source, "id": callback_id, "at": time.time() if at is None else at}
        statement = (
            self._insert(inbound_seen)
            .on_conflict_do_nothing(index_elements=["source", "id"])
            .returning(inbound_seen.c.id)
        )
        with self.store.engine.begin() as conn:
            return conn.execute(statement, row).first() is not None

    def forget_seen(self, before: float, *, chunk: int = 5000) -> int:
        """Drop callbacks recorded before ``before`` (providers stop retrying within days),
        ``chunk`` per transaction. Returns how many."""
        return self.store.delete_chunked(inbound_seen, inbound_seen.c.at < before, chunk)

    # -- run-time controls ----------------------------------------------------------------
    def controls(self, kind: str | None = None) -> dict[tuple[str, str], str]:
        """Active controls ``(kind, name) -> reason`` (paused templates, kill switches)."""
        query = sa.select(controls.c.kind, controls.c.name, controls.c.reason)
        if kind is not None:
            query = query.where(controls.c.kind == kind)
        with self.store.engine.connect().execution_options(read_only=True) as conn:
            return {(str(k), str(n)): str(r) for k, n, r in conn.execute(query)}


def address_rows(
    customer_id: str, old: Iterable[tuple[str, str]], new: Iterable[tuple[str, str]]
) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """Rows to delete and to insert in ``contacts`` when a customer's addresses change."""
    before = {(c, normalise(c, a)) for c, a in old}
    after = {(c, normalise(c, a)) for c, a in new}
    gone = [
        {"channel": c, "address": a, "customer_id": customer_id} for c, a in sorted(before - after)
    ]
    added = [
        {"channel": c, "address": a, "customer_id": customer_id} for c, a in sorted(after - before)
    ]
    return gone, added
