"""Delivery outcomes and SMS replies change what the core does next (through the shipped rules).

A late parcel (shipment-delay) makes a transactional SMS to a customer in New York at 11:00
local; the tests then feed what Twilio or SendGrid would report, and the customer's replies.
"""

from __future__ import annotations

from typing import Any

import pytest
from support import Run, later, make_event, profile, run_events

from outreach.events import event_from_obj
from outreach.outbound.state import SentMessage
from outreach.rulebook import RuleBook

AT = "2026-03-09T15:00:00Z"  # Mon 11:00 EDT
PROMISED = "2026-03-10T15:00:00Z"
PHONE = "+14155550100"


def late_parcel(at: str = AT, customer: str = "cus_1", shipment: str = "shp_1") -> dict[str, Any]:
    return make_event(
        "shipment.updated", at, customer, shipment_id=shipment, order_id="ORD-1",
        carrier="ups", status="in_transit", promised_delivery=PROMISED,
        estimated_delivery=later(PROMISED, days=2),
    )  # fmt: skip


def status(
    message_id: str,
    state: str,
    at: str,
    *,
    channel: str = "sms",
    code: str | None = None,
    attempt: int = 1,
    provider_event: str | None = None,
    detail: str | None = None,
    customer: str = "cus_1",
    provider: str | None = None,
) -> dict[str, Any]:
    data: dict[str, Any] = {
        "message_id": message_id, "channel": channel, "status": state, "attempt": attempt,
        "provider": provider or ("twilio" if channel == "sms" else "sendgrid"), "error_code": code,
        "provider_event": provider_event, "detail": detail,
    }  # fmt: skip
    return make_event("message.status", at, customer, **data)


def reply(body: str, at: str, customer: str = "cus_1") -> dict[str, Any]:
    return make_event(
        "message.received", at, customer, channel="sms", from_address=PHONE, body=body,
        provider="twilio",
    )  # fmt: skip


def feed(result: Run, *events: dict[str, Any]) -> None:
    for event in events:
        result.replayer.feed_event(event_from_obj(event))


def sent_sms(book: RuleBook) -> tuple[Run, str]:
    """A run in which the late-parcel SMS went; returns it and the message id."""
    result = run_events(book, [profile("2026-03-01T12:00:00Z"), late_parcel()], drain=False)
    (message,) = [m for m in result.messages if m["rule_id"] == "shipment-delay"]
    assert (message["channel"], message["status"]) == ("sms", "sent")
    return result, message["message_id"]


def state(result: Run, customer: str = "cus_1") -> Any:
    return result.replayer.states[customer]


# -- the delivery state machine ----------------------------------------------------------------


def test_reports_move_a_message_forward_only(book: RuleBook) -> None:
    result, mid = sent_sms(book)
    feed(
        result,
        status(mid, "sent", later(AT, seconds=5)),
        status(mid, "delivered", later(AT, seconds=9)),
        status(mid, "sent", later(AT, seconds=10)),  # late and out of order
    )
    assert [(r["status"], r["applied"]) for r in result.log.receipts] == [
        ("sent", True), ("delivered", True), ("sent", False),
    ]  # fmt: skip
    assert mid not in state(result).contact.sent  # final: no longer waited for


def test_a_report_about_an_older_attempt_changes_nothing(book: RuleBook) -> None:
    result, mid = sent_sms(book)
    feed(result, status(mid, "delivered", later(AT, seconds=5), attempt=2))
    assert result.log.receipts[-1]["applied"] is False
    assert state(result).contact.sent[mid].status == "queued"


# -- SMS failures ------------------------------------------------------------------------------


@pytest.mark.parametrize("code", ["21211", "21614", "30005", "30006"])
def test_an_unusable_number_is_suppressed_and_the_message_goes_by_email(
    book: RuleBook, code: str
) -> None:
    result, mid = sent_sms(book)
    feed(result, status(mid, "undelivered", later(AT, minutes=1), code=code))
    assert state(result).contact.suppressed == {"sms": "unusable"}
    first, again = [d for d in result.log.deliveries if d["message_id"] == mid]
    assert (first["channel"], first["attempt"]) == ("sms", 1)
    assert (again["channel"], again["attempt"], again["to"]) == ("email", 2, "ann@example.com")
    assert "sent again by email" in result.log.receipts[-1]["reaction"]
    assert result.messages[-1]["channel"] == "email"  # the message's current state


