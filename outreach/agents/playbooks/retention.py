"""retention_offer and renewal_save: discounts that are only made if they can be announced."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from outreach.agents.plan import Plan, PlannedAction, PlannedMessage
from outreach.agents.playbooks.base import Params, PlaybookContext
from outreach.events import EVENT_TYPES, RenewalUpcomingData, UsageReportedData, utc_iso


class Offer(Params):
    """A discount: percent off for a number of months."""

    percent: float = Field(gt=0, le=100)
    months: int = Field(ge=1, le=24)


class RetentionOfferParams(Params):
    """Parameters of ``retention_offer``."""

    offer: Offer
    template: str
    reason: str


class RenewalSaveParams(Params):
    """Parameters of ``renewal_save``."""

    offer: Offer
    offer_template: str = Field(description="marketing: the reminder with the offer")
    reminder_template: str = Field(description="transactional: the reminder alone")
    reason: str


def _offer_action(p_offer: Offer, reason: str, target: str, announce: str) -> PlannedAction:
    return PlannedAction(
        ref="offer",
        tool="offer_discount",
        params={"percent": p_offer.percent, "months": p_offer.months, "reason": reason},
        target=target,
        announce=announce,
    )


class RetentionOffer:
    """A marketing offer; no offer is made that cannot be announced to the customer."""

    name: ClassVar[str] = "retention_offer"
    params: ClassVar[type[Params]] = RetentionOfferParams
    triggers: ClassVar[frozenset[str]] = frozenset(EVENT_TYPES)
    templates: ClassVar[tuple[str, ...]] = ("template",)
    marketing_templates: ClassVar[tuple[str, ...]] = ("template",)
    links: ClassVar[tuple[str, ...]] = ()

    def plan(self, ctx: PlaybookContext) -> Plan:
        """Offer and its announcement."""
        p: RetentionOfferParams = ctx.params
        data = ctx.event.data
        context: dict[str, object] = {"percent": p.offer.percent, "months": p.offer.months}
        if isinstance(data, UsageReportedData):
            context["metric"] = data.metric
        action = _offer_action(p.offer, p.reason, f"offer:{ctx.signal.signal_id}", "offer_msg")
        message = PlannedMessage(
            "offer_msg", p.template, "marketing", context,
            f"retention-offer:{ctx.signal.signal_id}", requires=("offer",),
        )  # fmt: skip
        return Plan(actions=[action], messages=[message], note="retention offer")


class RenewalSave:
    """A renewal reminder, with an offer only where marketing consent and guardrails allow."""

    name: ClassVar[str] = "renewal_save"
    params: ClassVar[type[Params]] = RenewalSaveParams
    triggers: ClassVar[frozenset[str]] = frozenset({"renewal.upcoming"})
    templates: ClassVar[tuple[str, ...]] = ("offer_template", "reminder_template")
    marketing_templates: ClassVar[tuple[str, ...]] = ("offer_template",)
    links: ClassVar[tuple[str, ...]] = ()

    def plan(self, ctx: PlaybookContext) -> Plan:
        """Reminder (transactional) or reminder with offer (marketing)."""
        p: RenewalSaveParams = ctx.params
        data = ctx.event.data
        assert isinstance(data, RenewalUpcomingData)
        context: dict[str, object] = {
            "subscription_id": data.subscription_id,
            "plan": data.plan,
            "renews_at": utc_iso(data.renews_at),
            "amount": data.amount,
            "currency": data.currency,
            "auto_renew": data.auto_renew,
            "percent": p.offer.percent,
            "months": p.offer.months,
        }
        notice = f"renewal:{data.subscription_id}:{int(data.renews_at.timestamp())}"
        offer = _offer_action(
            p.offer, p.reason, f"renewal-offer:{data.subscription_id}", "offer_msg"
        )
        offer.params["subscription_id"] = data.subscription_id
        reminder = PlannedMessage("reminder", p.reminder_template, "transactional", context, notice)
        message = PlannedMessage(
            "offer_msg", p.offer_template, "marketing", context, notice,
            requires=("offer",), fallback=reminder,
        )  # fmt: skip
        return Plan(actions=[offer], messages=[message], note="renewal reminder")
