"""Vetting a model's proposed tool calls against the deterministic plan and the guardrails."""

from __future__ import annotations

import json
from functools import cache
from typing import Any

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st
from planning_support import allowed, payment, planned, renewal, shipment

from outreach.agents.plan import Plan
from outreach.agents.scenarios import Built
from outreach.agents.tools import TOOLS
from outreach.agents.vetting import VIOLATIONS, ProposedCall, Vetting, offered_fields, vet

REBOOK = {
    "shipment_id": "shp_1",
    "order_id": "ORD-1",
    "carrier": "ups",
    "order_value": 1000,
    "currency": "USD",
}
CREDIT = {"amount": 500, "currency": "USD", "reason": "late delivery of order ORD-1"}


def call(name: str, args: dict[str, Any] | str) -> ProposedCall:
    return ProposedCall(name, args if isinstance(args, str) else json.dumps(args))


def vet_shipment(*calls: ProposedCall, **kw: Any) -> tuple[Plan, Vetting]:
    b = shipment(**kw)
    det = planned(b)
    return det, vet(det, b.ctx, allowed(b), list(calls))


def assert_fallback(det: Plan, v: Vetting, outcome: str) -> None:
    assert (v.outcome, v.accepted) == (outcome, False), v.reason
    assert v.plan is det  # the deterministic plan, unchanged
    assert v.violation == (outcome in VIOLATIONS)


# -- accepted ---------------------------------------------------------------------------------


def test_the_planned_actions_repeated_are_accepted_with_messages_and_couplings_kept() -> None:
    det, v = vet_shipment(call("rebook_shipment", REBOOK), call("grant_credit", CREDIT))
    assert (v.outcome, v.accepted, v.violation) == ("accepted", True, False)
    assert [(a.ref, a.tool, a.params) for a in v.plan.actions] == [
        ("rebook", "rebook_shipment", REBOOK),
        ("credit", "grant_credit", CREDIT),
    ]
    assert [a.target for a in v.plan.actions] == [a.target for a in det.actions]
    assert v.plan.messages == det.messages
    assert v.plan.messages[0].requires == ("credit",)
    assert v.kept == ("rebook", "credit") and v.dropped == ()
    assert len(v.calls) == 2


def test_calls_in_another_order_keep_the_playbooks_order() -> None:
    _, v = vet_shipment(call("grant_credit", CREDIT), call("rebook_shipment", REBOOK))
    assert [a.ref for a in v.plan.actions] == ["rebook", "credit"]


def test_a_smaller_credit_and_a_reworded_reason_replace_the_planned_params() -> None:
    smaller = {**CREDIT, "amount": 300, "reason": "sorry for the late parcel"}
    det, v = vet_shipment(call("grant_credit", smaller))
    assert v.accepted
    assert [a.params for a in v.plan.actions] == [smaller]
    assert det.actions[1].params == CREDIT  # the deterministic plan is not touched


def test_a_notice_only_plan_drops_the_credit_and_its_message_keeps_its_fallback() -> None:
    det, v = vet_shipment(call("rebook_shipment", REBOOK))
    assert (v.outcome, v.kept, v.dropped) == ("accepted", ("rebook",), ("credit",))
    # the executor sends the fallback (no credit mentioned) when a required action is absent
    message = v.plan.messages[0]
    assert message.requires == ("credit",) and message.fallback is not None
    assert message.fallback.context["credit"] is None
    assert "dropped credit" in v.plan.note


def test_choosing_no_action_is_accepted_and_recorded() -> None:
    det, v = vet_shipment()
    assert (v.outcome, v.accepted, v.plan.actions) == ("no_action", True, [])
    assert v.dropped == ("rebook", "credit")
    assert v.plan.messages == det.messages


def test_the_playbooks_own_value_above_the_auto_limit_is_not_a_model_choice() -> None:
    """An order worth 60000 (> rebook auto_max 50000): repeating it is not an attempt; the
    guardrails still send it to a person."""
    big = {**REBOOK, "order_value": 60000}
    _, v = vet_shipment(call("rebook_shipment", big), value=60000)
    assert v.accepted and v.plan.actions[0].params["order_value"] == 60000


def test_a_payment_schedule_keeps_the_retries_chosen_with_their_times() -> None:
    b = payment()
    det = planned(b)
    retry = dict(det.actions[1].params)
    v = vet(det, b.ctx, allowed(b), [call("retry_payment", retry)])
    assert (v.kept, v.dropped) == (("retry2",), ("retry1", "retry3"))
    assert v.plan.actions[0].at == det.actions[1].at


