"""Stripe on the API: its webhooks become the engine's events; ``/pay/<invoice>`` links.

``POST /webhooks/stripe``: the body is checked with Stripe's own scheme
(``stripe.Webhook.construct_event``: ``Stripe-Signature`` HMAC-SHA256 over
``<t>.<body>`` with the endpoint's signing secret, and ``t`` within the tolerance, 300 s by
default, so an old request replayed is refused), then taken once per Stripe event id
(``inbound_seen``: a replay inside the tolerance, or Stripe's own redelivery, does nothing).
``invoice.payment_failed``, ``invoice.paid`` and ``customer.subscription.updated`` become
``payment.failed``, ``payment.succeeded`` and ``renewal.upcoming``/``renewal.cancelled``
(``outreach.connectors.stripe_events``); other types are acknowledged and ignored. A signed
event of those types that does not fit the engine's contract goes to the dead-letter topic
with the reason (answered 200: Stripe sending it again would not make it fit).

``GET /pay/<invoice>``: the link a payment-update message carries (policy.yaml
``links.update_payment: https://<OUTREACH_PUBLIC_URL>/pay/{invoice_id}``). It looks the invoice
up when the customer opens it and redirects (303) to Stripe's hosted invoice page, where the
card can be changed and the invoice paid; a paid invoice gets a short "already paid" page, so
an old message never sends anyone to pay twice. It discloses what Stripe's hosted link does,
to whoever holds an invoice id (Stripe's ids are random).

Must not import: faust, the decision core.
"""

from __future__ import annotations

import html
import logging
from typing import Any

import orjson
import stripe
from fastapi import APIRouter, HTTPException, Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse
from pydantic import SecretStr

from outreach.api.inbox import Inbox
from outreach.connectors.stripe_events import WEBHOOK_TYPES, engine_event
from outreach.events import event_from_obj
from outreach.streams.codec import Record, dead_letter_value

log = logging.getLogger(__name__)


def stripe_router(
    inbox: Inbox, webhook_secret: SecretStr | None, tolerance: int = 300
) -> APIRouter:
    """``POST /webhooks/stripe``."""
    router = APIRouter()

    @router.post("/webhooks/stripe")
    async def webhook(request: Request) -> Response:
        """One Stripe event, signed; the billing ones become engine events."""
        if webhook_secret is None:
            raise HTTPException(
                503, "Stripe webhooks are off: set OUTREACH_STRIPE_WEBHOOK_SECRET (whsec_...)"
            )
        raw = await request.body()
        event = _verified(raw, request.headers.get("Stripe-Signature"), webhook_secret, tolerance)
        if event.get("type") not in WEBHOOK_TYPES:
            return Response(status_code=200)
        async with inbox.once("stripe", event["id"]) as fresh:
            if fresh:
                await _take(inbox, event, raw)
        return Response(status_code=200)

    return router


def _verified(raw: bytes, header: str | None, secret: SecretStr, tolerance: int) -> dict[str, Any]:
    """The event in ``raw`` if Stripe signed it within ``tolerance`` seconds; else 400."""
    try:
        stripe.WebhookSignature.verify_header(
            raw.decode("utf-8", "replace"), header, secret.get_secret_value(), tolerance
        )
    except stripe.SignatureVerificationError as exc:
        log.warning("api: Stripe webhook refused: %s", exc.user_message or exc)
        raise HTTPException(400, "invalid Stripe signature (or too old: replayed?)") from None
    try:
        event = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise HTTPException(400, "the body is not JSON") from None
    if not isinstance(event, dict) or not isinstance(event.get("id"), str):
        raise HTTPException(400, "the body is not a Stripe event")
    return event


def pay_router(client: stripe.StripeClient, brand: str = "") -> APIRouter:
    """``GET /pay/{invoice_id}``: to the invoice's Stripe payment page."""
    router = APIRouter()

    @router.get("/pay/{invoice_id}", include_in_schema=False)
    async def pay(invoice_id: str) -> Response:
        """Redirect to the invoice's Stripe payment page."""
        try:
            invoice = (await client.v1.invoices.retrieve_async(invoice_id)).to_dict()
        except stripe.InvalidRequestError:
            raise HTTPException(404, "no such invoice") from None
        except stripe.StripeError as exc:
            log.error("api: Stripe lookup of %s failed: %s", invoice_id, exc)
            raise HTTPException(503, "billing is unreachable; try again shortly") from None
        if invoice.get("status") == "paid":
            return _page(brand, "This invoice is paid", "Thank you: nothing more to do.")
        url = invoice.get("hosted_invoice_url")
        if invoice.get("status") != "open" or not isinstance(url, str):
            return _page(brand, "Nothing to pay", "This invoice is no longer payable.")
        return RedirectResponse(url, status_code=303)

    return router


async def _take(inbox: Inbox, event: dict[str, Any], raw: bytes) -> None:
    """Publish the engine event for ``event`` (one of ``WEBHOOK_TYPES``), or dead-letter it
    with the reason."""
    made: dict[str, Any] | None = None
    try:
        made = engine_event(event)
        engine = event_from_obj(made)  # InvalidEventError is a ValueError
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        why = f"Stripe {event.get('type')} {event['id']} does not fit the contract: {exc}"
    else:
        await inbox.emit([engine])
        return
    log.error("api: %s; dead-lettered", why)
    customer = made["customer_id"] if made else None
    key = customer.encode() if isinstance(customer, str) and customer else None
    await inbox.sink.dead_letter(
        key, dead_letter_value(Record("webhook:stripe", -1, 0, key, raw), why)
    )


def _page(brand: str, title: str, text: str) -> HTMLResponse:
    name = html.escape(brand)
    body = (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"</head><body><h1>{html.escape(title)}</h1><p>{html.escape(text)}</p>"
        f"<p>{name}</p></body></html>"
    )
    return HTMLResponse(body)
