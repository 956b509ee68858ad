"""The channel port: how a decided message reaches a phone or an inbox.

Port: ``Channel.send(delivery, key) -> SendResult``. ``key`` is the delivery's idempotency key
(``msg:<message_id>``); a channel passes it to the provider where the provider supports one and
otherwise answers ``sent_before(key)`` from the provider's own records, so that a dispatcher
retrying after a crash never sends twice. Errors: ``TransientDeliveryError(retry_after=...)``
or ``PermanentDeliveryError``.

``FileChannel`` is the embedded default and the test double: it appends each message to a JSONL
file, at most once per key (across processes). Provider channels (Twilio, SendGrid) come in
their own modules.

Must not import: faust, aiokafka, sqlalchemy, fastapi, openai.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Protocol

from pydantic import BaseModel, ConfigDict

from outreach.decisions import Delivery
from outreach.errors import PermanentDeliveryError, TransientDeliveryError
from outreach.keyedlog import KeyedLog


class SendResult(BaseModel):
    """What the channel answered."""

    model_config = ConfigDict(frozen=True)

    status: str  # "sent" (accepted by the provider)
    provider_id: str | None = None
    replayed: bool = False  # the key had been sent before; nothing new went out


class Channel(Protocol):
    """Sends deliveries; raises ``TransientDeliveryError`` / ``PermanentDeliveryError``."""

    async def send(self, delivery: Delivery, key: str) -> SendResult:
        """Hand ``delivery`` to the provider, at most once per ``key``."""
        ...


class FileChannel:
    """Writes messages to a JSONL file instead of sending them (idempotent per key)."""

    def __init__(self, path: Path) -> None:
        self.log = KeyedLog(path)
        self._failures: list[Exception] = []

    def fail_next(self, *errors: Exception) -> None:
        """Raise these errors, in order, on the next sends (fault tests)."""
        self._failures.extend(errors)

    async def send(self, delivery: Delivery, key: str) -> SendResult:
        """Append the message unless ``key`` was written before."""
        if self._failures:
            raise self._failures.pop(0)
        record, written = self.log.append_once(
            {"key": key, "sent_at": time.time(), **delivery.model_dump(mode="json")}
        )
        return SendResult(status="sent", provider_id=f"file:{key}", replayed=not written)


__all__ = [
    "Channel",
    "FileChannel",
    "PermanentDeliveryError",
    "SendResult",
    "TransientDeliveryError",
]
