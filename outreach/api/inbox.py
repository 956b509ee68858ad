"""What every handler of the HTTP app shares: taking a callback once, writing to the address
tables off the event loop, and publishing engine events through the sink.

``Inbox.once(source, id)`` records a provider callback (``Contacts.first_time``) and, if the
block then fails (the database, an unacknowledged publish), forgets it again, so that the
provider's retry is taken in full instead of being answered "already seen".

Must not import: faust, the decision core.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, ParamSpec, TypeVar

import sqlalchemy as sa
from fastapi import HTTPException
from starlette.concurrency import run_in_threadpool

from outreach.api.sink import EventSink
from outreach.events import Event, InvalidEventError, event_from_obj
from outreach.store.contacts import Contacts
from outreach.store.schema import inbound_seen

log = logging.getLogger(__name__)
P = ParamSpec("P")
T = TypeVar("T")
Clock = Callable[[], datetime]


def utc_now() -> datetime:
    """The wall clock, in UTC (the default ``Clock``)."""
    return datetime.now(UTC)


@dataclass(frozen=True)
class Inbox:
    """What every handler works with: the address tables, the sink and the clock."""

    contacts: Contacts
    sink: EventSink
    clock: Clock = utc_now

    async def call(self, work: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run a blocking store call off the event loop."""
        return await run_in_threadpool(work, *args, **kwargs)

    @contextlib.asynccontextmanager
    async def once(self, source: str, callback_id: str) -> AsyncIterator[bool]:
        """Yield whether the callback is new; forget it again if the block fails."""
        fresh = await self.call(self.contacts.first_time, source, callback_id)
        try:
            yield fresh
        except BaseException:
            if fresh:
                with contextlib.suppress(Exception):  # the original error is the one to see
                    await self.call(_forget_seen, self.contacts, source, callback_id)
            raise

    async def emit(self, events: Iterable[Event]) -> None:
        """Publish ``events`` in order; 503 if the sink refuses one (the provider retries)."""
        for event in events:
            try:
                await self.sink.publish(event)
            except Exception:
                log.exception(
                    "api: event %s for %s not published", event.event_id, event.customer_id
                )
                raise HTTPException(503, "the event could not be recorded; retry later") from None


def _forget_seen(contacts: Contacts, source: str, callback_id: str) -> None:
    """Drop one callback from ``inbound_seen`` (what was to be done for it was not done)."""
    seen = inbound_seen.c
    with contacts.store.engine.begin() as conn:
        conn.execute(sa.delete(inbound_seen).where(seen.source == source, seen.id == callback_id))


def make_event(
    kind: str, event_id: str, customer_id: str, at: datetime, source: str, data: dict[str, Any]
) -> Event | None:
    """An engine event, or ``None`` (logged) if the provider's values do not fit the contract."""
    try:
        return event_from_obj(
            {"event_id": event_id, "type": kind, "customer_id": customer_id,
             "occurred_at": at, "source": source, "data": data}
        )  # fmt: skip
    except InvalidEventError as exc:
        log.error("api: %s %s for %s not published: %s", kind, event_id, customer_id, exc)
        return None


def some(events: Iterable[Event | None]) -> list[Event]:
    """The events that could be made (``make_event`` gives ``None`` for the others)."""
    return [event for event in events if event is not None]


def text_field(value: object) -> str | None:
    """A non-empty string field of a form or JSON entry, else ``None``."""
    return value if isinstance(value, str) and value.strip() else None


def attempt_number(value: object) -> int:
    """A positive attempt number (1 when absent or unreadable)."""
    text = str(value).strip() if value is not None else ""
    return int(text) if text.isdigit() and int(text) >= 1 else 1
