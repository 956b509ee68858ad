"""Offers that wait for the customer's YES (``params.acceptance`` of retention_offer).

The shipped usage-decline rule, with ``acceptance: {reply_within: 72h}`` and an SMS text that
asks for the YES; the customer has SMS marketing consent only, so the offer goes by SMS.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support import Run, later, make_event, profile, run_events

from outreach.events import event_from_obj
from outreach.rulebook import RuleBook, load_rulebook
from outreach.rules.yamlfile import RuleFileError

RULE = "usage-decline"
DAY0 = "2026-03-02T15:00:00Z"  # 10:00 in New York
PHONE = "+14155550100"
ASKING = (
    "{{ brand.name }}: get {{ percent | percent }} off your next month. Reply YES to accept "
    "or NO to pass. Reply STOP to opt out."
)


def outside_holdout() -> str:
    """A customer in neither control group (usage-decline, renewal-save)."""

    def bucket(rule: str, customer: str) -> int:
        digest = hashlib.sha256(f"{rule}:{customer}".encode()).hexdigest()
        return int(digest[:8], 16) % 100

    customers = (f"cus_{i}" for i in range(1000))
    return next(c for c in customers if min(bucket(r, c) for r in (RULE, "renewal-save")) >= 10)


CUS = outside_holdout()


def with_acceptance(folder: Path, sms_text: str = ASKING) -> Path:
    rule = folder / "usage-decline.yaml"
    text = rule.read_text()
    text = text.replace(
        "  reason: usage decline\n", "  reason: usage decline\n  acceptance: {reply_within: 72h}\n"
    )
    text = text[: text.index("\n# Cases run by")] + "\n"  # its inline cases are about the default
    rule.write_text(text)
    template = folder / "templates" / "usage_decline_offer.yaml"
    lines = template.read_text().splitlines()
    start = lines.index("  text:")
    end = lines.index("email:")
    lines[start:end] = ["  text:", f"    en: >-\n      {sms_text}"]
    template.write_text("\n".join(lines) + "\n")
    return folder


@pytest.fixture
def asking(rules_copy: Path) -> RuleBook:
    return load_rulebook(with_acceptance(rules_copy))


def usage(at: str, value: float, metric: str = "api_calls") -> dict[str, Any]:
    return make_event(
        "usage.reported", at, CUS, metric=metric, value=value,
        period_start=later(at, days=-1), period_end=at,
    )  # fmt: skip


def declining(metric: str = "api_calls", start: int = 0) -> list[dict[str, Any]]:
    return [
        usage(later(DAY0, days=start + i, minutes=start), v, metric)
        for i, v in enumerate([100, 100, 100, 100, 40])
    ]


def reply(body: str, at: str) -> dict[str, Any]:
    return make_event(
        "message.received", at, CUS, channel="sms", from_address=PHONE, body=body,
        provider="twilio",
    )  # fmt: skip


def customer(**kw: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"sms": (True, True), "mail": (True, False)}
    return profile("2026-03-01T12:00:00Z", CUS, **{**base, **kw})


OFFERED_AT = later(DAY0, days=4)


def offered(book: RuleBook, *extra: dict[str, Any], drain: bool = False) -> Run:
    return run_events(book, [customer(), *declining(), *extra], drain=drain)


def feed(result: Run, *events: dict[str, Any]) -> None:
    for event in events:
        result.replayer.feed_event(event_from_obj(event))


def offers(result: Run) -> list[dict[str, Any]]:
    return [a for a in result.actions if a["type"] == "offer_discount"]


def history(result: Run) -> Iterator[tuple[str, str]]:
    return ((a["status"], a["reason"]) for a in result.log.actions if a["type"] == "offer_discount")


def answers(result: Run) -> list[str]:
    return [m["body"] for m in result.messages if m["rule_id"] == "sms_replies"]


def test_an_offer_by_sms_waits_for_the_yes_and_the_yes_applies_it(asking: RuleBook) -> None:
    result = offered(asking)
    (offer,) = offers(result)
    assert offer["status"] == "scheduled"
    assert "applied if the customer replies YES by 2026-03-09T15:00:00Z" in offer["reason"]
    (message,) = [m for m in result.messages if m["rule_id"] == RULE]
    assert (message["channel"], message["status"]) == ("sms", "sent")
    assert "Reply YES to accept" in message["body"]
    assert not result.log.effects  # nothing applied before the customer says so
    feed(result, reply("Yes!", later(OFFERED_AT, hours=5)))
    (offer,) = offers(result)
    assert offer["status"] == "executed"
    assert offer["reason"].startswith("accepted: the customer replied YES")
    (effect,) = result.log.effects
    assert (effect["tool"], effect["params"]["percent"]) == ("offer_discount", 20)
    assert answers(result) == ["Acme: done, your offer is applied. Reply STOP to opt out."]
    assert not [a for a in result.actions if a["type"] == "escalate_to_human"]
    feed(result, reply("YES", later(OFFERED_AT, hours=6)))  # nothing waits now: a person reads it
    assert len(result.log.effects) == 2
    assert result.log.effects[1]["tool"] == "escalate_to_human"


def test_no_declines_the_offer(asking: RuleBook) -> None:
    result = offered(asking, reply("no", later(OFFERED_AT, hours=1)))
    (offer,) = offers(result)
    assert offer["status"] == "cancelled"
    assert offer["reason"].startswith("declined: the customer replied NO")
    assert not result.log.effects
    assert answers(result) == ["Acme: understood, no change to your plan. Reply STOP to opt out."]


def test_an_unanswered_offer_expires_at_the_end_of_its_window(asking: RuleBook) -> None:
    result = offered(asking, drain=True)
    (offer,) = offers(result)
    assert (offer["status"], offer["reason"]) == (
        "cancelled", "offer expired: no YES by 2026-03-09T15:00:00Z",
    )  # fmt: skip
    assert not result.log.effects
    late = run_events(asking, [customer(), *declining(), reply("YES", later(OFFERED_AT, days=4))])
    assert offers(late)[0]["status"] == "cancelled"
    assert [e["tool"] for e in late.log.effects] == ["escalate_to_human"]


def test_one_offer_waits_for_an_answer_at_a_time(asking: RuleBook) -> None:
    """Two metrics fall a day apart: a second question would make a YES ambiguous."""
    result = run_events(asking, [customer(), *declining(), *declining("seats", 1)], drain=False)
    first, second = offers(result)
    assert first["status"] == "scheduled" and second["status"] == "blocked"
    assert second["reason"] == (
        f"offer not made: offer {first['action_id']} still awaits the customer's YES or NO"
    )
    assert len([m for m in result.messages if m["rule_id"] == RULE and m["status"] == "sent"]) == 1


def renewal(at: str) -> dict[str, Any]:
    return make_event(
        "renewal.upcoming", at, CUS, subscription_id="sub_1", plan="Pro annual",
        renews_at=later(at, days=10), amount=29900, currency="USD", auto_renew=False,
    )  # fmt: skip


def test_a_yes_the_budget_no_longer_allows_goes_to_a_person(asking: RuleBook) -> None:
    """While the usage offer waits, the renewal offer (applied at once) spends the one
    offer_discount per 90 days: the YES that follows cannot be honoured automatically."""
    events = [customer(), *declining(), renewal(later(OFFERED_AT, days=1))]
    result = run_events(asking, events, drain=False)
    renewal_offer = [o for o in offers(result) if o["rule_id"] == "renewal-save"]
    assert [o["status"] for o in renewal_offer] == ["executed"]
    feed(result, reply("YES", later(OFFERED_AT, days=1, hours=1)))
    (usage_offer,) = [o for o in offers(result) if o["rule_id"] == RULE]
    assert usage_offer["status"] == "blocked"
    assert "replied YES" in usage_offer["reason"] and "budget" in usage_offer["reason"]
    assert [e["tool"] for e in result.log.effects] == ["offer_discount", "escalate_to_human"]
    (escalation,) = [a for a in result.actions if a["type"] == "escalate_to_human"]
    assert escalation["params"]["reason"] == "accepted offer not applied (blocked)"
    assert "could not apply this offer automatically" in answers(result)[-1]


def test_an_offer_announced_after_quiet_hours_waits_from_when_it_was_sent(
    asking: RuleBook,
) -> None:
    night = "2026-03-02T03:00:00Z"  # 22:00 in New York
    events = [customer(), *[usage(later(night, days=i), v) for i, v in enumerate([9, 9, 9, 9, 3])]]
    result = run_events(asking, events, drain=False)
    assert [s for s, _ in history(result)] == ["scheduled"]
    assert "waits for its announcement" in offers(result)[0]["reason"]
    feed(result, reply("YES", "2026-03-06T16:00:00Z"))  # the SMS went at 08:00 EST (13:00Z)
    assert [s for s, _ in history(result)] == ["scheduled", "scheduled", "executed"]
    assert (
        "applied if the customer replies YES by 2026-03-09T13:00:00Z" in list(history(result))[1][1]
    )


def test_an_offer_announced_by_email_is_applied_without_asking(asking: RuleBook) -> None:
    result = run_events(asking, [customer(sms=(True, False), mail=(True, True)), *declining()])
    (offer,) = offers(result)
    assert offer["status"] == "executed"
    assert [e["tool"] for e in result.log.effects] == ["offer_discount"]


def test_a_customer_who_stopped_can_still_accept_but_gets_no_answer(asking: RuleBook) -> None:
    result = offered(asking, reply("STOP", later(OFFERED_AT, hours=1)))
    feed(result, reply("YES", later(OFFERED_AT, hours=2)))
    assert offers(result)[0]["status"] == "executed"
    assert answers(result) == []  # only the STOP confirmation went
    assert [m["rule_id"] for m in result.messages][-1] == "sms_keywords"


def test_rules_check_refuses_an_accepting_offer_whose_sms_does_not_ask_for_yes(
    rules_copy: Path,
) -> None:
    silent = "{{ brand.name }}: {{ percent | percent }} off next month. Reply STOP to opt out."
    with pytest.raises(RuleFileError) as refused:
        load_rulebook(with_acceptance(rules_copy, silent))
    (problem,) = refused.value.problems
    assert problem.path.endswith("templates/usage_decline_offer.yaml")
    assert "must ask for it" in problem.message and problem.line > 1


def test_reply_within_out_of_range_is_refused_at_its_line(rules_copy: Path) -> None:
    with_acceptance(rules_copy)
    rule = rules_copy / "usage-decline.yaml"
    rule.write_text(rule.read_text().replace("reply_within: 72h", "reply_within: 45d"))
    with pytest.raises(RuleFileError) as refused:
        load_rulebook(rules_copy)
    (problem,) = refused.value.problems
    assert problem.path.endswith("usage-decline.yaml") and "between 1h and 30d" in problem.message


def test_an_offer_approved_by_a_person_still_waits_for_the_customers_yes(
    rules_copy: Path,
) -> None:
    """25% needs a person's approval: nothing is said until then (the offer message has no
    plain version); approved, it is announced by SMS and waits for the YES, which applies it
    without asking the person again."""
    folder = with_acceptance(rules_copy)
    rule = folder / "usage-decline.yaml"
    rule.write_text(rule.read_text().replace("percent: 20, months: 1", "percent: 25, months: 1"))
    result = offered(load_rulebook(folder))
    (pending,) = offers(result)
    assert pending["status"] == "pending_approval"
    assert not [m for m in result.messages if m["rule_id"] == RULE]
    feed(result, make_event(
        "approval.decided", later(OFFERED_AT, hours=1), CUS, action_id=pending["action_id"],
        decision="approve", by="alice",
    ))  # fmt: skip
    (message,) = [m for m in result.messages if m["rule_id"] == RULE]
    assert (message["channel"], message["status"]) == ("sms", "sent")
    assert "get 25% off" in message["body"]
    waiting = offers(result)[-1]
    assert waiting["status"] == "scheduled"
    assert "applied if the customer replies YES" in waiting["reason"]
    assert not result.log.effects
    feed(result, reply("yes", later(OFFERED_AT, hours=3)))
    final = offers(result)[-1]
    assert final["status"] == "executed", list(history(result))
    assert {"check": "approval", "result": "pass", "detail": "approved by alice"} in final["checks"]
    assert [e["tool"] for e in result.log.effects] == ["offer_discount"]


# -- free-text answers, read when they arrived (keywords or a model: the event says) ----------


def read_reply(
    body: str, at: str, intent: str, confidence: float, source: str = "model"
) -> dict[str, Any]:
    event = reply(body, at)
    event["data"]["understanding"] = {
        "intent": intent, "confidence": confidence, "source": source, "reason": f"{source} read",
    }  # fmt: skip
    return event


def test_a_free_text_acceptance_read_by_the_model_applies_the_offer(asking: RuleBook) -> None:
    result = offered(asking)
    feed(
        result, read_reply("that works for me, thanks", later(OFFERED_AT, hours=2), "accept", 0.93)
    )
    (offer,) = offers(result)
    assert offer["status"] == "executed"
    assert "free text read as accept by model, 0.93" in offer["reason"]
    (effect,) = result.log.effects
    assert effect["tool"] == "offer_discount"  # through the same guardrails as a YES
    assert answers(result) == ["Acme: done, your offer is applied. Reply STOP to opt out."]


def test_a_free_text_refusal_declines_and_an_unsure_reading_goes_to_a_person(
    asking: RuleBook,
) -> None:
    result = offered(asking)
    feed(result, read_reply("hmm maybe later", later(OFFERED_AT, hours=1), "human", 0.4))
    (offer,) = offers(result)
    assert offer["status"] == "scheduled"  # still waiting for a sure answer
    (handoff,) = [e for e in result.log.effects if e["tool"] == "escalate_to_human"]
    assert handoff["params"]["understanding"]["intent"] == "human"
    assert handoff["params"]["reason"] == "customer reply: not understood surely enough"
    feed(result, read_reply("no thank you", later(OFFERED_AT, hours=2), "decline", 0.9))
    (offer,) = offers(result)
    assert offer["status"] == "cancelled"
    assert "free text read as decline by model, 0.90" in offer["reason"]


def test_a_model_reading_of_accept_cannot_outvote_opt_out_language(asking: RuleBook) -> None:
    result = offered(asking)
    feed(result, read_reply("yes, stop texting me", later(OFFERED_AT, hours=1), "accept", 0.99))
    (offer,) = offers(result)
    assert offer["status"] == "scheduled"  # not applied: the opt-out comes first
    assert state_of(result).contact.suppressed == {"sms": "stop"}
    (handoff,) = [e for e in result.log.effects if e["tool"] == "escalate_to_human"]
    assert handoff["params"]["reason"].startswith("opt-out language")


def test_a_reply_without_a_reading_is_read_by_keywords_in_the_core(asking: RuleBook) -> None:
    result = offered(asking, reply("sounds good", later(OFFERED_AT, hours=1)))
    (offer,) = offers(result)
    assert offer["status"] == "executed"
    assert "free text read as accept by keywords, 0.80" in offer["reason"]


def state_of(result: Run) -> Any:
    return result.replayer.states[CUS]
