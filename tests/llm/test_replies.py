"""Reply understanding: opt-out first, keywords by default, a model when configured."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest
from llm.doubles import OpenAIDouble, failure, structured, text

from outreach.agents.adapters.llm import LLMGateway
from outreach.agents.adapters.openai_replies import OpenAIReplies
from outreach.agents.replies import KeywordReplies, understand_by_keywords

Gateway = Callable[..., LLMGateway]


@pytest.mark.parametrize(
    ("body", "intent"),
    [
        ("stop texting me", "opt_out"),
        ("Please STOP sending these", "opt_out"),
        ("unsubscribe", "opt_out"),
        ("Leave me alone!", "opt_out"),
        ("STOP.", "opt_out"),
        ("don't text me again, when does my parcel come?", "opt_out"),
        ("Arrêtez de m'envoyer des messages", "opt_out"),
        ("YES", "accept"),
        ("yes please", "accept"),
        ("Sounds good, go ahead", "accept"),
        ("no thanks", "decline"),
        ("Not interested", "decline"),
        ("When will it arrive?", "question"),
        ("HELP", "question"),
        ("This is ridiculous, worst service ever", "complaint"),
        ("Why is it always late? Unacceptable!", "complaint"),
        ("hmm", "human"),
        ("Sure, but not interested", "human"),  # both: not sure enough
    ],
)
def test_keywords_read_the_reply(body: str, intent: str) -> None:
    assert understand_by_keywords(body).intent == intent
    assert KeywordReplies().understand(body).source == "keywords"


def test_low_confidence_goes_to_a_person_with_the_guess_kept() -> None:
    found = understand_by_keywords("When?", threshold=0.9)
    assert (found.intent, found.guess, found.confidence) == ("human", "question", 0.7)


def test_opt_out_language_never_reaches_the_model(api: OpenAIDouble, gateway: Gateway) -> None:
    found = OpenAIReplies(gateway()).understand("stop texting me, when is my parcel due?")
    assert (found.intent, found.source) == ("opt_out", "keywords")
    assert api.completions() == []


def test_the_model_reads_a_free_text_reply(api: OpenAIDouble, gateway: Gateway) -> None:
    api.script(structured({"intent": "accept", "confidence": 0.93}))
    found = OpenAIReplies(gateway()).understand("that works for me, thank you")
    assert (found.intent, found.source, found.confidence) == ("accept", "model", 0.93)
    request = api.completions()[0].json
    assert request["response_format"]["json_schema"]["strict"] is True
    assert json.loads(request["messages"][1]["content"]) == {
        "reply": "that works for me, thank you"
    }
    assert found.llm[0]["outcome"] == "ok"


def test_a_model_that_is_not_sure_hands_over_to_a_person(
    api: OpenAIDouble, gateway: Gateway
) -> None:
    api.script(structured({"intent": "decline", "confidence": 0.41}))
    found = OpenAIReplies(gateway()).understand("well maybe later")
    assert (found.intent, found.guess) == ("human", "decline")


@pytest.mark.parametrize(
    ("answer", "fallback"),
    [(failure(500), "llm_error"), (text("accept"), "non_json"),
     (structured({"intent": "buy", "confidence": 1.0}), "non_json")],
)  # fmt: skip
def test_a_failed_model_reading_falls_back_to_keywords(
    api: OpenAIDouble, gateway: Gateway, answer: object, fallback: str
) -> None:
    api.script(answer)  # type: ignore[arg-type]
    found = OpenAIReplies(gateway()).understand("no thanks")
    assert (found.intent, found.source, found.fallback) == ("decline", "keywords", fallback)


def test_personal_data_in_a_reply_is_redacted(api: OpenAIDouble, gateway: Gateway) -> None:
    api.script(structured({"intent": "question", "confidence": 0.9}))
    OpenAIReplies(gateway()).understand("call me on +14155550199 or ann@example.com")
    raw = json.dumps(api.completions()[0].json)
    assert "+14155550199" not in raw and "ann@example.com" not in raw
