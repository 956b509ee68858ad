"""Kafka records in, events or dead letters out; decision records to Kafka values.

A record becomes an event only if it is at most ``max_bytes`` long, UTF-8 JSON valid against
the event contract, keyed by its own ``customer_id``, and not an engine-internal type arriving
from outside (``timer.fired`` is accepted from the internal timers topic only). Anything else is
a dead letter: the raw bytes, the error and the source topic/partition/offset.

Must not import: sqlalchemy, faust, aiokafka (records are plain data here).
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass
from typing import Any

import orjson
from pydantic import BaseModel

from outreach.events import Event, InvalidEventError, TimerFired, parse_event

DEFAULT_MAX_EVENT_BYTES = 64 * 1024
# a dead letter keeps the whole raw value up to this size, then a prefix and the SHA-256:
# base64 grows a value by a third and Kafka's default message limit is 1 MiB
DLQ_RAW_LIMIT = 256 * 1024
DLQ_TEXT_LIMIT = 64 * 1024  # the raw value is also given as text up to this size
DLQ_MAX_BYTES = 512 * 1024  # a dead letter never exceeds this (base64 of 256 KiB is 342 KiB)
_OPTS = orjson.OPT_SORT_KEYS | orjson.OPT_UTC_Z | orjson.OPT_NAIVE_UTC


@dataclass(slots=True)  # read-only by convention: frozen would cost ~0.5 us more per record
class Record:
    """One consumed Kafka record."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    # the Kafka timestamp in epoch seconds (CreateTime or LogAppendTime); None when not known
    # (records not read from Kafka); only the decision latency histogram reads it
    timestamp: float | None = None


class DeadLetter(Exception):  # noqa: N818 - a value the decoder returns, raised only inside it
    """Why a record is not a valid event (``str(self)`` is the error)."""


def decode(record: Record, *, max_bytes: int, timers_topic: str) -> Event | DeadLetter:
    """The record's event, or the ``DeadLetter`` saying what is wrong with it."""
    try:
        return _decode(record, max_bytes, timers_topic)
    except DeadLetter as letter:
        return letter


def _decode(record: Record, max_bytes: int, timers_topic: str) -> Event:
    value = record.value
    if value is None:
        raise DeadLetter("empty message (null value): a tombstone is not an event")
    if len(value) > max_bytes:
        raise DeadLetter(
            f"oversized: {len(value)} bytes, the limit is {max_bytes} "
            "(OUTREACH_MAX_EVENT_BYTES); events are small JSON objects"
        )
    try:
        event = parse_event(value)
    except InvalidEventError as exc:
        raise DeadLetter(f"invalid event: {exc}") from None
    key = record.key
    if key is None:
        raise DeadLetter(
            f"message key is missing; producers must key each event by its customer_id "
            f"({event.customer_id!r})"
        )
    if key != event.customer_id.encode():
        shown = key.decode("utf-8", "replace")[:128]
        raise DeadLetter(
            f"message key {shown!r} does not equal customer_id {event.customer_id!r}; "
            "producers must key each event by its customer_id"
        )
    if isinstance(event, TimerFired) != (record.topic == timers_topic):
        raise DeadLetter(
            f"event type {event.type!r} is not accepted on topic {record.topic!r}: timer.fired "
            "is produced by the engine on its timers topic only"
        )
    return event


def dead_letter_value(record: Record, error: str) -> bytes:
    """The DLQ record: error, source position and the raw bytes (base64, exact; and as text
    when they are UTF-8 and small). Always under ``DLQ_MAX_BYTES``: the relay must be able to
    produce it (Kafka's default message limit is 1 MiB)."""
    raw = record.value or b""
    kept = raw if len(raw) <= DLQ_RAW_LIMIT else raw[:DLQ_RAW_LIMIT]
    key = record.key
    body: dict[str, Any] = {
        "error": error[:4096],
        "topic": record.topic,
        "partition": record.partition,
        "offset": record.offset,
        "key": _text(key[:1024]) if key is not None else None,
        "key_base64": None if key is None else base64.b64encode(key[:1024]).decode(),
        "raw": None,
        "raw_base64": base64.b64encode(kept).decode(),
        "size": len(raw),
        "truncated": len(kept) < len(raw),
        "sha256": hashlib.sha256(raw).hexdigest(),
    }
    if len(kept) <= DLQ_TEXT_LIMIT:  # as text too, for people reading the topic
        body["raw"] = _text(kept)
    value = orjson.dumps(body, option=_OPTS)
    if len(value) > DLQ_MAX_BYTES:  # escaped control characters can blow the text up 6x
        body["raw"] = None
        value = orjson.dumps(body, option=_OPTS)
    return value


def _text(value: bytes | None) -> str | None:
    if value is None:
        return None
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return None


def record_value(model: BaseModel) -> bytes:
    """A decision record as the compact JSON the decision log files hold (one line, no EOL)."""
    return orjson.dumps(model.model_dump(mode="json"), option=_OPTS)