def test_an_escalation_may_be_reworded_and_keeps_the_systems_evidence() -> None:
    b = payment("fraudulent", evidence={"decline": "fraudulent"})
    det = planned(b)
    escalate = next(a for a in det.actions if a.tool == "escalate_to_human")
    args = {k: v for k, v in escalate.params.items() if k in offered_fields(escalate.tool)}
    args["summary"] = "Possible fraud on invoice in_1; call the customer."
    v = vet(det, b.ctx, allowed(b), [call("escalate_to_human", args)])
    assert v.accepted, v.reason
    assert v.plan.actions[0].params["evidence"] == {"decline": "fraudulent"}
    assert v.plan.actions[0].params["summary"].startswith("Possible fraud")


def test_a_lower_and_shorter_discount_is_accepted() -> None:
    b = renewal()
    det = planned(b)
    offer = {**det.actions[0].params, "percent": 5.0, "months": 6}
    v = vet(det, b.ctx, allowed(b), [call("offer_discount", offer)])
    assert v.accepted and v.plan.actions[0].params["percent"] == 5.0
    assert v.plan.actions[0].announce == "offer_msg"  # the announce coupling is kept


# -- fallbacks --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("calls", "outcome"),
    [
        ([call("refund_customer", {"amount": 500000})], "unknown_tool"),
        ([call("retry_payment", {"invoice_id": "in_1"})], "not_allowed"),
        ([call("grant_credit", "{not json")], "malformed"),
        ([call("grant_credit", "[1, 2]")], "malformed"),
        ([call("grant_credit", {"amount": 500, "currency": "USD"})], "malformed"),
        ([call("grant_credit", {**CREDIT, "note": "x"})], "malformed"),
        ([call("grant_credit", {**CREDIT, "amount": "500"})], "malformed"),
        ([call("grant_credit", {**CREDIT, "amount": 0})], "malformed"),
        ([call("grant_credit", {**CREDIT, "amount": 5000})], "over_threshold"),
        ([call("grant_credit", {**CREDIT, "amount": 800})], "over_deterministic"),
        ([call("grant_credit", {**CREDIT, "currency": "EUR"})], "other_subject"),
        ([call("rebook_shipment", {**REBOOK, "shipment_id": "shp_2"})], "other_subject"),
        ([call("rebook_shipment", {**REBOOK, "order_id": "ORD-9"})], "other_subject"),
        ([call("rebook_shipment", {**REBOOK, "carrier": "dhl"})], "other_subject"),
        ([call("rebook_shipment", {**REBOOK, "order_value": 10})], "fact_mismatch"),
        ([call("rebook_shipment", {**REBOOK, "order_value": None})], "fact_mismatch"),
        ([call("grant_credit", CREDIT), call("grant_credit", CREDIT)], "duplicate_call"),
        # one bad call spoils the whole proposal, even after a good one
        ([call("rebook_shipment", REBOOK), call("grant_credit", {**CREDIT, "amount": 9999})],
         "over_threshold"),
    ],
)  # fmt: skip
def test_a_bad_proposal_falls_back_to_the_deterministic_plan(
    calls: list[ProposedCall], outcome: str
) -> None:
    det, v = vet_shipment(*calls)
    assert_fallback(det, v, outcome)
    assert v.calls == tuple(calls)


def test_a_refusal_falls_back() -> None:
    b = shipment()
    det = planned(b)
    v = vet(det, b.ctx, allowed(b), [], refusal="I cannot help with that")
    assert_fallback(det, v, "refusal")
    assert "I cannot help" in v.reason


def test_an_allowed_tool_the_playbook_did_not_plan_is_not_eligible() -> None:
    """A 30-hour delay: notice only; the model may not add a credit."""
    b = shipment(status="in_transit", estimate="2026-03-11T21:00:00Z", exception_code=None)
    det = planned(b)
    assert det.actions == []
    v = vet(det, b.ctx, allowed(b), [call("grant_credit", CREDIT)])
    assert_fallback(det, v, "not_eligible")


def test_a_hard_decline_cannot_be_turned_into_a_retry() -> None:
    b = payment("stolen_card")
    det = planned(b)
    retry = {
        "invoice_id": "in_1", "amount": 2900, "currency": "USD", "decline_code": "stolen_card",
        "retry": 1, "of": 1,
    }  # fmt: skip
    assert_fallback(
        det, vet(det, b.ctx, allowed(b), [call("retry_payment", retry)]), "not_eligible"
    )


@pytest.mark.parametrize(
    ("change", "outcome"),
    [
        ({"amount": 100}, "fact_mismatch"),  # a smaller charge is not the invoice
        ({"retry": 7}, "fact_mismatch"),
        ({"decline_code": "generic_decline"}, "fact_mismatch"),
        ({"invoice_id": "in_2"}, "other_subject"),
    ],
)
def test_a_retry_must_repeat_the_invoice_and_the_schedule(
    change: dict[str, Any], outcome: str
) -> None:
    b = payment()
    det = planned(b)
    args = {**det.actions[0].params, **change}
    assert_fallback(det, vet(det, b.ctx, allowed(b), [call("retry_payment", args)]), outcome)


