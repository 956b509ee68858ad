"""The connector port: how an approved action reaches the system where the problem lives.

Port: ``Connector.perform(effect) -> EffectResult``. Every ``Effect`` carries an idempotency key
derived from (signal, tool, target); a connector must pass it on where the system supports one
(Stripe, HTTP ``Idempotency-Key``) so that a retry after a crash never acts twice.

``FakeConnector`` is the in-package double: it records every call and, like a well-behaved
provider, performs each idempotency key at most once. ``FileConnector`` does the same into a
JSONL file shared by processes (the embedded default of the live runtime). Real connectors
(HTTP, Stripe, helpdesk) live in their own modules and are chosen by configuration.

Must not import: faust, aiokafka, twilio, sendgrid, openai, fastapi, sqlalchemy.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict

from outreach.errors import PermanentConnectorError, TransientConnectorError
from outreach.keyedlog import KeyedLog


class Effect(BaseModel):
    """One side effect to perform: a tool call on behalf of a customer."""

    model_config = ConfigDict(frozen=True)

    idempotency_key: str
    action_id: str
    customer_id: str
    tool: str
    params: dict[str, Any]
    # where it came from, so a failure can be reported back to the core (older rows: "")
    signal_id: str = ""
    rule_id: str = ""
    target: str = ""


class EffectResult(BaseModel):
    """What the system answered."""

    model_config = ConfigDict(frozen=True)

    status: Literal["done", "failed"]
    detail: str = ""
    external_id: str | None = None
    replayed: bool = False  # the key had been performed before; nothing new happened
    # new states the system reported (``{"type", "data"}``): the dispatcher makes them events
    events: tuple[dict[str, Any], ...] = ()


class Connector(Protocol):
    """Performs effects; raises ``TransientConnectorError`` / ``PermanentConnectorError``."""

    async def perform(self, effect: Effect) -> EffectResult:
        """Perform ``effect`` at most once per idempotency key."""
        ...


class FakeConnector:
    """Records effects in memory; idempotent per key; can be told to fail for fault tests."""

    def __init__(self) -> None:
        self.calls: list[Effect] = []
        self.performed: dict[str, EffectResult] = {}
        self._failures: list[Exception] = []

    def fail_next(self, *errors: Exception) -> None:
        """Raise these errors, in order, on the next calls (before performing anything)."""
        self._failures.extend(errors)

    async def perform(self, effect: Effect) -> EffectResult:
        """Record the call; perform it unless its key was already performed."""
        self.calls.append(effect)
        if self._failures:
            raise self._failures.pop(0)
        done = self.performed.get(effect.idempotency_key)
        if done is not None:
            return done.model_copy(update={"replayed": True})
        result = EffectResult(status="done", external_id=f"fake-{len(self.performed) + 1}")
        self.performed[effect.idempotency_key] = result
        return result

    def effects_for(self, customer_id: str) -> list[Effect]:
        """Distinct effects performed for one customer, in order."""
        keys = set(self.performed)
        seen: set[str] = set()
        out = []
        for call in self.calls:
            key = call.idempotency_key
            if call.customer_id == customer_id and key in keys and key not in seen:
                seen.add(key)
                out.append(call)
        return out


class FileConnector:
    """Writes each effect to a JSONL file instead of calling a system (idempotent per key,
    across processes); can be told to fail for fault tests."""

    def __init__(self, path: Path) -> None:
        self.log = KeyedLog(path)
        self._failures: list[Exception] = []

    def fail_next(self, *errors: Exception) -> None:
        """Raise these errors, in order, on the next calls (before performing anything)."""
        self._failures.extend(errors)

    async def perform(self, effect: Effect) -> EffectResult:
        """Append the effect unless its key was performed before."""
        if self._failures:
            raise self._failures.pop(0)
        key = effect.idempotency_key
        _, written = self.log.append_once(
            {"key": key, "performed_at": time.time(), **effect.model_dump(mode="json")}
        )
        return EffectResult(status="done", external_id=f"file:{key}", replayed=not written)


__all__ = [
    "Connector",
    "Effect",
    "EffectResult",
    "FakeConnector",
    "FileConnector",
    "PermanentConnectorError",
    "TransientConnectorError",
]
