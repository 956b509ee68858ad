"""The Stripe billing connector: the real stripe SDK against a local double of Stripe's API.

Checked: request shapes and idempotency keys; declines mapped to ``payment.failed`` events
with the decline code the core classifies; rate limits, outages and a revoked key; the fault
in which Stripe performs a charge but the answer never arrives (the retry must not charge
again); and that no call acts on another customer's invoice or subscription.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from connectors.stripe_double import (
    API_KEY,
    StripeDouble,
    decline,
    perform_then_hang,
    status,
)

from outreach.agents.connectors import Effect
from outreach.connectors import StripeBilling, router_for
from outreach.connectors.config import StripeSection, load_connectors
from outreach.errors import ConnectorPaused, PermanentConnectorError, TransientConnectorError
from outreach.events import event_from_obj
from outreach.rules.yamlfile import RuleFileError

CUSTOMER = "cus_alice"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def stripe_api() -> Iterator[StripeDouble]:
    with StripeDouble() as double:
        yield double


@pytest.fixture
async def billing(stripe_api: StripeDouble) -> AsyncIterator[StripeBilling]:
    connector = make(stripe_api)
    yield connector
    await connector.aclose()


def make(
    double: StripeDouble, key: str = API_KEY, clock: Clock | None = None, read: str = "1s"
) -> StripeBilling:
    section = StripeSection.model_validate(
        {"api_key": key, "api_base": double.url, "timeout": {"connect": "1s", "read": read},
         "breaker": {"failures": 2, "cooldown": "60s"}}
    )  # fmt: skip
    return StripeBilling(section, clock=clock or Clock())


def effect(tool: str, key: str = "k1", customer: str = CUSTOMER, **params: Any) -> Effect:
    return Effect(
        idempotency_key=key, action_id=f"act_{key}", customer_id=customer, tool=tool,
        params=params,
    )  # fmt: skip


def retry(key: str = "k1", invoice: str = "in_1", n: int = 1, **extra: Any) -> Effect:
    params = {"invoice_id": invoice, "amount": 2999, "currency": "USD",
              "decline_code": "insufficient_funds", "retry": n, "of": 3, **extra}  # fmt: skip
    return effect("retry_payment", key, **params)


# -- retry_payment -----------------------------------------------------------------------------


async def test_retry_pays_the_open_invoice_with_the_effects_idempotency_key(
    stripe_api: StripeDouble, billing: StripeBilling
) -> None:
    stripe_api.invoice("in_1", CUSTOMER)
    result = await billing.perform(retry("eff-42"))
    assert (result.status, result.external_id) == ("done", "in_1")
    assert stripe_api.account.charges == ["in_1"]
    look, pay = stripe_api.requests
    assert (look.method, look.path) == ("GET", "/v1/invoices/in_1")
    assert (pay.method, pay.path, pay.header("Idempotency-Key")) == (
        "POST",
        "/v1/invoices/in_1/pay",
        "eff-42",
    )
    assert pay.headers["authorization"] == f"Bearer {API_KEY}"
    assert "stripe-version" in pay.headers
    (paid,) = result.events
    assert paid["event_id"] == "stripe:invoice.paid:in_1"
    event = event_from_obj(paid)
    assert event.type == "payment.succeeded"
    assert (event.customer_id, event.data.invoice_id, event.data.amount) == (CUSTOMER, "in_1", 2999)
    assert event.data.currency == "USD"


@pytest.mark.parametrize(
    ("fault", "code"),
    [
        (decline("insufficient_funds"), "insufficient_funds"),  # soft: the schedule goes on
        (decline("stolen_card"), "stolen_card"),  # hard: never retried again
        (decline("", code="expired_card"), "expired_card"),  # a code, no decline_code
    ],
)
async def test_a_decline_fails_the_effect_and_reports_payment_failed_with_its_code(
    stripe_api: StripeDouble, billing: StripeBilling, fault: Any, code: str
) -> None:
    stripe_api.invoice("in_1", CUSTOMER)
    stripe_api.fail_next(fault)
    result = await billing.perform(retry(n=2))
    assert result.status == "failed"
    assert code in result.detail
    assert stripe_api.account.charges == []
    (failed,) = result.events
    event = event_from_obj(failed)
    assert event.type == "payment.failed"
    assert (event.data.decline_code, event.data.invoice_id, event.data.attempt) == (code, "in_1", 3)
    assert event.data.payment_id.startswith("ch_")  # the declined charge


async def test_an_already_paid_invoice_is_not_charged(
    stripe_api: StripeDouble, billing: StripeBilling
) -> None:
    stripe_api.invoice("in_1", CUSTOMER, state="paid")
    result = await billing.perform(retry())
    assert result.status == "done" and "already paid" in result.detail
    assert stripe_api.writes() == []
    assert [e["type"] for e in result.events] == ["payment.succeeded"]


async def test_a_void_invoice_fails_without_a_charge(
    stripe_api: StripeDouble, billing: StripeBilling
) -> None:
    stripe_api.invoice("in_1", CUSTOMER, state="void")
    result = await billing.perform(retry())
    assert result.status == "failed" and "void" in result.detail
    assert stripe_api.writes() == []


async def test_another_customers_invoice_is_never_touched(
    stripe_api: StripeDouble, billing: StripeBilling
) -> None:
    stripe_api.invoice("in_1", "cus_mallory")
    for tool in (retry(), effect("request_payment_update", invoice_id="in_1", amount=1,
                                 currency="USD")):  # fmt: skip
        with pytest.raises(PermanentConnectorError, match="belongs to cus_mallory"):
            await billing.perform(tool)
    assert stripe_api.writes() == []


async def test_a_currency_that_differs_from_the_invoice_is_refused(
    stripe_api: StripeDouble, billing: StripeBilling
) -> None:
    stripe_api.invoice("in_1", CUSTOMER)
    with pytest.raises(PermanentConnectorError, match="usd"):
        await billing.perform(retry(currency="EUR"))
    assert stripe_api.writes() == []


async def test_charged_but_the_answer_lost_the_retry_does_not_charge_twice(
    stripe_api: StripeDouble, billing: StripeBilling
) -> None:
    """The fault test: Stripe performs the charge, the read times out; the retry finds the
    invoice paid and the card is charged once."""
    stripe_api.invoice("in_1", CUSTOMER)
    stripe_api.fail_next(perform_then_hang())
    with pytest.raises(TransientConnectorError, match="unreachable"):
        await billing.perform(retry("k-fault"))
    assert stripe_api.account.charges == ["in_1"]
    result = await billing.perform(retry("k-fault"))
    assert result.status == "done"
    assert [e["type"] for e in result.events] == ["payment.succeeded"]
    assert stripe_api.account.charges == ["in_1"]  # once


async def test_a_pay_sent_again_carries_the_same_key_and_stripe_replays_it(
    stripe_api: StripeDouble, billing: StripeBilling
) -> None:
    """Even when the look-up raced the charge (the invoice still looked open), the second
    pay carries the effect's key and Stripe answers it from the first: one charge."""
    stripe_api.invoice("in_1", CUSTOMER)
    stripe_api.fail_next(perform_then_hang())
    with pytest.raises(TransientConnectorError):
        await billing.perform(retry("k-fault"))
    stripe_api.account.invoices["in_1"]["status"] = "open"  # the race
    result = await billing.perform(retry("k-fault"))
    assert result.status == "done"
    assert stripe_api.account.charges == ["in_1"]
    pays = [c for c in stripe_api.writes() if c.path.endswith("/pay")]
    assert [c.header("Idempotency-Key") for c in pays] == ["k-fault", "k-fault"]


