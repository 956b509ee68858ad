"""Rule files as pydantic models: what an analyst may write in ``rules/*.yaml``.

A rule says when to raise a signal (trigger event, ``let`` bindings, ``when`` condition,
audience, cooldown), how it is rolled out (enabled, shadow, holdout, priority), which playbook
runs and with which parameters, what cancels its pending work, and carries its own test cases.
Expressions stay strings here; ``compile.py`` checks and compiles them.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StringConstraints, field_validator

from outreach.events import EVENT_TYPES
from outreach.rules.durations import Duration, Percent, parse_duration
from outreach.rules.expressions import RESERVED

RuleId = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9-]{0,62}$")]
Expr = Annotated[str, StringConstraints(min_length=1, max_length=4000)]
ConsentName = Literal[
    "sms.transactional", "sms.marketing", "email.transactional", "email.marketing"
]
Category = Literal["service_failure", "retention", "informational"]


def _known_type(value: str) -> str:
    if value not in EVENT_TYPES:
        raise ValueError(
            f"'{value}' is not an event type; expected one of {', '.join(EVENT_TYPES)}"
        )
    return value


class Spec(BaseModel):
    """Base for rule-file models: unknown keys are refused, values are immutable."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class Cooldown(Spec):
    """After a signal, stay quiet this long, per customer or per customer and key."""

    period: Duration
    per: Literal["customer", "key"] = "customer"


class Audience(Spec):
    """Who the rule may target; all given filters must hold."""

    tier: list[Literal["standard", "premium"]] | None = None
    locale: list[str] | None = Field(
        default=None, description="locale tags; 'fr' matches fr, fr-FR and fr-CA"
    )
    country: list[Annotated[str, StringConstraints(pattern=r"^[A-Z]{2}$")]] | None = None
    consent: list[ConsentName] | None = Field(default=None, description="all must be granted")
    when: Expr | None = Field(default=None, description="any further condition (an expression)")


class CancelOn(Spec):
    """An event that closes the rule's subject and cancels whatever is still pending for it."""

    trigger: str
    key: Expr
    when: Expr | None = None
    reason: Annotated[str, StringConstraints(min_length=1, max_length=200)] | None = Field(
        default=None, description="why, in words, e.g. 'the parcel was delivered'"
    )

    _check_trigger = field_validator("trigger")(_known_type)


class TestEvent(Spec):
    """One input event of a test case; ``at`` is its ``occurred_at``."""

    type: str
    at: AwareDatetime
    data: dict[str, Any] = Field(default_factory=dict)
    customer_id: str | None = None
    event_id: str | None = None
    source: str | None = None

    _check_type = field_validator("type")(_known_type)


class Expectation(Spec):
    """Expected records; a list given is compared item by item, an absent list is not checked.

    Each expected item lists only the fields that matter; ``body_contains: x`` (or a list) needs
    every piece in the field, ``body_not_contains`` none of them.
    Actions and messages are compared in their final state (the last record of each id).
    """

    signals: list[dict[str, Any]] | None = None
    actions: list[dict[str, Any]] | None = None
    messages: list[dict[str, Any]] | None = None


class TestCase(Spec):
    """Events in, expected signals, actions and messages out."""

    name: Annotated[str, StringConstraints(min_length=1, max_length=200)]
    customer_id: str = Field(default="cus_test_1", description="the customer of every event")
    customer: dict[str, Any] | None = Field(
        default=None, description="a customer.updated payload sent just before the events"
    )
    events: list[TestEvent] = Field(min_length=1)
    expect: Expectation
    scope: Literal["rule", "all"] = Field(
        default="rule", description="compare only this rule's records, or every rule's"
    )
    until: AwareDatetime | None = Field(
        default=None, description="stop the clock here instead of draining all scheduled work"
    )


class RuleSpec(Spec):
    """One rule file."""

    id: RuleId
    version: Annotated[int, Field(ge=1)] = 1
    owner: Annotated[str, StringConstraints(min_length=1)]
    description: Annotated[str, StringConstraints(min_length=1)]
    enabled: bool = True
    shadow: bool = False
    priority: Annotated[int, Field(ge=0, le=100)] = 50
    category: Category = "informational"
    trigger: str
    key: Expr | None = None
    let: dict[str, Expr] = Field(default_factory=dict)
    when: Expr | None = None
    audience: Audience = Field(default_factory=Audience)
    cooldown: Cooldown | None = Field(
        default=None, description="a duration (per customer) or {period, per: customer|key}"
    )
    holdout: Percent = 0.0
    cancel_on: list[CancelOn] = Field(default_factory=list)
    playbook: str
    params: dict[str, Any] = Field(default_factory=dict)
    tests: list[TestCase] = Field(default_factory=list)

    _check_trigger = field_validator("trigger")(_known_type)

    @field_validator("holdout")
    @classmethod
    def _whole_percent(cls, value: float) -> float:
        if not float(value).is_integer():
            raise ValueError("holdout must be a whole percentage (the control group is 1% steps)")
        return value

    @field_validator("let")
    @classmethod
    def _let_names(cls, value: dict[str, str]) -> dict[str, str]:
        for name in value:
            if not re.fullmatch(r"[a-z_][a-z0-9_]*", name):
                raise ValueError(f"'{name}' is not a valid name; use lower_case_words")
            if name in RESERVED:
                raise ValueError(f"'{name}' is a reserved name; choose another")
        return value

    @field_validator("cooldown", mode="before")
    @classmethod
    def _short_cooldown(cls, value: Any) -> Any:
        return {"period": parse_duration(value)} if isinstance(value, str) else value


def in_audience_locale(locale: str, wanted: list[str]) -> bool:
    """``fr`` matches ``fr``, ``fr-FR`` and ``fr-CA``; ``fr-CA`` matches only ``fr-CA``."""
    lowered = locale.lower()
    return any(lowered == w.lower() or lowered.startswith(w.lower() + "-") for w in wanted)
