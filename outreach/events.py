"""The input event contract: envelope + payload models, one per event type.

This module is the public contract for backend teams (ARCHITECTURE.md, "Input event
envelope"). Events are validated strictly: unknown fields are refused, money is integer minor
units plus an ISO-4217 currency, timestamps must carry an offset. ``outreach schema export``
writes one JSON Schema per type from these models.

Besides the public types, the engine consumes types of its own making (the "engine types"):
``contact.suppressed`` / ``contact.unsuppressed`` (opt-outs, bounces, complaints fed back by
the outbound webhooks), ``message.status`` (delivery outcomes from provider callbacks and the
dispatcher), ``message.received`` (inbound SMS replies), ``timer.fired`` (scheduled work
re-entering as an event), ``approval.decided`` (a person's answer) and ``action.status`` (an
effect the dispatcher could not perform, or its system refused).
They share the envelope so that replay sees exactly what the live runtime sees.

Must not import: faust, aiokafka, twilio, sendgrid, openai, fastapi, sqlalchemy.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated, Any, Literal, TypeAlias

from pydantic import (
    BaseModel,
    ConfigDict,
    EmailStr,
    Field,
    StringConstraints,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    field_validator,
)
from pydantic_core import PydanticCustomError

from outreach.errors import OutreachError
from outreach.eventfields import (
    E164,
    Attempt,
    Channel,
    Currency,
    Id,
    Locale,
    MinorUnits,
    ShipmentStatus,
    Text,
    Tier,
    Timestamp,
    Timezone,
)

SCHEMA_VERSION = 1


class Model(BaseModel):
    """Base for contract models: immutable, unknown fields refused."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)


class Money(Model):
    """An amount in integer minor units with its ISO-4217 currency."""

    amount: MinorUnits
    currency: Currency


class ChannelConsent(Model):
    """Consent for one channel, per purpose; an absent purpose leaves it unchanged."""

    transactional: bool | None = None
    marketing: bool | None = None


class Consent(Model):
    """Consent per channel; an absent channel leaves it unchanged."""

    sms: ChannelConsent | None = None
    email: ChannelConsent | None = None


class CustomerUpdatedData(Model):
    """Profile fields; absent = unchanged, explicit null = cleared."""

    email: EmailStr | None = None
    phone: E164 | None = None
    timezone: Timezone | None = None
    locale: Locale | None = None
    tier: Tier | None = None
    consent: Consent | None = None


class ShipmentUpdatedData(Model):
    """A shipment's latest status and delivery estimate."""

    shipment_id: Id
    order_id: Id
    carrier: Text
    status: ShipmentStatus
    promised_delivery: Timestamp
    estimated_delivery: Timestamp | None = None
    exception_code: Text | None = None
    order_value: Money | None = None


class PaymentFailedData(Model):
    """A failed charge attempt on an invoice."""

    payment_id: Id
    invoice_id: Id
    amount: MinorUnits
    currency: Currency
    decline_code: Text
    attempt: Attempt


class PaymentSucceededData(Model):
    """A successful charge on an invoice."""

    payment_id: Id
    invoice_id: Id
    amount: MinorUnits
    currency: Currency


class UsageReportedData(Model):
    """One usage measurement of a metric over a period."""

    metric: Text
    value: Annotated[float, Field(ge=0)]
    period_start: Timestamp
    period_end: Timestamp

    @field_validator("period_end")
    @classmethod
    def _period_in_order(cls, end: datetime, info: ValidationInfo) -> datetime:
        start = info.data.get("period_start")
        if start is not None and end < start:
            raise PydanticCustomError(
                "period_order", "is before period_start; swap them or fix the clock"
            )
        return end


class RenewalUpcomingData(Model):
    """A subscription that will renew (or lapse) soon."""

    subscription_id: Id
    plan: Text
    renews_at: Timestamp
    amount: MinorUnits
    currency: Currency
    auto_renew: bool


class RenewalDoneData(Model):
    """A subscription that renewed or was cancelled."""

    subscription_id: Id
    plan: Text


SuppressionReason = Literal["stop", "bounce", "complaint", "unsubscribe", "unusable", "manual"]