def test_a_new_number_lifts_an_unusable_suppression_but_not_a_stop(book: RuleBook) -> None:
    result, mid = sent_sms(book)
    feed(result, status(mid, "failed", later(AT, minutes=1), code="30006"))
    feed(result, profile(later(AT, hours=1), phone="+14155550199"))
    assert "sms" not in state(result).contact.suppressed
    feed(result, reply("STOP", later(AT, hours=2)))
    feed(result, profile(later(AT, hours=3), phone="+14155550111"))
    assert state(result).contact.suppressed == {"sms": "stop"}


def test_an_opted_out_number_21610_is_suppressed_and_not_sent_again(book: RuleBook) -> None:
    result, mid = sent_sms(book)
    feed(result, status(mid, "failed", later(AT, minutes=1), code="21610"))
    assert state(result).contact.suppressed == {"sms": "stop"}
    assert [d["message_id"] for d in result.log.deliveries] == [mid]


def test_carrier_hiccups_are_retried_twice_with_backoff_then_given_up(book: RuleBook) -> None:
    result, mid = sent_sms(book)
    feed(result, status(mid, "undelivered", later(AT, minutes=1), code="30003"))
    timer = state(result).contact.sent[mid].timer_id
    due = state(result).timers[timer].due
    # 300 s base, jitter in [0.5, 1): between 2.5 and 5 minutes after the report
    report_at = 1773068460.0  # 2026-03-09T15:01:00Z
    assert report_at + 150 <= due < report_at + 300
    result.replayer.drain()
    attempts = [d["attempt"] for d in result.log.deliveries if d["message_id"] == mid]
    assert attempts == [1, 2]
    feed(result, status(mid, "undelivered", later(AT, hours=1), code="30008", attempt=2))
    result.replayer.drain()
    feed(result, status(mid, "undelivered", later(AT, hours=2), code="30003", attempt=3))
    result.replayer.drain()
    attempts = [d["attempt"] for d in result.log.deliveries if d["message_id"] == mid]
    assert attempts == [1, 2, 3]  # at most twice more
    assert "2 carrier retries used" in result.log.receipts[-1]["reaction"]


def test_carrier_filtering_pauses_the_template_on_sms_alerts_and_uses_email(
    book: RuleBook,
) -> None:
    result, mid = sent_sms(book)
    feed(result, status(mid, "undelivered", later(AT, minutes=1), code="30007"))
    receipt = result.log.receipts[-1]
    assert receipt["alert"] is True and "paused" in receipt["reaction"]
    assert result.replayer.shared.control("template", "sms:shipment_delay")
    assert result.log.deliveries[-1]["channel"] == "email"
    # another customer's late parcel: the paused template does not go by SMS any more
    feed(
        result,
        profile(later(AT, hours=1), customer="cus_2"),
        late_parcel(later(AT, hours=2), "cus_2"),
    )
    other = [m for m in result.messages if m["customer_id"] == "cus_2"]
    assert [m["channel"] for m in other] == ["email"]
    assert any("template paused on sms" in c["detail"] for c in other[0]["checks"])


# -- what the dispatcher did not send ----------------------------------------------------------


def test_an_sms_refused_because_the_number_opted_out_meanwhile_goes_by_email(
    book: RuleBook,
) -> None:
    """The STOP reached the store (the webhook) before the core: the dispatcher refused the
    SMS and says so; the core learns the opt-out from it and tells the customer by email."""
    result, mid = sent_sms(book)
    refused = status(
        mid, "failed", later(AT, seconds=3), code="suppressed", provider="dispatcher",
        provider_event="stop", detail="address suppressed (stop)",
    )  # fmt: skip
    feed(result, refused)
    assert state(result).contact.suppressed == {"sms": "stop"}
    receipt = result.log.receipts[-1]
    assert receipt["reaction"] == (
        "sms suppressed: the address opted out (stop); sent again by email (attempt 2)"
    )
    assert receipt["alert"] is False
    again = result.log.deliveries[-1]
    assert (again["message_id"], again["channel"], again["attempt"]) == (mid, "email", 2)


