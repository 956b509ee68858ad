"""What the connector tests send: effects of the pre-approved tools and connector configs."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from outreach.agents.connectors import Effect
from outreach.agents.tools import TOOLS
from outreach.connectors.config import HttpTool, Loaded, load_connectors
from outreach.connectors.http import HttpConnector

MakeConnector = Callable[..., HttpConnector]  # the ``connect`` fixture


def rebook(
    key: str = "eff:sig_1:rebook_shipment:shp_1", customer: str = "cus_1", **params: Any
) -> Effect:
    """A ``rebook_shipment`` effect (its parameters validated like the guardrails do)."""
    values: dict[str, Any] = {
        "shipment_id": "shp_1", "order_id": "ORD-1", "carrier": "ups", "order_value": 1000,
        "currency": "USD", **params,
    }  # fmt: skip
    return _effect(key, customer, "rebook_shipment", values)


def credit(key: str = "eff:sig_1:grant_credit:cus_1", customer: str = "cus_1") -> Effect:
    """A ``grant_credit`` effect of 500 USD cents."""
    values = {"amount": 500, "currency": "USD", "reason": "late delivery"}
    return _effect(key, customer, "grant_credit", values)


def escalation(key: str = "eff:sig_1:escalate_to_human:cus_1", customer: str = "cus_1") -> Effect:
    """An ``escalate_to_human`` effect with everything a person needs."""
    values = {
        "queue": "logistics",
        "priority": "high",
        "summary": "Parcel shp_1 is five days late and the rebooking failed twice",
        "what_happened": ["shipment shp_1 went into exception", "rebooking was rejected"],
        "tried": ["rebook_shipment"],
        "evidence": {"shipment_id": "shp_1", "days_late": 5},
        "next_step": "call the carrier",
    }
    return _effect(key, customer, "escalate_to_human", values)


def _effect(key: str, customer: str, tool: str, params: dict[str, Any]) -> Effect:
    TOOLS[tool].params.model_validate(params)  # a test effect is one the core could decide
    return Effect(
        idempotency_key=key, action_id=f"act_{key}", customer_id=customer, tool=tool,
        params=params,
    )  # fmt: skip


def http_tool(url: str, **fields: Any) -> HttpTool:
    """An ``http`` tool config, validated as the connectors file would be."""
    return HttpTool.model_validate({"url": url, **fields})


def write_connectors(tmp_path: Path, text: str, name: str = "connectors.yaml") -> Path:
    """``text`` as a connectors file in ``tmp_path``."""
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def load_text(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> Loaded:
    """Write and load a connectors file (with ``env`` as the whole environment)."""
    return load_connectors(write_connectors(tmp_path, text), env or {})