class ContactSuppressedData(Model):
    """A channel (or one email list) the customer must no longer receive.

    ``unusable``: the number or address cannot receive at all (Twilio 21211/21614/30005/30006,
    a hard bounce); it is lifted when the profile gets a new one. ``list_id``: only that email
    list (a SendGrid unsubscribe group), not the whole channel."""

    channel: Channel
    reason: SuppressionReason
    address: Text | None = None
    list_id: Annotated[str, StringConstraints(min_length=1, max_length=64)] | None = None


class ContactUnsuppressedData(Model):
    """A channel (or one email list) the customer may receive again (START, resubscribe)."""

    channel: Channel
    reason: Literal["start", "resubscribe", "manual"]
    address: Text | None = None
    list_id: Annotated[str, StringConstraints(min_length=1, max_length=64)] | None = None


DeliveryStatus = Literal["queued", "sent", "delivered", "undelivered", "failed", "bounced"]


class MessageStatusData(Model):
    """What a provider (or the dispatcher) reported about one sent message.

    ``error_code``: the provider's code (Twilio ``ErrorCode`` such as 30003, a dispatcher
    reason such as ``suppressed``); ``provider_event``: the provider's own name for it
    (SendGrid ``bounce``, ``dropped``...); ``detail``: its reason text."""

    message_id: Id
    channel: Channel
    status: DeliveryStatus
    attempt: Attempt = 1
    provider: Text
    provider_id: Text | None = None
    error_code: Text | None = None
    provider_event: Text | None = None
    detail: Annotated[str, StringConstraints(max_length=1024)] | None = None


class ReplyUnderstandingData(Model):
    """What the inbound webhook understood a free-text reply to mean, so that the core (and
    its replay) acts on the same reading: ``intent`` (``human``: not sure enough, a person
    reads it), how sure, who read it (``keywords`` or ``model``), why, and why a model's
    reading was not used (``fallback``)."""

    intent: Literal["accept", "decline", "question", "complaint", "opt_out", "human"]
    confidence: Annotated[float, Field(ge=0, le=1)]
    source: Literal["keywords", "model"]
    reason: Annotated[str, StringConstraints(max_length=512)]
    fallback: Text | None = None


class MessageReceivedData(Model):
    """A message the customer sent us (an SMS reply); ``understanding``: what it was read to
    mean when it arrived (absent: the core reads it by keywords)."""

    channel: Literal["sms"]
    from_address: Text
    to_address: Text | None = None
    body: Annotated[str, StringConstraints(max_length=1600)]
    provider: Text
    provider_id: Text | None = None
    understanding: ReplyUnderstandingData | None = None


class TimerFiredData(Model):
    """Scheduled work that became due; the core looks the timer up in the customer's state."""

    timer_id: Id
    due_at: Timestamp


class ApprovalDecidedData(Model):
    """A person's answer to an action waiting for approval (``outreach approvals``, the API)."""

    action_id: Id
    decision: Literal["approve", "reject"]
    by: Text = Field(description="who decided (the operator's name or API key name)")
    note: Annotated[str, StringConstraints(max_length=1024)] | None = None


class ActionStatusData(Model):
    """What became of an executed action's effect in the system it went to (the dispatcher):
    ``failed`` when the system refused it, or it could not be performed (with the reason)."""

    action_id: Id
    tool: Text
    status: Literal["failed"]
    detail: Annotated[str, StringConstraints(max_length=1024)]
    signal_id: Text | None = None
    rule_id: Text | None = None
    target: Text | None = None
    idempotency_key: Text | None = None


class Envelope(Model):
    """Fields every event carries."""

    event_id: Id = Field(description="unique per event; the idempotency key")
    customer_id: Id = Field(description="the Kafka message key must equal this")
    occurred_at: Timestamp = Field(description="RFC 3339 with an offset, 1970 to 2199")
    source: Text | None = None
    schema_version: Literal[1] = 1


class CustomerUpdated(Envelope):
    """``customer.updated``"""

    type: Literal["customer.updated"]
    data: CustomerUpdatedData


class ShipmentUpdated(Envelope):
    """``shipment.updated``"""

    type: Literal["shipment.updated"]
    data: ShipmentUpdatedData


