"""notify: send one templated message with the triggering event's data; no remediation."""

from __future__ import annotations

from typing import ClassVar, Literal

from outreach.agents.plan import Plan, PlannedMessage
from outreach.agents.playbooks.base import Params, PlaybookContext
from outreach.events import EVENT_TYPES


class NotifyParams(Params):
    """Parameters of ``notify``."""

    template: str
    purpose: Literal["transactional", "marketing"]


class Notify:
    """The simplest playbook: tell the customer, once per signal."""

    name: ClassVar[str] = "notify"
    params: ClassVar[type[Params]] = NotifyParams
    triggers: ClassVar[frozenset[str]] = frozenset(EVENT_TYPES)
    templates: ClassVar[tuple[str, ...]] = ("template",)
    links: ClassVar[tuple[str, ...]] = ()

    def plan(self, ctx: PlaybookContext) -> Plan:
        """One message whose context is the event data and the signal's evidence."""
        p: NotifyParams = ctx.params
        context = {**ctx.event.data.model_dump(mode="json"), "evidence": ctx.signal.evidence}
        notice = f"{ctx.signal.rule_id}:{ctx.signal.key or ctx.signal.signal_id}"
        message = PlannedMessage("message", p.template, p.purpose, context, notice)
        return Plan(messages=[message], note="notify")