# -- faults: rate limits, outages, keys ------------------------------------------------------


async def test_429_is_retried_later(stripe_api: StripeDouble, billing: StripeBilling) -> None:
    stripe_api.invoice("in_1", CUSTOMER)
    stripe_api.fail_next(status(429))
    with pytest.raises(TransientConnectorError, match="429"):
        await billing.perform(retry())
    assert (await billing.perform(retry())).status == "done"
    assert stripe_api.account.charges == ["in_1"]


async def test_an_outage_opens_the_breaker_and_holds_every_billing_tool(
    stripe_api: StripeDouble,
) -> None:
    clock = Clock()
    billing = make(stripe_api, clock=clock)
    try:
        stripe_api.invoice("in_1", CUSTOMER)
        stripe_api.fail_next(status(500), status(503))
        for key in ("a", "b"):
            with pytest.raises(TransientConnectorError, match="50"):
                await billing.perform(retry(key))
        calls = len(stripe_api.requests)
        credit = effect("grant_credit", "c1", amount=500, currency="USD", reason="late")
        with pytest.raises(ConnectorPaused):
            await billing.perform(credit)
        assert len(stripe_api.requests) == calls  # held untried
        clock.now += 60
        assert (await billing.perform(credit)).status == "done"
    finally:
        await billing.aclose()


async def test_stripe_unreachable_is_transient() -> None:
    section = StripeSection(api_key=API_KEY, api_base="http://127.0.0.1:9")
    billing = StripeBilling(section)
    try:
        with pytest.raises(TransientConnectorError, match="unreachable"):
            await billing.perform(retry())
    finally:
        await billing.aclose()


async def test_a_refused_key_waits_for_an_operator(stripe_api: StripeDouble) -> None:
    billing = make(stripe_api, key="sk_test_revoked")
    try:
        with pytest.raises(TransientConnectorError, match="refused the API key") as info:
            await billing.perform(retry())
        assert info.value.retry_after is not None and info.value.retry_after >= 300
    finally:
        await billing.aclose()


# -- request_payment_update, grant_credit, offer_discount -------------------------------------


async def test_payment_update_gives_the_hosted_invoice_page(
    stripe_api: StripeDouble, billing: StripeBilling
) -> None:
    stripe_api.invoice("in_9", CUSTOMER)
    result = await billing.perform(
        effect("request_payment_update", invoice_id="in_9", amount=2999, currency="USD")
    )
    assert result.status == "done"
    assert "https://invoice.stripe.test/i/in_9" in result.detail
    assert stripe_api.writes() == []


