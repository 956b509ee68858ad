"""payment_recovery: decline-aware retries, a card-update request, a human when it fails."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from outreach.agents.plan import Plan, PlannedAction, PlannedMessage
from outreach.agents.playbooks.base import Params, PlaybookContext
from outreach.events import PaymentFailedData, utc_iso
from outreach.rules.durations import Duration


class PaymentRecoveryParams(Params):
    """Parameters of ``payment_recovery``. Hard declines are the ``retry_payment`` guardrail's
    ``never_for_declines`` list in policy.yaml: one list, read by both."""

    retry_after: list[Duration] = Field(min_length=1, description="after the first failure")
    max_retries: dict[str, int] = Field(description="fewer retries for some decline codes")
    escalate_declines: list[str] = Field(description="hard declines that also go to a human")
    retry_template: str
    update_template: str
    escalation_queue: str


class PaymentRecovery:
    """One schedule per invoice, started by its first failure; later failures continue it."""

    name: ClassVar[str] = "payment_recovery"
    params: ClassVar[type[Params]] = PaymentRecoveryParams
    triggers: ClassVar[frozenset[str]] = frozenset({"payment.failed"})
    templates: ClassVar[tuple[str, ...]] = ("retry_template", "update_template")
    links: ClassVar[tuple[str, ...]] = ("update_payment",)

    def plan(self, ctx: PlaybookContext) -> Plan:
        """Plan for one failed payment."""
        p: PaymentRecoveryParams = ctx.params
        data = ctx.event.data
        assert isinstance(data, PaymentFailedData)
        memory = ctx.entity.data
        if ctx.entity.closed:
            return Plan(note=f"invoice {data.invoice_id} is closed ({ctx.entity.closed})")
        guard = ctx.guardrails.tools.get("retry_payment")
        hard_codes = guard.never_for_declines if guard else []
        first = "first_failure" not in memory
        if first:
            memory["first_failure"] = ctx.event.occurred_at.timestamp()
        if data.decline_code in hard_codes:
            return self._hard(ctx, p, data, first)
        if first:
            return self._schedule(ctx, p, data)
        pending = [a for a in ctx.open_actions if a.tool == "retry_payment"]
        if pending:
            left = f"{len(pending)} {'retry' if len(pending) == 1 else 'retries'} still pending"
            return Plan(note=f"continues the retry schedule ({left})")
        if memory.get("escalated") or memory.get("hard"):
            return Plan(note="already handed to a human or waiting for a new payment method")
        if not memory.get("retries"):
            return Plan(note="no retry schedule to continue")
        memory["escalated"] = True
        retries = ctx.outcomes("retry_payment")
        ran = sum(1 for _, status in retries if status == "executed")
        why = (
            f"all {ran} scheduled retries have run and failed"
            if ran == len(retries)
            else f"{ran} of {len(retries)} scheduled retries ran; the others did not"
        )
        return Plan(
            actions=[self._escalation(ctx, p, data, why)],
            note=f"a failure after the retry schedule ended: escalated ({why})",
        )

    def _schedule(
        self, ctx: PlaybookContext, p: PaymentRecoveryParams, data: PaymentFailedData
    ) -> Plan:
        first = ctx.event.occurred_at
        count = min(len(p.retry_after), p.max_retries.get(data.decline_code, len(p.retry_after)))
        ctx.entity.data["retries"] = count
        actions = [
            PlannedAction(
                ref=f"retry{i + 1}",
                tool="retry_payment",
                params={
                    "invoice_id": data.invoice_id,
                    "amount": data.amount,
                    "currency": data.currency,
                    "decline_code": data.decline_code,
                    "retry": i + 1,
                    "of": count,
                },
                target=f"{data.invoice_id}#retry{i + 1}",
                at=first + p.retry_after[i],
            )
            for i in range(count)
        ]
        context = self._context(ctx, data)
        context["next_retry"] = utc_iso(first + p.retry_after[0])
        fallback = PlannedMessage(
            "update", p.update_template, "transactional", self._context(ctx, data),
            f"payment-update:{data.invoice_id}",
        )  # fmt: skip
        message = PlannedMessage(
            "retry_notice", p.retry_template, "transactional", context,
            f"payment-retry:{data.invoice_id}", requires=("retry1",), fallback=fallback,
        )  # fmt: skip
        note = f"soft decline {data.decline_code}: {count} retries scheduled"
        return Plan(actions=actions, messages=[message], note=note)

    def _hard(
        self, ctx: PlaybookContext, p: PaymentRecoveryParams, data: PaymentFailedData, first: bool
    ) -> Plan:
        memory = ctx.entity.data
        if memory.get("hard"):
            return Plan(note=f"hard decline already handled ({memory['hard']})")
        memory["hard"] = data.decline_code
        plan = Plan(note=f"hard decline {data.decline_code}: never retried")
        if not first:
            plan.cancel_tools = ("retry_payment",)
            plan.cancel_reason = f"hard decline {data.decline_code}: never retried"
        plan.actions.append(
            PlannedAction(
                ref="update",
                tool="request_payment_update",
                params={
                    "invoice_id": data.invoice_id,
                    "amount": data.amount,
                    "currency": data.currency,
                },
                target=data.invoice_id,
            )
        )
        if data.decline_code in p.escalate_declines:
            memory["escalated"] = True
            why = f"card declined as {data.decline_code}: possible fraud or a compromised card"
            plan.actions.append(self._escalation(ctx, p, data, why))
        plan.messages.append(
            PlannedMessage(
                "update",
                p.update_template,
                "transactional",
                self._context(ctx, data),
                f"payment-update:{data.invoice_id}",
            )  # fmt: skip
        )
        return plan

    def _context(self, ctx: PlaybookContext, data: PaymentFailedData) -> dict[str, object]:
        return {
            "invoice_id": data.invoice_id,
            "amount": data.amount,
            "currency": data.currency,
            "update_url": ctx.link("update_payment", invoice_id=data.invoice_id),
        }

    def _escalation(
        self, ctx: PlaybookContext, p: PaymentRecoveryParams, data: PaymentFailedData, why: str
    ) -> PlannedAction:
        tried = [
            f"{tool} {target}: {status}" for tool, target, status in ctx.entity.outcomes.values()
        ]
        return PlannedAction(
            ref="escalate",
            tool="escalate_to_human",
            params={
                "queue": p.escalation_queue,
                "priority": "high" if data.decline_code in p.escalate_declines else "normal",
                "summary": (
                    f"Payment for invoice {data.invoice_id} failed ({data.decline_code}); {why}."
                ),
                "what_happened": [
                    f"payment {data.payment_id} of {data.amount} {data.currency} failed "
                    f"with {data.decline_code} (attempt {data.attempt})",
                ],
                "tried": tried or ["nothing automatic: hard decline"],
                "evidence": ctx.signal.evidence,
                "next_step": (
                    "Contact the customer about the payment method; do not retry the card."
                ),
            },
            target=f"{data.invoice_id}#escalation",
        )
