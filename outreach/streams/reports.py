"""The events the dispatcher writes back for the core, as records for the relay (logical
topic, key, value): what a connector's system reported (``EffectResult.events``, e.g. a new
delivery estimate after a rebooking), and that a delivery or an effect failed for good
(``message.status``, ``action.status``). They go in the same transaction as the outbox row's
final state (``outreach.streams.dispatcher``)."""

from __future__ import annotations

from datetime import UTC, datetime

import orjson

from outreach.agents.connectors import Effect, EffectResult
from outreach.decisions import Delivery
from outreach.events import (
    ActionStatusChanged,
    ActionStatusData,
    InvalidEventError,
    MessageStatus,
    MessageStatusData,
    event_from_obj,
)
from outreach.store import OutboxRow
from outreach.streams.codec import Record, dead_letter_value
from outreach.streams.topics import logical_topic


def relay_reported(
    effect: Effect, result: EffectResult, now: float
) -> list[tuple[str, bytes | None, bytes]]:
    """The events a connector's answer reported, as records for the relay (logical topic, key,
    value); one that is not a valid event goes to the dead-letter topic with the reason."""
    out: list[tuple[str, bytes | None, bytes]] = []
    key = effect.customer_id.encode()
    for i, reported in enumerate(result.events):
        event = {
            "event_id": f"connector:{effect.idempotency_key}:{i}",
            "customer_id": effect.customer_id,
            "occurred_at": datetime.fromtimestamp(now, UTC).isoformat(),
            "source": f"connector:{effect.tool}",
            "schema_version": 1,
            **reported,
        }
        try:
            valid = event_from_obj(event)
            out.append((logical_topic(valid.type), key, valid.model_dump_json().encode()))
        except (InvalidEventError, ValueError) as exc:
            raw = orjson.dumps(event, default=str)
            where = Record(f"connector:{effect.tool}", -1, i, key, raw)
            out.append(("dlq", key, dead_letter_value(where, f"connector event: {exc}")))
    return out


def report_failure(
    row: OutboxRow,
    request: Effect | Delivery,
    code: str | None,
    detail: str,
    now: float,
    reason: str | None = None,
) -> tuple[str, bytes | None, bytes]:
    """The event telling the core a delivery or an effect failed for good (a record for the
    relay: logical topic, key, value): ``message.status`` for a delivery, ``action.status``
    for an effect. ``code``: the provider's error code, or ``suppressed`` (``reason``: the
    suppression's, as ``provider_event``) or ``gave_up`` (transient failures until the last
    attempt)."""
    if isinstance(request, Effect):
        return _action_failed(row, request, detail, now)
    delivery = request
    event = MessageStatus(
        event_id=f"dispatch:{row.idempotency_key}",
        type="message.status",
        customer_id=delivery.customer_id,
        occurred_at=datetime.fromtimestamp(now, UTC),
        source="dispatcher",
        data=MessageStatusData(
            message_id=delivery.message_id,
            channel="sms" if delivery.channel == "sms" else "email",
            status="failed",
            attempt=delivery.attempt,
            provider="dispatcher",
            error_code=code,
            provider_event=reason,
            detail=detail[:1024],
        ),
    )
    return "customers", delivery.customer_id.encode(), event.model_dump_json().encode()


def _action_failed(
    row: OutboxRow, effect: Effect, detail: str, now: float
) -> tuple[str, bytes | None, bytes]:
    """``action.status`` ``failed`` for an effect (the core records the action failed)."""
    event = ActionStatusChanged(
        event_id=f"dispatch:{row.idempotency_key}",
        type="action.status",
        customer_id=effect.customer_id,
        occurred_at=datetime.fromtimestamp(now, UTC),
        source="dispatcher",
        data=ActionStatusData(
            action_id=effect.action_id,
            tool=effect.tool,
            status="failed",
            detail=detail[:1024],
            signal_id=effect.signal_id or None,
            rule_id=effect.rule_id or None,
            target=effect.target or None,
            idempotency_key=effect.idempotency_key,
        ),
    )
    return "customers", effect.customer_id.encode(), event.model_dump_json().encode()