def test_an_sms_the_provider_never_took_alerts_and_goes_by_email(book: RuleBook) -> None:
    result, mid = sent_sms(book)
    gave_up = status(
        mid, "failed", later(AT, minutes=30), code="gave_up", provider="dispatcher",
        detail="gave up after 8 attempts: HTTP 503",
    )  # fmt: skip
    feed(result, gave_up)
    assert state(result).contact.suppressed == {}  # the provider's trouble, not the number's
    receipt = result.log.receipts[-1]
    assert receipt["alert"] is True
    assert receipt["reaction"].startswith("ALERT: the sms provider failed every attempt")
    assert receipt["reaction"].endswith("sent again by email (attempt 2)")
    assert result.log.deliveries[-1]["channel"] == "email"


def test_a_message_the_provider_never_took_and_no_other_channel_may_carry_is_not_retried(
    book: RuleBook,
) -> None:
    result = run_events(
        book, [profile("2026-03-01T12:00:00Z", email=None), late_parcel()], drain=False
    )
    (message,) = [m for m in result.messages if m["rule_id"] == "shipment-delay"]
    feed(result, status(message["message_id"], "failed", later(AT, minutes=30), code="gave_up",
                        provider="dispatcher", detail="gave up"))  # fmt: skip
    reaction = result.log.receipts[-1]["reaction"]
    assert "not sent again: no channel may carry it" in reaction
    assert "sms: its provider failed every attempt" in reaction
    assert len(result.log.deliveries) == 1


def test_a_marketing_email_refused_for_the_list_leaves_the_list_only(book: RuleBook) -> None:
    result, _ = sent_sms(book)
    cs = state(result)
    cs.contact.sent["msg_m"] = SentMessage(
        message_id="msg_m", signal_id="sig", rule_id="usage-decline", entity="e",
        template="usage_decline_offer", purpose="marketing", context={"percent": 20, "months": 1},
        notice="n", category="retention", channel="email", to="ann@example.com", sent_at=0.0,
    )  # fmt: skip
    refused = status(
        "msg_m", "failed", later(AT, seconds=3), channel="email", code="suppressed",
        provider="dispatcher", provider_event="unsubscribe",
    )  # fmt: skip
    feed(result, refused)
    assert cs.contact.lists == {"marketing": "unsubscribe"}
    assert "email" not in cs.contact.suppressed


# -- email failures ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("state_", "event", "detail", "suppressed"),
    [
        ("bounced", "bounce", "550 no such user", {"email": "bounce"}),
        ("failed", "dropped", "Bounced Address", {"email": "bounce"}),
        ("failed", "dropped", "Unsubscribed Address", {"email": "unsubscribe"}),
        ("failed", "dropped", "Spam Reporting Address", {"email": "complaint"}),
        ("failed", "dropped", "Invalid SMTPAPI header", {}),
        ("undelivered", "bounce", "blocked: try later", {}),
    ],
)
def test_email_outcomes_suppress_only_for_address_problems(
    book: RuleBook, state_: str, event: str, detail: str, suppressed: dict[str, str]
) -> None:
    events = [profile("2026-03-01T12:00:00Z", phone=None), late_parcel()]
    result = run_events(book, events, drain=False)
    (message,) = result.messages
    assert message["channel"] == "email"
    feed(
        result,
        status(
            message["message_id"], state_, later(AT, minutes=5), channel="email",
            provider_event=event, detail=detail,
        ),
    )  # fmt: skip
    assert state(result).contact.suppressed == suppressed


# -- replies -----------------------------------------------------------------------------------


def test_stop_suppresses_sms_and_confirms_once(book: RuleBook) -> None:
    result, _ = sent_sms(book)
    feed(result, reply(" stop ", later(AT, minutes=3)), reply("STOP", later(AT, minutes=4)))
    assert state(result).contact.suppressed == {"sms": "stop"}
    confirmations = [d for d in result.log.deliveries if d["template"] == "keyword_stop"]
    assert len(confirmations) == 1
    assert confirmations[0]["compliance"] is True and confirmations[0]["to"] == PHONE
    assert "unsubscribed" in confirmations[0]["body"]
    # the next late parcel goes by email, not SMS
    feed(result, late_parcel(later(AT, days=1), shipment="shp_2"))
    assert result.log.deliveries[-1]["channel"] == "email"


