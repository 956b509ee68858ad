"""retention_offer and renewal_save: discounts that are only made if they can be announced.

With ``acceptance`` set, an offer announced by SMS is applied only when the customer replies
YES within ``reply_within`` (NO or silence: no discount); the SMS text must ask for the YES
(``outreach rules check`` refuses one that does not). An email cannot be answered with a
keyword, so an offer announced by email is applied as without ``acceptance``."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import ClassVar

from pydantic import Field, field_validator

from outreach.agents.plan import Plan, PlannedAction, PlannedMessage
from outreach.agents.playbooks.base import Params, PlaybookContext
from outreach.events import EVENT_TYPES, RenewalUpcomingData, UsageReportedData, utc_iso
from outreach.rules.durations import Duration


class Offer(Params):
    """A discount: percent off for a number of months."""

    percent: float = Field(gt=0, le=100)
    months: int = Field(ge=1, le=24)


class Acceptance(Params):
    """Ask the customer first: the offer is applied on a YES reply to its SMS."""

    reply_within: Duration = Field(description="how long a YES is waited for (1h to 30d)")

    @field_validator("reply_within")
    @classmethod
    def _sensible(cls, value: timedelta) -> timedelta:
        if not timedelta(hours=1) <= value <= timedelta(days=30):
            raise ValueError("reply_within must be between 1h and 30d")
        return value


class RetentionOfferParams(Params):
    """Parameters of ``retention_offer``."""

    offer: Offer
    template: str
    reason: str
    acceptance: Acceptance | None = None


class RenewalSaveParams(Params):
    """Parameters of ``renewal_save``."""

    offer: Offer
    offer_template: str = Field(description="marketing: the reminder with the offer")
    reminder_template: str = Field(description="transactional: the reminder alone")
    reason: str
    acceptance: Acceptance | None = None


def _offer_action(
    p_offer: Offer, reason: str, target: str, announce: str, acceptance: Acceptance | None
) -> PlannedAction:
    return PlannedAction(
        ref="offer",
        tool="offer_discount",
        params={"percent": p_offer.percent, "months": p_offer.months, "reason": reason},
        target=target,
        announce=announce,
        accept_within=acceptance.reply_within.total_seconds() if acceptance else None,
    )


def _offer_context(
    p_offer: Offer, acceptance: Acceptance | None, now: datetime
) -> dict[str, object]:
    """What the offer's templates may show: ``reply_by`` only when a YES is asked for."""
    context: dict[str, object] = {"percent": p_offer.percent, "months": p_offer.months}
    if acceptance is not None:
        context["reply_by"] = utc_iso(now + acceptance.reply_within)
    return context


class RetentionOffer:
    """A marketing offer; no offer is made that cannot be announced to the customer."""

    name: ClassVar[str] = "retention_offer"
    params: ClassVar[type[Params]] = RetentionOfferParams
    triggers: ClassVar[frozenset[str]] = frozenset(EVENT_TYPES)
    templates: ClassVar[tuple[str, ...]] = ("template",)
    marketing_templates: ClassVar[tuple[str, ...]] = ("template",)
    acceptance_templates: ClassVar[tuple[str, ...]] = ("template",)  # ask for the YES
    links: ClassVar[tuple[str, ...]] = ()

    def plan(self, ctx: PlaybookContext) -> Plan:
        """Offer and its announcement."""
        p: RetentionOfferParams = ctx.params
        data = ctx.event.data
        context = _offer_context(p.offer, p.acceptance, ctx.now)
        if isinstance(data, UsageReportedData):
            context["metric"] = data.metric
        target = f"offer:{ctx.signal.signal_id}"
        action = _offer_action(p.offer, p.reason, target, "offer_msg", p.acceptance)
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
    acceptance_templates: ClassVar[tuple[str, ...]] = ("offer_template",)  # ask for the YES
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
            **_offer_context(p.offer, p.acceptance, ctx.now),
        }
        notice = f"renewal:{data.subscription_id}:{int(data.renews_at.timestamp())}"
        target = f"renewal-offer:{data.subscription_id}"
        offer = _offer_action(p.offer, p.reason, target, "offer_msg", p.acceptance)
        offer.params["subscription_id"] = data.subscription_id
        reminder = PlannedMessage("reminder", p.reminder_template, "transactional", context, notice)
        message = PlannedMessage(
            "offer_msg", p.offer_template, "marketing", context, notice,
            requires=("offer",), fallback=reminder,
        )  # fmt: skip
        return Plan(actions=[offer], messages=[message], note="renewal reminder")
