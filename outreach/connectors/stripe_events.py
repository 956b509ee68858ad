"""Stripe objects as the engine's own events, for the billing connector and the webhooks.

One mapping, used by both paths, so that the same fact reported twice (the connector's answer
to a retry, then Stripe's webhook about it) carries the same event id and the core's
deduplication keeps one:

- ``invoice.paid`` -> ``payment.succeeded``, id ``stripe:invoice.paid:<invoice>`` (an invoice
  is paid once);
- ``invoice.payment_failed`` -> ``payment.failed``, id
  ``stripe:invoice.payment_failed:<invoice>:<attempt>`` (``attempt_count``: every attempt,
  Stripe's and the engine's, counts);
- ``customer.subscription.updated`` -> ``renewal.upcoming`` (``auto_renew`` false when it is
  set to cancel at the period's end: a renewal at risk), or ``renewal.cancelled`` once its
  status is ``canceled``; id ``stripe:<the Stripe event id>``.

The engine's customer id is the Stripe customer id (``cus_...``): the events Stripe sends
name no other. Amounts stay in minor units; currencies are upper-cased (ISO 4217).

Must not import: faust, aiokafka, sqlalchemy, fastapi, openai.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

WEBHOOK_TYPES = ("invoice.payment_failed", "invoice.paid", "customer.subscription.updated")

# what a failed charge says when it names no decline code: a soft decline (retried)
UNKNOWN_DECLINE = "generic_decline"


def _at(seconds: object) -> str:
    stamp = float(seconds) if isinstance(seconds, int | float) else datetime.now(UTC).timestamp()
    return datetime.fromtimestamp(stamp, UTC).isoformat().replace("+00:00", "Z")


def _id(value: object) -> str | None:
    """A Stripe reference: an id string, or an expanded object's ``id``."""
    if isinstance(value, str) and value:
        return value
    if isinstance(value, Mapping):
        inner = value.get("id")
        return inner if isinstance(inner, str) and inner else None
    return None


def _envelope(
    event_id: str, kind: str, customer: str, at: object, data: dict[str, Any]
) -> dict[str, Any]:
    return {
        "event_id": event_id, "type": kind, "customer_id": customer,
        "occurred_at": _at(at), "source": "stripe", "schema_version": 1, "data": data,
    }  # fmt: skip


def payment_id(invoice: Mapping[str, Any], fallback: str) -> str:
    """The payment an invoice's latest attempt went through (older API versions name its
    PaymentIntent or charge; newer ones neither, then ``fallback``)."""
    return _id(invoice.get("payment_intent")) or _id(invoice.get("charge")) or fallback


def invoice_paid(invoice: Mapping[str, Any], at: object = None) -> dict[str, Any]:
    """``payment.succeeded`` for a paid invoice."""
    invoice_id = str(invoice["id"])
    amount = invoice.get("amount_paid") or invoice.get("amount_due") or 0
    data = {
        "payment_id": payment_id(invoice, invoice_id),
        "invoice_id": invoice_id,
        "amount": int(amount),
        "currency": str(invoice.get("currency") or "").upper(),
    }
    paid_at = at
    transitions = invoice.get("status_transitions")
    if paid_at is None and isinstance(transitions, Mapping):
        paid_at = transitions.get("paid_at")
    customer = _id(invoice.get("customer")) or ""
    return _envelope(
        f"stripe:invoice.paid:{invoice_id}", "payment.succeeded", customer, paid_at, data
    )


def payment_failed(
    invoice: Mapping[str, Any],
    decline_code: str | None,
    attempt: int,
    payment: str | None = None,
    at: object = None,
) -> dict[str, Any]:
    """``payment.failed`` for one failed attempt at an invoice (``attempt``: 1-based)."""
    invoice_id = str(invoice["id"])
    data = {
        "payment_id": payment or payment_id(invoice, f"{invoice_id}:{attempt}"),
        "invoice_id": invoice_id,
        "amount": int(invoice.get("amount_remaining") or invoice.get("amount_due") or 0),
        "currency": str(invoice.get("currency") or "").upper(),
        "decline_code": decline_code or UNKNOWN_DECLINE,
        "attempt": max(1, attempt),
    }
    event_id = f"stripe:invoice.payment_failed:{invoice_id}:{max(1, attempt)}"
    customer = _id(invoice.get("customer")) or ""
    return _envelope(event_id, "payment.failed", customer, at, data)


def _decline(invoice: Mapping[str, Any]) -> str | None:
    """The decline code an (expanded) invoice payload carries, if any."""
    for holder in (invoice.get("last_payment_error"), _nested(invoice, "payment_intent")):
        if isinstance(holder, Mapping):
            error = holder.get("last_payment_error", holder)
            if isinstance(error, Mapping):
                code = error.get("decline_code") or error.get("code")
                if isinstance(code, str) and code:
                    return code
    return None


def _nested(obj: Mapping[str, Any], key: str) -> Mapping[str, Any] | None:
    value = obj.get(key)
    return value if isinstance(value, Mapping) else None


def _subscription(event: Mapping[str, Any], sub: Mapping[str, Any]) -> dict[str, Any]:
    items = sub.get("items")
    rows = items.get("data") if isinstance(items, Mapping) else None
    first: Mapping[str, Any] = {}
    if isinstance(rows, list) and rows and isinstance(rows[0], Mapping):
        first = rows[0]
    price = _nested(first, "price") or {}
    plan = price.get("lookup_key") or price.get("nickname") or price.get("id") or "unknown"
    customer = _id(sub.get("customer")) or ""
    base = {"subscription_id": str(sub["id"]), "plan": str(plan)}
    event_id = f"stripe:{event['id']}"
    if sub.get("status") == "canceled":
        return _envelope(event_id, "renewal.cancelled", customer, event.get("created"), base)
    # the period end moved from the subscription to its items in newer API versions
    renews = sub.get("current_period_end") or first.get("current_period_end")
    amount = int(price.get("unit_amount") or 0) * int(first.get("quantity") or 1)
    data = {
        **base,
        "renews_at": _at(renews),
        "amount": amount,
        "currency": str(price.get("currency") or sub.get("currency") or "").upper(),
        "auto_renew": not sub.get("cancel_at_period_end") and not sub.get("cancel_at"),
    }
    return _envelope(event_id, "renewal.upcoming", customer, event.get("created"), data)


def engine_event(event: Mapping[str, Any]) -> dict[str, Any] | None:
    """The engine event for one Stripe event (``None``: a type the engine does not take).
    Raises ``KeyError``/``TypeError``/``ValueError`` for a payload missing what it needs."""
    kind = event.get("type")
    obj = event["data"]["object"]
    if kind == "invoice.paid":
        return invoice_paid(obj, event.get("created"))
    if kind == "invoice.payment_failed":
        attempt = int(obj.get("attempt_count") or 1)
        return payment_failed(obj, _decline(obj), attempt, at=event.get("created"))
    if kind == "customer.subscription.updated":
        return _subscription(event, obj)
    return None
