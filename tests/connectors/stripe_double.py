"""A local double of the Stripe API, for the real stripe SDK (``api_base`` pointed here).

A real HTTP server on 127.0.0.1 in a thread (``HttpDouble``, the plumbing of the Twilio and
SendGrid doubles). It speaks the part of the API the billing connector uses, the way Stripe
does:

- form-encoded bodies (``discounts[0][coupon]=...``), ``Authorization: Bearer sk_...``;
- ``Idempotency-Key``: a key whose request began executing (a 200, or a 402 card decline) is
  answered again with the same status and body and ``Idempotent-Replayed: true``, without
  acting again; the same key with other parameters is a 400 ``idempotency_error``;
- errors in Stripe's shape (``{"error": {"type", "code", "decline_code", "message"}}``).

Objects: ``invoices``, ``subscriptions``, ``balance`` (customer -> balance transactions),
``coupons``. Faults, in order: ``status(code)`` (429, 500...: nothing done) for the next
request; ``decline(code)`` (402 card error), ``perform_then_hang()`` (does it, never answers:
the client's read timeout) and ``hang()`` (never answers, nothing done) for the next write.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if __name__ == "__main__":  # run by hand: the tests folder is where ``outbound`` lives
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from outbound.doubles import Answer, HttpDouble, Recorded  # noqa: E402

API_KEY = "sk_test_outreach"
HELD = 30.0


@dataclass(frozen=True)
class Fault:
    """What goes wrong with one request."""

    status: int = 0  # an HTTP error answered before anything is done
    decline: str | None = None  # a card decline (402), saved for the key like Stripe does
    code: str = "card_declined"
    hang: str | None = None  # "before" | "after" performing


def decline(decline_code: str, code: str = "card_declined") -> Fault:
    return Fault(decline=decline_code, code=code)


def status(code: int) -> Fault:
    return Fault(status=code)


def perform_then_hang() -> Fault:
    return Fault(hang="after")


def hang() -> Fault:
    return Fault(hang="before")


@dataclass
class Account:
    invoices: dict[str, dict[str, Any]] = field(default_factory=dict)
    subscriptions: dict[str, dict[str, Any]] = field(default_factory=dict)
    balance: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    coupons: dict[str, dict[str, Any]] = field(default_factory=dict)
    charges: list[str] = field(default_factory=list)  # invoice ids charged, in order


class StripeDouble(HttpDouble):
    """The Stripe API, as far as the billing connector goes (see the module docstring)."""

    def __init__(self, port: int = 0, demo: bool = False) -> None:
        super().__init__(port)
        self.demo = demo  # invent the sample's invoices and subscriptions on first sight
        self.account = Account()
        self._faults: list[Fault] = []
        self._kept: dict[str, tuple[dict[str, str], int, bytes]] = {}
        self._ids = 0

    def invoice(
        self, invoice_id: str, customer: str, amount: int = 2999, state: str = "open", **extra: Any
    ) -> dict[str, Any]:
        made = {
            "id": invoice_id, "object": "invoice", "customer": customer, "status": state,
            "amount_due": amount, "amount_remaining": amount if state == "open" else 0,
            "amount_paid": amount if state == "paid" else 0, "currency": "usd",
            "attempt_count": 1,
            "hosted_invoice_url": f"https://invoice.stripe.test/i/{invoice_id}",
            **extra,
        }  # fmt: skip
        self.account.invoices[invoice_id] = made
        return made

    def subscription(self, sub_id: str, customer: str, state: str = "active") -> dict[str, Any]:
        made = {
            "id": sub_id, "object": "subscription", "customer": customer, "status": state,
            "discounts": [], "metadata": {},
        }  # fmt: skip
        self.account.subscriptions[sub_id] = made
        return made

    def fail_next(self, *faults: Fault) -> None:
        """Apply these faults to the next requests (see the module docstring)."""
        with self._lock:
            self._faults.extend(faults)

    def authorized(self, request: Recorded) -> bool:
        """``Authorization: Bearer <the secret key>``."""
        return request.header("Authorization") == f"Bearer {API_KEY}"

    def unauthorized(self) -> Answer:
        """Stripe's 401."""
        return Answer(401, _error("invalid_request_error", "api_key_invalid", "Invalid API Key"))

    def handle(self, request: Recorded) -> Answer:
        """Replay a kept key, or apply the next fault, or do what was asked."""
        params = request.form if request.method == "POST" else _flat(request.query)
        key = request.header("Idempotency-Key")
        if key is not None and key in self._kept:
            kept_params, code, body = self._kept[key]
            if kept_params != params:
                message = "Keys for idempotent requests can only be used with the same parameters"
                return Answer(400, _error("idempotency_error", None, message))
            return Answer(code, json.loads(body), {"Idempotent-Replayed": "true"})
        fault = Fault()
        if self._faults and (request.method == "POST" or self._faults[0].status):
            fault = self._faults.pop(0)  # declines and hangs are for writes; errors for any
        if fault.status:
            return Answer(fault.status, _error("api_error", None, f"HTTP {fault.status}"))
        if fault.hang == "before":
            return Answer(504, _error("api_error", None, "too late"), delay=HELD)
        try:
            code, body = self._route(request.method, request.path, params, fault)
        except KeyError as exc:
            return Answer(
                404, _error("invalid_request_error", "resource_missing", f"No such {exc}")
            )
        if key is not None and request.method == "POST" and code in (200, 402):
            self._kept[key] = (params, code, json.dumps(body).encode())
        return Answer(code, body, delay=HELD if fault.hang == "after" else 0.0)

    def writes(self) -> list[Recorded]:
        """Every POST received, in order."""
        return [r for r in self.requests if r.method == "POST"]

    def _next(self, prefix: str) -> str:
        self._ids += 1
        return f"{prefix}_{self._ids}"

    def _invent(self, parts: list[str], params: dict[str, str]) -> None:
        """Demo mode: ``outreach sample`` names ``in_000216_4`` for ``cus_000216``; make the
        invoice or subscription it asks about, owned by that customer."""
        if len(parts) >= 2 and parts[0] == "invoices" and parts[1] not in self.account.invoices:
            number = parts[1].split("_")[1] if parts[1].count("_") >= 2 else "0"
            self.invoice(parts[1], f"cus_{number}")
        known = self.account.subscriptions
        if len(parts) >= 2 and parts[0] == "subscriptions" and parts[1] not in known:
            number = parts[1].split("_")[1] if parts[1].count("_") >= 2 else "0"
            self.subscription(parts[1], f"cus_{number}")
        if parts == ["subscriptions"] and "customer" in params:
            customer = params["customer"]
            if not any(s["customer"] == customer for s in self.account.subscriptions.values()):
                self.subscription(f"sub_{customer.removeprefix('cus_')}_0", customer)

    def _route(
        self, method: str, path: str, params: dict[str, str], fault: Fault
    ) -> tuple[int, Any]:
        parts = path.strip("/").split("/")[1:]  # without "v1"
        if self.demo:
            self._invent(parts, params)
        acct = self.account
        match method, parts:
            case "GET", ["invoices", invoice_id]:
                return 200, acct.invoices[invoice_id]
            case "POST", ["invoices", invoice_id, "pay"]:
                invoice = acct.invoices[invoice_id]
                invoice["attempt_count"] += 1
                if fault.decline is not None:
                    message = "Your card was declined."
                    error = _error("card_error", fault.code, message, decline=fault.decline)
                    error["error"]["charge"] = self._next("ch")
                    return 402, error
                if invoice["status"] != "open":
                    return 400, _error("invalid_request_error", "invoice_not_open", "not open")
                acct.charges.append(invoice_id)
                invoice.update(status="paid", amount_paid=invoice["amount_due"], amount_remaining=0)
                return 200, invoice
            case "POST", ["customers", customer, "balance_transactions"]:
                made = {
                    "id": self._next("cbtxn"), "object": "customer_balance_transaction",
                    "customer": customer, "amount": int(params["amount"]),
                    "currency": params["currency"],
                    "description": params.get("description"),
                }  # fmt: skip
                acct.balance.setdefault(customer, []).append(made)
                return 200, made
            case "POST", ["coupons"]:
                made = {"id": self._next("co"), "object": "coupon", **params}
                acct.coupons[made["id"]] = made
                return 200, made
            case "GET", ["subscriptions", sub_id]:
                return 200, acct.subscriptions[sub_id]
            case "POST", ["subscriptions", sub_id]:
                sub = acct.subscriptions[sub_id]
                coupon = params.get("discounts[0][coupon]")
                if coupon is not None:
                    sub["discounts"] = [acct.coupons[coupon]]
                return 200, sub
            case "GET", ["subscriptions"]:
                rows = [
                    s for s in acct.subscriptions.values()
                    if s["customer"] == params.get("customer")
                    and s["status"] == params.get("status", s["status"])
                ]  # fmt: skip
                return 200, {
                    "object": "list",
                    "data": rows,
                    "has_more": False,
                    "url": "/v1/subscriptions",
                }
        return 404, _error("invalid_request_error", None, f"Unrecognized request URL ({path})")


