"""A customer's free-text SMS reply is read when it arrives (keywords by default, a model
when configured) and the ``message.received`` event carries the reading; the model is asked
through the real openai SDK against the scripted local server, never for keywords or opt-out
language, and a slow or failing model leaves the keyword reading."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from llm.doubles import OpenAIDouble, failure, stall, structured
from pydantic import SecretStr

from outreach.agents.adapters.llm import LLMGateway, LLMSettings
from outreach.agents.adapters.openai_replies import OpenAIReplies
from outreach.agents.replies import KeywordReplies as KeywordReader
from outreach.agents.replies import ReplyReader
from outreach.api import ApiSettings, FakeEventSink, KeywordReplies, create_app
from outreach.api.reading import read_reply, reply_reader
from outreach.events import MessageReceived
from outreach.store import Store
from outreach.store.contacts import Contacts
from outreach.store.tokens import SharedTokens

pytestmark = pytest.mark.timeout(60)

INBOUND = "/webhooks/twilio/inbound"
NUMBER = "+15550100001"
Known = Callable[[str, str, str], None]
Post = Callable[..., httpx.Response]


@pytest.fixture
def model() -> Iterator[OpenAIDouble]:
    with OpenAIDouble("sk-test") as double:
        yield double


def model_reader(model: OpenAIDouble) -> OpenAIReplies:
    settings = LLMSettings(
        api_key=SecretStr("sk-test"), base_url=model.base_url, model="test-model",
        timeout=2.0, max_retries=0,
    )  # fmt: skip
    return OpenAIReplies(LLMGateway(settings))


@pytest.fixture
def post_sms(
    replies: KeywordReplies, sign_twilio: Callable[..., str]
) -> Callable[..., httpx.Response]:
    """``post_sms(settings, contacts, sink, body, reader=None)``: a signed inbound SMS."""

    def post(
        settings: ApiSettings, contacts: Contacts, sink: FakeEventSink, body: str,
        reader: ReplyReader | None = None,
    ) -> httpx.Response:  # fmt: skip
        app = create_app(settings, contacts, sink, replies, brand="Acme", reader=reader)
        params = {"MessageSid": "SM0042", "From": NUMBER, "To": "+15550199999", "Body": body}
        headers = {"X-Twilio-Signature": sign_twilio(f"http://testserver{INBOUND}", params)}
        with TestClient(app) as client:
            return client.post(INBOUND, data=params, headers=headers)

    return post


def reading_of(sink: FakeEventSink) -> dict[str, Any] | None:
    (event,) = sink.events
    assert isinstance(event, MessageReceived)
    found = event.data.understanding
    return None if found is None else found.model_dump(exclude_none=True)


def test_by_default_keywords_read_a_free_text_reply(
    settings: ApiSettings, contacts: Contacts, sink: FakeEventSink, known: Known, post_sms: Post
) -> None:
    known("sms", NUMBER, "cus_a")
    assert post_sms(settings, contacts, sink, "When will it arrive?").status_code == 200
    assert reading_of(sink) == {
        "intent": "question", "confidence": 0.7, "source": "keywords", "reason": "question phrase",
    }  # fmt: skip


def test_the_model_reads_a_free_text_reply_and_the_event_says_so(
    settings: ApiSettings, contacts: Contacts, sink: FakeEventSink, known: Known,
    post_sms: Post, model: OpenAIDouble, caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    known("sms", NUMBER, "cus_a")
    model.script(structured({"intent": "accept", "confidence": 0.93}))
    with caplog.at_level(logging.INFO, logger="outreach.api.reading"):
        post_sms(settings, contacts, sink, "that works for me", model_reader(model))
    assert reading_of(sink) == {
        "intent": "accept", "confidence": 0.93, "source": "model", "reason": "model: accept",
    }  # fmt: skip
    (request,) = model.completions()
    assert "that works for me" in request.json["messages"][1]["content"]
    assert NUMBER not in str(request.json)  # the sender's number never goes to the model
    assert any('"prompt_sha256"' in r.getMessage() for r in caplog.records)  # the audit


@pytest.mark.parametrize("body", ["STOP", "yes", "HELP", "stop texting me", "unsubscribe me"])
def test_keywords_and_opt_out_language_never_wait_for_the_model(
    body: str, settings: ApiSettings, contacts: Contacts, sink: FakeEventSink, known: Known,
    model: OpenAIDouble, post_sms: Post,
) -> None:  # fmt: skip
    known("sms", NUMBER, "cus_a")
    post_sms(settings, contacts, sink, body, model_reader(model))
    assert model.completions() == []
    reading = reading_of(sink)
    assert reading is None or (reading["intent"], reading["source"]) == ("opt_out", "keywords")


def test_an_unknown_number_is_not_read(
    settings: ApiSettings,
    contacts: Contacts,
    sink: FakeEventSink,
    model: OpenAIDouble,
    post_sms: Post,
) -> None:
    post_sms(settings, contacts, sink, "who is this?", model_reader(model))
    assert sink.events == [] and model.completions() == []


def test_a_failing_model_leaves_the_keyword_reading(
    settings: ApiSettings, contacts: Contacts, sink: FakeEventSink, known: Known,
    post_sms: Post, model: OpenAIDouble,
) -> None:  # fmt: skip
    known("sms", NUMBER, "cus_a")
    model.script(failure(500))
    assert post_sms(settings, contacts, sink, "no thanks", model_reader(model)).status_code == 200
    reading = reading_of(sink)
    assert reading is not None
    assert (reading["intent"], reading["source"], reading["fallback"]) == (
        "decline", "keywords", "llm_error",
    )  # fmt: skip


def test_a_reading_that_takes_too_long_is_replaced_by_keywords(model: OpenAIDouble) -> None:
    model.script(stall(1.5))
    reading = asyncio.run(read_reply(model_reader(model), "This is ridiculous", limit=0.2))
    assert (reading["intent"], reading["source"], reading["fallback"]) == (
        "complaint", "keywords", "timeout",
    )  # fmt: skip


def test_a_broken_reader_loses_no_reply() -> None:
    class Broken:
        def understand(self, body: str) -> Any:
            raise RuntimeError("bug")

    reading = asyncio.run(read_reply(Broken(), "no thanks"))
    assert (reading["intent"], reading["fallback"]) == ("decline", "error")


@pytest.mark.parametrize(
    ("env", "model_used"),
    [
        ({}, False),
        ({"OPENAI_BASE_URL": "http://127.0.0.1:9/v1"}, True),
        ({"OPENAI_BASE_URL": "http://127.0.0.1:9/v1", "OUTREACH_LLM_USES": "planner"}, False),
        ({"OPENAI_API_KEY": "sk-x", "OUTREACH_LLM_USES": "replies,composer"}, True),
    ],
)
def test_the_model_reads_replies_only_when_configured_for_it(
    env: dict[str, str], model_used: bool, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for name in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "OUTREACH_LLM_USES"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    store = Store(f"sqlite:///{tmp_path}/outreach.db")
    store.migrate()
    reader = reply_reader(store)
    assert isinstance(reader, OpenAIReplies) is model_used
    assert isinstance(reader, KeywordReader) is not model_used
    if isinstance(reader, OpenAIReplies):  # bounded to fit Twilio's 15 s
        assert reader.gateway.settings.timeout <= 3.5
        assert reader.gateway.settings.max_retries <= 1
        usage = reader.gateway.usage  # the token budget the workers count against too
        assert isinstance(usage, SharedTokens) and usage.store is store
        usage.close()
    store.close()
