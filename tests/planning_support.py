"""Planning contexts for the model-planner tests, built the way the executor builds them.

Import as ``from planning_support import shipment, payment, renewal`` (tests/ is on pythonpath).
Each call builds a fresh context (playbooks write their memory into it).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from support import RULES

from outreach.agents.plan import Plan
from outreach.agents.scenarios import Built, Scenario, build
from outreach.rulebook import RuleBook, load_rulebook

PHONE = "+14155550123"
EMAIL = "ann.private@example.com"


@lru_cache(maxsize=1)
def book() -> RuleBook:
    """The shipped rules folder."""
    return load_rulebook(RULES)


def built(rule: str, event_type: str, data: dict[str, Any], **extra: Any) -> Built:
    """A scenario through the shipped rules; ``extra``: customer, evidence, memory."""
    customer = {"phone": PHONE, "email": EMAIL, **extra.pop("customer", {})}
    scenario = Scenario.model_validate(
        {
            "name": f"{rule}:{event_type}",
            "rule": rule,
            "customer": customer,
            "event": {"type": event_type, "at": "2026-03-09T15:00:00Z", "data": data},
            **extra,
        }
    )
    return build(book(), scenario)


def shipment(
    *,
    value: int | None = 1000,
    status: str = "exception",
    estimate: str | None = None,
    carrier: str = "ups",
    exception_code: str | None = "damaged",
    **extra: Any,
) -> Built:
    """A stuck parcel (exception): the playbook rebooks it and grants a credit (500 USD
    minor units for a standard customer, 1000 for premium)."""
    data: dict[str, Any] = {
        "shipment_id": "shp_1",
        "order_id": "ORD-1",
        "carrier": carrier,
        "status": status,
        "promised_delivery": "2026-03-10T15:00:00Z",
        "estimated_delivery": estimate,
        "exception_code": exception_code,
        "order_value": {"amount": value, "currency": "USD"} if value is not None else None,
    }
    return built("shipment-delay", "shipment.updated", data, **extra)


def payment(code: str = "insufficient_funds", **extra: Any) -> Built:
    """A first failed payment of invoice in_1 (2900 USD): soft -> 3 retries; hard -> card
    update (and, for fraud-like codes, an escalation)."""
    data = {
        "payment_id": "pay_1",
        "invoice_id": "in_1",
        "amount": 2900,
        "currency": "USD",
        "decline_code": code,
        "attempt": 1,
    }
    return built("payment-recovery", "payment.failed", data, **extra)


def renewal(**extra: Any) -> Built:
    """A renewal in 10 days with auto-renew off: 10% off for 12 months, announced."""
    data = {
        "subscription_id": "sub_1",
        "plan": "Pro annual",
        "renews_at": "2026-03-19T15:00:00Z",
        "amount": 12000,
        "currency": "USD",
        "auto_renew": False,
    }
    return built("renewal-save", "renewal.upcoming", data, **extra)


def planned(b: Built) -> Plan:
    """The deterministic plan of ``b`` (call once per context)."""
    return b.playbook.plan(b.ctx)


def allowed(b: Built) -> list[str]:
    """The playbook's allow-list from policy.yaml."""
    return list(b.ctx.guardrails.playbooks[b.playbook.name])