def _error(kind: str, code: str | None, message: str, decline: str | None = None) -> dict[str, Any]:
    error: dict[str, Any] = {"type": kind, "message": message}
    if code is not None:
        error["code"] = code
    if decline is not None:
        error["decline_code"] = decline
    return {"error": error}


def _flat(query: dict[str, list[str]]) -> dict[str, str]:
    """A query string's values (the last of each)."""
    return {k: v[-1] for k, v in query.items()}


def main() -> None:
    """Serve the Stripe double until Ctrl-C (``--demo``: it knows every invoice the sample
    names), printing the variables and each write."""
    import argparse
    import time

    parser = argparse.ArgumentParser(description="A local double of the Stripe API.")
    parser.add_argument("--port", type=int, default=8027)
    parser.add_argument("--demo", action="store_true", help="invent the sample's objects")
    args = parser.parse_args()
    with StripeDouble(args.port, demo=args.demo) as double:
        print(f"export STRIPE_API_KEY={API_KEY} STRIPE_API_BASE={double.url}", flush=True)
        seen = 0
        try:
            while True:
                time.sleep(0.5)
                fresh = double.requests[seen:]
                seen += len(fresh)
                for request in fresh:
                    if request.method == "POST":
                        key = request.header("Idempotency-Key")
                        print(f"POST {request.path} key={key}", flush=True)
        except KeyboardInterrupt:
            acct = double.account
            credits = sum(len(v) for v in acct.balance.values())
            print(f"{len(acct.charges)} charges, {credits} credits, {len(acct.coupons)} coupons")


if __name__ == "__main__":
    main()
