"""The playbook port: a deterministic planner that turns a signal into a proposed plan.

A playbook sees the signal, the triggering event, its own parameters (from the rule file), the
customer's profile, its memory of the subject (``entity``) and the subject's open actions. It
returns a ``Plan``; it cannot execute anything. Business numbers come from parameters, never
from code.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, ClassVar, Protocol

from pydantic import BaseModel, ConfigDict

from outreach.agents.guardrails import GuardrailsConfig
from outreach.agents.plan import Plan
from outreach.agents.state import Entity, OpenAction
from outreach.events import Event
from outreach.rules.evaluate import Signal
from outreach.rules.state import Profile


class Params(BaseModel):
    """Base of playbook parameters: strict about unknown keys (typos in rule files)."""

    model_config = ConfigDict(frozen=True, extra="forbid")


@dataclass
class PlaybookContext:
    """What a playbook may look at while planning."""

    signal: Signal
    event: Event
    params: Any
    profile: Profile
    entity: Entity
    open_actions: list[OpenAction]
    now: datetime
    guardrails: GuardrailsConfig
    links: dict[str, str]

    def outcomes(self, tool: str) -> list[tuple[str, str]]:
        """(target, latest status) of this subject's actions of ``tool``, oldest first."""
        return [(t, s) for kind, t, s in self.entity.outcomes.values() if kind == tool]

    def link(self, name: str, **values: str) -> str:
        """A configured link with ``{placeholders}`` filled, e.g. the payment update page."""
        template = self.links.get(name)
        if template is None:
            raise KeyError(f"policy.yaml links has no '{name}'")
        return template.format_map(values)


class Playbook(Protocol):
    """Turns a signal into a proposed plan."""

    name: ClassVar[str]
    params: ClassVar[type[Params]]
    triggers: ClassVar[frozenset[str]]  # event types whose rules may run it
    # params fields naming message templates; a playbook may also declare
    # ``marketing_templates``, the fields among them sent as marketing (compliance checks at
    # load), or take a ``purpose`` parameter that says it per rule; and
    # ``acceptance_templates``, those that must ask for a YES when ``params.acceptance`` is set
    templates: ClassVar[tuple[str, ...]]
    links: ClassVar[tuple[str, ...]]  # policy.yaml links it fills in (checked at load)

    def plan(self, ctx: PlaybookContext) -> Plan:
        """Propose actions and messages for ``ctx.signal``."""
        ...