class PaymentFailed(Envelope):
    """``payment.failed``"""

    type: Literal["payment.failed"]
    data: PaymentFailedData


class PaymentSucceeded(Envelope):
    """``payment.succeeded``"""

    type: Literal["payment.succeeded"]
    data: PaymentSucceededData


class UsageReported(Envelope):
    """``usage.reported``"""

    type: Literal["usage.reported"]
    data: UsageReportedData


class RenewalUpcoming(Envelope):
    """``renewal.upcoming``"""

    type: Literal["renewal.upcoming"]
    data: RenewalUpcomingData


class RenewalRenewed(Envelope):
    """``renewal.renewed``"""

    type: Literal["renewal.renewed"]
    data: RenewalDoneData


class RenewalCancelled(Envelope):
    """``renewal.cancelled``"""

    type: Literal["renewal.cancelled"]
    data: RenewalDoneData


class ContactSuppressed(Envelope):
    """``contact.suppressed`` (engine type)"""

    type: Literal["contact.suppressed"]
    data: ContactSuppressedData


class ContactUnsuppressed(Envelope):
    """``contact.unsuppressed`` (engine type)"""

    type: Literal["contact.unsuppressed"]
    data: ContactUnsuppressedData


class MessageStatus(Envelope):
    """``message.status`` (engine type, from provider callbacks and the dispatcher)"""

    type: Literal["message.status"]
    data: MessageStatusData


class MessageReceived(Envelope):
    """``message.received`` (engine type, from the inbound SMS webhook)"""

    type: Literal["message.received"]
    data: MessageReceivedData


class TimerFired(Envelope):
    """``timer.fired`` (engine type, produced by the scheduler or the replay clock)"""

    type: Literal["timer.fired"]
    data: TimerFiredData


class ActionStatusChanged(Envelope):
    """``action.status`` (engine type, from the dispatcher)"""

    type: Literal["action.status"]
    data: ActionStatusData


class ApprovalDecided(Envelope):
    """``approval.decided`` (engine type, from ``outreach approvals`` and the operator API)"""

    type: Literal["approval.decided"]
    data: ApprovalDecidedData


PUBLIC_TYPES: tuple[type[Envelope], ...] = (
    CustomerUpdated,
    ShipmentUpdated,
    PaymentFailed,
    PaymentSucceeded,
    UsageReported,
    RenewalUpcoming,
    RenewalRenewed,
    RenewalCancelled,
)
ENGINE_TYPES: tuple[type[Envelope], ...] = (
    ContactSuppressed,
    ContactUnsuppressed,
    MessageStatus,
    MessageReceived,
    TimerFired,
    ApprovalDecided,
    ActionStatusChanged,
)

Event: TypeAlias = (
    CustomerUpdated
    | ShipmentUpdated
    | PaymentFailed
    | PaymentSucceeded
    | UsageReported
    | RenewalUpcoming
    | RenewalRenewed
    | RenewalCancelled
    | ContactSuppressed
    | ContactUnsuppressed
    | MessageStatus
    | MessageReceived
    | TimerFired
    | ApprovalDecided
    | ActionStatusChanged
)

MODELS: dict[str, type[Envelope]] = {
    m.model_fields["type"].annotation.__args__[0]: m  # type: ignore[union-attr]
    for m in (*PUBLIC_TYPES, *ENGINE_TYPES)
}
DATA_MODELS: dict[str, type[Model]] = {
    t: m.model_fields["data"].annotation  # type: ignore[misc]
    for t, m in MODELS.items()
}
EVENT_TYPES: tuple[str, ...] = tuple(MODELS)

_ADAPTER: TypeAdapter[Event] = TypeAdapter(Annotated[Event, Field(discriminator="type")])
_VALIDATE_JSON = _ADAPTER.validator.validate_json  # the adapter's wrapper costs 0.2 us an event


