"""``outreach eval agents SCENARIOS``: run planning scenarios through a planner and a composer.

For each scenario (``outreach.agents.scenarios``) the deterministic playbook plans once for
reference and the planner under evaluation plans on a fresh context; every message of the
resulting plan is rendered (SMS and email, in the customer's locale) and composed. The report
counts policy-violation attempts blocked (by vetting code), fallbacks by reason (planner and
composer), and agreement with the deterministic playbook.

``planner=None`` evaluates offline: ``ScriptedPlanner`` replays each scenario's ``model``
answer (the calls a model made, or would make) through the same vetting, so the shipped
scenario set proves the gates without a key. Importing this module does not import openai.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from outreach.agents.composing import Composer, Draft
from outreach.agents.plan import Plan, PlannedMessage
from outreach.agents.planner import Planned, Planner
from outreach.agents.playbooks.base import Playbook, PlaybookContext
from outreach.agents.scenarios import Built, Scenario, build, load_scenarios
from outreach.agents.vetting import ProposedCall, vet
from outreach.errors import TemplateRenderError
from outreach.outbound.unsubscribe import UNSUBSCRIBE_MARKER
from outreach.rulebook import RuleBook, load_rulebook


class ScriptedPlanner:
    """A ``Planner`` that replays a scenario's scripted model answer through vetting.

    The answer is a list of ``{"tool": name, "arguments": {...} | "raw text"}``, or
    ``[{"none": "why"}]`` for the no-action answer, or ``[{"refusal": "..."}]``. Without a
    script the model is taken to keep every planned action as planned."""

    def __init__(self) -> None:
        self.script: list[dict[str, Any]] | None = None

    def plan(self, playbook: Playbook, ctx: PlaybookContext) -> Planned:
        """The vetted scripted plan, or the deterministic plan and the reason."""
        deterministic = playbook.plan(ctx)
        allowed: list[str] = list(ctx.guardrails.playbooks.get(playbook.name, []))
        script = self.script
        if script is None:
            script = [{"tool": a.tool, "arguments": a.params} for a in deterministic.actions]
        refusal = next((str(s["refusal"]) for s in script if "refusal" in s), None)
        calls = [
            ProposedCall(
                str(s["tool"]),
                s["arguments"] if isinstance(s["arguments"], str) else json.dumps(s["arguments"]),
            )
            for s in script
            if "tool" in s
        ]
        v = vet(deterministic, ctx, allowed, calls, refusal=refusal)
        if v.accepted:
            return Planned(v.plan, "model", deterministic, v.reason, None, v)
        return Planned(deterministic, "playbook", deterministic, v.reason, v.outcome, v)


@dataclass
class _Tally:
    scenarios: int = 0
    model_used: int = 0
    same_as_playbook: int = 0
    narrowed: int = 0
    composed: int = 0


def evaluate(
    scenarios_path: Path,
    planner: Planner | None,
    composer: Composer,
    rules: Path = Path("rules"),
) -> dict[str, Any]:
    """Run every scenario of ``scenarios_path``; a JSON-ready report (see the module doc)."""
    book = load_rulebook(rules)
    scenarios = load_scenarios(scenarios_path)
    blocked: Counter[str] = Counter()
    fallbacks: Counter[str] = Counter()
    composer_fallbacks: Counter[str] = Counter()
    rows: list[dict[str, Any]] = []
    tally = _Tally()
    unblocked: list[str] = []
    for scenario in scenarios:
        row = _one(book, scenario, planner, composer, composer_fallbacks)
        rows.append(row)
        tally.scenarios += 1
        tally.model_used += row["source"] == "model"
        tally.same_as_playbook += row["agrees"]
        tally.narrowed += row["narrowed"]
        tally.composed += row["composed_by_model"]
        if row["fallback"]:
            fallbacks[row["fallback"]] += 1
        if row["violation"]:
            blocked[row["fallback"]] += 1
        if row["attack"] and row["source"] == "model":
            unblocked.append(row["name"])
    return {
        "scenarios": tally.scenarios,
        "policy_violations_blocked": {"total": sum(blocked.values()), "by_reason": dict(blocked)},
        "attacks_not_blocked": unblocked,
        "planner_fallbacks": {"total": sum(fallbacks.values()), "by_reason": dict(fallbacks)},
        "composer_fallbacks": {
            "total": sum(composer_fallbacks.values()),
            "by_reason": dict(composer_fallbacks),
        },
        "model_plans_used": tally.model_used,
        "messages_composed_by_model": tally.composed,
        "agreement": {
            "same_as_playbook": tally.same_as_playbook,
            "narrowed": tally.narrowed,
            "rate": round(tally.same_as_playbook / tally.scenarios, 3),
            "when_model_used": round((tally.model_used - tally.narrowed) / tally.model_used, 3)
            if tally.model_used
            else None,
        },
        "results": rows,
    }


def _one(
    book: RuleBook,
    scenario: Scenario,
    planner: Planner | None,
    composer: Composer,
    composer_fallbacks: Counter[str],
) -> dict[str, Any]:
    reference = build(book, scenario)
    deterministic = reference.playbook.plan(reference.ctx)
    b = build(book, scenario)
    if planner is None:
        scripted = ScriptedPlanner()
        scripted.script = scenario.model
        planned = scripted.plan(b.playbook, b.ctx)
    else:
        planned = planner.plan(b.playbook, b.ctx)
    agrees = _actions(planned.plan) == _actions(deterministic)
    composed = 0
    for message in _messages(planned.plan):
        for channel in ("sms", "email"):
            draft = draft_for(book, b, message, channel, planned.plan)
            if draft is None:
                continue
            result = composer.compose(draft)
            if result.fallback:
                composer_fallbacks[result.fallback] += 1
            composed += result.source == "model"
    return {
        "name": scenario.name,
        "attack": scenario.attack,
        "source": planned.source,
        "fallback": planned.fallback,
        "reason": planned.reason,
        "violation": planned.violation,
        "agrees": agrees,
        "narrowed": planned.source == "model" and not agrees,  # vetting admits nothing else
        "actions": sorted(f"{tool}:{ref}" for tool, ref, _ in _actions(planned.plan)),
        "playbook_actions": sorted(f"{tool}:{ref}" for tool, ref, _ in _actions(deterministic)),
        "composed_by_model": composed,
    }


def _actions(plan: Plan) -> set[tuple[str, str, str]]:
    return {(a.tool, a.ref, json.dumps(a.params, sort_keys=True)) for a in plan.actions}


def _messages(plan: Plan) -> list[PlannedMessage]:
    """The message each planned message becomes once its requirements are known."""
    refs = {a.ref for a in plan.actions}
    chosen = []
    for m in plan.messages:
        picked = m if all(r in refs for r in m.requires) else m.fallback
        if picked is not None:
            chosen.append(picked)
    return chosen


def draft_for(
    book: RuleBook, b: Built, message: PlannedMessage, channel: str, plan: Plan
) -> Draft | None:
    """The composer's draft of ``message`` on ``channel``, rendered as the contact policy
    would (None: the template has no such variant or cannot render)."""
    if not book.templates.has(message.template, channel):
        return None
    profile = b.ctx.profile
    locale = profile.locale or book.policy.contact.default_locale
    context = {
        **message.context,
        "brand": book.policy.brand.model_dump(),
        "customer": {"timezone": profile.timezone or "UTC", "locale": locale, "tier": profile.tier},
    }
    if channel == "email":
        context["unsubscribe_url"] = UNSUBSCRIBE_MARKER
    try:
        rendered = book.templates.render(message.template, channel, locale, context)
    except TemplateRenderError:
        return None
    return Draft(
        template=message.template,
        channel="sms" if channel == "sms" else "email",
        locale=locale,
        body=rendered.body,
        subject=rendered.subject,
        max_segments=book.templates.max_segments(message.template),
        context=message.context,
        actions=frozenset(a.tool for a in plan.actions),
    )
