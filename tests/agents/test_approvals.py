"""Approvals in the core: an action waiting for a person is approved, rejected or expires.

Approving runs the action through the guardrails again at that moment (kill switches and
budgets may have moved) with the value threshold passed; rejecting cancels it; nobody answering
within ``approval_expiry`` expires it. Each outcome names who decided. Run-time kill switches
(set by an operator through the store's controls) stop tools and channels.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from support import later, make_event, profile, run_events, shipment_exception

from outreach.events import event_from_obj
from outreach.replay import Replayer
from outreach.rulebook import load_rulebook
from outreach.ruletests import MemoryLog

AT = "2026-03-09T15:00:00Z"


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, f"{old!r} not in {path}"
    path.write_text(text.replace(old, new))


shipment = shipment_exception


def decided(
    at: str, action_id: str, decision: str = "approve", by: str = "alice", customer: str = "cus_1"
) -> dict[str, Any]:
    return make_event(
        "approval.decided", at, customer, action_id=action_id, decision=decision, by=by,
        note="checked the order",
    )  # fmt: skip


def credits_needing_approval(rules: Path) -> None:
    """Standard customers get 1500: above the 1000 auto limit, within the 5000 approval one."""
    edit(rules / "shipment-delay.yaml", "credit: {standard: 500, premium: 1000}",
         "credit: {standard: 1500, premium: 1000}")  # fmt: skip


class Run:
    """An in-memory replay fed event by event, so a test can act between events."""

    def __init__(self, rules: Path) -> None:
        self.log = MemoryLog()
        self.replayer = Replayer(load_rulebook(rules), self.log)

    def feed(self, *events: dict[str, Any]) -> None:
        for event in events:
            self.replayer.feed_event(event_from_obj(event))

    def credit(self) -> list[dict[str, Any]]:
        return [a for a in self.log.actions if a["type"] == "grant_credit"]

    def pending_credit_id(self) -> str:
        pending = [a for a in self.credit() if a["status"] == "pending_approval"]
        assert len(pending) == 1, self.credit()
        return str(pending[0]["action_id"])


def test_an_approved_action_is_judged_again_and_performed_naming_who_approved(
    rules_copy: Path,
) -> None:
    credits_needing_approval(rules_copy)
    run = Run(rules_copy)
    run.feed(profile("2026-03-01T12:00:00Z"), shipment(AT))
    action_id = run.pending_credit_id()
    queued = run.credit()[0]
    assert queued["scheduled_for"] == "2026-03-11T15:00:00Z"  # the queue entry expires in 48h
    effects_before = len(run.log.effects)
    run.feed(decided(later(AT, hours=2), action_id))
    final = run.credit()[-1]
    assert final["status"] == "executed"
    assert final["decided_by"] == "alice"
    assert final["reason"] == "approved by alice: checked the order; guardrails passed"
    assert {"check": "approval", "result": "pass", "detail": "approved by alice"} in final["checks"]
    assert final["at"] == later(AT, hours=2).replace("+00:00", "Z")
    performed = run.log.effects[effects_before:]
    assert [(e["tool"], e["params"]["amount"]) for e in performed] == [("grant_credit", 1500)]
    run.replayer.drain()  # the expiry timer was cancelled with the approval
    assert [a["status"] for a in run.credit()] == ["pending_approval", "executed"]


def test_a_rejected_action_is_cancelled_and_never_performed(rules_copy: Path) -> None:
    credits_needing_approval(rules_copy)
    run = Run(rules_copy)
    run.feed(profile("2026-03-01T12:00:00Z"), shipment(AT))
    action_id = run.pending_credit_id()
    run.feed(decided(later(AT, hours=1), action_id, "reject", by="bob"))
    run.replayer.drain()
    final = run.credit()[-1]
    assert (final["status"], final["decided_by"]) == ("cancelled", "bob")
    assert final["reason"] == "rejected by bob: checked the order"
    assert not [e for e in run.log.effects if e["tool"] == "grant_credit"]


def test_an_approval_after_the_budget_moved_is_blocked(rules_copy: Path) -> None:
    """Two credits queued for one customer: approving both exceeds the 5000 per-customer
    budget, so the second approval is refused by the guardrails, naming the budget."""
    edit(rules_copy / "shipment-delay.yaml", "credit: {standard: 500, premium: 1000}",
         "credit: {standard: 3000, premium: 1000}")  # fmt: skip
    run = Run(rules_copy)
    run.feed(
        profile("2026-03-01T12:00:00Z"),
        shipment(AT, shipment_id="shp_1"),
        shipment(later(AT, minutes=5), shipment_id="shp_2"),
    )
    pending = [a["action_id"] for a in run.credit() if a["status"] == "pending_approval"]
    assert len(pending) == 2
    run.feed(decided(later(AT, hours=1), pending[0]), decided(later(AT, hours=2), pending[1]))
    first, second = run.credit()[-2:]
    assert first["status"] == "executed"
    assert second["status"] == "blocked"
    assert second["decided_by"] == "alice"
    assert "per-customer budget exceeded: 3000 + 3000 of 5000" in second["reason"]
    assert second["reason"].startswith("approved by alice: checked the order, but: ")


def test_an_approval_after_a_tool_was_switched_off_is_blocked(rules_copy: Path) -> None:
    credits_needing_approval(rules_copy)
    run = Run(rules_copy)
    run.feed(profile("2026-03-01T12:00:00Z"), shipment(AT))
    action_id = run.pending_credit_id()
    run.replayer.shared.set_control("tool", "grant_credit", "operator: credits paused")
    run.feed(decided(later(AT, hours=1), action_id))
    final = run.credit()[-1]
    assert final["status"] == "blocked"
    assert "kill switch: grant_credit is switched off (operator: credits paused)" in final["reason"]


def test_nobody_answering_expires_the_action_after_the_configured_time(rules_copy: Path) -> None:
    credits_needing_approval(rules_copy)
    edit(rules_copy / "policy.yaml", "guardrails:\n", "guardrails:\n  approval_expiry: 6h\n")
    result = run_events(load_rulebook(rules_copy), [profile("2026-03-01T12:00:00Z"), shipment(AT)])
    assert result.history("grant_credit") == [["pending_approval", "expired"]]
    expired = [a for a in result.log.actions if a["status"] == "expired"]
    assert expired[0]["at"] == "2026-03-09T21:00:00Z"
    assert expired[0]["reason"] == "no approval by 2026-03-09T21:00:00Z: not performed"
    assert not [e for e in result.log.effects if e["tool"] == "grant_credit"]


def test_an_answer_after_expiry_changes_nothing(rules_copy: Path) -> None:
    credits_needing_approval(rules_copy)
    run = Run(rules_copy)
    run.feed(profile("2026-03-01T12:00:00Z"), shipment(AT))
    action_id = run.pending_credit_id()
    run.feed(decided(later(AT, hours=49), action_id))  # the clock fires the expiry first
    assert [a["status"] for a in run.credit()] == ["pending_approval", "expired"]
    assert not [e for e in run.log.effects if e["tool"] == "grant_credit"]


def test_the_same_approval_twice_performs_once(rules_copy: Path) -> None:
    credits_needing_approval(rules_copy)
    run = Run(rules_copy)
    run.feed(profile("2026-03-01T12:00:00Z"), shipment(AT))
    action_id = run.pending_credit_id()
    run.feed(decided(later(AT, hours=1), action_id), decided(later(AT, hours=2), action_id))
    assert [a["status"] for a in run.credit()] == ["pending_approval", "executed"]
    assert len([e for e in run.log.effects if e["tool"] == "grant_credit"]) == 1


def test_a_channel_switched_off_at_run_time_sends_by_the_other_one(rules_copy: Path) -> None:
    run = Run(rules_copy)
    run.replayer.shared.set_control("channel", "sms", "operator: SMS provider incident")
    run.feed(profile("2026-03-01T12:00:00Z"), shipment(AT))
    [message] = run.log.messages
    assert (message["channel"], message["status"]) == ("email", "sent")
    assert {
        "check": "channel",
        "result": "fail",
        "detail": "sms: kill switch (operator: SMS provider incident)",
    } in message["checks"]
