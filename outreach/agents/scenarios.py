"""Planning scenarios: a rule, an event and a customer, turned into a ``PlaybookContext``.

Used by ``outreach eval agents`` (``outreach.agents.adapters.evaluation``) and by tests, so
the planner is evaluated on exactly the contexts the executor would build. A scenario file
(YAML) is a list under ``scenarios:``; each entry::

    name: a 3-day delay on a premium order       # unique
    rule: shipment-delay                         # a rule id of the rules folder
    customer: {tier: premium, locale: en-US}     # what the playbook may see of the customer
    event: {type: shipment.updated, at: ..., data: {...}}
    evidence: {...}                              # optional: the signal's evidence
    memory: {...}                                # optional: the subject's playbook memory
    model: [...]                                 # optional: a scripted model answer

Top-level keys starting with ``x-`` are ignored (YAML anchors the scenarios share).

Must not import faust, aiokafka, twilio, sendgrid, openai, httpx, fastapi or sqlalchemy.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from outreach.agents.playbooks.base import Playbook, PlaybookContext
from outreach.agents.state import Entity
from outreach.errors import OutreachError
from outreach.events import Event, event_from_obj
from outreach.ids import make_id
from outreach.rulebook import RuleBook
from outreach.rules.evaluate import Signal
from outreach.rules.state import Profile
from outreach.rules.yamlfile import load_yaml


class ScenarioError(OutreachError):
    """A scenario file that cannot be used (names the file, scenario and field)."""


class _Customer(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    tier: str = "standard"
    locale: str = "en-US"
    timezone: str = "America/New_York"
    phone: str | None = "+14155550100"  # present so a test can prove it never reaches a model
    email: str | None = "ann@example.com"


class _EventSpec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    type: str
    at: datetime
    data: dict[str, Any]
    customer_id: str = "cus_eval"


class Scenario(BaseModel):
    """One planning scenario (see the module docstring)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(min_length=1)
    rule: str = Field(min_length=1)
    customer: _Customer = Field(default_factory=_Customer)
    event: _EventSpec
    evidence: dict[str, Any] = Field(default_factory=dict)
    memory: dict[str, Any] = Field(default_factory=dict)
    model: list[dict[str, Any]] | None = Field(
        default=None, description="a scripted model answer, for offline evaluation"
    )
    attack: str | None = Field(default=None, description="what a hostile answer attempts")


class _File(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    scenarios: list[Scenario] = Field(min_length=1)


@dataclass
class Built:
    """A scenario ready to plan: the rule's playbook and a fresh context."""

    scenario: Scenario
    playbook: Playbook
    ctx: PlaybookContext
    event: Event
    extra: dict[str, Any] = field(default_factory=dict)


def load_scenarios(path: Path) -> list[Scenario]:
    """Read and validate a scenario file; raises ``ScenarioError`` naming what is wrong."""
    doc = load_yaml(path, str(path))
    data = doc.data
    if isinstance(data, dict):  # x-...: YAML anchors shared by scenarios, not scenarios
        data = {k: v for k, v in data.items() if not str(k).startswith("x-")}
    try:
        found = _File.model_validate(data).scenarios
    except ValidationError as exc:
        problems = "; ".join(str(p) for p in doc.validation_problems(exc))
        raise ScenarioError(f"{path}: {problems}") from None
    names = [s.name for s in found]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ScenarioError(f"{path}: scenario names must be unique: {', '.join(duplicates)}")
    return found


def build(book: RuleBook, scenario: Scenario) -> Built:
    """The playbook and ``PlaybookContext`` the executor would use for this scenario."""
    rule = book.playbooks.get(scenario.rule)
    if rule is None:
        known = ", ".join(sorted(book.playbooks))
        raise ScenarioError(f"scenario '{scenario.name}': no rule '{scenario.rule}' ({known})")
    spec = book.specs[scenario.rule][0]
    e = scenario.event
    event = event_from_obj(
        {
            "event_id": make_id("evt", scenario.name),
            "type": e.type,
            "customer_id": e.customer_id,
            "occurred_at": e.at.isoformat(),
            "data": e.data,
        }
    )
    signal = Signal(
        signal_id=make_id("sig", scenario.name), rule_id=spec.id, rule_version=spec.version,
        customer_id=e.customer_id, detected_at=event.occurred_at, evidence=scenario.evidence,
        key=_key(event), event_id=event.event_id, event_type=event.type, priority=spec.priority,
        category=spec.category,
    )  # fmt: skip
    c = scenario.customer
    profile = Profile(
        email=c.email, phone=c.phone, timezone=c.timezone, locale=c.locale, tier=c.tier,
        sms_transactional=True, email_transactional=True, known=True,
    )  # fmt: skip
    ctx = PlaybookContext(
        signal, event, rule.params, profile, Entity(data=dict(scenario.memory)), [],
        event.occurred_at, book.policy.guardrails, dict(book.policy.links),
    )  # fmt: skip
    return Built(scenario, rule.playbook, ctx, event)


def _key(event: Event) -> str | None:
    for name in ("shipment_id", "invoice_id", "subscription_id", "metric"):
        value = getattr(event.data, name, None)
        if isinstance(value, str):
            return value
    return None