class InvalidEventError(OutreachError, ValueError):
    """An input that is not a valid event; ``problems`` are ``field: what is wrong`` lines."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("; ".join(problems))


def parse_event(raw: bytes | str) -> Event:
    """Decode and validate one JSON event; raises ``InvalidEventError`` naming each bad field."""
    try:
        event: Event = _VALIDATE_JSON(raw, strict=True)
        return event
    except ValidationError as exc:
        raise InvalidEventError(describe_errors(exc)) from None


def event_from_obj(obj: Any) -> Event:
    """Validate an already-decoded event (a dict from YAML test cases, the API...)."""
    try:
        return _ADAPTER.validate_python(obj)
    except ValidationError as exc:
        raise InvalidEventError(describe_errors(exc)) from None


_TAG = re.compile(r"^[a-z]+\.[a-z_]+$")
_TIME_BOUNDS = {"greater_than_equal": "ge", "less_than": "lt"}  # the ctx key of each bound
_BOUND_TEXTS = frozenset({"1970-01-01T00:00:00Z", "2200-01-01T00:00:00Z"})  # how ctx gives them
_SELF_DESCRIBING = frozenset({"json_invalid", "currency", "timezone", "period_order"})
_PATTERN_HINTS = {
    "phone": "must be an E.164 number such as +14155550123",
    "locale": "must be a locale tag such as en-US or fr",
    "currency": "must be an ISO 4217 code such as USD",
}


def _time_bound(err: Any) -> bool:
    """Whether a pydantic error is a time outside [``eventfields.EARLIEST``, ``LATEST``)."""
    bound = err.get("ctx", {}).get(_TIME_BOUNDS.get(err["type"], ""))
    return isinstance(bound, datetime) or bound in _BOUND_TEXTS


def describe_errors(exc: ValidationError) -> list[str]:
    """Turn pydantic errors into ``data.status: Input should be ... (got 'lost')`` lines."""
    lines: list[str] = []
    for err in exc.errors(include_url=False):
        loc = [str(p) for p in err["loc"]]
        if loc and _TAG.match(loc[0]) and loc[0] in MODELS:
            loc = loc[1:]  # the union tag pydantic puts first says nothing to the producer
        where = ".".join(loc) or "(event)"
        msg = err["msg"]
        if err["type"] == "missing":
            msg = "is required but missing"
        elif err["type"] == "extra_forbidden":
            msg = "is not a field of this event type (remove it or check the spelling)"
        elif err["type"] in ("union_tag_invalid", "union_tag_not_found"):
            got = err.get("ctx", {}).get("tag")
            where = "type"
            shown = "missing" if got is None else f"got {got!r}"
            msg = f"unknown event type ({shown}); expected one of {', '.join(EVENT_TYPES)}"
        elif err["type"] == "string_pattern_mismatch" and loc and loc[-1] in _PATTERN_HINTS:
            msg = f"{_PATTERN_HINTS[loc[-1]]} (got {err['input']!r:.80})"
        elif _time_bound(err):
            msg = (
                f"must be from 1970-01-01 to before 2200-01-01 (got {err['input']!r:.80}); an "
                "optional time that is not known or never comes is left out or null"
            )
        elif "input" in err and err["type"] not in _SELF_DESCRIBING:
            shown = repr(err["input"])
            msg = f"{msg} (got {shown[:80]})"
        lines.append(f"{where}: {msg}")
    return lines


def json_schemas() -> dict[str, dict[str, Any]]:
    """One JSON Schema per public and engine event type, keyed by the type name."""
    out: dict[str, dict[str, Any]] = {}
    for name, model in MODELS.items():
        schema = model.model_json_schema()
        schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
        schema["$id"] = f"https://outreach.dev/schemas/v{SCHEMA_VERSION}/{name}.json"
        schema["title"] = name
        schema["description"] = (
            f"Outreach event `{name}`, envelope schema_version {SCHEMA_VERSION}. "
            "Kafka message key = customer_id; money in integer minor units."
        )
        out[name] = schema
    return out


def is_engine_type(event: Event) -> bool:
    """True for the types the engine itself produces (suppression feedback, timers)."""
    return isinstance(event, ENGINE_TYPES)


def utc_iso(ts: datetime) -> str:
    """RFC 3339 UTC with a ``Z`` suffix, seconds precision unless sub-second is present."""
    text = ts.astimezone(UTC).isoformat()
    return text.replace("+00:00", "Z")
