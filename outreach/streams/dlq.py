"""The dead-letter topic read back, and dead letters published again to their source topics
(``outreach dlq list`` and ``outreach dlq republish``).

Reading takes no consumer group: every partition of the topic is assigned and read from its
beginning until the consumer's position reaches the high watermark of a fetch (the embedded
broker's ``end_offsets`` is wrong, so it is not asked), or until no fetch has brought anything
for ``quiet`` seconds; nothing is committed and nothing is removed from the topic.

Publishing again sends a dead letter's exact bytes (``raw_base64``), keyed by its original key
(``key_base64``), to its source topic, as a new record; the engine takes it as any other (an
event still invalid is dead-lettered again; a valid one is applied once, deduplicated by its
``event_id``). ``plan_republish`` refuses, with the reason, what cannot be sent as it came:
a value cut at 256 KiB, an empty value, a source that is not an input topic (the engine's own
timers included: a dropped timer is gone from its customer's state, so its ``timer.fired``
sent again would be applied as already fired and do nothing).

    OutreachError
    └── MissingTopicError    the topic to read is not on the brokers (a wrong prefix?)

Must not import: faust, sqlalchemy.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition  # type: ignore[import-untyped,unused-ignore]
from aiokafka.errors import KafkaError  # type: ignore[import-untyped,unused-ignore]
from pydantic import BaseModel, ConfigDict, ValidationError

from outreach.errors import OutreachError
from outreach.streams.publish import EventPublisher, PublishError
from outreach.streams.topics import Topics

QUIET = 10.0  # seconds without a fetched record before reading stops short of the end
KEY_LIMIT = 1024  # a dead letter keeps this many bytes of the key (codec.dead_letter_value)
# where dead letters that did not come from a Kafka topic came from, and what to do instead
_ELSEWHERE = {
    "http:": "it was posted to the API; post it again there once it is fixed",
    "webhook:": "it came from a provider's webhook; have the provider send it again",
    "connector:": "a connector reported it in a response; it is not an input of its own",
}


class MissingTopicError(OutreachError):
    """A topic to read does not exist on the brokers (a wrong prefix, another cluster)."""


class DeadLetterBody(BaseModel):
    """The value of a ``dlq`` record (``codec.dead_letter_value``); later fields are kept."""

    model_config = ConfigDict(frozen=True, extra="allow")

    error: str
    topic: str
    partition: int
    offset: int
    key: str | None = None
    key_base64: str | None = None
    raw: str | None = None
    raw_base64: str
    size: int
    truncated: bool
    sha256: str


@dataclass(frozen=True)
class StoredLetter:
    """One record of the dead-letter topic: where it is, when it was written, and its body
    (None when the record is not a dead letter this engine writes; ``problem`` says why)."""

    partition: int
    offset: int
    timestamp: datetime | None
    body: DeadLetterBody | None
    problem: str | None = None

    @classmethod
    def parse(
        cls, partition: int, offset: int, timestamp_ms: int | None, value: bytes | None
    ) -> StoredLetter:
        """The letter of one record; a value that is not a dead letter is kept with why."""
        when = None
        if timestamp_ms is not None and timestamp_ms >= 0:
            when = datetime.fromtimestamp(timestamp_ms / 1000, UTC)
        try:
            body = DeadLetterBody.model_validate_json(value or b"")
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(part) for part in first["loc"]) or "value"
            problem = f"not a dead letter of this engine ({where}: {first['msg']})"
            return cls(partition, offset, when, None, problem)
        return cls(partition, offset, when, body)

    @property
    def error(self) -> str:
        """Why the record was dead-lettered (or why this record is not a dead letter)."""
        return self.body.error if self.body is not None else str(self.problem)

    @property
    def source(self) -> str:
        """``topic[partition]@offset`` of the record the dead letter stands for."""
        if self.body is None:
            return "?"
        return f"{self.body.topic}[{self.body.partition}]@{self.body.offset}"

    def as_json(self) -> dict[str, Any]:
        """The dead letter with its place in the dead-letter topic (``--json``)."""
        stamp = self.timestamp.isoformat().replace("+00:00", "Z") if self.timestamp else None
        found = self.body.model_dump() if self.body is not None else {"problem": self.problem}
        return {"dlq_partition": self.partition, "dlq_offset": self.offset,
                "dlq_timestamp": stamp, **found}  # fmt: skip


@dataclass(frozen=True)
class LetterFilter:
    """Which dead letters a command takes: written at or after ``since``, from one of
    ``sources`` (full topic names; empty: any), with ``match`` in the error (any case)."""

    since: datetime | None = None
    sources: frozenset[str] = frozenset()
    match: str | None = None

    def accepts(self, letter: StoredLetter) -> bool:
        """Whether ``letter`` passes every filter given."""
        if self.since is not None and (letter.timestamp is None or letter.timestamp < self.since):
            return False
        if self.sources and (letter.body is None or letter.body.topic not in self.sources):
            return False
        return self.match is None or self.match.casefold() in letter.error.casefold()


class TopicReader:
    """Reads topics from their beginning to their end without a consumer group.

    After ``records()`` is exhausted, ``read`` counts the records and ``unfinished`` names
    the partitions not confirmed read to their end: no fetch had answered for them when
    ``quiet`` seconds passed without a record.
    """

    def __init__(self, bootstrap: str, names: Iterable[str], *, quiet: float = QUIET) -> None:
        self.bootstrap = bootstrap
        self.names = tuple(names)
        self.quiet = quiet
        self.read = 0
        self.unfinished: list[str] = []

    async def records(self) -> AsyncIterator[Any]:
        """Every record of the topics (aiokafka ``ConsumerRecord``), each partition in order."""
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap, client_id="outreach-dlq", group_id=None,
            enable_auto_commit=False, auto_offset_reset="earliest",
        )  # fmt: skip
        try:
            await consumer.start()
        except BaseException:  # no broker: close what start() opened (else "Unclosed consumer")
            await consumer.stop()
            raise
        try:
            await consumer.topics()  # the metadata partitions_for_topic reads
            parts = []
            for name in self.names:
                numbers = consumer.partitions_for_topic(name)
                if not numbers:
                    raise MissingTopicError(f"there is no topic {name!r} on {self.bootstrap}")
                parts += [TopicPartition(name, p) for p in sorted(numbers)]
            consumer.assign(parts)
            await consumer.seek_to_beginning(*parts)
            async for record in self._to_the_end(consumer, set(parts)):
                yield record
        finally:
            await consumer.stop()

    async def _to_the_end(self, consumer: Any, waiting: set[Any]) -> AsyncIterator[Any]:
        last = time.monotonic()
        while waiting:
            fetched = await consumer.getmany(timeout_ms=200, max_records=1000)
            for batch in fetched.values():
                self.read += len(batch)
                for record in batch:
                    yield record
            if fetched:
                last = time.monotonic()
            for tp in list(waiting):
                high = consumer.highwater(tp)  # from a fetch answered for it: true on Tansu too
                if high is not None and await consumer.position(tp) >= high:
                    waiting.discard(tp)
            if waiting and time.monotonic() - last > self.quiet:
                self.unfinished = sorted(f"{tp.topic}[{tp.partition}]" for tp in waiting)
                return


async def read_letters(reader: TopicReader, chosen: LetterFilter) -> AsyncIterator[StoredLetter]:
    """The dead letters ``chosen`` accepts, as ``reader`` reads them."""
    async for record in reader.records():
        letter = StoredLetter.parse(record.partition, record.offset, record.timestamp, record.value)
        if chosen.accepts(letter):
            yield letter


@dataclass(frozen=True)
class Resend:
    """A dead letter to publish again: its exact bytes and key, to its source topic."""

    letter: StoredLetter
    topic: str
    key: bytes | None
    value: bytes


@dataclass(frozen=True)
class Refusal:
    """A dead letter that is not published again, and why."""

    letter: StoredLetter
    reason: str


@dataclass
class RepublishPlan:
    """What ``republish`` will send, what it refuses, and how many letters repeat another."""

    resend: list[Resend] = field(default_factory=list)
    refused: list[Refusal] = field(default_factory=list)
    repeats: int = 0  # the same bytes, key and topic as a letter in ``resend``: sent once


def plan_republish(letters: Iterable[StoredLetter], topics: Topics) -> RepublishPlan:
    """Sort dead letters into those to send again and those refused (with the reason).

    The letters are taken in the order of the dead-letter topic's partitions (the relay keys
    each by its original key, so one customer's are in the order they were written). The same
    bytes with the same key for the same topic are sent once: the relay writes a dead letter
    again after a crash, and a record sent again and dead-lettered again is there twice.
    """
    plan, sent = RepublishPlan(), set()
    for letter in sorted(letters, key=lambda letter: (letter.partition, letter.offset)):
        decided = _decide(letter, topics)
        if isinstance(decided, Refusal):
            plan.refused.append(decided)
        elif (decided.topic, decided.key, decided.value) in sent:
            plan.repeats += 1
        else:
            sent.add((decided.topic, decided.key, decided.value))
            plan.resend.append(decided)
    return plan


def _decide(letter: StoredLetter, topics: Topics) -> Resend | Refusal:
    body = letter.body
    if body is None:
        return Refusal(letter, str(letter.problem))
    if body.topic == topics.timers:
        return Refusal(letter, "a timer of the engine's own: when its firing failed it was "
                       "dropped from its customer's state, so a timer.fired sent again would be "
                       "applied as already fired and do nothing; what it stood for (a payment "
                       "retry, a deferred message, an approval's expiry) must be redone by "
                       "hand")  # fmt: skip
    if body.topic not in topics.inputs:
        hint = next((h for p, h in _ELSEWHERE.items() if body.topic.startswith(p)), None)
        return Refusal(letter, f"its source {body.topic!r} is not one of the engine's input "
                       f"topics ({', '.join(topics.inputs)}); "
                       f"{hint or 'check --topic-prefix'}")  # fmt: skip
    if body.size == 0:
        return Refusal(letter, "its value was empty (a tombstone): there is no event to send")
    try:
        value = base64.b64decode(body.raw_base64, validate=True)
        key = None if body.key_base64 is None else base64.b64decode(body.key_base64, validate=True)
    except binascii.Error as exc:
        return Refusal(letter, f"its raw_base64 or key_base64 is not base64 ({exc})")
    if body.truncated or len(value) != body.size:
        return Refusal(letter, f"only the first {len(value):,} of its {body.size:,} bytes were "
                       f"kept (sha256 {body.sha256} is of the whole value): the event is lost "
                       "here; have its producer publish it again")  # fmt: skip
    if hashlib.sha256(value).hexdigest() != body.sha256:
        return Refusal(letter, "its raw bytes do not match its sha256: the dead letter was altered")
    if key is not None and len(key) >= KEY_LIMIT:
        return Refusal(letter, f"its key may have been cut at {KEY_LIMIT:,} bytes in the dead "
                       "letter: the original key is not known")  # fmt: skip
    return Resend(letter, body.topic, key, value)


@dataclass
class RepublishReport:
    """What ``republish`` did: letters acknowledged by the brokers (acks=all), and not sent."""

    sent: list[Resend] = field(default_factory=list)
    unsent: list[tuple[Resend, str]] = field(default_factory=list)


async def republish(bootstrap: str, resend: Iterable[Resend]) -> RepublishReport:
    """Publish each letter's bytes with its key to its topic, in the order given (one
    customer's letters are in the order of the dead-letter topic's partition); waits for acks.

    Raises ``KafkaError`` when the brokers cannot be reached at all."""
    report, queued = RepublishReport(), []
    async with EventPublisher(bootstrap, client_id="outreach-dlq-republish") as publisher:
        for item in resend:
            try:
                queued.append((item, await publisher.publish_raw(item.topic, item.key, item.value)))
            except (PublishError, KafkaError) as exc:
                report.unsent.append((item, f"not sent: {exc}"))
        with contextlib.suppress(PublishError):  # each failure is read from its future below
            await publisher.flush()
    for item, future in queued:
        error = "cancelled" if future.cancelled() else future.exception()
        if error is None:
            report.sent.append(item)
        else:
            report.unsent.append((item, f"not acknowledged by the brokers: {error!r}"))
    return report


def letter_row(letter: StoredLetter, width: int = 100) -> tuple[str, ...]:
    """dlq place, time, source, key, error (first line, cut at ``width``), size: one row of
    the listing."""
    body = letter.body
    when = letter.timestamp.strftime("%Y-%m-%d %H:%M:%SZ") if letter.timestamp else "?"
    first = letter.error.splitlines()[0] if letter.error else ""
    error = first if len(first) <= width else first[: width - 1] + "…"
    size = "?" if body is None else f"{body.size:,}" + (" (cut)" if body.truncated else "")
    key = "" if body is None or body.key is None else body.key
    if body is not None and body.key is None and body.key_base64 is not None:
        key = f"base64:{body.key_base64}"
    return f"{letter.partition}/{letter.offset}", when, letter.source, key, error, size


def json_line(letter: StoredLetter) -> bytes:
    """``letter`` as one JSON line (``outreach dlq list --json``)."""
    return orjson.dumps(letter.as_json(), option=orjson.OPT_SORT_KEYS) + b"\n"
