"""Vetting: what a language model proposed, re-checked against the facts before it is a plan.

A model planner never writes a plan of its own. It may only *narrow and tune* the plan the
deterministic playbook made for the same signal:

- keep some of the playbook's actions and drop others (a notice without the credit, or no
  action at all: allowed, and recorded as ``dropped``);
- rewrite an action's free text (a credit's ``reason``, an escalation's summary);
- lower a value (a smaller credit, a smaller or shorter discount), never raise one.

Everything else makes the whole proposal fall back to the deterministic plan, with a reason:

========================  ==================================================================
``unknown_tool``          a tool that is not one of the pre-approved tools (invented)
``not_allowed``           a pre-approved tool the playbook's allow-list does not grant
``not_eligible``          an allowed tool the playbook did not find eligible for this signal
``malformed``             arguments that are not a JSON object, miss or add fields, or do not
                          validate against the tool's strict parameter model
``other_subject``         an identifying argument (``*_id``, currency, carrier) that is not
                          the system of record's: arguments for another customer or subject
``fact_mismatch``         another argument the system of record owns (an invoice amount, an
                          order value, the retry schedule, an escalation's evidence) changed
``over_threshold``        a value above the tool's ``auto_max`` (and not the playbook's own)
``over_deterministic``    a value (or a bounded field such as discount months) above the
                          playbook's
``duplicate_call``        two calls for the same planned action
``refusal``               the model refused
========================  ==================================================================

Why the model may not *add* an action the playbook did not plan, even an allowed one: the
playbook encodes eligibility (not late enough for a credit, a hard decline is never retried,
one offer per subject); an addition would need every one of those rules re-implemented here.

The accepted plan keeps the deterministic plan's messages, refs, ``requires`` and ``announce``
couplings and cancellations. A message that requires a dropped action takes its fallback in
the executor exactly as when a required action is blocked (``not planned``). The executor
still sends every action of the accepted plan through the guardrails: vetting is a second,
stricter gate, not a replacement.

Pure: must not import faust, aiokafka, twilio, sendgrid, openai, httpx, fastapi, sqlalchemy.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal, NamedTuple

from pydantic import ValidationError

from outreach.agents.plan import Plan, PlannedAction
from outreach.agents.playbooks.base import PlaybookContext
from outreach.agents.tools import TOOLS, Tool, ToolParams

FallbackCode = Literal[
    "unknown_tool",
    "not_allowed",
    "not_eligible",
    "malformed",
    "other_subject",
    "fact_mismatch",
    "over_threshold",
    "over_deterministic",
    "duplicate_call",
    "refusal",
]
Outcome = Literal["accepted", "no_action"] | FallbackCode

# Fallbacks that are an attempt to do something the policy forbids (reported as "blocked"),
# as opposed to an answer that was merely unusable (malformed, refused).
VIOLATIONS: frozenset[str] = frozenset(
    {
        "unknown_tool",
        "not_allowed",
        "not_eligible",
        "other_subject",
        "fact_mismatch",
        "over_threshold",
        "over_deterministic",
    }
)

_IDENTIFYING_NAMES = frozenset({"currency", "carrier"})

# Arguments the system of record owns beyond the identifying ones: the model must repeat them.
FACTS: Mapping[str, frozenset[str]] = {
    "rebook_shipment": frozenset({"order_value"}),  # the value the threshold judges
    "retry_payment": frozenset({"amount", "decline_code", "retry", "of"}),
    "request_payment_update": frozenset({"amount"}),
    "grant_credit": frozenset(),
    "offer_discount": frozenset(),
    "escalate_to_human": frozenset({"queue", "priority", "evidence", "tried"}),
}
# Arguments the model may lower but never raise (besides the tool's value).
BOUNDED: Mapping[str, frozenset[str]] = {"offer_discount": frozenset({"months"})}
# Arguments the model is not shown (strict function schemas cannot describe a free-form
# object); the deterministic action's value is kept.
SYSTEM_FILLED: Mapping[str, frozenset[str]] = {"escalate_to_human": frozenset({"evidence"})}


class ProposedCall(NamedTuple):
    """One tool call as the model wrote it: a name and its arguments as JSON text."""

    name: str
    arguments: str


@dataclass(frozen=True)
class Vetting:
    """The verdict on a model's proposal: the plan to run and why.

    ``outcome`` is ``accepted`` (some calls kept), ``no_action`` (the model chose no action:
    accepted, every planned action ``dropped``) or a fallback code (``plan`` is then the
    deterministic plan, unchanged)."""

    plan: Plan
    outcome: Outcome
    reason: str
    calls: tuple[ProposedCall, ...]
    kept: tuple[str, ...] = ()
    dropped: tuple[str, ...] = ()

    @property
    def accepted(self) -> bool:
        """Whether the model's proposal (possibly: no action) became the plan."""
        return self.outcome in ("accepted", "no_action")

    @property
    def violation(self) -> bool:
        """Whether the fallback blocked an attempt the policy forbids."""
        return self.outcome in VIOLATIONS


