"""shipment-delay, clause by clause, through the shipped rules folder.

Customers live in America/New_York (EDT from 2026-03-08) and events happen around 15:00Z
(11:00 local), so quiet hours only interfere where a test says so.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

import pytest
from support import Run, later, make_event, profile

RULE = "shipment-delay"
PROMISED = "2026-03-10T15:00:00Z"  # Tue 11:00 EDT
AT = "2026-03-09T15:00:00Z"  # Mon 11:00 EDT
Runner = Callable[..., Run]


def shipment(
    at: str,
    estimate: str | None = None,
    *,
    status: str = "in_transit",
    shipment_id: str = "shp_1",
    order_id: str = "ORD-77",
    value: int | None = None,
    customer: str = "cus_1",
    exception_code: str | None = None,
) -> dict[str, Any]:
    data: dict[str, Any] = {
        "shipment_id": shipment_id,
        "order_id": order_id,
        "carrier": "ups",
        "status": status,
        "promised_delivery": PROMISED,
        "estimated_delivery": estimate,
        "exception_code": exception_code,
    }
    if value is not None:
        data["order_value"] = {"amount": value, "currency": "USD"}
    return make_event("shipment.updated", at, customer, **data)


def late(**delta: float) -> str:
    """An estimate ``delta`` after the promise."""
    return later(PROMISED, **delta)


def of_type(actions: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [a for a in actions if a["type"] == kind]


# -- when it fires -------------------------------------------------------------------------


def test_an_exception_is_a_delay_even_when_the_estimate_is_on_time(run: Runner) -> None:
    result = run([profile("2026-03-01T12:00:00Z"), shipment(AT, PROMISED, status="exception")])
    assert [s["rule_id"] for s in result.signals] == [RULE]
    _, messages = result.of(RULE)
    assert [m["status"] for m in messages] == ["sent"]


@pytest.mark.parametrize(
    ("delta", "fires"),
    [({"hours": 24}, True), ({"hours": 23, "minutes": 59}, False), ({"days": 5}, True)],
)
def test_a_new_estimate_24h_or_more_after_the_promise_is_a_delay(
    run: Runner, delta: dict[str, float], fires: bool
) -> None:
    result = run([profile("2026-03-01T12:00:00Z"), shipment(AT, late(**delta))])
    assert [s["rule_id"] for s in result.signals] == ([RULE] if fires else [])


def test_no_estimate_and_no_exception_is_not_a_delay(run: Runner) -> None:
    result = run([profile("2026-03-01T12:00:00Z"), shipment(AT, None)])
    assert result.signals == []


def test_a_delivered_parcel_is_not_a_delay_however_late(run: Runner) -> None:
    result = run([profile("2026-03-01T12:00:00Z"), shipment(AT, late(days=3), status="delivered")])
    assert result.signals == []


# -- notify once, again on a further 24h slip ----------------------------------------------


def test_notify_once_per_shipment(run: Runner) -> None:
    result = run(
        [
            profile("2026-03-01T12:00:00Z"),
            shipment(AT, late(hours=30)),
            shipment(later(AT, hours=1), late(hours=30)),  # same estimate
            shipment(later(AT, hours=2), late(hours=53, minutes=59)),  # 23h59 further
            shipment(later(AT, hours=3), late(hours=40), status="exception"),  # earlier estimate
        ]
    )
    _, messages = result.of(RULE)
    assert len(messages) == 1
    assert messages[0]["send_at"] == "2026-03-09T15:00:00Z"


def test_notify_again_when_the_estimate_slips_a_further_24h_after_the_last_notice(
    run: Runner,
) -> None:
    result = run(
        [
            profile("2026-03-01T12:00:00Z"),
            shipment(AT, late(hours=30)),  # notice 1: estimate P+30h
            shipment(later(AT, hours=1), late(hours=53)),  # +23h: no notice
            shipment(later(AT, hours=2), late(hours=54)),  # +24h after notice 1: notice 2
            shipment(later(AT, hours=3), late(hours=77)),  # +23h after notice 2: no notice
        ]
    )
    _, messages = result.of(RULE)
    assert [m["send_at"] for m in messages] == ["2026-03-09T15:00:00Z", "2026-03-09T17:00:00Z"]
    assert [m["status"] for m in messages] == ["sent", "sent"]
    # the second notice gives the new estimate: P+54h = Thu Mar 12 21:00Z = 5:00 PM EDT
    assert "Thu, Mar 12, 5:00 PM" in messages[1]["body"]


def test_each_shipment_is_notified_on_its_own(run: Runner) -> None:
    result = run(
        [
            profile("2026-03-01T12:00:00Z"),
            shipment(AT, late(hours=30), shipment_id="shp_1", order_id="ORD-1"),
            shipment(later(AT, hours=1), late(hours=30), shipment_id="shp_2", order_id="ORD-2"),
        ]
    )
    _, messages = result.of(RULE)
    assert [("ORD-1" in m["body"], "ORD-2" in m["body"]) for m in messages] == [
        (True, False),
        (False, True),
    ]


# -- the message ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("timezone", "local"),
    [
        ("America/New_York", "Wed, Mar 11, 11:00 AM"),
        ("Europe/Paris", "Wed, Mar 11, 4:00 PM"),
        ("Asia/Kolkata", "Wed, Mar 11, 8:30 PM"),
    ],
)
def test_the_notice_is_transactional_with_the_order_id_and_the_local_estimate(
    run: Runner, timezone: str, local: str
) -> None:
    # 11:00Z so that the notice itself is outside quiet hours in all three zones
    at = "2026-03-09T11:00:00Z"
    result = run([profile("2026-03-01T08:00:00Z", timezone=timezone), shipment(at, late(days=1))])
    _, messages = result.of(RULE)
    assert len(messages) == 1
    message = messages[0]
    assert (message["purpose"], message["status"], message["channel"]) == (
        "transactional",
        "sent",
        "sms",
    )
    assert "ORD-77" in message["body"]
    assert local in message["body"]


def test_the_estimate_is_shown_in_utc_when_the_timezone_is_unknown(run: Runner) -> None:
    customer = make_event(
        "customer.updated",
        "2026-03-01T12:00:00Z",
        phone="+14155550100",
        consent={"sms": {"transactional": True}},
    )
    result = run([customer, shipment(AT, late(days=1))])
    _, messages = result.of(RULE)
    assert "Wed, Mar 11, 3:00 PM" in messages[0]["body"]


def test_the_notice_goes_by_email_with_the_order_id_when_there_is_no_phone(run: Runner) -> None:
    result = run([profile("2026-03-01T12:00:00Z", phone=None), shipment(AT, late(days=1))])
    _, messages = result.of(RULE)
    assert messages[0]["channel"] == "email"
    assert "ORD-77" in messages[0]["subject"]
    assert "Wed, Mar 11, 11:00 AM" in messages[0]["body"]


# -- remediation ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("delta", "remediates"), [({"hours": 71, "minutes": 59}, False), ({"hours": 72}, True)]
)
def test_rebook_and_credit_from_72h_late(
    run: Runner, delta: dict[str, float], remediates: bool
) -> None:
    result = run([profile("2026-03-01T12:00:00Z"), shipment(AT, late(**delta), value=1000)])
    actions, _ = result.of(RULE)
    kinds = sorted(a["type"] for a in actions)
    assert kinds == (["grant_credit", "rebook_shipment"] if remediates else [])


def test_rebook_and_credit_on_an_exception(run: Runner) -> None:
    result = run(
        [
            profile("2026-03-01T12:00:00Z"),
            shipment(AT, None, status="exception", exception_code="damaged", value=1000),
        ]
    )
    actions, _ = result.of(RULE)
    assert [(a["type"], a["status"]) for a in actions] == [
        ("rebook_shipment", "executed"),
        ("grant_credit", "executed"),
    ]


@pytest.mark.parametrize(("tier", "amount"), [("standard", 500), ("premium", 1000)])
def test_the_credit_is_500_or_1000_for_premium(run: Runner, tier: str, amount: int) -> None:
    result = run(
        [profile("2026-03-01T12:00:00Z", tier=tier), shipment(AT, late(days=4), value=1000)]
    )
    actions, messages = result.of(RULE)
    credits = of_type(actions, "grant_credit")
    assert [(c["status"], c["params"]["amount"]) for c in credits] == [("executed", amount)]
    assert f"We added ${amount / 100:.2f} to your account" in messages[0]["body"]


@pytest.mark.parametrize(
    ("value", "statuses"),
    [
        (50000, ["executed"]),
        (50001, ["pending_approval", "expired"]),  # nobody approves it: expires after 48h
        (None, ["pending_approval", "expired"]),
    ],
)
def test_rebook_runs_alone_up_to_50000_minor_units_else_waits_for_approval(
    run: Runner, value: int | None, statuses: list[str]
) -> None:
    result = run([profile("2026-03-01T12:00:00Z"), shipment(AT, late(days=4), value=value)])
    assert result.history("rebook_shipment") == [statuses]


def test_remediation_happens_once_per_shipment(run: Runner) -> None:
    result = run(
        [
            profile("2026-03-01T12:00:00Z"),
            shipment(AT, late(days=4), value=1000),
            shipment(later(AT, hours=1), late(days=6), value=1000),  # slips a further 48h
            shipment(later(AT, hours=2), late(days=6), status="exception", value=1000),
        ]
    )
    actions, messages = result.of(RULE)
    assert sorted(a["type"] for a in actions) == ["grant_credit", "rebook_shipment"]
    assert len(messages) == 2  # the slip is notified, the credit is not granted twice


def test_a_short_delay_then_a_long_one_remediates_at_the_long_one(run: Runner) -> None:
    result = run(
        [
            profile("2026-03-01T12:00:00Z"),
            shipment(AT, late(hours=30), value=1000),
            shipment(later(AT, hours=1), late(hours=80), value=1000),
        ]
    )
    actions, _ = result.of(RULE)
    assert {a["at"] for a in actions} == {"2026-03-09T16:00:00Z"}
    assert len(actions) == 2


# -- delivered cancels ---------------------------------------------------------------------


def test_delivered_cancels_a_rebook_waiting_for_approval(run: Runner) -> None:
    result = run(
        [
            profile("2026-03-01T12:00:00Z"),
            shipment(AT, late(days=4)),  # unknown order value -> approval
            shipment(later(AT, hours=3), None, status="delivered"),
        ]
    )
    rebooks = of_type(result.of(RULE)[0], "rebook_shipment")
    assert [(r["status"], r["at"]) for r in rebooks] == [("cancelled", "2026-03-09T18:00:00Z")]
    assert "delivered" in rebooks[0]["reason"] or "shipment.updated" in rebooks[0]["reason"]


def test_delivered_cancels_a_notice_held_back_by_quiet_hours(run: Runner) -> None:
    result = run(
        [
            profile("2026-03-01T12:00:00Z"),
            shipment("2026-03-09T06:00:00Z", late(days=1)),  # 02:00 EDT: deferred to 08:00
            shipment("2026-03-09T09:00:00Z", None, status="delivered"),  # 05:00 EDT
        ]
    )
    _, messages = result.of(RULE)
    assert len(messages) == 1
    assert messages[0]["status"] == "suppressed"
    assert "cancel" in messages[0]["reason"]


def test_after_delivery_nothing_more_is_done_for_that_shipment(run: Runner) -> None:
    result = run(
        [
            profile("2026-03-01T12:00:00Z"),
            shipment(AT, late(hours=30)),
            shipment(later(AT, hours=1), None, status="delivered"),
            shipment(later(AT, hours=2), late(days=4), status="exception", value=1000),
        ]
    )
    actions, messages = result.of(RULE)
    assert actions == []
    assert [m["send_at"] for m in messages] == ["2026-03-09T15:00:00Z"]


def test_delivered_cancels_only_its_own_shipment(run: Runner) -> None:
    result = run(
        [
            profile("2026-03-01T12:00:00Z"),
            shipment(AT, late(days=4), shipment_id="shp_1"),
            shipment(later(AT, minutes=1), late(days=4), shipment_id="shp_2"),
            shipment(later(AT, hours=3), None, status="delivered", shipment_id="shp_1"),
        ]
    )
    rebooks = of_type(result.of(RULE)[0], "rebook_shipment")
    assert [(r["target"], r["status"]) for r in rebooks] == [
        ("shp_1", "cancelled"),
        ("shp_2", "expired"),  # still waiting for a person until it expired, 48h later
    ]
    assert result.history("rebook_shipment") == [
        ["pending_approval", "cancelled"],
        ["pending_approval", "expired"],
    ]


# -- no control group ----------------------------------------------------------------------


def test_shipment_delay_has_no_holdout(run: Runner) -> None:
    def bucket(customer: str) -> int:
        return int(hashlib.sha256(f"{RULE}:{customer}".encode()).hexdigest()[:8], 16) % 100

    customer = next(c for c in (f"cus_{i}" for i in range(1000)) if bucket(c) < 10)
    result = run(
        [profile("2026-03-01T12:00:00Z", customer), shipment(AT, late(days=4), customer=customer)]
    )
    actions, messages = result.of(RULE)
    assert {a["status"] for a in actions} == {"expired", "executed"}  # no person approved
    assert [m["status"] for m in messages] == ["sent"]


def test_a_rebooking_its_system_refused_is_failed_and_tried_again_at_the_next_slip(
    run: Runner,
) -> None:
    """The dispatcher's ``action.status`` (the OMS refused the rebooking): the action ends
    ``failed`` with the system's reason, and the subject no longer counts it as done."""
    base = [profile("2026-03-01T12:00:00Z"), shipment(AT, late(days=4), value=1000)]
    [rebook] = of_type(run(base).of(RULE)[0], "rebook_shipment")
    refused = make_event(
        "action.status", later(AT, minutes=5), action_id=rebook["action_id"],
        tool="rebook_shipment", status="failed", detail="the system refused: no capacity",
        idempotency_key=rebook["idempotency_key"],
    )  # fmt: skip
    slip = shipment(later(AT, hours=1), late(days=6), value=1000)
    actions, _ = run([*base, refused, slip]).of(RULE)
    rebooks = of_type(actions, "rebook_shipment")
    assert [a["status"] for a in rebooks] == ["failed", "executed"]
    assert rebooks[0]["reason"] == "the system refused: no capacity"
    assert rebooks[1]["action_id"] != rebook["action_id"]
    [credit] = of_type(actions, "grant_credit")  # the credit was not refused: not again
    assert credit["status"] == "executed"
    without = of_type(run([*base, slip]).of(RULE)[0], "rebook_shipment")
    assert [a["status"] for a in without] == ["executed"]  # not refused: once per shipment
