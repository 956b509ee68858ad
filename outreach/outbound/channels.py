"""The channel port: how a decided message reaches a phone or an inbox.

Port: ``Channel.send(delivery, key, retry=False) -> SendResult``. ``key`` is the delivery's
idempotency key (``msg:<message_id>``, ``msg:<message_id>#<attempt>``); a channel passes it to
the provider where the provider supports one. ``retry=True`` says an earlier try of this key
may have reached the provider (the dispatcher crashed or timed out before marking it): a
channel whose provider has no idempotency key looks the message up in the provider's own
records first, so that it is never sent twice. Errors: ``TransientDeliveryError(retry_after=,
code=)`` or ``PermanentDeliveryError(code=)``; ``code`` is the provider's error code, which
``outreach.outbound.feedback`` maps to a policy change.

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

    async def send(self, delivery: Delivery, key: str, retry: bool = False) -> SendResult:
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

    async def send(self, delivery: Delivery, key: str, retry: bool = False) -> SendResult:
        """Append the message unless ``key`` was written before (so ``retry`` changes nothing)."""
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
