"""Kafka settings, topic names, event-type routing, and creating the topics.

Owns ``KafkaSettings`` (``OUTREACH_KAFKA_URL``, ``OUTREACH_TOPIC_PREFIX``,
``OUTREACH_PARTITIONS``, ``OUTREACH_GROUP_ID``), the ``Topics`` an engine uses (the five input
topics of the public contract, the internal ``timers`` topic, the output topics and the
dead-letter topic, all under one prefix), which topic each event type goes to, and
``ensure_topics``.

Every input topic and ``timers`` has the same partition count and every record is keyed by
``customer_id``, so one customer's events from all topics land on the same partition number
and are processed by the same worker (co-partitioning).

Must not import: faust, sqlalchemy.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from aiokafka.admin import (  # type: ignore[import-untyped,unused-ignore]
    AIOKafkaAdminClient,
    NewTopic,
)
from aiokafka.errors import (  # type: ignore[import-untyped,unused-ignore]
    TopicAlreadyExistsError,
    for_code,
)
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from outreach.events import EVENT_TYPES

# the part before the dot of an event type -> the Topics attribute it is published to
_FAMILIES = {
    "customer": "customers",
    "contact": "customers",
    "message": "customers",  # delivery outcomes and replies: facts about the customer
    "shipment": "shipments",
    "payment": "payments",
    "usage": "usage",
    "renewal": "renewals",
    "timer": "timers",
    "approval": "customers",  # a person's decision on one of the customer's actions
    "action": "customers",  # what became of an action's effect (the dispatcher)
}
_LEGAL = re.compile(r"^[A-Za-z0-9._-]*$")
_MAX_TOPIC_NAME = 249


class KafkaSettings(BaseSettings):
    """Where Kafka is and how the engine's topics are laid out (``OUTREACH_*`` variables)."""

    model_config = SettingsConfigDict(env_prefix="OUTREACH_")

    kafka_url: str | None = Field(
        default=None, description="bootstrap servers; none: start the embedded broker"
    )
    topic_prefix: str = Field(default="", description="prepended to every topic name")
    partitions: int = Field(default=4, ge=1, description="partitions of every topic")
    group_id: str = Field(default="outreach", min_length=1, description="consumer group")
    replication_factor: int | None = Field(
        default=None, ge=1,
        description="replicas of each topic the engine creates; none: 3, or as many as there "
        "are brokers if fewer (1 on the embedded broker)",
    )  # fmt: skip


@dataclass(frozen=True)
class Topics:
    """The engine's topic names under one prefix (``Topics("staging.").payments``)."""

    prefix: str = ""

    def __post_init__(self) -> None:
        longest = len(self.prefix) + len("shipments")
        if not _LEGAL.match(self.prefix) or longest > _MAX_TOPIC_NAME:
            raise ValueError(
                f"topic prefix {self.prefix!r} is not usable in Kafka topic names: use letters, "
                f"digits, '.', '_' and '-' only, at most {_MAX_TOPIC_NAME - 9} characters"
            )

    @property
    def shipments(self) -> str:
        """Input: ``shipment.*`` events."""
        return f"{self.prefix}shipments"

    @property
    def payments(self) -> str:
        """Input: ``payment.*`` events."""
        return f"{self.prefix}payments"

    @property
    def usage(self) -> str:
        """Input: ``usage.*`` events."""
        return f"{self.prefix}usage"

    @property
    def renewals(self) -> str:
        """Input: ``renewal.*`` events."""
        return f"{self.prefix}renewals"

    @property
    def customers(self) -> str:
        """Input: ``customer.updated``, ``contact.suppressed`` and ``contact.unsuppressed``."""
        return f"{self.prefix}customers"

    @property
    def timers(self) -> str:
        """Internal: ``timer.fired`` events the runtime re-injects, keyed by customer_id."""
        return f"{self.prefix}timers"

    @property
    def signals(self) -> str:
        """Output: detected risk signals."""
        return f"{self.prefix}signals"

    @property
    def actions(self) -> str:
        """Output: action records (each status change)."""
        return f"{self.prefix}actions"

    @property
    def messages(self) -> str:
        """Output: message records (each status change)."""
        return f"{self.prefix}messages"

    @property
    def receipts(self) -> str:
        """Output: delivery receipts (what providers reported, what the engine did about it)."""
        return f"{self.prefix}receipts"

    @property
    def dlq(self) -> str:
        """Output: dead letters (raw bytes, error, source topic/partition/offset)."""
        return f"{self.prefix}dlq"

    @property
    def inputs(self) -> tuple[str, ...]:
        """The five input topics of the public contract."""
        return (self.shipments, self.payments, self.usage, self.renewals, self.customers)

    @property
    def outputs(self) -> tuple[str, ...]:
        """The output topics, the dead-letter topic included."""
        return (self.signals, self.actions, self.messages, self.receipts, self.dlq)

    @property
    def all(self) -> tuple[str, ...]:
        """Every topic: inputs, timers, outputs."""
        return (*self.inputs, self.timers, *self.outputs)

    def topic_for(self, event_type: str) -> str:
        """The topic an event of ``event_type`` is published to; ValueError if unknown."""
        topic: str = getattr(self, logical_topic(event_type))
        return topic