@pytest.mark.parametrize(
    "text", ["Stop texting me!", "please unsubscribe me", "leave me alone", "don't text me again"]
)
def test_opt_out_language_suppresses_first_and_a_person_reads_it(book: RuleBook, text: str) -> None:
    result, _ = sent_sms(book)
    feed(result, reply(text, later(AT, minutes=3)))
    assert state(result).contact.suppressed == {"sms": "stop"}
    (confirmation,) = [d for d in result.log.deliveries if d["template"] == "keyword_stop"]
    assert confirmation["compliance"] is True
    (effect,) = [e for e in result.log.effects if e["tool"] == "escalate_to_human"]
    assert text in [t["text"] for t in effect["params"]["conversation"] if t["direction"] == "in"]
    feed(result, late_parcel(later(AT, days=1), shipment="shp_2"))
    assert result.log.deliveries[-1]["channel"] == "email"  # no more SMS


def test_start_resubscribes_and_help_answers_with_the_required_text(book: RuleBook) -> None:
    result, _ = sent_sms(book)
    feed(
        result,
        reply("STOP", later(AT, minutes=3)),
        reply("unstop", later(AT, minutes=4)),
        reply("Info", later(AT, minutes=5)),
    )
    assert "sms" not in state(result).contact.suppressed
    (start,) = [d for d in result.log.deliveries if d["template"] == "keyword_start"]
    (help_,) = [d for d in result.log.deliveries if d["template"] == "keyword_help"]
    assert "subscribed" in start["body"]
    for needed in ("Acme", "Msg & data rates may apply", "Reply STOP", "msgs/month", "help.acme"):
        assert needed in help_["body"]


def test_any_other_reply_goes_to_a_person_with_the_conversation(book: RuleBook) -> None:
    result, _ = sent_sms(book)
    feed(result, reply("where is my parcel??", later(AT, minutes=3)))
    (effect,) = [e for e in result.log.effects if e["tool"] == "escalate_to_human"]
    talk = effect["params"]["conversation"]
    assert [t["direction"] for t in talk] == ["out", "in"]
    assert talk[1]["text"] == "where is my parcel??"
    assert result.actions[-1]["status"] == "executed"


def test_a_killed_escalation_tool_blocks_the_handoff(book: RuleBook) -> None:
    result, _ = sent_sms(book)
    result.replayer.shared.set_control("tool", "escalate_to_human", "operator")
    feed(result, reply("hello?", later(AT, minutes=3)))
    assert [e for e in result.log.effects if e["tool"] == "escalate_to_human"] == []
    assert result.actions[-1]["status"] == "blocked"


def test_leaving_the_marketing_list_stops_marketing_email_only(book: RuleBook) -> None:
    events = [
        profile("2026-03-01T12:00:00Z", phone=None, mail=(True, True)),
        make_event(
            "contact.suppressed", "2026-03-02T12:00:00Z", channel="email",
            reason="unsubscribe", list_id="marketing",
        ),
        late_parcel(),  # transactional
    ]  # fmt: skip
    result = run_events(book, events, drain=False)
    assert state(result).contact.lists == {"marketing": "unsubscribe"}
    assert state(result).contact.suppressed == {}
    assert [m["status"] for m in result.messages] == ["sent"]


@pytest.mark.parametrize(
    ("intent", "why"),
    [("question", "a question"), ("complaint", "a complaint"),
     ("accept", "reads as an acceptance, but no offer awaits one")],
)  # fmt: skip
def test_a_read_reply_goes_to_a_person_with_its_reading(
    book: RuleBook, intent: str, why: str
) -> None:
    result, _ = sent_sms(book)
    event = reply("so what now", later(AT, minutes=3))
    reading = {"intent": intent, "confidence": 0.91, "source": "model", "reason": "model: x"}
    event["data"]["understanding"] = reading
    feed(result, event)
    (effect,) = [e for e in result.log.effects if e["tool"] == "escalate_to_human"]
    assert effect["params"]["reason"] == f"customer reply: {why}"
    assert effect["params"]["understanding"] == reading
    assert state(result).contact.suppressed == {}


def test_a_model_reading_of_opt_out_suppresses_first(book: RuleBook) -> None:
    result, _ = sent_sms(book)
    event = reply("I am done with all of you", later(AT, minutes=3))
    event["data"]["understanding"] = {
        "intent": "opt_out", "confidence": 0.95, "source": "model", "reason": "model: opt_out",
    }  # fmt: skip
    feed(result, event)
    assert state(result).contact.suppressed == {"sms": "stop"}
    (confirmation,) = [d for d in result.log.deliveries if d["template"] == "keyword_stop"]
    assert confirmation["compliance"] is True
    (effect,) = [e for e in result.log.effects if e["tool"] == "escalate_to_human"]
    assert effect["params"]["understanding"]["intent"] == "opt_out"
