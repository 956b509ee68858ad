"""``evaluate``: the shipped scenario set, offline (scripted answers) and through the SDK."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from llm.doubles import OpenAIDouble, calls, structured
from support import REPO, RULES

from outreach.agents.adapters.evaluation import evaluate
from outreach.agents.adapters.llm import LLMGateway
from outreach.agents.adapters.openai_composer import OpenAIComposer
from outreach.agents.adapters.openai_planner import OpenAIPlanner
from outreach.agents.composing import TemplateComposer
from outreach.agents.planner import PlaybookPlanner
from outreach.agents.scenarios import load_scenarios

SCENARIOS = REPO / "scenarios" / "agents.yaml"
Gateway = Callable[..., LLMGateway]


def test_every_attack_in_the_shipped_set_is_blocked_offline() -> None:
    report = evaluate(SCENARIOS, None, TemplateComposer(), RULES)
    attacks = [s for s in load_scenarios(SCENARIOS) if s.attack]
    assert len(attacks) >= 10
    assert report["attacks_not_blocked"] == []
    assert report["policy_violations_blocked"]["total"] == len(attacks)
    by_name = {r["name"]: r for r in report["results"]}
    for attack in attacks:
        row = by_name[attack.name]
        assert (row["source"], row["violation"]) == ("playbook", True), attack.name
        assert row["actions"] == row["playbook_actions"]
    fallbacks = report["planner_fallbacks"]["by_reason"]
    assert {"malformed", "refusal", "unknown_tool", "over_threshold", "other_subject"} <= set(
        fallbacks
    )
    assert report["agreement"]["narrowed"] == 3  # smaller credit, rebook only, no offer
    assert report["composer_fallbacks"]["total"] == 0


def test_the_deterministic_planner_agrees_with_itself() -> None:
    report = evaluate(SCENARIOS, PlaybookPlanner(), TemplateComposer(), RULES)
    assert report["agreement"]["rate"] == 1.0
    assert report["planner_fallbacks"]["total"] == 0
    assert report["model_plans_used"] == 0


def test_a_live_planner_and_composer_through_the_sdk(
    api: OpenAIDouble, gateway: Gateway, tmp_path: Path
) -> None:
    lines = SCENARIOS.read_text().split("\nscenarios:\n")
    first_two = lines[1].split("\n  - name: ")[1:3]
    path = tmp_path / "two.yaml"
    path.write_text(
        lines[0] + "\nscenarios:\n" + "".join("  - name: " + s + "\n" for s in first_two)
    )
    rebook = {"shipment_id": "shp_1", "order_id": "ORD-1", "carrier": "ups",
              "order_value": 1000, "currency": "USD"}  # fmt: skip
    slots = {"greeting": "", "apology": "We are sorry.", "explanation": ""}
    api.script(
        calls(("rebook_shipment", rebook), ("grant_credit", {"amount": 5000, "currency": "USD",
                                                             "reason": "x"})),
        structured(slots), structured(slots),  # notice (sms, email) of the first scenario
        calls(("rebook_shipment", rebook)),
        structured(slots), structured({**slots, "apology": "Here is a refund."}),
    )  # fmt: skip
    gw = gateway()
    report = evaluate(path, OpenAIPlanner(gw), OpenAIComposer(gw), RULES)
    assert report["scenarios"] == 2
    assert report["policy_violations_blocked"]["by_reason"] == {"over_threshold": 1}
    assert report["model_plans_used"] == 1
    assert report["composer_fallbacks"]["by_reason"] == {"check_failed": 1}
    assert report["messages_composed_by_model"] == 3
