"""The contact policy: quiet hours (DST included), caps, priority, channels, consent, dedup.

Unit tests on ``ContactPolicy.decide``/``commit`` and ``next_allowed`` with the shipped
``policy.yaml`` and templates, plus a few end-to-end checks of suppression events.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import msgspec
import pytest
from support import Run, make_event, profile

from outreach.outbound.policy import (
    ContactPolicy,
    MessageDecision,
    OutboundMessage,
    QuietHours,
    next_allowed,
)
from outreach.outbound.state import ContactState
from outreach.rulebook import RuleBook
from outreach.rules.state import Profile

NY = "America/New_York"
PHONE = "+14155550100"
EMAIL = "ann@example.com"
QUIET = QuietHours(start=time(21), end=time(8))


def local(text: str, zone: str = NY, fold: int = 0) -> datetime:
    """``"2026-03-10 20:59"`` in ``zone`` -> aware UTC datetime."""
    naive = datetime.fromisoformat(text)
    return naive.replace(tzinfo=ZoneInfo(zone), fold=fold).astimezone(UTC)


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def person(
    timezone: str | None = NY,
    *,
    phone: str | None = PHONE,
    email: str | None = EMAIL,
    sms: tuple[bool, bool] = (True, False),
    mail: tuple[bool, bool] = (True, False),
) -> Profile:
    return Profile(
        phone=phone,
        email=email,
        timezone=timezone,
        locale="en-US",
        sms_transactional=sms[0],
        sms_marketing=sms[1],
        email_transactional=mail[0],
        email_marketing=mail[1],
        known=True,
    )


REMINDER = {
    "subscription_id": "sub_1",
    "plan": "Pro annual",
    "renews_at": "2026-03-20T15:00:00Z",
    "amount": 29900,
    "currency": "USD",
    "auto_renew": False,
    "percent": 10,
    "months": 12,
}


def message(
    purpose: str = "transactional",
    *,
    message_id: str = "msg_1",
    notice: str | None = None,
    category: str | None = None,
    context: dict[str, Any] | None = None,
) -> OutboundMessage:
    marketing = purpose == "marketing"
    return OutboundMessage(
        message_id=message_id,
        signal_id=f"sig_{message_id}",
        rule_id="usage-decline" if marketing else "renewal-save",
        template="usage_decline_offer" if marketing else "renewal_reminder",
        purpose=purpose,
        context=context
        or (
            {"percent": 20, "months": 1, "metric": "api_calls"} if marketing else dict(REMINDER)
        ),  # fmt: skip
        notice=notice or f"notice:{message_id}",
        category=category or ("retention" if marketing else "informational"),
    )


@pytest.fixture(scope="module")
def policy(book: RuleBook) -> ContactPolicy:
    return policy_for(book)


def policy_for(
    book: RuleBook, killed: frozenset[str] = frozenset(), **contact: Any
) -> ContactPolicy:
    config = book.policy.contact.model_copy(update=contact)
    return ContactPolicy(config, book.templates, killed, book.policy.brand.model_dump())


def send(
    policy: ContactPolicy, msg: OutboundMessage, who: Profile, contact: ContactState, at: datetime
) -> MessageDecision:
    """Decide and commit, as the executor does."""
    decision = policy.decide(msg, who, contact, at)
    policy.commit(msg, decision, contact, at.timestamp())
    return decision


# -- quiet hours --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("at", "status", "send_at"),
    [
        ("2026-03-10 20:59", "sent", "2026-03-10 20:59"),
        ("2026-03-10 21:00", "deferred", "2026-03-11 08:00"),
        ("2026-03-10 23:59:59", "deferred", "2026-03-11 08:00"),
        ("2026-03-11 00:00", "deferred", "2026-03-11 08:00"),
        ("2026-03-11 07:59", "deferred", "2026-03-11 08:00"),
        ("2026-03-11 07:59:30", "deferred", "2026-03-11 08:00"),
        ("2026-03-11 08:00", "sent", "2026-03-11 08:00"),
    ],
)
def test_quiet_hours_21_to_8_in_the_recipients_timezone(
    policy: ContactPolicy, at: str, status: str, send_at: str
) -> None:
    decision = policy.decide(message(), person(), ContactState(), local(at))
    assert decision.status == status
    assert decision.send_at == local(send_at)
    assert decision.channel == "sms"  # deferred, never dropped: the channel is already chosen


@pytest.mark.parametrize(
    ("zone", "now", "expected_utc"),
    [
        # America/New_York springs forward on 2026-03-08 (02:00 EST -> 03:00 EDT)
        (NY, "2026-03-07 21:00", "2026-03-08T12:00:00Z"),
        (NY, "2026-03-08 01:59", "2026-03-08T12:00:00Z"),
        (NY, "2026-03-08 03:00", "2026-03-08T12:00:00Z"),
        # ... and falls back on 2026-11-01 (02:00 EDT -> 01:00 EST)
        (NY, "2026-10-31 21:00", "2026-11-01T13:00:00Z"),
        (NY, "2026-11-01 07:59", "2026-11-01T13:00:00Z"),
        # Europe/Paris: 2026-03-29 (02:00 CET -> 03:00 CEST) and 2026-10-25 (03:00 -> 02:00)
        ("Europe/Paris", "2026-03-28 21:00", "2026-03-29T06:00:00Z"),
        ("Europe/Paris", "2026-03-29 03:30", "2026-03-29T06:00:00Z"),
        ("Europe/Paris", "2026-10-24 21:00", "2026-10-25T07:00:00Z"),
    ],
)
def test_next_allowed_minute_across_dst_transitions(zone: str, now: str, expected_utc: str) -> None:
    assert next_allowed(local(now, zone), ZoneInfo(zone), QUIET) == utc(expected_utc)


@pytest.mark.parametrize("fold", [0, 1])
def test_both_occurrences_of_the_repeated_hour_defer_to_8am(fold: int) -> None:
    now = local("2026-11-01 01:30", NY, fold=fold)
    assert next_allowed(now, ZoneInfo(NY), QUIET) == utc("2026-11-01T13:00:00Z")


def test_the_day_after_spring_forward_has_an_11_hour_night() -> None:
    evening = local("2026-03-07 21:00")
    assert next_allowed(evening, ZoneInfo(NY), QUIET) - evening == timedelta(hours=10)


def test_a_quiet_end_that_does_not_exist_defers_to_the_first_allowed_minute() -> None:
    quiet = QuietHours(start=time(21), end=time(2, 30))
    # 22:00 EST on 2026-03-07; the clock jumps from 01:59:59 EST to 03:00 EDT (07:00Z)
    assert next_allowed(local("2026-03-07 22:00"), ZoneInfo(NY), quiet) == utc(
        "2026-03-08T07:00:00Z"
    )


def test_outside_quiet_hours_there_is_nothing_to_wait_for() -> None:
    assert next_allowed(local("2026-03-10 12:00"), ZoneInfo(NY), QUIET) is None


@pytest.mark.parametrize(
    ("at", "status", "send_at"),
    [
        ("2026-03-10T22:00:00Z", "deferred", "2026-03-11T08:00:00Z"),  # 18:00 in New York
        ("2026-03-11T07:59:00Z", "deferred", "2026-03-11T08:00:00Z"),
        ("2026-03-11T08:00:00Z", "sent", "2026-03-11T08:00:00Z"),  # 04:00 in New York
    ],
)
def test_an_unknown_timezone_uses_the_default_utc(
    policy: ContactPolicy, at: str, status: str, send_at: str
) -> None:
    assert policy.config.default_timezone == "UTC"
    decision = policy.decide(message(), person(timezone=None), ContactState(), utc(at))
    assert (decision.status, decision.send_at) == (status, utc(send_at))


# -- marketing caps -----------------------------------------------------------------------


def marketing(n: int) -> OutboundMessage:
    return message("marketing", message_id=f"mkt_{n}")


FAN = person(mail=(True, True))


@pytest.mark.parametrize(
    ("first_at", "second_at"),
    [
        ("2026-03-10 19:00", "2026-03-10 20:30"),  # 23:00Z and 00:30Z: two UTC days
        ("2026-03-10 20:30", "2026-03-10 20:45"),  # both on the next UTC day already
        ("2026-03-10 08:00", "2026-03-10 20:59"),  # first and last allowed minutes
    ],
)
def test_one_marketing_message_per_local_day_even_across_utc_days(
    policy: ContactPolicy, first_at: str, second_at: str
) -> None:
    contact = ContactState()
    first = send(policy, marketing(1), FAN, contact, local(first_at))
    second = send(policy, marketing(2), FAN, contact, local(second_at))
    assert first.status == "sent"
    assert second.status == "capped"
    assert "marketing cap" in second.reason and "today (local)" in second.reason
    third = send(policy, marketing(3), FAN, contact, local("2026-03-11 08:00"))
    assert third.status == "sent"


def test_different_local_days_on_the_same_utc_day_are_not_capped(policy: ContactPolicy) -> None:
    tokyo = person("Asia/Tokyo", mail=(True, True))
    contact = ContactState()
    first = send(policy, marketing(1), tokyo, contact, utc("2026-03-10T11:00:00Z"))  # 20:00 JST
    second = send(policy, marketing(2), tokyo, contact, utc("2026-03-10T23:30:00Z"))  # 08:30
    assert (first.status, second.status) == ("sent", "sent")


def test_three_marketing_messages_per_rolling_7_days(policy: ContactPolicy) -> None:
    contact = ContactState()
    start = local("2026-04-06 10:00")
    sent = [send(policy, marketing(i), FAN, contact, start + timedelta(days=i)) for i in range(3)]
    assert [d.status for d in sent] == ["sent"] * 3
    for i, delta in enumerate([timedelta(days=3), timedelta(days=6, hours=10),
                               timedelta(days=7, minutes=-1)]):  # fmt: skip
        decision = policy.decide(marketing(10 + i), FAN, contact, start + delta)
        assert decision.status == "capped", delta
        assert decision.reason.startswith("marketing cap: 3 sent in the last")
    after = policy.decide(marketing(20), FAN, contact, start + timedelta(days=7, minutes=1))
    assert after.status == "sent"


def test_transactional_messages_are_never_capped(policy: ContactPolicy) -> None:
    contact = ContactState()
    at = local("2026-04-06 10:00")
    for i in range(3):
        send(policy, marketing(i), FAN, contact, at + timedelta(days=i))
    decisions = [
        send(policy, message(message_id=f"t{i}"), FAN, contact, at + timedelta(days=2, minutes=i))
        for i in range(5)
    ]
    assert [d.status for d in decisions] == ["sent"] * 5


def test_a_deferred_marketing_message_counts_only_once_sent(policy: ContactPolicy) -> None:
    contact = ContactState()
    night = send(policy, marketing(1), FAN, contact, local("2026-03-10 22:00"))
    assert night.status == "deferred"
    assert contact.marketing == []
    again = send(policy, marketing(1), FAN, contact, night.send_at)
    assert again.status == "sent"
    assert contact.marketing == [night.send_at.timestamp()]


# -- priority: no marketing right after a service failure -----------------------------------


def test_no_marketing_within_48h_after_a_service_failure_message(policy: ContactPolicy) -> None:
    contact = ContactState()
    at = local("2026-03-10 10:00")
    failure = message(message_id="pay_1", category="service_failure")
    assert send(policy, failure, FAN, contact, at).status == "sent"
    inside = policy.decide(marketing(1), FAN, contact, at + timedelta(hours=47, minutes=59))
    assert inside.status == "suppressed"
    assert "no marketing within" in inside.reason
    assert policy.decide(marketing(2), FAN, contact, at + timedelta(hours=48)).status == "sent"
    transactional = policy.decide(message(message_id="t"), FAN, contact, at + timedelta(hours=1))
    assert transactional.status == "sent"


def test_a_retention_message_starts_no_blackout(policy: ContactPolicy) -> None:
    contact = ContactState()
    at = local("2026-03-10 10:00")
    send(policy, message(message_id="r", category="retention"), FAN, contact, at)
    assert policy.decide(marketing(1), FAN, contact, at + timedelta(hours=1)).status == "sent"


# -- channels and consent -----------------------------------------------------------------

AT = local("2026-03-10 11:00")


@pytest.mark.parametrize(
    ("purpose", "who", "expected"),
    [
        ("transactional", person(sms=(True, False)), ("sent", "sms")),
        ("transactional", person(sms=(False, False)), ("sent", "email")),
        ("transactional", person(sms=(False, True)), ("sent", "email")),
        ("transactional", person(phone=None), ("sent", "email")),
        # transactional email needs an address only
        ("transactional", person(sms=(False, False), mail=(False, False)), ("sent", "email")),
        ("transactional", person(sms=(False, False), email=None), ("suppressed", None)),
        ("transactional", person(phone=None, email=None), ("suppressed", None)),
        ("marketing", person(mail=(True, True), sms=(True, True)), ("sent", "email")),
        ("marketing", person(mail=(True, False), sms=(True, True)), ("sent", "sms")),
        ("marketing", person(email=None, sms=(False, True)), ("sent", "sms")),
        (
            "marketing",
            person(mail=(True, True), email=None, sms=(True, False)),
            ("suppressed", None),
        ),
        ("marketing", person(mail=(True, False), sms=(True, False)), ("suppressed", None)),
        ("marketing", person(mail=(True, True), phone=None), ("sent", "email")),
        (
            "marketing",
            person(mail=(False, False), phone=None, sms=(True, True)),
            ("suppressed", None),
        ),
    ],
)
def test_channel_choice_by_purpose_with_fallback(
    policy: ContactPolicy, purpose: str, who: Profile, expected: tuple[str, str | None]
) -> None:
    decision = policy.decide(message(purpose), who, ContactState(), AT)
    status, channel = expected
    assert decision.status == status
    if channel is not None:
        assert decision.channel == channel
        assert decision.to == (PHONE if channel == "sms" else EMAIL)
        assert decision.rendered is not None
    else:
        assert decision.to is None
        assert decision.reason.startswith("no channel may carry it")


def test_a_suppressed_message_says_why_for_each_channel(policy: ContactPolicy) -> None:
    decision = policy.decide(
        message("marketing"), person(mail=(True, False), sms=(True, False)), ContactState(), AT
    )
    assert "email: no email marketing consent" in decision.reason
    assert "sms: no SMS consent for marketing" in decision.reason


@pytest.mark.parametrize(
    ("suppressed", "channel"),
    [({"sms": "stop"}, "email"), ({"email": "bounce"}, "sms"), ({"email": "complaint"}, "sms")],
)
def test_a_suppressed_channel_is_not_used(
    policy: ContactPolicy, suppressed: dict[str, str], channel: str
) -> None:
    who = person(sms=(True, True), mail=(True, True))
    for purpose in ("transactional", "marketing"):
        contact = ContactState(suppressed=dict(suppressed))
        decision = policy.decide(message(purpose), who, contact, AT)
        assert (decision.status, decision.channel) == ("sent", channel)


def test_both_channels_suppressed_is_suppressed_with_the_reasons(policy: ContactPolicy) -> None:
    contact = ContactState(suppressed={"sms": "stop", "email": "bounce"})
    decision = policy.decide(message(), person(), contact, AT)
    assert decision.status == "suppressed"
    assert "suppressed (stop)" in decision.reason and "suppressed (bounce)" in decision.reason


def test_a_killed_channel_falls_back_to_the_other(book: RuleBook) -> None:
    killed = policy_for(book, frozenset({"sms"}))
    decision = killed.decide(message(), person(), ContactState(), AT)
    assert (decision.status, decision.channel) == ("sent", "email")


def test_an_sms_over_its_segment_budget_goes_by_email(policy: ContactPolicy) -> None:
    long_plan = dict(REMINDER, plan="Enterprise " * 30)
    decision = policy.decide(message(context=long_plan), person(), ContactState(), AT)
    assert (decision.status, decision.channel) == ("sent", "email")
    assert any("over the budget of 2" in c["detail"] for c in decision.checks)
    no_email = policy.decide(message(context=long_plan), person(email=None), ContactState(), AT)
    assert no_email.status == "suppressed"
    assert "SMS segments over the budget of 2" in no_email.reason


# -- dedup --------------------------------------------------------------------------------


def test_the_same_notice_is_not_sent_twice_within_30_days(policy: ContactPolicy) -> None:
    contact = ContactState()
    first = message(message_id="msg_first", notice="n")
    assert send(policy, first, person(), contact, AT).status == "sent"
    dup = policy.decide(
        message(message_id="b", notice="n"), person(), contact, AT + timedelta(days=29)
    )
    assert dup.status == "suppressed"
    assert "duplicate notice" in dup.reason and "msg_first" in dup.reason
    later = policy.decide(
        message(message_id="c", notice="n"), person(), contact, AT + timedelta(days=30)
    )
    assert later.status == "sent"
    other = policy.decide(message(message_id="d", notice="m"), person(), contact, AT)
    assert other.status == "sent"


def test_a_deferred_message_is_not_a_duplicate_of_itself(policy: ContactPolicy) -> None:
    contact = ContactState()
    night = send(
        policy, message(message_id="a", notice="n"), person(), contact, local("2026-03-10 23:00")
    )
    assert night.status == "deferred"
    assert (
        policy.decide(message(message_id="b", notice="n"), person(), contact, AT).status
        == "suppressed"
    )
    assert (
        send(policy, message(message_id="a", notice="n"), person(), contact, night.send_at).status
        == "sent"
    )


def test_decide_changes_nothing(policy: ContactPolicy) -> None:
    contact = ContactState(suppressed={"sms": "stop"}, marketing=[AT.timestamp() - 3600])
    before = msgspec.json.encode(contact)
    for purpose in ("transactional", "marketing"):
        policy.decide(message(purpose), person(mail=(True, True)), contact, AT)
    assert msgspec.json.encode(contact) == before


# -- suppression events through the core ------------------------------------------------------


def failed(at: str) -> dict[str, Any]:
    return make_event(
        "payment.failed",
        at,
        payment_id="p",
        invoice_id=f"in_{at[:10]}",
        amount=100,
        currency="USD",
        decline_code="expired_card",
        attempt=1,
    )


def test_sms_stop_and_start_events_switch_the_channel(run: Callable[..., Run]) -> None:
    result = run(
        [
            profile("2026-03-01T12:00:00Z"),
            make_event("contact.suppressed", "2026-03-02T12:00:00Z", channel="sms", reason="stop"),
            failed("2026-03-03T15:00:00Z"),
            make_event(
                "contact.unsuppressed", "2026-03-04T12:00:00Z", channel="sms", reason="start"
            ),  # fmt: skip
            failed("2026-03-05T15:00:00Z"),
        ]
    )
    assert [(m["channel"], m["status"]) for m in result.messages] == [
        ("email", "sent"),
        ("sms", "sent"),
    ]


def test_an_email_bounce_with_no_sms_consent_suppresses_with_the_reason(
    run: Callable[..., Run],
) -> None:
    result = run(
        [
            profile("2026-03-01T12:00:00Z", sms=(False, False)),
            make_event(
                "contact.suppressed", "2026-03-02T12:00:00Z", channel="email", reason="bounce"
            ),  # fmt: skip
            failed("2026-03-03T15:00:00Z"),
        ]
    )
    assert [m["status"] for m in result.messages] == ["suppressed"]
    assert "email: suppressed (bounce)" in result.messages[0]["reason"]


def test_a_cancelled_service_notice_starts_no_marketing_blackout(run: Callable[..., Run]) -> None:
    events: list[dict[str, Any]] = [profile("2026-03-01T12:00:00Z", mail=(True, True))]
    events += [
        make_event(
            "usage.reported",
            f"2026-03-0{2 + i}T15:00:00Z",
            "cus_1",
            metric="api_calls",
            value=100,
            period_start="2026-03-01T00:00:00Z",
            period_end=f"2026-03-0{2 + i}T15:00:00Z",
        )  # fmt: skip
        for i in range(4)
    ]
    shipment = {"shipment_id": "shp_1", "order_id": "ORD-1", "carrier": "ups",
                "promised_delivery": "2026-03-10T15:00:00Z"}  # fmt: skip
    events += [
        # 02:00 EDT: the delay notice is deferred to 08:00 ...
        make_event(
            "shipment.updated",
            "2026-03-09T06:00:00Z",
            status="in_transit",
            estimated_delivery="2026-03-12T15:00:00Z",
            **shipment,
        ),  # fmt: skip
        # ... and cancelled at 05:00 EDT: the parcel arrived, no notice was ever sent
        make_event("shipment.updated", "2026-03-09T09:00:00Z", status="delivered", **shipment),
        make_event(
            "usage.reported",
            "2026-03-09T15:00:00Z",
            "cus_1",
            metric="api_calls",
            value=10,
            period_start="2026-03-08T00:00:00Z",
            period_end="2026-03-09T15:00:00Z",
        ),  # fmt: skip
    ]
    result = run(events)
    shipment_notice, offer = result.messages
    assert shipment_notice["status"] == "suppressed"  # cancelled, never sent
    assert (offer["rule_id"], offer["status"]) == ("usage-decline", "sent")
