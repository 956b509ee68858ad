"""payment-recovery, clause by clause, through the shipped rules folder.

The customer lives in America/New_York; the first failure is Mon 2026-03-02 15:00Z (10:00
EST), so the retries at +1d, +3d and +7d land on Tue 3, Thu 5 and Mon 9 March at 15:00Z.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from support import Run, later, make_event, profile

RULE = "payment-recovery"
T = "2026-03-02T15:00:00Z"
HARD = [
    "stolen_card",
    "lost_card",
    "pickup_card",
    "fraudulent",
    "incorrect_number",
    "invalid_account",
    "expired_card",
    "restricted_card",
    "revocation_of_authorization",
]
ESCALATED = {"stolen_card", "lost_card", "pickup_card", "fraudulent"}
SOFT = ["insufficient_funds", "generic_decline", "processing_error", "card_velocity_exceeded"]
Runner = Callable[..., Run]


def failed(
    at: str,
    code: str = "insufficient_funds",
    *,
    invoice: str = "in_1",
    attempt: int = 1,
    customer: str = "cus_1",
) -> dict[str, Any]:
    return make_event(
        "payment.failed",
        at,
        customer,
        payment_id=f"pay_{invoice}_{attempt}",
        invoice_id=invoice,
        amount=2900,
        currency="USD",
        decline_code=code,
        attempt=attempt,
    )


def succeeded(at: str, invoice: str = "in_1", customer: str = "cus_1") -> dict[str, Any]:
    return make_event(
        "payment.succeeded",
        at,
        customer,
        payment_id=f"pay_{invoice}_ok",
        invoice_id=invoice,
        amount=2900,
        currency="USD",
    )


def customer(**kw: Any) -> dict[str, Any]:
    return profile("2026-03-01T12:00:00Z", **kw)


def of_type(actions: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [a for a in actions if a["type"] == kind]


def history(result: Run, kind: str) -> list[dict[str, Any]]:
    """Every record (not only the final state) of the actions of one type."""
    return [a for a in result.log.actions if a["type"] == kind]


# -- hard declines -------------------------------------------------------------------------


@pytest.mark.parametrize("code", HARD)
def test_a_hard_decline_is_never_retried(run: Runner, code: str) -> None:
    result = run([customer(), failed(T, code), failed(later(T, days=2), code, attempt=2)])
    assert history(result, "retry_payment") == []


@pytest.mark.parametrize("code", HARD)
def test_a_hard_decline_requests_a_payment_update(run: Runner, code: str) -> None:
    result = run([customer(), failed(T, code)])
    updates = of_type(result.of(RULE)[0], "request_payment_update")
    assert [(u["status"], u["params"]["invoice_id"]) for u in updates] == [("executed", "in_1")]


@pytest.mark.parametrize("code", HARD)
def test_only_suspected_fraud_goes_to_a_human(run: Runner, code: str) -> None:
    result = run([customer(), failed(T, code)])
    escalations = of_type(result.of(RULE)[0], "escalate_to_human")
    assert [e["status"] for e in escalations] == (["executed"] if code in ESCALATED else [])


@pytest.mark.parametrize("code", HARD)
@pytest.mark.parametrize("phone", ["+14155550100", None], ids=["sms", "email"])
def test_a_hard_decline_asks_for_a_new_payment_method_without_naming_fraud_or_theft(
    run: Runner, code: str, phone: str | None
) -> None:
    result = run([customer(phone=phone), failed(T, code)])
    _, messages = result.of(RULE)
    assert len(messages) == 1
    message = messages[0]
    assert (message["purpose"], message["status"]) == ("transactional", "sent")
    assert message["channel"] == ("sms" if phone else "email")
    text = f"{message['subject'] or ''} {message['body']}".lower()
    assert "new payment method" in text or "new one" in text
    assert "https://billing.acme.example/invoices/in_1/pay" in text
    words = ["fraud", "stolen", "steal", "theft", "lost", "pickup", "pick up", "compromised"]
    for word in [*words, code.replace("_", " "), code]:
        assert word not in text


def test_a_hard_decline_after_a_soft_one_cancels_the_pending_retries(run: Runner) -> None:
    result = run([customer(), failed(T), failed(later(T, hours=5), "stolen_card", attempt=2)])
    retries = of_type(result.actions, "retry_payment")
    assert [r["status"] for r in retries] == ["cancelled"] * 3
    assert not [
        a for a in result.log.actions if a["type"] == "retry_payment" and a["status"] == "executed"
    ]


# -- soft declines: the schedule -----------------------------------------------------------


@pytest.mark.parametrize("code", SOFT)
def test_a_soft_decline_schedules_retries_at_1_3_and_7_days(run: Runner, code: str) -> None:
    result = run([customer(), failed(T, code)])
    scheduled = [a for a in history(result, "retry_payment") if a["status"] == "scheduled"]
    assert [a["scheduled_for"] for a in scheduled] == [
        "2026-03-03T15:00:00Z",
        "2026-03-05T15:00:00Z",
        "2026-03-09T15:00:00Z",
    ]
    done = of_type(result.actions, "retry_payment")
    assert [(a["status"], a["at"]) for a in done] == [
        ("executed", "2026-03-03T15:00:00Z"),
        ("executed", "2026-03-05T15:00:00Z"),
        ("executed", "2026-03-09T15:00:00Z"),
    ]


def test_do_not_honor_gets_at_most_two_retries(run: Runner) -> None:
    result = run([customer(), failed(T, "do_not_honor")])
    done = of_type(result.actions, "retry_payment")
    assert [(a["status"], a["at"]) for a in done] == [
        ("executed", "2026-03-03T15:00:00Z"),
        ("executed", "2026-03-05T15:00:00Z"),
    ]


def test_later_failures_continue_the_schedule_of_the_first(run: Runner) -> None:
    result = run(
        [
            customer(),
            failed(T),
            failed(later(T, days=1, minutes=5), attempt=2),  # retry 1 failed
            failed(later(T, days=3, minutes=5), "do_not_honor", attempt=3),  # retry 2 failed
        ]
    )
    done = of_type(result.actions, "retry_payment")
    assert [(a["status"], a["at"]) for a in done] == [
        ("executed", "2026-03-03T15:00:00Z"),
        ("executed", "2026-03-05T15:00:00Z"),
        ("executed", "2026-03-09T15:00:00Z"),
    ]
    assert len({a["action_id"] for a in result.log.actions if a["type"] == "retry_payment"}) == 3
    assert of_type(result.actions, "escalate_to_human") == []


# -- soft declines: the one message --------------------------------------------------------


def test_one_message_per_invoice_on_its_first_failure(run: Runner) -> None:
    result = run(
        [
            customer(),
            failed(T),
            failed(later(T, days=1, minutes=5), attempt=2),
            failed(later(T, days=3, minutes=5), attempt=3),
        ]
    )
    _, messages = result.of(RULE)
    assert [(m["send_at"], m["status"], m["purpose"]) for m in messages] == [
        (T, "sent", "transactional")
    ]


def test_the_message_says_when_we_retry_and_how_to_update_the_card(run: Runner) -> None:
    result = run([customer(), failed(T)])
    message = result.of(RULE)[1][0]
    assert message["template"] == "payment_retry_notice"
    assert "Tue, Mar 3" in message["body"]  # first retry, local day
    assert "https://billing.acme.example/invoices/in_1/pay" in message["body"]


def test_the_email_version_gives_the_local_retry_time(run: Runner) -> None:
    result = run([customer(phone=None), failed(T)])
    message = result.of(RULE)[1][0]
    assert message["channel"] == "email"
    assert "Tue, Mar 3, 10:00 AM" in message["body"]  # 15:00Z in EST
    assert "https://billing.acme.example/invoices/in_1/pay" in message["body"]


def test_each_invoice_gets_its_own_schedule_and_message(run: Runner) -> None:
    result = run([customer(), failed(T, invoice="in_1"), failed(later(T, hours=1), invoice="in_2")])
    actions, messages = result.of(RULE)
    assert len(of_type(actions, "retry_payment")) == 6
    assert len(messages) == 2
    assert "invoices/in_2/pay" in messages[1]["body"]


def test_a_first_failure_at_night_defers_the_single_message_to_8am(run: Runner) -> None:
    night = "2026-03-03T03:00:00Z"  # 22:00 EST
    result = run([customer(), failed(night), failed(later(night, hours=2), attempt=2)])
    _, messages = result.of(RULE)
    assert [(m["status"], m["send_at"]) for m in messages] == [
        ("sent", "2026-03-03T13:00:00Z")  # 08:00 EST
    ]


# -- payment.succeeded ---------------------------------------------------------------------


def test_success_cancels_the_pending_retries(run: Runner) -> None:
    result = run([customer(), failed(T), succeeded(later(T, days=2))])
    done = of_type(result.actions, "retry_payment")
    assert [(a["status"], a["at"]) for a in done] == [
        ("executed", "2026-03-03T15:00:00Z"),
        ("cancelled", "2026-03-04T15:00:00Z"),
        ("cancelled", "2026-03-04T15:00:00Z"),
    ]


def test_success_cancels_a_message_still_waiting_for_8am(run: Runner) -> None:
    night = "2026-03-03T03:00:00Z"  # 22:00 EST: deferred
    result = run([customer(), failed(night), succeeded(later(night, hours=2))])
    _, messages = result.of(RULE)
    assert [m["status"] for m in messages] == ["suppressed"]
    assert "cancel" in messages[0]["reason"]


def test_after_success_a_failure_of_the_invoice_sends_nothing_more(run: Runner) -> None:
    result = run(
        [customer(), failed(T), succeeded(later(T, hours=2)), failed(later(T, days=1), attempt=2)]
    )
    actions, messages = result.of(RULE)
    assert len(messages) == 1  # the first-failure message only
    assert {a["status"] for a in actions} == {"cancelled"}
    assert of_type(actions, "escalate_to_human") == []


def test_success_of_another_invoice_cancels_nothing(run: Runner) -> None:
    result = run([customer(), failed(T, invoice="in_1"), succeeded(later(T, hours=2), "in_9")])
    done = of_type(result.actions, "retry_payment")
    assert [a["status"] for a in done] == ["executed"] * 3


# -- escalation after the last retry -------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "last_retry"), [("insufficient_funds", {"days": 7}), ("do_not_honor", {"days": 3})]
)
def test_a_failure_after_the_last_retry_goes_to_a_human(
    run: Runner, code: str, last_retry: dict[str, float]
) -> None:
    after = later(later(T, **last_retry), minutes=1)
    result = run([customer(), failed(T, code), failed(after, code, attempt=4)])
    escalations = of_type(result.actions, "escalate_to_human")
    assert [(e["status"], e["at"]) for e in escalations] == [
        ("executed", after.replace("+00:00", "Z"))
    ]


def test_a_failure_between_retries_is_not_escalated(run: Runner) -> None:
    result = run([customer(), failed(T), failed(later(T, days=6, hours=23), attempt=3)])
    assert of_type(result.actions, "escalate_to_human") == []


def test_escalation_happens_once(run: Runner) -> None:
    result = run(
        [
            customer(),
            failed(T),
            failed(later(T, days=8), attempt=4),
            failed(later(T, days=9), attempt=5),
        ]
    )
    assert len(of_type(result.actions, "escalate_to_human")) == 1


def test_a_held_retry_notice_is_not_sent_once_its_retries_are_cancelled(run: Runner) -> None:
    night = "2026-03-03T03:00:00Z"  # 22:00 EST: the retry notice waits for 08:00
    result = run(
        [customer(), failed(night), failed(later(night, hours=2), "stolen_card", attempt=2)]
    )
    assert {a["status"] for a in of_type(result.actions, "retry_payment")} == {"cancelled"}
    sent = [m["template"] for m in result.of(RULE)[1] if m["status"] == "sent"]
    assert sent == ["payment_update_needed"]