async def test_a_credit_is_a_negative_balance_transaction_made_once(
    stripe_api: StripeDouble, billing: StripeBilling
) -> None:
    credit = effect("grant_credit", "credit-1", amount=1500, currency="EUR", reason="late parcel")
    first = await billing.perform(credit)
    again = await billing.perform(credit)
    (made,) = stripe_api.account.balance[CUSTOMER]
    assert (made["amount"], made["currency"]) == (-1500, "eur")
    assert first.external_id == again.external_id == made["id"]
    (call, _) = stripe_api.writes()
    assert call.path == f"/v1/customers/{CUSTOMER}/balance_transactions"
    assert call.header("Idempotency-Key") == "credit-1"
    assert call.form["metadata[outreach_action]"] == "act_credit-1"


async def test_a_discount_is_a_repeating_coupon_on_the_subscription(
    stripe_api: StripeDouble, billing: StripeBilling
) -> None:
    stripe_api.subscription("sub_1", CUSTOMER)
    offer = effect("offer_discount", "offer-1", percent=20.0, months=3, reason="renewal",
                   subscription_id="sub_1")  # fmt: skip
    result = await billing.perform(offer)
    assert (result.status, result.external_id) == ("done", "sub_1")
    coupon_call, update = stripe_api.writes()
    assert (
        coupon_call.path == "/v1/coupons"
        and coupon_call.header("Idempotency-Key") == "offer-1:coupon"
    )
    assert coupon_call.form["percent_off"] == "20.0"
    assert coupon_call.form["duration"] == "repeating"
    assert coupon_call.form["duration_in_months"] == "3"
    assert (
        update.path == "/v1/subscriptions/sub_1" and update.header("Idempotency-Key") == "offer-1"
    )
    (coupon,) = stripe_api.account.coupons
    assert update.form["discounts[0][coupon]"] == coupon
    assert stripe_api.account.subscriptions["sub_1"]["discounts"][0]["id"] == coupon
    await billing.perform(offer)  # a retry: Stripe replays both, nothing new
    assert len(stripe_api.account.coupons) == 1


async def test_a_discount_without_subscription_takes_the_only_active_one(
    stripe_api: StripeDouble, billing: StripeBilling
) -> None:
    stripe_api.subscription("sub_old", CUSTOMER, state="canceled")
    stripe_api.subscription("sub_live", CUSTOMER)
    stripe_api.subscription("sub_other", "cus_bob")
    result = await billing.perform(effect("offer_discount", percent=10.0, months=2, reason="r"))
    assert result.external_id == "sub_live"
    stripe_api.subscription("sub_second", CUSTOMER)
    with pytest.raises(PermanentConnectorError, match="2 active subscriptions"):
        await billing.perform(effect("offer_discount", "k2", percent=10.0, months=2, reason="r"))


async def test_a_discount_on_another_customers_subscription_is_refused(
    stripe_api: StripeDouble, billing: StripeBilling
) -> None:
    stripe_api.subscription("sub_1", "cus_mallory")
    offer = effect("offer_discount", percent=20.0, months=3, reason="r", subscription_id="sub_1")
    with pytest.raises(PermanentConnectorError, match="belongs to cus_mallory"):
        await billing.perform(offer)
    assert stripe_api.writes() == []


# -- configuration -----------------------------------------------------------------------------


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "connectors.yaml"
    path.write_text(text)
    return path


async def test_the_connectors_file_routes_the_billing_tools_to_one_stripe_account(
    tmp_path: Path, stripe_api: StripeDouble
) -> None:
    path = write(tmp_path, """\
tools:
  retry_payment: {kind: stripe}
  grant_credit: {kind: stripe}
stripe:
  api_key: "${STRIPE_API_KEY}"
  api_base: "${STRIPE_API_BASE}"
""")  # fmt: skip
    loaded = load_connectors(path, {"STRIPE_API_KEY": API_KEY, "STRIPE_API_BASE": stripe_api.url})
    from outreach.agents.connectors import FakeConnector

    default = FakeConnector()
    router = router_for(loaded, default)
    try:
        assert router.routes["retry_payment"] is router.routes["grant_credit"]
        stripe_api.invoice("in_1", CUSTOMER)
        assert (await router.perform(retry())).status == "done"
        other = effect("rebook_shipment", shipment_id="s", order_id="o", carrier="ups")
        await router.perform(other)
        assert [e.tool for e in default.calls] == ["rebook_shipment"]
    finally:
        await router.aclose()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("tools:\n  rebook_shipment: {kind: stripe}\nstripe: {api_key: x}\n", ":2:"),
        ("tools:\n  retry_payment: {kind: stripe}\n", "needs a top-level 'stripe'"),
        ("tools:\n  retry_payment: {kind: stripe}\nstripe: {api_key: '${NOPE}'}\n", "NOPE"),
        ("tools: {}\nstripe: {api_key: x, api_base: ftp://x}\n", "not an http"),
    ],
)
def test_a_bad_stripe_configuration_is_refused_with_its_line(
    tmp_path: Path, text: str, expected: str
) -> None:
    with pytest.raises(RuleFileError, match=expected):
        load_connectors(write(tmp_path, text), {})
