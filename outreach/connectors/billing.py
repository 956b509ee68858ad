"""The Stripe billing connector: the four billing tools through the stripe SDK.

- ``retry_payment``: pays the open invoice (``POST /v1/invoices/{id}/pay``). Paid: ``done``
  and a ``payment.succeeded`` event. Declined: ``failed`` with the decline code, and a
  ``payment.failed`` event carrying it, so the payment_recovery playbook classifies it with
  the same hard/soft list as every other decline (``never_for_declines`` in policy.yaml): a
  hard decline stops the schedule and asks for a new card, a soft one lets it go on. Already
  paid: ``done`` without a charge.
- ``request_payment_update``: checks the invoice is open and gives its hosted invoice page
  (Stripe's payment page, where the card can be changed) as the result; the message links to
  ``OUTREACH_PUBLIC_URL/pay/<invoice>`` (policy.yaml ``links.update_payment``), which the API
  redirects to that page when it is opened, so the link never goes stale.
- ``grant_credit``: a customer balance credit (``POST /v1/customers/{id}/balance_transactions``
  with a negative amount: Stripe takes it off the next invoices).
- ``offer_discount``: a coupon of ``percent`` off for ``months`` months (``duration:
  repeating``, one redemption) applied to the subscription (``discounts``); without a
  ``subscription_id``, the customer's only active subscription.

Every write carries ``Idempotency-Key`` (the effect's key; the coupon's with ``:coupon``), so
Stripe performs it once however often it is sent; all four tools are therefore idempotent and
timeouts, 429 and 5xx are retried. Every call checks that the invoice or subscription belongs
to the effect's customer first: an action is never taken on another customer's account.
Unreachable, timeouts and 5xx count against one circuit breaker for the Stripe account.
401/403 (a revoked key) are held for an operator: transient, five minutes at least.

The engine's customer id is the Stripe customer id (see ``stripe_events``). Turn Stripe's own
Smart Retries off for invoices the engine retries, or both will charge on their schedules.

Must not import: faust, aiokafka, sqlalchemy, fastapi, openai.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any, NoReturn

import httpx
import stripe

from outreach.agents.connectors import Effect, EffectResult
from outreach.connectors.config import StripeSection
from outreach.connectors.http import CircuitBreaker
from outreach.connectors.stripe_events import invoice_paid, payment_failed
from outreach.errors import ConnectorPaused, PermanentConnectorError, TransientConnectorError

log = logging.getLogger(__name__)

AUTH_FLOOR = 300.0  # seconds a refused key waits: an operator has to act


class StripeBilling:
    """The ``Connector`` port for the billing tools of one Stripe account."""

    def __init__(
        self,
        config: StripeSection,
        *,
        http_client: stripe.HTTPClient | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        timeout = httpx.Timeout(
            config.timeout.read.total_seconds(), connect=config.timeout.connect.total_seconds()
        )
        bases: dict[str, str] = {"api": config.api_base.rstrip("/")} if config.api_base else {}
        self.http = http_client or stripe.HTTPXClient(timeout=timeout)
        self.client = stripe.StripeClient(
            config.api_key,
            base_addresses=bases,  # type: ignore[arg-type]
            max_network_retries=0,  # the dispatcher retries, with backoff and the breaker
            http_client=self.http,
        )
        self.breaker = CircuitBreaker(
            config.breaker.failures, config.breaker.cooldown.total_seconds(), clock
        )
        self._tools: dict[str, Callable[[Effect], Any]] = {
            "retry_payment": self._retry_payment,
            "request_payment_update": self._payment_update,
            "grant_credit": self._grant_credit,
            "offer_discount": self._offer_discount,
        }

    async def perform(self, effect: Effect) -> EffectResult:
        """Perform ``effect`` (one of the four billing tools) once per idempotency key."""
        work = self._tools.get(effect.tool)
        if work is None:
            raise PermanentConnectorError(f"{effect.tool}: not a Stripe billing tool")
        wait = self.breaker.allow()
        if wait is not None:
            raise ConnectorPaused(
                f"{effect.tool}: Stripe circuit open after {self.breaker.failures} failures "
                f"in a row; held for {wait:.0f}s",
                retry_after=wait,
            )
        try:
            result: EffectResult = await work(effect)
        except stripe.CardError as exc:
            self.breaker.success()
            raise PermanentConnectorError(f"{effect.tool}: card error: {_message(exc)}") from None
        except stripe.StripeError as exc:
            self._raise(effect, exc)
        finally:
            self.breaker.release()
        self.breaker.success()
        return result

    def _raise(self, effect: Effect, exc: stripe.StripeError) -> NoReturn:
        tool = effect.tool
        if isinstance(exc, stripe.APIConnectionError):  # unreachable, or no answer in time
            self.breaker.failure()
            raise TransientConnectorError(f"{tool}: Stripe unreachable: {_message(exc)}")
        status = exc.http_status or 0
        after = _retry_after(exc)
        if isinstance(exc, stripe.RateLimitError) or status == 429:
            self.breaker.success()
            raise TransientConnectorError(f"{tool}: Stripe rate limited (429)", after)
        if status >= 500 or isinstance(exc, stripe.APIError):
            self.breaker.failure()
            raise TransientConnectorError(
                f"{tool}: Stripe answered {status}: {_message(exc)}", after
            )
        self.breaker.success()
        if isinstance(exc, stripe.AuthenticationError | stripe.PermissionError):
            log.error(
                "connector: Stripe refused the API key (%s) for %s; set the stripe api_key of "
                "the connectors file to a key with billing write access",
                status,
                tool,
            )
            raise TransientConnectorError(
                f"{tool}: Stripe refused the API key ({status}): {_message(exc)}",
                max(after or 0.0, AUTH_FLOOR),
            )
        if status == 409 and not isinstance(exc, stripe.IdempotencyError):
            raise TransientConnectorError(f"{tool}: Stripe 409 (the same key in flight)", after)
        raise PermanentConnectorError(f"{tool}: Stripe answered {status}: {_message(exc)}")

    # -- the tools --------------------------------------------------------------------------
    async def _invoice(self, effect: Effect) -> dict[str, Any]:
        invoice_id = str(effect.params["invoice_id"])
        invoice = (await self.client.v1.invoices.retrieve_async(invoice_id)).to_dict()
        owner = _owner(invoice.get("customer"))
        if owner != effect.customer_id:
            raise PermanentConnectorError(
                f"{effect.tool}: invoice {invoice_id} belongs to {owner}, not to "
                f"{effect.customer_id}; nothing was done"
            )
        currency = str(effect.params.get("currency", "")).lower()
        if currency and str(invoice.get("currency", "")).lower() != currency:
            raise PermanentConnectorError(
                f"{effect.tool}: invoice {invoice_id} is in {invoice.get('currency')}, the "
                f"action in {currency}; nothing was done"
            )
        return invoice

    async def _retry_payment(self, effect: Effect) -> EffectResult:
        invoice = await self._invoice(effect)
        invoice_id = invoice["id"]
        status = invoice.get("status")
        if status == "paid":
            return EffectResult(
                status="done", detail=f"invoice {invoice_id} was already paid",
                external_id=invoice_id, events=(invoice_paid(invoice),),
            )  # fmt: skip
        if status != "open":
            return EffectResult(
                status="failed", detail=f"invoice {invoice_id} is {status}, not open: not charged",
                external_id=invoice_id,
            )  # fmt: skip
        attempt = int(effect.params.get("retry", 0)) + 1  # the first failure was attempt 1
        try:
            paid = (
                await self.client.v1.invoices.pay_async(
                    invoice_id, options={"idempotency_key": effect.idempotency_key}
                )
            ).to_dict()
        except stripe.CardError as exc:
            code = _decline_code(exc)
            failed = payment_failed(invoice, code, attempt, _charge(exc))
            return EffectResult(
                status="failed", detail=f"declined: {code} ({_message(exc)})",
                external_id=invoice_id, events=(failed,),
            )  # fmt: skip
        if paid.get("status") != "paid":
            return EffectResult(
                status="failed", detail=f"invoice {invoice_id} is {paid.get('status')} after pay",
                external_id=invoice_id,
            )  # fmt: skip
        return EffectResult(
            status="done", detail=f"invoice {invoice_id} paid", external_id=invoice_id,
            events=(invoice_paid(paid),),
        )  # fmt: skip

    async def _payment_update(self, effect: Effect) -> EffectResult:
        invoice = await self._invoice(effect)
        invoice_id, status = invoice["id"], invoice.get("status")
        if status == "paid":
            return EffectResult(
                status="done", detail=f"invoice {invoice_id} was already paid",
                external_id=invoice_id, events=(invoice_paid(invoice),),
            )  # fmt: skip
        url = invoice.get("hosted_invoice_url")
        if status != "open" or not url:
            return EffectResult(
                status="failed",
                detail=f"invoice {invoice_id} is {status}: it has no payment page to send",
                external_id=invoice_id,
            )
        return EffectResult(status="done", detail=f"payment page: {url}", external_id=invoice_id)

    async def _grant_credit(self, effect: Effect) -> EffectResult:
        p = effect.params
        created = await self.client.v1.customers.balance_transactions.create_async(
            effect.customer_id,
            params={
                "amount": -int(p["amount"]),  # negative: a credit to the customer
                "currency": str(p["currency"]).lower(),
                "description": str(p.get("reason", ""))[:350],
                "metadata": {"outreach_action": effect.action_id},
            },
            options={"idempotency_key": effect.idempotency_key},
        )
        detail = f"credit of {p['amount']} {p['currency']} on the customer's balance"
        return EffectResult(status="done", detail=detail, external_id=created["id"])

    async def _offer_discount(self, effect: Effect) -> EffectResult:
        p = effect.params
        sub_id = p.get("subscription_id") or await self._only_subscription(effect)
        sub = (await self.client.v1.subscriptions.retrieve_async(sub_id)).to_dict()
        owner = _owner(sub.get("customer"))
        if owner != effect.customer_id:
            raise PermanentConnectorError(
                f"offer_discount: subscription {sub_id} belongs to {owner}, not to "
                f"{effect.customer_id}; nothing was done"
            )
        if sub.get("status") in ("canceled", "incomplete_expired"):
            return EffectResult(
                status="failed", detail=f"subscription {sub_id} is {sub.get('status')}",
                external_id=sub_id,
            )  # fmt: skip
        coupon = await self.client.v1.coupons.create_async(
            params={
                "percent_off": float(p["percent"]),
                "duration": "repeating",
                "duration_in_months": int(p["months"]),
                "max_redemptions": 1,
                "name": f"{float(p['percent']):g}% off for {int(p['months'])} months"[:40],
                "metadata": {"outreach_action": effect.action_id},
            },
            options={"idempotency_key": f"{effect.idempotency_key}:coupon"},
        )
        await self.client.v1.subscriptions.update_async(
            sub_id,
            params={
                "discounts": [{"coupon": coupon["id"]}],
                "metadata": {"outreach_action": effect.action_id},
            },
            options={"idempotency_key": effect.idempotency_key},
        )
        detail = f"coupon {coupon['id']} on subscription {sub_id}"
        return EffectResult(status="done", detail=detail, external_id=sub_id)

    async def _only_subscription(self, effect: Effect) -> str:
        found = await self.client.v1.subscriptions.list_async(
            params={"customer": effect.customer_id, "status": "active", "limit": 2}
        )
        rows = list(found.data)
        if len(rows) != 1:
            raise PermanentConnectorError(
                f"offer_discount: {effect.customer_id} has {len(rows) or 'no'} active "
                "subscriptions; the action must name subscription_id"
            )
        return str(rows[0]["id"])

    async def aclose(self) -> None:
        """Release the HTTP connections."""
        await self.http.close_async()  # type: ignore[no-untyped-call]


def _owner(value: object) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, Mapping):
        inner = value.get("id")
        return inner if isinstance(inner, str) else None
    return None


def _error(exc: stripe.StripeError) -> Mapping[str, Any]:
    body = exc.json_body if isinstance(exc.json_body, Mapping) else {}
    error = body.get("error")
    return error if isinstance(error, Mapping) else {}


def _decline_code(exc: stripe.StripeError) -> str:
    """Stripe's ``decline_code`` (``insufficient_funds``, ``stolen_card``...) or, for errors
    that are not card declines, its ``code`` (``expired_card``, ``incorrect_number``...)."""
    error = _error(exc)
    code = error.get("decline_code") or error.get("code") or getattr(exc, "code", None)
    return str(code) if code else "generic_decline"


def _charge(exc: stripe.StripeError) -> str | None:
    error = _error(exc)
    charge = error.get("charge")
    intent = error.get("payment_intent")
    if isinstance(charge, str) and charge:
        return charge
    return _owner(intent)


def _message(exc: stripe.StripeError) -> str:
    error = _error(exc)
    text = error.get("message") or exc.user_message or str(exc) or type(exc).__name__
    return str(text)[:300]


def _retry_after(exc: stripe.StripeError) -> float | None:
    headers = exc.headers or {}
    value = headers.get("Retry-After") or headers.get("retry-after")
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None
