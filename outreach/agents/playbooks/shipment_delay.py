"""shipment_delay: tell the customer a parcel is late; rebook and credit when badly late."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, ClassVar

from pydantic import Field

from outreach.agents.plan import Plan, PlannedAction, PlannedMessage
from outreach.agents.playbooks.base import Params, PlaybookContext
from outreach.events import ShipmentUpdatedData, utc_iso
from outreach.rules.durations import Duration, format_duration


class CreditByTier(Params):
    """Credit in minor units per customer tier."""

    standard: int = Field(gt=0)
    premium: int = Field(gt=0)


class ShipmentDelayParams(Params):
    """Parameters of ``shipment_delay`` (the numbers live in the rule file)."""

    template: str
    renotify_slip: Duration = Field(description="notify again only if the estimate slips this much")
    remediate_after: Duration = Field(description="rebook and credit from this delay on")
    remediate_on_exception: bool
    credit: CreditByTier
    default_currency: str = Field(pattern=r"^[A-Z]{3}$", description="when the order has none")


def _happened(ctx: PlaybookContext, tool: str) -> bool:
    live = ("executed", "scheduled", "pending_approval")
    return any(status in live for _, status in ctx.outcomes(tool))


class ShipmentDelay:
    """Notify once per shipment (again only on a further slip); remediate once per shipment."""

    name: ClassVar[str] = "shipment_delay"
    params: ClassVar[type[Params]] = ShipmentDelayParams
    triggers: ClassVar[frozenset[str]] = frozenset({"shipment.updated"})
    templates: ClassVar[tuple[str, ...]] = ("template",)
    links: ClassVar[tuple[str, ...]] = ()

    def plan(self, ctx: PlaybookContext) -> Plan:
        """Notice and remediation for one shipment update."""
        p: ShipmentDelayParams = ctx.params
        data = ctx.event.data
        assert isinstance(data, ShipmentUpdatedData)
        memory = ctx.entity.data
        if ctx.entity.closed:
            return Plan(note=f"shipment {data.shipment_id} is closed ({ctx.entity.closed})")
        est, promised = data.estimated_delivery, data.promised_delivery
        delay = est - promised if est is not None else None
        exception = data.status == "exception"
        plan = Plan()
        remediate = (exception and p.remediate_on_exception) or (
            delay is not None and delay >= p.remediate_after
        )
        if remediate:
            plan.actions.extend(self._remediation(ctx, p, data))
        notify, why = self._should_notify(memory, est, promised, p)
        if notify:
            memory["notified_estimate"] = est.timestamp() if est else None
            memory["notified_at"] = ctx.now.timestamp()
            plan.messages.append(self._notice(ctx, p, data, delay, bool(plan.actions)))
        plan.note = why + ("; remediation planned" if plan.actions else "")
        return plan

    def _should_notify(
        self,
        memory: dict[str, Any],
        est: datetime | None,
        promised: datetime,
        p: ShipmentDelayParams,
    ) -> tuple[bool, str]:
        if "notified_at" not in memory:
            return True, "first delay notice"
        last = float(memory.get("notified_estimate") or promised.timestamp())
        slip = p.renotify_slip.total_seconds()
        if est is not None and est.timestamp() >= last + slip:
            return True, f"estimate slipped a further {format_duration(p.renotify_slip)} or more"
        slip_text = format_duration(p.renotify_slip)
        return False, f"already notified; estimate has not slipped a further {slip_text}"

    def _remediation(
        self, ctx: PlaybookContext, p: ShipmentDelayParams, data: ShipmentUpdatedData
    ) -> list[PlannedAction]:
        value = data.order_value
        currency = value.currency if value else p.default_currency
        credit = p.credit.premium if ctx.profile.tier == "premium" else p.credit.standard
        rebook = PlannedAction(
            ref="rebook",
            tool="rebook_shipment",
            params={
                "shipment_id": data.shipment_id,
                "order_id": data.order_id,
                "carrier": data.carrier,
                "order_value": value.amount if value else None,
                "currency": value.currency if value else None,
            },
            target=data.shipment_id,
        )
        grant = PlannedAction(
            ref="credit",
            tool="grant_credit",
            params={
                "amount": credit,
                "currency": currency,
                "reason": f"late delivery of order {data.order_id}",
            },
            target=data.shipment_id,
        )
        # Once per shipment per tool: again only if the earlier attempt did not happen (blocked
        # by a budget or a kill switch since lifted, cancelled), never a second effect.
        return [a for a in (rebook, grant) if not _happened(ctx, a.tool)]

    def _notice(
        self,
        ctx: PlaybookContext,
        p: ShipmentDelayParams,
        data: ShipmentUpdatedData,
        delay: timedelta | None,
        remediating: bool,
    ) -> PlannedMessage:
        est = data.estimated_delivery
        context: dict[str, object] = {
            "order_id": data.order_id,
            "shipment_id": data.shipment_id,
            "carrier": data.carrier,
            "status": data.status,
            "exception_code": data.exception_code,
            "promised_delivery": utc_iso(data.promised_delivery),
            "new_estimate": utc_iso(est) if est else None,
            "delay_hours": int(delay.total_seconds() // 3600) if delay is not None else None,
            "credit": None,
        }
        notice = f"shipment-delay:{data.shipment_id}:{int(est.timestamp()) if est else 'none'}"
        plain = PlannedMessage("notice", p.template, "transactional", context, notice)
        if not remediating:
            return plain
        with_credit = dict(context)
        value = data.order_value
        credit = p.credit.premium if ctx.profile.tier == "premium" else p.credit.standard
        with_credit["credit"] = {
            "amount": credit,
            "currency": value.currency if value else p.default_currency,
        }
        return PlannedMessage(
            "notice_credit", p.template, "transactional", with_credit, notice,
            requires=("credit",), fallback=plain,
        )  # fmt: skip
