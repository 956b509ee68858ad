"""Guardrails: thresholds, budgets, allow-list, kill switches, idempotency, recorded verdicts.

Thresholds are checked on ``Guardrails.check`` with the shipped policy (exact boundaries) and
end to end where a rule's numbers can be moved in a copy of the rules folder. Budgets are
shrunk in a copy of ``policy.yaml`` so that they bind with a handful of events.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from support import Run, later, make_event, profile, run_events, ts
from support import payment_failed as failed

from outreach.agents.guardrails import Guardrails, GuardrailsConfig, SharedLedger
from outreach.agents.state import AgentState
from outreach.events import event_from_obj
from outreach.replay import Replayer
from outreach.rulebook import RuleBook, load_rulebook
from outreach.ruletests import MemoryLog

AT = "2026-03-09T15:00:00Z"  # 11:00 EDT
NOW = ts(AT).timestamp()
Runner = Callable[..., Run]


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, f"{old!r} not in {path}"
    path.write_text(text.replace(old, new))


def shipment(
    at: str,
    *,
    shipment_id: str = "shp_1",
    customer: str = "cus_1",
    value: int | None = 1000,
) -> dict[str, Any]:
    """An exception: notice, rebook and credit."""
    data: dict[str, Any] = {
        "shipment_id": shipment_id,
        "order_id": f"ORD-{shipment_id}",
        "carrier": "ups",
        "status": "exception",
        "promised_delivery": "2026-03-10T15:00:00Z",
    }
    if value is not None:
        data["order_value"] = {"amount": value, "currency": "USD"}
    return make_event("shipment.updated", at, customer, **data)


def of_type(actions: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [a for a in actions if a["type"] == kind]


# -- thresholds on Guardrails.check ---------------------------------------------------------


def judge(
    config: GuardrailsConfig,
    tool: str,
    params: dict[str, Any],
    playbook: str,
    state: AgentState | None = None,
    shared: SharedLedger | None = None,
    key: str = "eff_1",
    **kw: Any,
) -> Any:
    return Guardrails(config).check(
        tool, params, playbook, key, state or AgentState(), shared or SharedLedger(), NOW, **kw
    )


def credit(amount: int) -> dict[str, Any]:
    return {"amount": amount, "currency": "USD", "reason": "late parcel"}


def discount(percent: float) -> dict[str, Any]:
    return {"percent": percent, "months": 1, "reason": "usage decline"}


def rebook(value: int | None) -> dict[str, Any]:
    return {
        "shipment_id": "shp_1",
        "order_id": "ORD-1",
        "carrier": "ups",
        "order_value": value,
        "currency": "USD" if value is not None else None,
    }


@pytest.mark.parametrize(
    ("amount", "status"),
    [(1000, "executed"), (1001, "pending_approval"), (5000, "pending_approval"), (5001, "blocked")],
)
def test_grant_credit_threshold(book: RuleBook, amount: int, status: str) -> None:
    verdict = judge(book.policy.guardrails, "grant_credit", credit(amount), "shipment_delay")
    assert verdict.status == status
    assert verdict.reason
    assert [c.check for c in verdict.checks][:2] == ["allow_list", "threshold"]


@pytest.mark.parametrize(
    ("percent", "status"),
    [(20, "executed"), (21, "pending_approval"), (30, "pending_approval"), (31, "blocked")],
)
def test_offer_discount_threshold(book: RuleBook, percent: float, status: str) -> None:
    verdict = judge(book.policy.guardrails, "offer_discount", discount(percent), "retention_offer")
    assert verdict.status == status


@pytest.mark.parametrize(
    ("value", "status"),
    [(50000, "executed"), (50001, "pending_approval"), (None, "pending_approval")],
)
def test_rebook_threshold_on_the_order_value(
    book: RuleBook, value: int | None, status: str
) -> None:
    verdict = judge(book.policy.guardrails, "rebook_shipment", rebook(value), "shipment_delay")
    assert verdict.status == status


def test_a_denied_credit_says_why(book: RuleBook) -> None:
    verdict = judge(book.policy.guardrails, "grant_credit", credit(5001), "shipment_delay")
    assert "5001" in verdict.reason and "5000" in verdict.reason


def test_a_credit_needing_approval_is_not_promised_in_the_message(rules_copy: Path) -> None:
    edit(rules_copy / "shipment-delay.yaml", "credit: {standard: 500, premium: 1000}",
         "credit: {standard: 1001, premium: 5001}")  # fmt: skip
    result = run_events(
        load_rulebook(rules_copy),
        [
            profile("2026-03-01T12:00:00Z", "cus_std"),
            profile("2026-03-01T12:00:00Z", "cus_vip", tier="premium"),
            shipment(AT, customer="cus_std"),
            shipment(later(AT, minutes=1), customer="cus_vip"),
        ],
        drain=False,  # the pending credit would expire 48h later, unapproved
    )
    credits = of_type(result.actions, "grant_credit")
    assert [(c["customer_id"], c["status"]) for c in credits] == [
        ("cus_std", "pending_approval"),
        ("cus_vip", "blocked"),
    ]
    assert "denied" in credits[1]["reason"]
    assert [("added" in m["body"], m["status"]) for m in result.messages] == [
        (False, "sent"),
        (False, "sent"),
    ]


def test_a_25_percent_retention_offer_waits_for_approval(rules_copy: Path) -> None:
    edit(rules_copy / "usage-decline.yaml", "offer: {percent: 20, months: 1}",
         "offer: {percent: 25, months: 1}")  # fmt: skip
    customer = next(
        c
        for c in (f"cus_{i}" for i in range(1000))
        if int(hashlib.sha256(f"usage-decline:{c}".encode()).hexdigest()[:8], 16) % 100 >= 10
    )  # outside the control group
    events = [profile("2026-03-01T12:00:00Z", customer, mail=(True, True))]
    for i, value in enumerate([100, 100, 100, 100, 10]):
        at = later(AT, days=i)
        events.append(
            make_event(
                "usage.reported",
                at,
                customer,
                metric="api_calls",
                value=value,
                period_start=later(at, days=-1),
                period_end=at,
            )  # fmt: skip
        )
    result = run_events(load_rulebook(rules_copy), events)
    assert result.history("offer_discount") == [["pending_approval", "expired"]]


# -- budgets ------------------------------------------------------------------------------


def test_per_customer_credits_are_capped_at_5000_per_rolling_90_days(run: Runner) -> None:
    events: list[dict[str, Any]] = [profile("2026-03-01T12:00:00Z", tier="premium")]
    events += [shipment(later(AT, minutes=i), shipment_id=f"shp_{i}") for i in range(5)]
    events += [
        shipment(later(AT, days=1), shipment_id="shp_day1"),  # 6th within 90 days
        shipment(later(AT, days=89, hours=23), shipment_id="shp_day89"),
        shipment(later(AT, days=90, minutes=5), shipment_id="shp_day90"),  # day 0 rolled off
    ]
    credits = of_type(run(events).actions, "grant_credit")
    assert [(c["target"], c["status"]) for c in credits] == [
        *[(f"shp_{i}", "executed") for i in range(5)],
        ("shp_day1", "blocked"),
        ("shp_day89", "blocked"),
        ("shp_day90", "executed"),
    ]
    assert all(c["params"]["amount"] == 1000 for c in credits)
    assert "per-customer budget exceeded" in credits[5]["reason"]
    assert "5000" in credits[5]["reason"]


def test_a_blocked_credit_is_not_promised_in_the_notice(run: Runner) -> None:
    events: list[dict[str, Any]] = [profile("2026-03-01T12:00:00Z", tier="premium")]
    events += [shipment(later(AT, minutes=i), shipment_id=f"shp_{i}") for i in range(6)]
    messages = run(events).messages
    assert ["added $10.00" in m["body"] for m in messages] == [True] * 5 + [False]


def test_the_global_credit_budget_is_per_utc_day_across_customers(rules_copy: Path) -> None:
    edit(rules_copy / "policy.yaml", "global_per_utc_day: 1000000", "global_per_utc_day: 2000")
    book = load_rulebook(rules_copy)
    many = [f"cus_g{i}" for i in range(12)]
    events: list[dict[str, Any]] = [profile("2026-03-01T12:00:00Z", c) for c in many]
    events += [shipment(later(AT, minutes=i), customer=c) for i, c in enumerate(many)]
    late_day = "2026-03-09T23:59:00Z"  # 19:59 EDT
    next_day = "2026-03-10T00:01:00Z"  # 20:01 EDT: same local day, next UTC day
    events += [shipment(late_day, customer="cus_a"), shipment(next_day, customer="cus_b")]
    credits = of_type(run_events(book, events).actions, "grant_credit")
    statuses = [c["status"] for c in credits]
    assert statuses == ["executed"] * 4 + ["blocked"] * 9 + ["executed"]
    assert all("global daily budget exceeded" in c["reason"] for c in credits[4:13])
    assert credits[-1]["customer_id"] == "cus_b"


# -- allow-list and kill switches ---------------------------------------------------------


def test_a_tool_missing_from_the_playbook_allow_list_is_blocked(rules_copy: Path) -> None:
    edit(rules_copy / "policy.yaml",
         "payment_recovery: [retry_payment, request_payment_update, escalate_to_human]",
         "payment_recovery: [request_payment_update, escalate_to_human]")  # fmt: skip
    result = run_events(load_rulebook(rules_copy), [profile("2026-03-01T12:00:00Z"), failed(AT)])
    retries = of_type(result.log.actions, "retry_payment")
    assert [r["status"] for r in retries] == ["blocked"] * 3
    assert all("retry_payment" in r["reason"] and "not allowed" in r["reason"] for r in retries)
    assert retries[0]["checks"][-1]["check"] == "allow_list"
    # nothing may promise a retry that will not happen: the card-update message goes instead
    assert [m["template"] for m in result.messages] == ["payment_update_needed"]


def test_an_escalation_does_not_claim_blocked_retries_ran(rules_copy: Path) -> None:
    edit(rules_copy / "policy.yaml",
         "payment_recovery: [retry_payment, request_payment_update, escalate_to_human]",
         "payment_recovery: [request_payment_update, escalate_to_human]")  # fmt: skip
    again = make_event("payment.failed", later(AT, hours=3), payment_id="pay_2",
                       invoice_id="in_1", amount=2900, currency="USD",
                       decline_code="insufficient_funds", attempt=2)  # fmt: skip
    result = run_events(
        load_rulebook(rules_copy), [profile("2026-03-01T12:00:00Z"), failed(AT), again]
    )
    escalations = of_type(result.actions, "escalate_to_human")
    assert escalations, "the second failure with no retry possible goes to a human"
    for escalation in escalations:
        told = " ".join([escalation["params"]["summary"], *escalation["params"]["tried"]])
        assert "have run" not in told and "retries scheduled" not in told, told
        assert "0 of 3 scheduled retries ran" in told and "blocked" in told, told


def test_a_tool_kill_switch_blocks_that_tool_only(rules_copy: Path) -> None:
    edit(rules_copy / "policy.yaml", "tools: []       #", "tools: [grant_credit]       #")
    result = run_events(load_rulebook(rules_copy), [profile("2026-03-01T12:00:00Z"), shipment(AT)])
    assert [(a["type"], a["status"]) for a in result.actions] == [
        ("rebook_shipment", "executed"),
        ("grant_credit", "blocked"),
    ]
    assert "kill switch" in result.actions[1]["reason"]
    assert "added" not in result.messages[0]["body"]


def test_a_channel_kill_switch_falls_back_to_the_other_channel(rules_copy: Path) -> None:
    edit(rules_copy / "policy.yaml", "channels: []    #", "channels: [sms]    #")
    result = run_events(load_rulebook(rules_copy), [profile("2026-03-01T12:00:00Z"), failed(AT)])
    assert [(m["channel"], m["status"]) for m in result.messages] == [("email", "sent")]
    assert any("sms: kill switch" in c["detail"] for c in result.messages[0]["checks"])


def test_killing_both_channels_suppresses_with_the_reason(rules_copy: Path) -> None:
    edit(rules_copy / "policy.yaml", "channels: []    #", "channels: [sms, email]    #")
    result = run_events(load_rulebook(rules_copy), [profile("2026-03-01T12:00:00Z"), failed(AT)])
    message = result.messages[-1]
    assert message["status"] == "suppressed"
    assert "sms: kill switch" in message["reason"] and "email: kill switch" in message["reason"]


# -- idempotency ----------------------------------------------------------------------------


def test_an_event_delivered_twice_has_one_effect(run: Runner) -> None:
    customer, event = profile("2026-03-01T12:00:00Z"), shipment(AT)
    once = run([customer, event])
    twice = run([customer, event, dict(event)])
    assert twice.log.summary.duplicates == 1
    assert len(twice.signals) == 1
    assert twice.log.actions == once.log.actions
    assert twice.log.messages == once.log.messages
    assert twice.log.summary.effects == once.log.summary.effects == 2


def test_an_effect_key_seen_before_is_a_duplicate(book: RuleBook) -> None:
    state = AgentState(effects={"eff_1": NOW - 60})
    verdict = judge(book.policy.guardrails, "grant_credit", credit(500), "shipment_delay", state)
    assert verdict.status == "duplicate"
    assert not verdict.approved


def test_an_event_redelivered_after_the_dedup_window_has_no_new_effect(book: RuleBook) -> None:
    replayer = Replayer(book, MemoryLog())
    first = event_from_obj(failed("2026-03-02T15:00:00Z"))
    replayer.feed_event(event_from_obj(profile("2026-03-01T12:00:00Z")))
    replayer.feed_event(first)
    for i in range(3):  # later traffic moves the dedup horizon on
        at = later("2026-03-10T15:00:00Z", days=i)
        replayer.feed_event(event_from_obj(
            make_event("usage.reported", at, metric="x", value=5, period_start=at, period_end=at)
        ))  # fmt: skip
    replayer.drain()
    redelivered_at = ts("2026-03-14T16:00:00Z")
    state = replayer.states["cus_1"]
    decisions = replayer.core.evaluate(first, state, replayer.shared, redelivered_at)
    assert decisions.effects == []


# -- re-checked when due --------------------------------------------------------------------


def retry_params() -> dict[str, Any]:
    return {"invoice_id": "in_1", "amount": 2900, "currency": "USD",
            "decline_code": "insufficient_funds", "retry": 1, "of": 3}  # fmt: skip


def test_a_scheduled_action_is_judged_again_when_due(book: RuleBook) -> None:
    config = book.policy.guardrails
    state = AgentState(effects={"eff_retry": NOW - 86400})
    due = judge(config, "retry_payment", retry_params(), "payment_recovery", state,
                key="eff_retry", recheck=True)  # fmt: skip
    assert due.status == "executed"  # its own key is not a duplicate on recheck
    killed = config.model_copy(
        update={
            "kill_switches": config.kill_switches.model_copy(update={"tools": ["retry_payment"]})
        }
    )
    due = judge(killed, "retry_payment", retry_params(), "payment_recovery", state,
                key="eff_retry", recheck=True)  # fmt: skip
    assert due.status == "blocked"
    assert "kill switch" in due.reason and "retry_payment" in due.reason


def test_a_future_action_is_scheduled_and_rechecked(book: RuleBook) -> None:
    verdict = judge(book.policy.guardrails, "retry_payment", retry_params(), "payment_recovery",
                    at=NOW + 86400)  # fmt: skip
    assert verdict.status == "scheduled"


def test_retries_due_after_a_kill_switch_is_switched_on_are_blocked(rules_copy: Path) -> None:
    """The live runtime reloads rules and keeps state: due work meets the new switches."""
    before = load_rulebook(rules_copy)
    edit(rules_copy / "policy.yaml", "tools: []       #", "tools: [retry_payment]       #")
    after = load_rulebook(rules_copy)
    log = MemoryLog()
    first = Replayer(before, log)
    for raw in (profile("2026-03-01T12:00:00Z"), failed("2026-03-02T15:00:00Z")):
        first.feed_event(event_from_obj(raw))
    first.fire_until(ts("2026-03-04T00:00:00Z").timestamp())  # retry 1 runs under the old rules
    second = Replayer(after, log)
    second.states, second.timers, second.shared = first.states, first.timers, first.shared
    second.drain()
    retries = [a for a in Run(log, second).actions if a["type"] == "retry_payment"]
    assert [(r["status"], r["at"]) for r in retries] == [
        ("executed", "2026-03-03T15:00:00Z"),
        ("blocked", "2026-03-05T15:00:00Z"),
        ("blocked", "2026-03-09T15:00:00Z"),
    ]
    assert "kill switch" in retries[1]["reason"]


# -- every verdict recorded -----------------------------------------------------------------


def test_every_action_record_says_why_and_every_verdict_lists_its_checks(run: Runner) -> None:
    events: list[dict[str, Any]] = [
        profile("2026-03-01T12:00:00Z", tier="premium", mail=(True, True)),
        failed(AT),
        make_event(
            "payment.succeeded",
            later(AT, days=2),
            payment_id="p2",
            invoice_id="in_1",
            amount=2900,
            currency="USD",
        ),  # fmt: skip
        *[shipment(later(AT, minutes=i), shipment_id=f"shp_{i}", value=None) for i in range(7)],
    ]
    result = run(events)
    records = result.log.actions
    assert {a["status"] for a in records} >= {
        "scheduled", "executed", "cancelled", "blocked", "pending_approval"
    }  # fmt: skip
    for record in records:
        assert record["reason"].strip(), record
        if record["status"] in ("executed", "scheduled", "pending_approval", "blocked"):
            assert record["checks"], record
            assert all(c["check"] and c["result"] and c["detail"] for c in record["checks"])


def test_cancelled_and_held_out_records_carry_the_check_that_decided_them(book: RuleBook) -> None:
    paid = make_event("payment.succeeded", later(AT, days=2), payment_id="pay_9",
                      invoice_id="in_1", amount=2900, currency="USD")  # fmt: skip
    result = run_events(book, [profile("2026-03-01T12:00:00Z"), failed(AT), paid])
    cancelled = [a for a in result.actions if a["status"] == "cancelled"]
    assert cancelled
    for record in cancelled:
        assert record["checks"] == [
            {"check": "cancel", "result": "cancelled", "detail": record["reason"]}
        ]
