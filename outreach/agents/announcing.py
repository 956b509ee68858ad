"""How planned messages become outbound messages, and how an announcement gates its action.

An action that must be announced (an offer) happens only with its message; a message that
promises an action goes only if the action is certain. These helpers hold those two rules so
the executor only has to apply them.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from outreach.agents.guardrails import Check, Verdict
from outreach.agents.plan import PlannedMessage
from outreach.ids import make_id
from outreach.outbound.policy import MessageDecision, OutboundMessage
from outreach.outbound.state import HeldMessage


@dataclass(frozen=True)
class MessageChoice:
    """A planned message and what was decided for it (possibly its fallback instead)."""

    planned: PlannedMessage
    chosen: PlannedMessage
    msg: OutboundMessage
    decision: MessageDecision
    why: str  # why the fallback was used, if it was

    @property
    def announces(self) -> bool:
        """The planned message itself goes (now or after quiet hours), not its fallback."""
        return self.chosen is self.planned and self.decision.deliverable

    def failure(self) -> str:
        """Why the planned message does not go."""
        return self.why if self.chosen is not self.planned else self.decision.reason


def announced(verdict: Verdict, choice: MessageChoice | None) -> tuple[Verdict, datetime | None]:
    """An action that must be announced happens only with its message: (verdict, wait until).

    A pending approval stays pending: the announcement is decided when a person approves."""
    if verdict.status not in ("executed", "scheduled"):
        return verdict, None
    if choice is None or not choice.announces:
        reason = "no message could announce it" if choice is None else choice.failure()
        checks = [*verdict.checks, Check("announce", "fail", reason)]
        return Verdict("blocked", f"offer not made: {reason}", checks, verdict.params), None
    if choice.decision.status == "deferred":
        send_at = choice.decision.send_at
        why = f"waits for its announcement, deferred to {send_at:%Y-%m-%d %H:%M}Z"
        checks = [*verdict.checks, Check("announce", "defer", why)]
        waiting = Verdict("scheduled", why, checks, verdict.params, verdict.value, verdict.currency)
        return waiting, send_at
    return verdict, None


def approved(verdict: Verdict | None) -> bool:
    """A message may promise an action only if it is certain: executed or scheduled."""
    return verdict is not None and verdict.status in ("executed", "scheduled")


def outbound(
    signal_id: str, rule_id: str, category: str, planned: PlannedMessage
) -> OutboundMessage:
    return OutboundMessage(
        message_id=make_id("msg", signal_id, planned.ref), signal_id=signal_id, rule_id=rule_id,
        template=planned.template, purpose=planned.purpose, context=planned.context,
        notice=planned.notice, category=category,
    )  # fmt: skip


def from_held(d: HeldMessage) -> OutboundMessage:
    """The message a deferred or sent message stands for, to be judged again."""
    return OutboundMessage(
        message_id=d.message_id, signal_id=d.signal_id, rule_id=d.rule_id, template=d.template,
        purpose=d.purpose, context=d.context, notice=d.notice, category=d.category,
    )  # fmt: skip


def as_dict(planned: PlannedMessage | None) -> dict[str, Any] | None:
    """A fallback message as plain data, to wait in state with a deferred message."""
    if planned is None:
        return None
    return {
        "ref": planned.ref, "template": planned.template, "purpose": planned.purpose,
        "context": planned.context, "notice": planned.notice,
    }  # fmt: skip