def logical_topic(event_type: str) -> str:
    """The ``Topics`` attribute (``shipments``, ``customers``...) ``event_type`` goes to;
    ValueError if unknown."""
    family, _, kind = event_type.partition(".")
    attribute = _FAMILIES.get(family) if kind else None
    if attribute is None:
        raise ValueError(
            f"unknown event type {event_type!r}: no topic for it; "
            f"known types: {', '.join(EVENT_TYPES)}"
        )
    return attribute


# how long the dead-letter topic keeps a letter when ``ensure_topics`` creates it: longer than
# Kafka's 7-day default, so a letter outlives a long weekend and a fix's release before it is
# republished (``outreach dlq republish``); change it on the topic (kafka-configs) to suit
DLQ_RETENTION_MS = 30 * 24 * 3600 * 1000
# replicas of a topic ``ensure_topics`` creates when none is asked for, at most the brokers
# there are: one lost broker then loses no input, timer or dead letter (with acks=all)
DEFAULT_REPLICAS = 3


async def ensure_topics(
    bootstrap: str, topics: Topics, partitions: int, *, replication_factor: int | None = None
) -> None:
    """Create the topics that are missing (all with ``partitions`` and ``replication_factor``
    replicas, by default ``DEFAULT_REPLICAS`` or the number of brokers if fewer; the
    dead-letter topic with ``retention.ms`` = ``DLQ_RETENTION_MS``, the rest with the brokers'
    defaults); existing ones are kept as they are. aiokafka's CreateTopics (v3 at most) cannot
    ask for the brokers' own ``default.replication.factor``, hence the explicit default."""
    if partitions < 1:
        raise ValueError(f"partitions must be at least 1, not {partitions}")
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, client_id="outreach-admin")
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [name for name in topics.all if name not in existing]
        if not missing:
            return
        if replication_factor is None:
            brokers = len((await admin.describe_cluster())["brokers"])
            replication_factor = max(1, min(DEFAULT_REPLICAS, brokers))
        response = await admin.create_topics(
            [
                NewTopic(name, partitions, replication_factor, topic_configs=_configs(topics, name))
                for name in missing
            ]
        )
    finally:
        await admin.close()
    for name, code, *message in response.topic_errors:  # (topic, code[, message]) by version
        error = for_code(code)
        if code and error is not TopicAlreadyExistsError:  # already there: another worker won
            detail = (message[0] if message else None) or error.description
            raise error(f"cannot create topic {name!r}: {detail}")


def _configs(topics: Topics, name: str) -> dict[str, str]:
    return {"retention.ms": str(DLQ_RETENTION_MS)} if name == topics.dlq else {}
