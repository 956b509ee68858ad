"""The planner port: who turns a signal into a plan (the playbook alone, or a model within it).

``PlaybookPlanner`` (the default, no key needed) returns the deterministic playbook's plan.
A model planner (``outreach.agents.adapters.openai_planner.OpenAIPlanner``) starts from the
same plan and may only narrow it (``outreach.agents.vetting``); whatever happens, it returns
a ``Planned`` saying which plan runs and why, with the audit records of its model calls.

Must not import faust, aiokafka, twilio, sendgrid, openai, httpx, fastapi or sqlalchemy.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from outreach.agents.plan import Plan
from outreach.agents.playbooks.base import Playbook, PlaybookContext
from outreach.agents.vetting import Vetting

Source = Literal["playbook", "model"]


@dataclass
class Planned:
    """The plan to run for one signal, where it came from, and why.

    ``fallback``: why the model's plan is not the one running (a vetting code such as
    ``over_threshold``, or ``timeout``, ``llm_error``, ``rate_limited``, ``budget_exhausted``,
    ``empty_answer``, ``non_json``); ``None`` when the model's plan runs or no model was asked.
    ``llm``: JSON-ready audit records of the model calls made (see ``LLMCall.as_dict``)."""

    plan: Plan
    source: Source
    deterministic: Plan
    reason: str
    fallback: str | None = None
    vetting: Vetting | None = None
    llm: list[dict[str, Any]] = field(default_factory=list)

    @property
    def violation(self) -> bool:
        """Whether the model attempted something the policy forbids (and was stopped)."""
        return self.vetting is not None and self.vetting.violation


class Planner(Protocol):
    """Plans a signal: ``playbook.plan(ctx)`` is called exactly once (it updates memory)."""

    def plan(self, playbook: Playbook, ctx: PlaybookContext) -> Planned:
        """The plan to run for ``ctx.signal``."""
        ...


class PlaybookPlanner:
    """The deterministic planner: the playbook's plan, as it is."""

    def plan(self, playbook: Playbook, ctx: PlaybookContext) -> Planned:
        """The playbook's plan."""
        plan = playbook.plan(ctx)
        return Planned(plan, "playbook", plan, "deterministic playbook")
