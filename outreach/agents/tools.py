"""The pre-approved remediation tools: names, strict parameter models, the value guardrails see.

Nothing else can act on a customer's account. A planner (deterministic playbook or LLM) may
only propose calls to these tools; the guardrails validate the parameters against these models
and judge the tool's *value* (credit amount, discount percent, order value) against thresholds
and budgets.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

ToolName = Literal[
    "rebook_shipment",
    "retry_payment",
    "request_payment_update",
    "grant_credit",
    "offer_discount",
    "escalate_to_human",
]
TOOL_NAMES: tuple[str, ...] = ToolName.__args__  # type: ignore[attr-defined]

Currency = Annotated[str, StringConstraints(pattern=r"^[A-Z]{3}$")]
Id = Annotated[str, StringConstraints(min_length=1, max_length=128)]


class ToolParams(BaseModel):
    """Base for tool parameters: strict, unknown fields refused (an LLM cannot smuggle any)."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)


class RebookShipment(ToolParams):
    """Ask the carrier/OMS to rebook or expedite a late shipment."""

    shipment_id: Id
    order_id: Id
    carrier: str
    order_value: int | None = Field(default=None, ge=0, description="minor units, if known")
    currency: Currency | None = None


class RetryPayment(ToolParams):
    """Charge the open invoice again (one scheduled retry of a decline-aware schedule)."""

    invoice_id: Id
    amount: int = Field(ge=0)
    currency: Currency
    decline_code: str = Field(description="the decline that started the schedule")
    retry: int = Field(ge=1, description="1-based number of this retry")
    of: int = Field(ge=1, description="retries in the schedule")


class RequestPaymentUpdate(ToolParams):
    """Ask billing for a link the customer can use to update the payment method."""

    invoice_id: Id
    amount: int = Field(ge=0)
    currency: Currency


class GrantCredit(ToolParams):
    """Credit the customer's balance."""

    amount: int = Field(gt=0, description="minor units")
    currency: Currency
    reason: str = Field(min_length=1, max_length=200)


class OfferDiscount(ToolParams):
    """Apply a retention discount to the customer's subscription."""

    percent: float = Field(gt=0, le=100)
    months: int = Field(ge=1, le=24)
    reason: str = Field(min_length=1, max_length=200)
    subscription_id: Id | None = None


class EscalateToHuman(ToolParams):
    """Hand the case to a person, with everything they need to pick it up cold."""

    queue: str = Field(min_length=1, max_length=64)
    priority: Literal["low", "normal", "high", "urgent"]
    summary: str = Field(min_length=1, max_length=500)
    what_happened: list[str] = Field(min_length=1)
    tried: list[str]
    evidence: dict[str, Any]
    next_step: str = Field(min_length=1, max_length=500)


@dataclass(frozen=True)
class Tool:
    """A tool's parameter model and the value its guardrail thresholds and budgets judge."""

    name: str
    params: type[ToolParams]
    value_of: Callable[[Any], float | None]
    value_unit: str  # "minor units", "percent", "" (no value)
    currency_of: Callable[[Any], str | None]


def _none(_: Any) -> None:
    return None


TOOLS: dict[str, Tool] = {
    "rebook_shipment": Tool(
        "rebook_shipment",
        RebookShipment,
        lambda p: p.order_value,
        "order value",
        lambda p: p.currency,
    ),
    "retry_payment": Tool(
        "retry_payment", RetryPayment, lambda p: p.amount, "amount", lambda p: p.currency
    ),
    "request_payment_update": Tool(
        "request_payment_update", RequestPaymentUpdate, _none, "", lambda p: p.currency
    ),
    "grant_credit": Tool(
        "grant_credit", GrantCredit, lambda p: p.amount, "amount", lambda p: p.currency
    ),
    "offer_discount": Tool("offer_discount", OfferDiscount, lambda p: p.percent, "percent", _none),
    "escalate_to_human": Tool("escalate_to_human", EscalateToHuman, _none, "", _none),
}
