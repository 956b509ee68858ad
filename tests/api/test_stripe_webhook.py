"""Stripe webhooks on the API, signed with Stripe's own scheme (the SDK's
``WebhookSignature.generate_signature_header``), and the ``/pay/<invoice>`` links."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import orjson
import pytest
import stripe
from connectors.stripe_double import API_KEY, StripeDouble
from fastapi.testclient import TestClient

from outreach.api import ApiSettings, FakeEventSink, create_app
from outreach.connectors.billing import StripeBilling
from outreach.connectors.config import StripeSection
from outreach.events import PaymentFailed, PaymentSucceeded, RenewalCancelled, RenewalUpcoming
from outreach.store.contacts import Contacts

pytestmark = pytest.mark.timeout(60)

SECRET = "whsec_test_outreach"
Post = Callable[..., httpx.Response]


def stripe_event(kind: str, obj: dict[str, Any], event_id: str = "evt_1") -> dict[str, Any]:
    return {
        "id": event_id, "object": "event", "type": kind, "created": 1772445000,
        "api_version": "2024-06-20", "livemode": False, "data": {"object": obj},
    }  # fmt: skip


def invoice(**extra: Any) -> dict[str, Any]:
    return {
        "id": "in_1", "object": "invoice", "customer": "cus_a", "amount_due": 2999,
        "amount_remaining": 2999, "amount_paid": 0, "currency": "usd", "attempt_count": 2,
        "status": "open", "payment_intent": "pi_1", **extra,
    }  # fmt: skip


def subscription(**extra: Any) -> dict[str, Any]:
    return {
        "id": "sub_1", "object": "subscription", "customer": "cus_a", "status": "active",
        "cancel_at_period_end": False, "cancel_at": None,
        "items": {"object": "list", "data": [{
            "id": "si_1", "quantity": 2, "current_period_end": 1775000000,
            "price": {"id": "price_pro", "lookup_key": "pro_monthly", "unit_amount": 1500,
                      "currency": "usd"},
        }]},
        **extra,
    }  # fmt: skip


@pytest.fixture
def stripe_post(client_for: Callable[[ApiSettings], TestClient]) -> Post:
    """``stripe_post(event, secret=SECRET, at=now, header=None)``: the webhook POST as Stripe
    sends it."""
    client = client_for(ApiSettings(stripe_webhook_secret=SECRET))

    def post(
        event: Any, secret: str = SECRET, at: int | None = None, header: str | None = None
    ) -> httpx.Response:
        body = event if isinstance(event, bytes) else orjson.dumps(event)
        sign = stripe.WebhookSignature.generate_signature_header(
            body.decode(), secret, timestamp=at if at is not None else int(time.time())
        )
        headers = {"Stripe-Signature": header if header is not None else sign}
        return client.post("/webhooks/stripe", content=body, headers=headers)

    return post


def test_payment_failed_becomes_the_engines_payment_failed(
    stripe_post: Post, sink: FakeEventSink
) -> None:
    obj = invoice(last_payment_error={"decline_code": "stolen_card", "code": "card_declined"})
    assert stripe_post(stripe_event("invoice.payment_failed", obj)).status_code == 200
    (event,) = sink.events
    assert isinstance(event, PaymentFailed)
    assert event.event_id == "stripe:invoice.payment_failed:in_1:2"
    assert (event.customer_id, event.source) == ("cus_a", "stripe")
    d = event.data
    assert (d.invoice_id, d.payment_id, d.amount, d.currency) == ("in_1", "pi_1", 2999, "USD")
    assert (d.decline_code, d.attempt) == ("stolen_card", 2)


def test_a_failure_naming_no_decline_code_is_a_soft_decline(
    stripe_post: Post, sink: FakeEventSink
) -> None:
    stripe_post(stripe_event("invoice.payment_failed", invoice()))
    (event,) = sink.events
    assert isinstance(event, PaymentFailed)
    assert event.data.decline_code == "generic_decline"


def test_invoice_paid_becomes_payment_succeeded_with_the_connectors_event_id(
    stripe_post: Post, sink: FakeEventSink
) -> None:
    """The same id as the billing connector's report of the same payment: one of the two is
    a duplicate to the core."""
    paid = invoice(status="paid", amount_paid=2999, amount_remaining=0)
    stripe_post(stripe_event("invoice.paid", paid))
    (event,) = sink.events
    assert isinstance(event, PaymentSucceeded)
    assert event.event_id == "stripe:invoice.paid:in_1"
    assert (event.data.invoice_id, event.data.amount, event.data.currency) == ("in_1", 2999, "USD")


def test_a_subscription_set_to_cancel_is_a_renewal_at_risk(
    stripe_post: Post, sink: FakeEventSink
) -> None:
    stripe_post(stripe_event("customer.subscription.updated", subscription(
        cancel_at_period_end=True)))  # fmt: skip
    stripe_post(stripe_event("customer.subscription.updated", subscription(), "evt_2"))
    stripe_post(stripe_event("customer.subscription.updated", subscription(status="canceled"),
                             "evt_3"))  # fmt: skip
    at_risk, renewing, cancelled = sink.events
    assert isinstance(at_risk, RenewalUpcoming) and isinstance(renewing, RenewalUpcoming)
    assert at_risk.data.auto_renew is False and renewing.data.auto_renew is True
    assert (at_risk.data.subscription_id, at_risk.data.plan) == ("sub_1", "pro_monthly")
    assert (at_risk.data.amount, at_risk.data.currency) == (3000, "USD")
    assert int(at_risk.data.renews_at.timestamp()) == 1775000000
    assert isinstance(cancelled, RenewalCancelled)


def test_other_types_are_acknowledged_and_ignored(stripe_post: Post, sink: FakeEventSink) -> None:
    assert stripe_post(stripe_event("charge.refunded", {"id": "ch_1"})).status_code == 200
    assert sink.events == [] and sink.dead_letters == []


@pytest.mark.parametrize(
    "bad", ["unsigned", "wrong secret", "body changed", "too old", "garbage header"]
)
def test_unsigned_forged_and_replayed_webhooks_are_refused(
    stripe_post: Post, sink: FakeEventSink, bad: str
) -> None:
    event = stripe_event("invoice.paid", invoice(status="paid"))
    if bad == "unsigned":
        answer = stripe_post(event, header="")
    elif bad == "wrong secret":
        answer = stripe_post(event, secret="whsec_other")
    elif bad == "body changed":
        good = orjson.dumps(event)
        sign = stripe.WebhookSignature.generate_signature_header(good.decode(), SECRET)
        answer = stripe_post(good.replace(b"2999", b"9999"), header=sign)
    elif bad == "too old":  # a captured request sent again later
        answer = stripe_post(event, at=int(time.time()) - 301)
    else:
        answer = stripe_post(event, header="t=abc,v1=zz")
    assert answer.status_code == 400
    assert sink.events == []


def test_the_same_event_twice_is_taken_once(stripe_post: Post, sink: FakeEventSink) -> None:
    event = stripe_event("invoice.paid", invoice(status="paid"))
    assert stripe_post(event).status_code == 200
    assert stripe_post(event).status_code == 200  # a replay inside the tolerance, or a retry
    assert len(sink.events) == 1


def test_an_event_that_does_not_fit_is_dead_lettered_not_lost(
    stripe_post: Post, sink: FakeEventSink
) -> None:
    broken = invoice(currency="dollars")  # not ISO 4217
    assert stripe_post(stripe_event("invoice.paid", broken)).status_code == 200
    assert sink.events == []
    ((key, value),) = sink.dead_letters
    assert key == b"cus_a"
    letter = orjson.loads(value)
    assert "currency" in letter["error"] and letter["topic"] == "webhook:stripe"
    missing = stripe_event("invoice.paid", {"object": "invoice"}, "evt_9")  # no id at all
    assert stripe_post(missing).status_code == 200
    assert len(sink.dead_letters) == 2


def test_without_a_secret_the_webhook_answers_503(
    client_for: Callable[[ApiSettings], TestClient], sink: FakeEventSink
) -> None:
    client = client_for(ApiSettings())
    answer = client.post("/webhooks/stripe", content=b"{}", headers={"Stripe-Signature": "x"})
    assert answer.status_code == 503
    assert "OUTREACH_STRIPE_WEBHOOK_SECRET" in answer.text


def test_a_publish_failure_answers_503_and_stripe_may_send_it_again(
    stripe_post: Post, sink: FakeEventSink
) -> None:
    event = stripe_event("invoice.paid", invoice(status="paid"))
    sink.failure = RuntimeError("kafka down")
    assert stripe_post(event).status_code == 503
    sink.failure = None
    assert stripe_post(event).status_code == 200
    assert len(sink.events) == 1


# -- /pay/<invoice> --------------------------------------------------------------------------


@pytest.fixture
def pay_client(
    contacts: Contacts, sink: FakeEventSink
) -> Iterator[tuple[TestClient, StripeDouble]]:
    with StripeDouble() as double:
        billing = StripeBilling(StripeSection(api_key=API_KEY, api_base=double.url))
        app = create_app(ApiSettings(), contacts, sink, _replies(), brand="Acme",
                         billing=billing.client)  # fmt: skip
        with TestClient(app) as client:
            yield client, double


def _replies() -> Any:
    from api.conftest import REPLIES  # type: ignore[import-not-found]

    return REPLIES


def test_pay_redirects_to_the_open_invoices_stripe_page(
    pay_client: tuple[TestClient, StripeDouble],
) -> None:
    client, double = pay_client
    double.invoice("in_7", "cus_a")
    answer = client.get("/pay/in_7", follow_redirects=False)
    assert answer.status_code == 303
    assert answer.headers["location"] == "https://invoice.stripe.test/i/in_7"
    double.invoice("in_8", "cus_a", state="paid")
    paid = client.get("/pay/in_8", follow_redirects=False)
    assert paid.status_code == 200 and "paid" in paid.text
    assert client.get("/pay/in_nope", follow_redirects=False).status_code == 404
