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


# -- telling the customer once an approved action is performed -----------------------------
def sent(run: Run) -> list[dict[str, Any]]:
    return [m for m in run.log.messages if m["status"] == "sent"]


def test_an_approved_credit_is_announced_after_the_plain_notice(rules_copy: Path) -> None:
    """The delay notice could not promise a credit that waited for a person, so its plain
    version went; once approved, the version with the credit goes as a notice of its own."""
    credits_needing_approval(rules_copy)
    run = Run(rules_copy)
    run.feed(profile("2026-03-01T12:00:00Z"), shipment(AT))
    [plain] = sent(run)
    assert "$15.00" not in plain["body"]
    run.feed(decided(later(AT, hours=2), run.pending_credit_id()))
    run.replayer.drain()
    first, second = sent(run)
    assert first == plain
    assert "We added $15.00 to your account" in second["body"]
    assert second["send_at"] == "2026-03-09T17:00:00Z"  # at the approval
    assert second["notice"] == f"{plain['notice']}#approved"
    assert second["signal_id"] == plain["signal_id"]
    assert second["checks"][0]["check"] == "approval"
    assert "approved by alice" in second["checks"][0]["detail"]


def test_nothing_more_is_said_when_the_approval_does_not_perform_the_action(
    rules_copy: Path,
) -> None:
    credits_needing_approval(rules_copy)
    run = Run(rules_copy)
    run.feed(profile("2026-03-01T12:00:00Z"), shipment(AT), shipment(AT, shipment_id="shp_2"))
    first, second = [a["action_id"] for a in run.credit() if a["status"] == "pending_approval"]
    run.replayer.shared.set_control("tool", "grant_credit", "operator: credits paused")
    run.feed(decided(later(AT, hours=1), first))  # blocked by the kill switch
    run.feed(decided(later(AT, hours=2), second, "reject", by="bob"))
    run.replayer.drain()
    assert [a["status"] for a in run.credit()][-2:] == ["blocked", "cancelled"]
    assert len(run.log.messages) == 2  # the two plain notices, nothing after
    assert not [m for m in run.log.messages if "$15.00" in m["body"]]


def test_a_plain_notice_still_waiting_for_morning_is_replaced_not_doubled(
    rules_copy: Path,
) -> None:
    """Late at night the plain notice waits for the end of quiet hours; an approval in the
    meantime replaces it with the credit version, so the customer gets one message."""
    credits_needing_approval(rules_copy)
    run = Run(rules_copy)
    night = "2026-03-10T03:00:00Z"  # 23:00 in New York
    run.feed(profile("2026-03-01T12:00:00Z"), shipment(night))
    [waiting] = run.log.messages
    assert waiting["status"] == "deferred"
    run.feed(decided(later(night, hours=1), run.pending_credit_id()))
    run.replayer.drain()
    statuses = [(m["message_id"], m["status"]) for m in run.log.messages]
    replaced = [m for m in run.log.messages if m["message_id"] == waiting["message_id"]]
    assert [m["status"] for m in replaced] == ["deferred", "suppressed"]
    assert replaced[-1]["reason"].startswith("superseded: grant_credit was approved")
    [credit] = sent(run)
    assert "We added $15.00" in credit["body"], statuses
    assert credit["notice"] == waiting["notice"]  # it takes the plain notice's place
    assert credit["send_at"] == "2026-03-10T12:00:00Z"  # 08:00 in New York


def renewal(at: str, **changes: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "subscription_id": "sub_1", "plan": "Pro annual", "renews_at": "2026-03-12T00:00:00Z",
        "amount": 29900, "currency": "USD", "auto_renew": False,
    }  # fmt: skip
    return make_event("renewal.upcoming", at, **{**data, **changes})


def offers_needing_approval(rules: Path) -> None:
    """25% is above the 20% auto limit and within the 30% approval one."""
    edit(rules / "renewal-save.yaml", "offer: {percent: 10, months: 12}",
         "offer: {percent: 25, months: 12}")  # fmt: skip


def offers(run: Run) -> list[dict[str, Any]]:
    return [a for a in run.log.actions if a["type"] == "offer_discount"]


def test_an_approved_offer_is_made_with_its_announcement(rules_copy: Path) -> None:
    offers_needing_approval(rules_copy)
    run = Run(rules_copy)
    run.feed(profile("2026-03-01T12:00:00Z", mail=(True, True)), renewal("2026-03-02T15:00:00Z"))
    [pending] = offers(run)
    assert pending["status"] == "pending_approval"
    [reminder] = sent(run)
    assert reminder["template"] == "renewal_reminder"
    run.feed(decided("2026-03-02T16:00:00Z", pending["action_id"]))
    run.replayer.drain()
    assert [a["status"] for a in offers(run)] == ["pending_approval", "executed"]
    offer = sent(run)[-1]
    assert (offer["template"], offer["channel"], offer["purpose"]) == (
        "renewal_offer", "email", "marketing",
    )  # fmt: skip
    assert "25%" in (offer["subject"] or "")
    assert [e["tool"] for e in run.log.effects] == ["offer_discount"]


def test_an_approved_offer_that_cannot_be_announced_is_not_made(rules_copy: Path) -> None:
    """Marketing consent withdrawn before the approval: the offer could not be announced, so
    it is not made; approval does not bypass the contact policy."""
    offers_needing_approval(rules_copy)
    run = Run(rules_copy)
    run.feed(profile("2026-03-01T12:00:00Z", mail=(True, True)), renewal("2026-03-02T15:00:00Z"))
    [pending] = offers(run)
    run.feed(profile("2026-03-02T15:30:00Z", mail=(True, False)))
    run.feed(decided("2026-03-02T16:00:00Z", pending["action_id"]))
    run.replayer.drain()
    final = offers(run)[-1]
    assert final["status"] == "blocked"
    assert final["reason"].startswith("approved by alice: checked the order, but: offer not made")
    assert not run.log.effects
    assert [m["template"] for m in sent(run)] == ["renewal_reminder"]


def test_an_offer_approved_at_night_is_made_when_its_announcement_goes(rules_copy: Path) -> None:
    """Approved during quiet hours: the offer waits for its announcement at 08:00 and is then
    judged again, the approval still standing (its threshold is not asked for twice)."""
    offers_needing_approval(rules_copy)
    run = Run(rules_copy)
    run.feed(profile("2026-03-01T12:00:00Z", mail=(True, True)), renewal("2026-03-02T15:00:00Z"))
    [pending] = offers(run)
    run.feed(decided("2026-03-03T03:00:00Z", pending["action_id"]))  # 22:00 in New York
    waiting = offers(run)[-1]
    assert waiting["status"] == "scheduled"
    assert "waits for its announcement" in waiting["reason"]
    assert not run.log.effects
    run.replayer.drain()
    final = offers(run)[-1]
    assert final["status"] == "executed", offers(run)
    assert final["at"] == "2026-03-03T13:00:00Z"  # 08:00 in New York
    assert {"check": "approval", "result": "pass", "detail": "approved by alice"} in final["checks"]
    assert [e["tool"] for e in run.log.effects] == ["offer_discount"]
    assert sent(run)[-1]["template"] == "renewal_offer"


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