class _Rejected(Exception):  # noqa: N818 - internal control flow, never escapes this module
    def __init__(self, code: FallbackCode, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


def identifying(name: str) -> bool:
    """Whether an argument names the customer's subject (ids, currency, carrier)."""
    return name.endswith("_id") or name in _IDENTIFYING_NAMES


def offered_fields(tool: str) -> frozenset[str]:
    """The arguments a model is shown (and must give, strict schemas require all)."""
    fields = frozenset(TOOLS[tool].params.model_fields)
    return fields - SYSTEM_FILLED.get(tool, frozenset())


def vet(
    deterministic: Plan,
    ctx: PlaybookContext,
    allowed: Sequence[str],
    calls: Sequence[ProposedCall | tuple[str, str]],
    refusal: str | None = None,
) -> Vetting:
    """Accept the model's ``calls`` as a narrowing of ``deterministic``, or fall back to it.

    ``allowed``: the playbook's allow-list (``guardrails.playbooks[name]``). An empty
    ``calls`` without a ``refusal`` means the model chose no action (the caller tells that
    apart from an empty or unreadable answer, which is a fallback of its own)."""
    proposed = tuple(ProposedCall(*c) for c in calls)
    if refusal is not None:
        return _fallback(deterministic, "refusal", f"the model refused: {refusal[:200]}", proposed)
    matched: dict[str, ToolParams] = {}
    try:
        for index, call in enumerate(proposed, 1):
            ref, params = _vet_call(call, deterministic, ctx, allowed, matched)
            if ref in matched:
                raise _Rejected("duplicate_call", f"call {index} repeats planned action '{ref}'")
            matched[ref] = params
    except _Rejected as rejected:
        return _fallback(deterministic, rejected.code, rejected.reason, proposed)
    return _accepted(deterministic, matched, proposed)


def _fallback(
    plan: Plan, code: FallbackCode, reason: str, calls: tuple[ProposedCall, ...]
) -> Vetting:
    return Vetting(plan, code, reason, calls)


def _accepted(
    deterministic: Plan, matched: dict[str, ToolParams], calls: tuple[ProposedCall, ...]
) -> Vetting:
    actions: list[PlannedAction] = [
        replace(a, params=matched[a.ref].model_dump())
        for a in deterministic.actions
        if a.ref in matched
    ]
    kept = tuple(a.ref for a in actions)
    dropped = tuple(a.ref for a in deterministic.actions if a.ref not in matched)
    outcome: Outcome = "accepted" if actions else "no_action"
    if not deterministic.actions:
        why = "nothing to decide: the playbook planned no action"
    elif dropped:
        why = f"model kept {', '.join(kept) or 'no action'}; dropped {', '.join(dropped)}"
    else:
        why = f"model kept every planned action ({', '.join(kept)})"
    note = (
        f"{deterministic.note}; model plan: {why}" if deterministic.note else f"model plan: {why}"
    )
    plan = replace(deterministic, actions=actions, messages=list(deterministic.messages), note=note)
    return Vetting(plan, outcome, why, calls, kept, dropped)


def _vet_call(
    call: ProposedCall,
    deterministic: Plan,
    ctx: PlaybookContext,
    allowed: Sequence[str],
    matched: Mapping[str, ToolParams],
) -> tuple[str, ToolParams]:
    """(ref of the planned action the call stands for, its vetted parameters)."""
    tool = TOOLS.get(call.name)
    if tool is None:
        raise _Rejected("unknown_tool", f"'{call.name[:64]}' is not a pre-approved tool")
    if call.name not in allowed:
        raise _Rejected("not_allowed", f"{call.name} is not allowed for this playbook")
    candidates = [a for a in deterministic.actions if a.tool == call.name]
    if not candidates:
        raise _Rejected("not_eligible", f"the playbook planned no {call.name} for this signal")
    args = _arguments(call)
    _check_fields(call.name, args)
    _check_event_facts(call.name, args, ctx)
    action = _match(call.name, args, candidates, matched)
    params = _validate(tool, {**action.params, **args})
    _check_values(tool, params, _validate(tool, action.params), ctx)
    return action.ref, params


def _arguments(call: ProposedCall) -> dict[str, Any]:
    try:
        args = json.loads(call.arguments)
    except (json.JSONDecodeError, TypeError):
        raise _Rejected("malformed", f"{call.name}: arguments are not JSON") from None
    if not isinstance(args, dict):
        raise _Rejected("malformed", f"{call.name}: arguments are not a JSON object")
    return args


def _check_fields(tool: str, args: Mapping[str, Any]) -> None:
    known = frozenset(TOOLS[tool].params.model_fields)
    unknown = sorted(set(args) - known)
    if unknown:
        raise _Rejected("malformed", f"{tool}: unknown argument {unknown[0][:64]!r}")
    missing = sorted(offered_fields(tool) - set(args))
    if missing:
        raise _Rejected("malformed", f"{tool}: missing argument {missing[0]!r}")


def _check_event_facts(tool: str, args: Mapping[str, Any], ctx: PlaybookContext) -> None:
    """Identifying arguments named like a field of the triggering event must be that field."""
    data = ctx.event.data.model_dump(mode="json")
    for name, value in args.items():
        if identifying(name) and name in data and data[name] is not None and value != data[name]:
            raise _Rejected("other_subject", _other(tool, name))


def _match(
    tool: str,
    args: Mapping[str, Any],
    candidates: list[PlannedAction],
    matched: Mapping[str, ToolParams],
) -> PlannedAction:
    """The planned action whose identity and facts the arguments repeat."""
    facts = FACTS.get(tool, frozenset())
    same_subject = [
        a for a in candidates if all(args[k] == a.params.get(k) for k in args if identifying(k))
    ]
    if not same_subject:
        first = next(
            k for k in sorted(args) if identifying(k) and args[k] != candidates[0].params.get(k)
        )
        raise _Rejected("other_subject", _other(tool, first))
    same = [a for a in same_subject if all(args[k] == a.params.get(k) for k in args if k in facts)]
    if not same:
        changed = sorted(k for k in args if k in facts and args[k] != same_subject[0].params.get(k))
        raise _Rejected("fact_mismatch", f"{tool}: {changed[0]} differs from the system of record")
    free = [a for a in same if a.ref not in matched]
    return free[0] if free else same[0]


def _other(tool: str, name: str) -> str:
    return f"{tool}: {name} is not the system of record's (arguments for another customer/subject)"


def _validate(tool: Tool, raw: Mapping[str, Any]) -> ToolParams:
    try:
        return tool.params.model_validate(dict(raw))
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        where = ".".join(str(p) for p in first["loc"])
        raise _Rejected("malformed", f"{tool.name}: {where}: {first['msg']}") from None


def _check_values(
    tool: Tool, params: ToolParams, planned: ToolParams, ctx: PlaybookContext
) -> None:
    value, limit = tool.value_of(params), tool.value_of(planned)
    if (value is None) != (limit is None):
        raise _Rejected(
            "fact_mismatch", f"{tool.name}: its value differs from the system of record"
        )
    guard = ctx.guardrails.tools.get(tool.name)  # type: ignore[call-overload]
    auto_max = guard.threshold.auto_max if guard and guard.threshold else None
    if value is not None and limit is not None:
        if auto_max is not None and value > auto_max and value != limit:
            raise _Rejected(
                "over_threshold",
                f"{tool.name}: {tool.value_unit} {value:g} > auto limit {auto_max:g}",
            )
        if value > limit:
            raise _Rejected(
                "over_deterministic",
                f"{tool.name}: {tool.value_unit} {value:g} > the playbook's {limit:g}",
            )
    for name in sorted(BOUNDED.get(tool.name, frozenset())):
        mine, theirs = getattr(params, name), getattr(planned, name)
        if mine is not None and theirs is not None and mine > theirs:
            raise _Rejected(
                "over_deterministic", f"{tool.name}: {name} {mine} > the playbook's {theirs}"
            )
