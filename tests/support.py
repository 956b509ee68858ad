"""Test helpers: event builders and an in-memory replay through a rules folder.

Import as ``from support import make_event, profile, run_events`` (tests/ is on pythonpath).
"""

from __future__ import annotations

import itertools
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from outreach.events import Event, event_from_obj
from outreach.replay import Replayer
from outreach.rulebook import RuleBook
from outreach.ruletests import MemoryLog, final_states

REPO = Path(__file__).resolve().parent.parent
RULES = REPO / "rules"
_ids = itertools.count(1)


NOTE_TEMPLATE = """\
id: note
description: a plain notice for test rules
sms:
  max_segments: 1
  text:
    en: "Acme: something happened."
email:
  subject:
    en: "Something happened"
  body:
    en: "Hello, something happened. Acme"
"""


def minimal_folder(tmp_path: Path) -> Path:
    """``tmp_path/rules`` with the shipped policy.yaml and one ``note`` template, no rules."""
    folder = tmp_path / "rules"
    (folder / "templates").mkdir(parents=True)
    shutil.copy(RULES / "policy.yaml", folder / "policy.yaml")
    (folder / "templates" / "note.yaml").write_text(NOTE_TEMPLATE, encoding="utf-8")
    return folder


def ts(text: str) -> datetime:
    """``"2026-03-02T10:00:00Z"`` -> aware datetime."""
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)


def make_event(
    type: str,
    at: str | datetime,
    customer: str = "cus_1",
    event_id: str | None = None,
    **data: Any,
) -> dict[str, Any]:
    """An event as a JSON-ready dict (validated later, like a producer's message)."""
    when = at if isinstance(at, str) else at.isoformat()
    return {
        "event_id": event_id or f"evt_{next(_ids)}",
        "type": type,
        "customer_id": customer,
        "occurred_at": when,
        "data": data,
    }


def profile(
    at: str | datetime,
    customer: str = "cus_1",
    *,
    phone: str | None = "+14155550100",
    email: str | None = "ann@example.com",
    timezone: str = "America/New_York",
    locale: str = "en-US",
    tier: str = "standard",
    sms: tuple[bool, bool] = (True, False),
    mail: tuple[bool, bool] = (True, False),
) -> dict[str, Any]:
    """A ``customer.updated`` event; ``sms``/``mail`` are (transactional, marketing) consent."""
    data: dict[str, Any] = {
        "timezone": timezone,
        "locale": locale,
        "tier": tier,
        "consent": {
            "sms": {"transactional": sms[0], "marketing": sms[1]},
            "email": {"transactional": mail[0], "marketing": mail[1]},
        },
    }
    if phone:
        data["phone"] = phone
    if email:
        data["email"] = email
    return make_event("customer.updated", at, customer, **data)


@dataclass
class Run:
    """The outcome of an in-memory replay."""

    log: MemoryLog
    replayer: Replayer

    @property
    def signals(self) -> list[dict[str, Any]]:
        return self.log.signals

    @property
    def actions(self) -> list[dict[str, Any]]:
        """Final state of each action, in order of first appearance."""
        return final_states(self.log.actions, "action_id")

    @property
    def messages(self) -> list[dict[str, Any]]:
        """Final state of each message, in order of first appearance."""
        return final_states(self.log.messages, "message_id")

    def history(self, action_type: str) -> list[list[str]]:
        """Every status each action of ``action_type`` went through, in order."""
        seen: dict[str, list[str]] = {}
        for record in self.log.actions:
            if record["type"] == action_type:
                seen.setdefault(record["action_id"], []).append(record["status"])
        return list(seen.values())

    def of(self, rule_id: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """(actions, messages) of one rule, final states."""
        return (
            [a for a in self.actions if a["rule_id"] == rule_id],
            [m for m in self.messages if m["rule_id"] == rule_id],
        )


def run_events(book: RuleBook, events: Iterable[dict[str, Any] | Event], drain: bool = True) -> Run:
    """Validate, order by occurred_at (stable) and replay events in memory."""
    log = MemoryLog()
    replayer = Replayer(book, log)
    parsed = [e if not isinstance(e, dict) else event_from_obj(e) for e in events]
    parsed.sort(key=lambda e: e.occurred_at)
    for event in parsed:
        replayer.feed_event(event)
    if drain:
        replayer.drain()
    return Run(log, replayer)


def payment_failed(at: str, customer: str = "cus_1") -> dict[str, Any]:
    """A first soft decline (insufficient_funds) of invoice in_1 for 29.00 USD."""
    return make_event(
        "payment.failed", at, customer, payment_id="pay_1", invoice_id="in_1", amount=2900,
        currency="USD", decline_code="insufficient_funds", attempt=1,
    )  # fmt: skip


def later(at: str, **delta: float) -> str:
    """``later("2026-03-02T10:00:00Z", hours=5)`` -> an RFC 3339 string."""
    return (ts(at) + timedelta(**delta)).isoformat()


def shipment_exception(
    at: str, customer: str = "cus_1", shipment_id: str = "shp_1"
) -> dict[str, Any]:
    """A ``shipment.updated`` in ``exception`` on a 1000-minor-unit USD order (a delay signal
    whose plan rebooks the parcel and grants a credit)."""
    return make_event(
        "shipment.updated", at, customer, shipment_id=shipment_id, order_id=f"ORD-{shipment_id}",
        carrier="ups", status="exception", promised_delivery="2026-03-10T15:00:00Z",
        order_value={"amount": 1000, "currency": "USD"},
    )  # fmt: skip
