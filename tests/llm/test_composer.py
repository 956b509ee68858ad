"""Composing: slots placed inside the template text, checked, else the template text goes."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest
from llm.doubles import OpenAIDouble, failure, refusal, structured, text

from outreach.agents.adapters.llm import LLMGateway
from outreach.agents.adapters.openai_composer import OpenAIComposer
from outreach.agents.composing import Draft, Slots, TemplateComposer, assemble, check

Gateway = Callable[..., LLMGateway]
SMS = Draft(
    template="shipment_delay",
    channel="sms",
    locale="en-US",
    body="Acme: your order ORD-1 is running late. We added $5.00 to your account. "
    "Reply STOP to opt out.",
    max_segments=2,
    actions=frozenset({"rebook_shipment", "grant_credit"}),
)
EMAIL = Draft(
    template="shipment_delay",
    channel="email",
    locale="en-US",
    body="Hello,\n\nYour order ORD-1 (UPS) will not arrive when we promised.\n\n"
    "Questions? https://help.acme.example\nAcme",
    actions=frozenset({"rebook_shipment"}),
)
FR = Draft(
    template="shipment_delay",
    channel="sms",
    locale="fr-FR",
    body="Acme : votre commande ORD-1 a du retard.",
    max_segments=2,
)
SORRY = Slots(apology="We are sorry for the wait.", explanation="The carrier had a problem.")


def test_sms_slots_go_before_the_stop_text_and_never_a_greeting() -> None:
    composed = assemble(SMS, Slots("Hi Ann!", SORRY.apology, SORRY.explanation))
    assert composed == (
        "Acme: your order ORD-1 is running late. We added $5.00 to your account. "
        "We are sorry for the wait. The carrier had a problem. Reply STOP to opt out."
    )


def test_email_greeting_replaces_the_salutation_and_slots_precede_the_closing() -> None:
    composed = assemble(EMAIL, Slots("Good morning,", SORRY.apology, SORRY.explanation))
    assert composed.startswith("Good morning,\n\nYour order ORD-1 (UPS)")
    paragraphs = composed.rstrip("\n").split("\n\n")
    assert paragraphs[-2] == "We are sorry for the wait. The carrier had a problem."
    assert paragraphs[-1] == "Questions? https://help.acme.example\nAcme"


def test_good_slots_pass_the_checks() -> None:
    assert check(SMS, SORRY, assemble(SMS, SORRY)) is None
    fr = Slots(apology="Nous sommes désolés pour ce retard.")
    assert check(FR, fr, assemble(FR, fr)) is None


@pytest.mark.parametrize(
    ("draft", "slot", "problem"),
    [
        (SMS, "See https://acme.example/track for details.", "link"),
        (SMS, "Write to help@acme.example for more.", "link"),
        (SMS, "We added $50 to your account.", "amount"),
        (SMS, "It will arrive in 3 days.", "number 3"),
        (SMS, "It will arrive on the 12th.", "number 12"),
        (SMS, "We will refund you in full.", "refund"),
        (EMAIL, "We have added a credit to your account.", "credit"),
        (EMAIL, "Enjoy a discount on your next order.", "discount"),
        (SMS, "Sorry.\nReally.", "line break"),
        (SMS, "So sorry " * 20, "longer than"),
        (SMS, "Nous sommes vraiment désolés pour le retard de votre colis.", "written in fr"),
        (FR, "We are so sorry for the delay of your parcel.", "written in en"),
        (SMS, "Мы приносим извинения.", "language"),
    ],
)
def test_slots_that_change_what_the_decision_says_fail(
    draft: Draft, slot: str, problem: str
) -> None:
    slots = Slots(apology=slot)
    found = check(draft, slots, assemble(draft, slots))
    assert found is not None and problem in found


def test_a_credit_may_be_mentioned_when_the_decision_grants_one() -> None:
    slots = Slots(apology="The credit is our way of saying sorry.")
    assert check(SMS, slots, assemble(SMS, slots)) is None


def test_an_sms_that_would_outgrow_its_budget_or_turn_ucs2_fails() -> None:
    one = Draft("t", "sms", "en", "Acme: " + "x" * 150, max_segments=1)
    slots = Slots(apology="We are sorry.")
    assert "segments" in (check(one, slots, assemble(one, slots)) or "")
    emoji = Slots(apology="We are sorry 🙏")
    assert "UCS-2" in (check(SMS, emoji, assemble(SMS, emoji)) or "")


def test_the_template_composer_sends_the_template_text() -> None:
    assert TemplateComposer().compose(SMS).body == SMS.body


# -- through the SDK --------------------------------------------------------------------------


def test_model_slots_that_pass_are_sent(api: OpenAIDouble, gateway: Gateway) -> None:
    api.script(structured({"greeting": "Hi!", "apology": SORRY.apology, "explanation": ""}))
    composed = OpenAIComposer(gateway()).compose(SMS)
    assert (composed.source, composed.fallback) == ("model", None)
    assert "We are sorry for the wait. Reply STOP to opt out." in composed.body
    assert "Hi!" not in composed.body
    (request,) = [r.json for r in api.completions()]
    assert request["response_format"]["type"] == "json_schema"
    assert request["response_format"]["json_schema"]["strict"] is True
    assert json.loads(request["messages"][1]["content"])["message"] == SMS.body


@pytest.mark.parametrize(
    ("answer", "fallback"),
    [
        (structured({"greeting": "", "apology": "Here is a $20 refund.", "explanation": ""}),
         "check_failed"),
        (structured({"greeting": "", "apology": "Désolés !", "explanation": "Le transporteur a "
                     "eu un problème avec votre colis."}), "check_failed"),
        (text("Sorry about that!"), "non_json"),
        (structured({"apology": "Sorry."}), "non_json"),
        (refusal("no"), "refusal"),
        (failure(500), "llm_error"),
    ],
)  # fmt: skip
def test_any_failure_sends_the_template_text(
    api: OpenAIDouble, gateway: Gateway, answer: object, fallback: str
) -> None:
    api.script(answer)  # type: ignore[arg-type]
    composed = OpenAIComposer(gateway()).compose(SMS)
    assert (composed.body, composed.source, composed.fallback) == (SMS.body, "template", fallback)
    assert composed.llm[0]["outcome"] == fallback
