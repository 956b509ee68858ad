"""usage-decline and renewal-save, clause by clause, through the shipped rules folder.

Customers live in America/New_York; reports and renewals arrive at 15:00Z (10:00/11:00
local). Control-group customers are found by computing the holdout formula here, not by
asking the engine.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import pytest
from support import Run, later, make_event, payment_failed, profile, ts

DECLINE = "usage-decline"
RENEWAL = "renewal-save"
DAY0 = "2026-03-02T15:00:00Z"
Runner = Callable[..., Run]


def bucket(rule_id: str, customer_id: str) -> int:
    return int(hashlib.sha256(f"{rule_id}:{customer_id}".encode()).hexdigest()[:8], 16) % 100


def customers(test: Callable[[str], bool]) -> Iterator[str]:
    return (c for c in (f"cus_{i}" for i in range(10_000)) if test(c))


def in_group(rule_id: str) -> str:
    return next(customers(lambda c: bucket(rule_id, c) < 10))


def outside(*rule_ids: str) -> str:
    """A customer in neither control group."""
    return next(customers(lambda c: all(bucket(r, c) >= 10 for r in rule_ids)))


CUS = outside(DECLINE, RENEWAL)


def day(n: float, base: str = DAY0) -> str:
    return later(base, days=n)


def usage(at: str, value: float, metric: str = "api_calls", customer: str = CUS) -> dict[str, Any]:
    return make_event(
        "usage.reported",
        at,
        customer,
        metric=metric,
        value=value,
        period_start=later(at, days=-1),
        period_end=at,
    )


def series(
    values: list[float], start: float = 0, metric: str = "api_calls", customer: str = CUS
) -> list[dict[str, Any]]:
    """One report a day from day ``start``."""
    return [usage(day(start + i), v, metric, customer) for i, v in enumerate(values)]


def renewal(
    at: str,
    renews_in: timedelta,
    *,
    auto_renew: bool = False,
    customer: str = CUS,
    subscription: str = "sub_1",
    plan: str = "Pro annual",
) -> dict[str, Any]:
    return make_event(
        "renewal.upcoming",
        at,
        customer,
        subscription_id=subscription,
        plan=plan,
        renews_at=(ts(at) + renews_in).isoformat(),
        amount=29900,
        currency="USD",
        auto_renew=auto_renew,
    )


def failed(at: str, customer: str = CUS) -> dict[str, Any]:
    return payment_failed(at, customer)


def fan(customer: str = CUS, **kw: Any) -> dict[str, Any]:
    """A customer who agreed to marketing email (and transactional SMS)."""
    kw.setdefault("mail", (True, True))
    return profile("2026-02-01T12:00:00Z", customer, **kw)


def offers(actions: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [a for a in actions if a["type"] == "offer_discount"]


# == usage-decline ==========================================================================


@pytest.mark.parametrize(("value", "fires"), [(60, True), (60.01, False), (0, True)])
def test_a_report_at_or_below_60_percent_of_the_last_4_is_a_decline(
    run: Runner, value: float, fires: bool
) -> None:
    result = run([fan(), *series([100, 100, 100, 100, value])])
    assert [s["rule_id"] for s in result.signals] == ([DECLINE] if fires else [])


def test_exactly_60_percent_is_a_decline_whatever_the_mean(run: Runner) -> None:
    result = run([fan(), *series([3, 3, 3, 3, 1.8])])
    assert [s["rule_id"] for s in result.signals] == [DECLINE]


def test_fewer_than_4_previous_reports_is_no_baseline(run: Runner) -> None:
    result = run([fan(), *series([100, 100, 100, 10])])
    assert result.signals == []


def test_a_zero_mean_is_no_baseline(run: Runner) -> None:
    result = run([fan(), *series([0, 0, 0, 0, 0])])
    assert result.signals == []


def test_only_the_previous_4_reports_make_the_mean(run: Runner) -> None:
    # mean of the last 4 is 100 (60 <= 60); a mean of all 5 (82) would not fire
    result = run([fan(), *series([10, 100, 100, 100, 100, 60])])
    assert [s["rule_id"] for s in result.signals] == [DECLINE]


def test_the_baseline_is_per_metric(run: Runner) -> None:
    events = [
        fan(),
        *series([100, 100, 100, 100], metric="api_calls"),
        usage(day(4), 10, metric="seats"),  # no seats baseline yet
        usage(day(4, "2026-03-02T16:00:00Z"), 100, metric="api_calls"),  # not a decline
    ]
    assert run(events).signals == []


def test_the_baseline_is_per_customer(run: Runner) -> None:
    other = "cus_other"
    events = [
        fan(),
        *series([100, 100, 100], customer=CUS),
        *series([100, 100, 100, 100], customer=other),
        usage(day(5), 10, customer=CUS),
    ]
    assert run(events).signals == []


def test_a_decline_offers_20_percent_for_one_month_by_marketing_message(run: Runner) -> None:
    result = run([fan(), *series([100, 100, 100, 100, 40])])
    actions, messages = result.of(DECLINE)
    assert [(a["status"], a["params"]["percent"], a["params"]["months"]) for a in actions] == [
        ("executed", 20, 1)
    ]
    assert [(m["purpose"], m["channel"], m["status"]) for m in messages] == [
        ("marketing", "email", "sent")
    ]
    assert "20%" in messages[0]["subject"]


def test_one_retention_offer_per_customer_per_90_days(run: Runner) -> None:
    events = [
        fan(),
        *series([100, 100, 100, 100, 10], start=0),  # offer on day 4
        *series([100, 100, 100, 100, 10], start=30, metric="seats"),  # day 34: too soon
        *series([100, 100, 100, 100, 10], start=90),  # day 94: 90 days later
    ]
    actions, messages = run(events).of(DECLINE)
    assert [(a["status"], a["at"][:10]) for a in offers(actions)] == [
        ("executed", "2026-03-06"),
        ("blocked", "2026-04-05"),
        ("executed", "2026-06-04"),
    ]
    assert "per-customer budget" in offers(actions)[1]["reason"]
    assert [m["status"] for m in messages] == ["sent", "sent"]


def test_the_offer_budget_is_shared_with_renewal_save(run: Runner) -> None:
    events = [
        fan(),
        renewal(day(0), timedelta(days=10)),  # renewal-save offer on day 0
        *series([100, 100, 100, 100, 10], start=10),  # decline on day 14
    ]
    result = run(events)
    assert [a["status"] for a in offers(result.of(RENEWAL)[0])] == ["executed"]
    decline_offers = offers(result.of(DECLINE)[0])
    assert [a["status"] for a in decline_offers] == ["blocked"]
    assert result.of(DECLINE)[1] == []


def test_a_control_group_customer_gets_skipped_holdout_and_no_message(run: Runner) -> None:
    held = in_group(DECLINE)
    result = run([fan(held), *series([100, 100, 100, 100, 10], customer=held)])
    actions, messages = result.of(DECLINE)
    assert [a["status"] for a in actions] == ["skipped_holdout"]
    assert messages == []


@pytest.mark.parametrize(("slot", "held"), [(0, True), (9, True), (10, False), (11, False)])
def test_the_control_group_is_sha256_of_rule_and_customer_below_10(
    run: Runner, slot: int, held: bool
) -> None:
    who = next(customers(lambda c: bucket(DECLINE, c) == slot))
    result = run([fan(who), *series([100, 100, 100, 100, 10], customer=who)])
    actions, messages = result.of(DECLINE)
    assert [a["status"] for a in actions] == ["skipped_holdout" if held else "executed"]
    assert len(messages) == (0 if held else 1)


# == renewal-save ===========================================================================


@pytest.mark.parametrize(
    ("renews_in", "fires"),
    [
        (timedelta(days=14), True),
        (timedelta(days=14, minutes=1), False),
        (timedelta(minutes=1), True),
        (timedelta(0), False),
        (timedelta(days=-1), False),
    ],
)
def test_a_renewal_within_14_days(run: Runner, renews_in: timedelta, fires: bool) -> None:
    result = run([fan(), renewal(DAY0, renews_in)])
    assert [s["rule_id"] for s in result.signals] == ([RENEWAL] if fires else [])


def test_a_renewal_on_auto_renew_without_risk_is_left_alone(run: Runner) -> None:
    result = run([fan(), renewal(DAY0, timedelta(days=7), auto_renew=True)])
    assert result.signals == []


@pytest.mark.parametrize(("ago", "fires"), [(29, True), (31, False)])
def test_a_usage_decline_in_the_last_30_days_puts_a_renewal_at_risk(
    run: Runner, ago: int, fires: bool
) -> None:
    events = [
        fan(),
        *series([100, 100, 100, 100, 10], start=0),  # decline on day 4
        renewal(day(4 + ago), timedelta(days=7), auto_renew=True),
    ]
    rules = [s["rule_id"] for s in run(events).signals]
    assert rules == ([DECLINE, RENEWAL] if fires else [DECLINE])


def test_a_held_out_usage_decline_still_counts_as_a_risk(run: Runner) -> None:
    who = next(customers(lambda c: bucket(DECLINE, c) < 10 <= bucket(RENEWAL, c)))
    events = [
        fan(who),
        *series([100, 100, 100, 100, 10], customer=who),
        renewal(day(10), timedelta(days=7), auto_renew=True, customer=who),
    ]
    result = run(events)
    assert [s["rule_id"] for s in result.signals] == [DECLINE, RENEWAL]
    assert len(result.of(RENEWAL)[1]) == 1


@pytest.mark.parametrize(
    ("ago", "fires"), [(timedelta(days=29, hours=23), True), (timedelta(days=30, hours=1), False)]
)
def test_a_failed_payment_in_the_last_30_days_puts_a_renewal_at_risk(
    run: Runner, ago: timedelta, fires: bool
) -> None:
    at = day(40)
    paid_late = (ts(at) - ago).isoformat()
    events = [fan(), failed(paid_late), renewal(at, timedelta(days=7), auto_renew=True)]
    rules = [s["rule_id"] for s in run(events).signals]
    assert (RENEWAL in rules) is fires


def test_with_marketing_consent_the_reminder_carries_a_10_percent_offer(run: Runner) -> None:
    result = run([fan(), renewal(DAY0, timedelta(days=10))])  # renews Thu 12 Mar 15:00Z
    actions, messages = result.of(RENEWAL)
    assert [(a["status"], a["params"]["percent"]) for a in offers(actions)] == [("executed", 10)]
    assert len(messages) == 1
    message = messages[0]
    assert (message["purpose"], message["status"], message["template"]) == (
        "marketing",
        "sent",
        "renewal_offer",
    )
    assert "10%" in message["body"]
    assert "Mar 12, 2026" in message["body"]  # the renewal date


def test_marketing_consent_on_sms_is_enough_for_the_offer(run: Runner) -> None:
    result = run([fan(sms=(True, True), mail=(True, False)), renewal(DAY0, timedelta(days=10))])
    actions, messages = result.of(RENEWAL)
    assert [a["status"] for a in offers(actions)] == ["executed"]
    assert [(m["channel"], m["purpose"], m["template"]) for m in messages] == [
        ("sms", "marketing", "renewal_offer")
    ]


def test_without_marketing_consent_the_reminder_goes_alone_as_transactional(
    run: Runner,
) -> None:
    result = run([fan(mail=(True, False)), renewal(DAY0, timedelta(days=10))])
    _, messages = result.of(RENEWAL)
    assert [(m["purpose"], m["status"], m["template"]) for m in messages] == [
        ("transactional", "sent", "renewal_reminder")
    ]
    assert "Thu, Mar 12" in messages[0]["body"]  # the renewal date, local
    assert "%" not in messages[0]["body"]


def test_without_marketing_consent_no_offer_is_made(run: Runner) -> None:
    result = run([fan(mail=(True, False)), renewal(DAY0, timedelta(days=10))])
    assert [a["status"] for a in offers(result.of(RENEWAL)[0]) if a["status"] == "executed"] == []


def test_when_the_offer_guardrails_fail_the_reminder_goes_alone(run: Runner) -> None:
    events = [
        fan(),
        *series([100, 100, 100, 100, 10], start=0),  # usage-decline offer on day 4
        renewal(day(20), timedelta(days=10), auto_renew=True),  # at risk by the decline
    ]
    actions, messages = run(events).of(RENEWAL)
    assert [a["status"] for a in offers(actions)] == ["blocked"]
    assert "per-customer budget" in offers(actions)[0]["reason"]
    assert [(m["purpose"], m["template"], m["status"]) for m in messages] == [
        ("transactional", "renewal_reminder", "sent")
    ]


def test_a_renewal_control_group_customer_gets_skipped_holdout_and_no_message(
    run: Runner,
) -> None:
    held = in_group(RENEWAL)
    result = run([fan(held), renewal(DAY0, timedelta(days=10), customer=held)])
    actions, messages = result.of(RENEWAL)
    assert [a["status"] for a in actions] == ["skipped_holdout"]
    assert messages == []


def test_the_same_renewal_reminded_twice_is_one_notice(run: Runner) -> None:
    events = [
        fan(mail=(True, False)),
        renewal(DAY0, timedelta(days=10)),
        renewal(day(3), timedelta(days=7)),  # the same renews_at
    ]
    _, messages = run(events).of(RENEWAL)
    assert [m["status"] for m in messages] == ["sent", "suppressed"]
    assert "duplicate notice" in messages[1]["reason"]


# == offers and their announcement held back by quiet hours =================================

NIGHT = "2026-03-10T03:00:00Z"  # 23:00 EDT: marketing waits for 08:00 (12:00Z)


def unsubscribed(at: str) -> dict[str, Any]:
    return make_event("contact.suppressed", at, CUS, channel="email", reason="unsubscribe")


def delayed_parcel(at: str) -> dict[str, Any]:
    return make_event(
        "shipment.updated",
        at,
        CUS,
        shipment_id="shp_1",
        order_id="ORD-1",
        carrier="ups",
        status="in_transit",
        promised_delivery="2026-03-11T15:00:00Z",
        estimated_delivery="2026-03-13T15:00:00Z",
    )


@pytest.mark.parametrize(
    "overnight",
    [unsubscribed("2026-03-10T05:00:00Z"), delayed_parcel("2026-03-10T03:30:00Z")],
    ids=["email-unsubscribe", "service-failure-notice"],
)
def test_no_offer_is_made_whose_announcement_is_never_sent(
    run: Runner, overnight: dict[str, Any]
) -> None:
    events = [fan(), *series([100, 100, 100, 100]), usage(NIGHT, 10), overnight]
    actions, messages = run(events).of(DECLINE)
    assert [m["status"] for m in messages] == ["suppressed"]  # the announcement never went
    assert [a["status"] for a in offers(actions)] != ["executed"]


def test_a_renewal_offer_held_overnight_still_reminds_when_it_cannot_go(run: Runner) -> None:
    events = [
        fan(),  # transactional SMS consent, email marketing consent
        renewal(NIGHT, timedelta(days=10)),
        unsubscribed("2026-03-10T05:00:00Z"),  # before 08:00: the offer email cannot go
    ]
    actions, messages = run(events).of(RENEWAL)
    sent = [m for m in messages if m["status"] == "sent"]
    assert [(m["purpose"], m["channel"], m["template"]) for m in sent] == [
        ("transactional", "sms", "renewal_reminder")
    ]
    assert "executed" not in [a["status"] for a in offers(actions)]  # the offer never went out
