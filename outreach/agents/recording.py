"""Building the decision-log records (and the effects/deliveries) of the executor's verdicts."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from outreach.agents.connectors import Effect
from outreach.agents.guardrails import Verdict
from outreach.agents.state import OpenAction
from outreach.decisions import ActionRecord, Decisions, Delivery, MessageRecord
from outreach.outbound.policy import MessageDecision, OutboundMessage


def action_record(
    oa: OpenAction,
    customer_id: str,
    status: str,
    reason: str,
    now: datetime,
    verdict: Verdict | None = None,
    decided_by: str | None = None,
) -> ActionRecord:
    """A status change of an action known by its open-action record (``decided_by``: the
    person who approved or rejected it)."""
    return ActionRecord(
        action_id=oa.action_id, signal_id=oa.signal_id, customer_id=customer_id,
        rule_id=oa.rule_id, type=oa.tool, params=oa.params, status=status,
        at=now, reason=reason, target=oa.target, idempotency_key=oa.idempotency_key,
        scheduled_for=_due(oa) if status != "executed" else None,
        checks=[c.as_dict() for c in verdict.checks] if verdict else [_check(status, reason)],
        decided_by=decided_by,
    )  # fmt: skip


def _check(status: str, reason: str) -> dict[str, str]:
    """The one check behind a status no guardrail decided (cancelled, skipped_holdout)."""
    name = {"cancelled": "cancel", "skipped_holdout": "holdout", "expired": "approval"}.get(
        status, status
    )
    return {"check": name, "result": status, "detail": reason}


def _due(oa: OpenAction) -> datetime | None:
    return datetime.fromtimestamp(oa.due, UTC) if oa.due else None


def effect(oa: OpenAction, customer_id: str) -> Effect:
    """The side effect an executed action asks a connector to perform."""
    return Effect(
        idempotency_key=oa.idempotency_key,
        action_id=oa.action_id,
        customer_id=customer_id,
        tool=oa.tool,
        params=oa.params,
        signal_id=oa.signal_id,
        rule_id=oa.rule_id,
        target=oa.target,
    )


def record_message(
    out: Decisions,
    msg: OutboundMessage,
    decision: MessageDecision,
    customer_id: str,
    attempt: int = 1,
    marketing_list: str | None = None,
) -> None:
    """Append the message's new status, and its delivery if it is sent now (``attempt``:
    the how-manieth time; ``marketing_list``: the email list of marketing mail)."""
    decision.finish()
    rendered = decision.rendered
    segments = rendered.segments if rendered else None
    out.messages.append(
        MessageRecord(
            message_id=msg.message_id,
            signal_id=msg.signal_id,
            customer_id=customer_id,
            rule_id=msg.rule_id,
            channel=decision.channel,
            to=decision.to,
            purpose=msg.purpose,
            subject=rendered.subject if rendered else None,
            body=rendered.body if rendered else None,
            send_at=decision.send_at,
            status=decision.status,
            reason=decision.reason,
            template=msg.template,
            notice=msg.notice,
            locale=rendered.locale if rendered else None,
            segments=segments.segments if segments else None,
            encoding=segments.encoding if segments else None,
            checks=decision.checks,
            composer=decision.composer,
        )  # fmt: skip
    )
    if decision.status == "sent" and rendered is not None and decision.to is not None:
        out.deliveries.append(
            Delivery(
                message_id=msg.message_id,
                customer_id=customer_id,
                channel=decision.channel,
                to=decision.to,
                purpose=msg.purpose,
                subject=rendered.subject,
                body=rendered.body,
                template=msg.template,
                attempt=attempt,
                list_id=(
                    marketing_list
                    if msg.purpose == "marketing" and decision.channel == "email"
                    else None
                ),
            )  # fmt: skip
        )


def preview(actions: list[Any], messages: list[Any]) -> dict[str, Any]:
    """What a shadow rule would have done (planned, not judged)."""
    return {
        "actions": [
            {
                "type": a.tool,
                "params": a.params,
                "target": a.target,
                "at": a.at.isoformat() if a.at else None,
            }
            for a in actions
        ],
        "messages": [{"template": m.template, "purpose": m.purpose} for m in messages],
    }