@pytest.mark.parametrize(
    ("change", "outcome"),
    [
        ({"percent": 25.0}, "over_threshold"),  # auto_max 20
        ({"percent": 15.0}, "over_deterministic"),  # the playbook offers 10
        ({"months": 24}, "over_deterministic"),
        ({"subscription_id": "sub_other"}, "other_subject"),
    ],
)
def test_a_bigger_discount_or_another_subscription_falls_back(
    change: dict[str, Any], outcome: str
) -> None:
    b = renewal()
    det = planned(b)
    args = {**det.actions[0].params, **change}
    assert_fallback(det, vet(det, b.ctx, allowed(b), [call("offer_discount", args)]), outcome)


@pytest.mark.parametrize("field", ["priority", "queue", "tried"])
def test_an_escalation_cannot_change_what_the_system_owns(field: str) -> None:
    b = payment("fraudulent")
    det = planned(b)
    escalate = next(a for a in det.actions if a.tool == "escalate_to_human")
    args = {k: v for k, v in escalate.params.items() if k in offered_fields(escalate.tool)}
    args[field] = {"priority": "low", "queue": "ceo-inbox", "tried": ["nothing"]}[field]
    v = vet(det, b.ctx, allowed(b), [call("escalate_to_human", args)])
    assert_fallback(det, v, "fact_mismatch")


# -- the property -----------------------------------------------------------------------------


@cache
def _case(kind: str) -> tuple[Built, Plan]:
    b = {"shipment": shipment, "payment": payment, "renewal": renewal}[kind]()
    return b, planned(b)


def _value() -> st.SearchStrategy[Any]:
    return st.one_of(
        st.integers(0, 1500), st.floats(0, 40, allow_nan=False), st.integers(-10, 100000),
        st.none(), st.booleans(),
        st.sampled_from(["USD", "EUR", "shp_1", "shp_2", "ORD-1", "ups", "in_1", "sub_1", ""]),
        st.text(max_size=8),
    )  # fmt: skip


@st.composite
def proposals(draw: st.DrawFn, kind: str) -> list[ProposedCall]:
    """Mostly near-misses of the planned calls (so many are accepted), some wild ones."""
    _, det = _case(kind)
    planned_tools = sorted({a.tool for a in det.actions})
    wild = [*TOOLS, "refund_customer", "delete_account"]
    out = []
    for _ in range(draw(st.integers(0, 3))):
        near = bool(planned_tools) and draw(st.integers(0, 3)) > 0
        name = draw(st.sampled_from(planned_tools if near else wild))
        base: dict[str, Any] = {}
        planned_same = [a for a in det.actions if a.tool == name]
        if planned_same and (near or draw(st.booleans())):
            chosen = draw(st.sampled_from(planned_same))
            base = {k: v for k, v in chosen.params.items() if k in offered_fields(name)}
        fields = sorted(TOOLS[name].params.model_fields) if name in TOOLS else ["amount"]
        for key in draw(st.lists(st.sampled_from([*fields, "extra"]), max_size=2)):
            base[key] = draw(_value())
        text = json.dumps(base) if draw(st.integers(0, 9)) else draw(st.text(max_size=10))
        out.append(ProposedCall(name, text))
    return out


@settings(max_examples=500, deadline=None)
@given(st.sampled_from(["shipment", "payment", "renewal"]).flatmap(
    lambda kind: st.tuples(st.just(kind), proposals(kind))
))  # fmt: skip
def test_whatever_the_calls_the_plan_stays_within_the_allow_list_and_the_limits(
    case: tuple[str, list[ProposedCall]],
) -> None:
    kind, calls = case
    b, det = _case(kind)
    v = vet(det, b.ctx, allowed(b), calls)
    event(f"{kind}: {v.outcome}")
    if not v.accepted:
        assert v.plan is det
        return
    planned_by_ref = {a.ref: a for a in det.actions}
    assert v.plan.messages == det.messages
    for action in v.plan.actions:
        assert action.tool in allowed(b)
        tool = TOOLS[action.tool]
        params = tool.params.model_validate(action.params)
        mine = planned_by_ref[action.ref]
        theirs = tool.params.model_validate(mine.params)
        value, limit = tool.value_of(params), tool.value_of(theirs)
        guard = b.ctx.guardrails.tools.get(action.tool)  # type: ignore[call-overload]
        auto_max = guard.threshold.auto_max if guard and guard.threshold else None
        if value is not None:
            assert limit is not None and value <= limit
            assert auto_max is None or value <= auto_max
        for key, planned_value in mine.params.items():
            if key.endswith("_id") or key in ("currency", "carrier"):
                assert action.params[key] == planned_value
        assert (action.target, action.at, action.announce) == (mine.target, mine.at, mine.announce)
