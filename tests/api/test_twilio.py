"""Twilio webhooks: inbound SMS (keywords, STOP at once, unknown numbers, retries) and status
callbacks, on requests signed by the Twilio SDK's own code."""

from __future__ import annotations

import logging
import xml.etree.ElementTree as ET
from collections.abc import Callable
from datetime import datetime
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from outreach.api import ApiSettings, FakeEventSink, KeywordReplies, create_app
from outreach.events import Event, MessageReceived, MessageStatus
from outreach.store.contacts import Contacts

pytestmark = pytest.mark.timeout(60)

INBOUND = "/webhooks/twilio/inbound"
STATUS = "/webhooks/twilio/status"
NUMBER = "+15550100001"
OURS = "+15550199999"
Post = Callable[..., httpx.Response]
Known = Callable[[str, str, str], None]


def sms(body: str, sid: str = "SM0001", sender: str = NUMBER) -> dict[str, str]:
    """The fields Twilio posts for an inbound SMS (the ones we read, and a few we do not)."""
    return {
        "MessageSid": sid, "SmsSid": sid, "AccountSid": "AC123", "From": sender, "To": OURS,
        "Body": body, "NumMedia": "0",
    }  # fmt: skip


def replies_in(response: httpx.Response) -> list[str | None]:
    """The ``<Message>`` texts of a TwiML answer (checking that it is TwiML)."""
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/xml")
    root = ET.fromstring(response.text)  # noqa: S314 - our own answer
    assert root.tag == "Response"
    return [message.text for message in root.findall("Message")]


def received(events: list[Event]) -> list[tuple[str, str, str, str]]:
    """(customer, event id, from, body) of each message.received."""
    assert all(isinstance(e, MessageReceived) for e in events)
    return [
        (e.customer_id, e.event_id, e.data.from_address, e.data.body)
        for e in events
        if isinstance(e, MessageReceived)
    ]


@pytest.mark.parametrize(
    "body", ["STOP", "stop", "  Stop.  ", "\nSTOPALL\n", "unsubscribe", "Cancel!", "quit", "END"]
)
def test_a_stop_keyword_suppresses_the_number_and_reaches_every_customer_of_it(
    body: str, twilio_post: Post, known: Known, contacts: Contacts, sink: FakeEventSink,
    now: datetime,
) -> None:  # fmt: skip
    known("sms", NUMBER, "cus_b")
    known("sms", NUMBER, "cus_a")
    known("sms", "+15550100002", "cus_c")

    response = twilio_post(INBOUND, sms(body))

    assert replies_in(response) == []  # the core sends the confirmation through the outbox
    assert contacts.suppressed("sms", NUMBER) == "stop"
    assert contacts.suppressed("sms", "+15550100002") is None
    assert received(sink.events) == [
        ("cus_a", "twilio:SM0001", NUMBER, body),
        ("cus_b", "twilio:SM0001", NUMBER, body),
    ]
    event = sink.events[0]
    assert isinstance(event, MessageReceived)
    assert event.source == "twilio" and event.occurred_at == now
    assert event.data.model_dump() == {
        "channel": "sms", "from_address": NUMBER, "to_address": OURS, "body": body,
        "provider": "twilio", "provider_id": "SM0001", "understanding": None,
    }  # fmt: skip


def test_stop_is_written_before_the_event_is_published_and_the_answer_given(
    client_for: Callable[[ApiSettings], TestClient], settings: ApiSettings, known: Known,
    contacts: Contacts, sink: FakeEventSink, sign_twilio: Callable[..., str],
) -> None:  # fmt: skip
    seen_at_publish: list[str | None] = []

    class Watching(FakeEventSink):
        async def publish(self, event: Event) -> None:
            seen_at_publish.append(contacts.suppressed("sms", NUMBER))
            await super().publish(event)

    watching = Watching()
    app = create_app(settings, contacts, watching, KeywordReplies("s", "t", "h"))
    known("sms", NUMBER, "cus_a")
    with TestClient(app) as client:
        params = sms("STOP")
        signature = sign_twilio(f"http://testserver{INBOUND}", params)
        response = client.post(INBOUND, data=params, headers={"X-Twilio-Signature": signature})

    assert response.status_code == 200
    assert seen_at_publish == ["stop"]
    assert len(watching.events) == 1


def test_stop_holds_even_when_the_event_cannot_be_published_and_the_retry_is_taken(
    twilio_post: Post, known: Known, contacts: Contacts, sink: FakeEventSink
) -> None:
    known("sms", NUMBER, "cus_a")
    sink.failure = RuntimeError("Kafka is down")

    refused = twilio_post(INBOUND, sms("STOP"))

    assert refused.status_code == 503
    assert contacts.suppressed("sms", NUMBER) == "stop"
    assert sink.events == []
    sink.failure = None
    retried = twilio_post(INBOUND, sms("STOP"))
    assert replies_in(retried) == []
    assert received(sink.events) == [("cus_a", "twilio:SM0001", NUMBER, "STOP")]


@pytest.mark.parametrize("body", ["START", " start ", "Unstop", "start."])
def test_start_lifts_every_suppression_of_the_number(
    body: str, twilio_post: Post, known: Known, contacts: Contacts, sink: FakeEventSink
) -> None:
    known("sms", NUMBER, "cus_a")
    contacts.suppress("sms", NUMBER, "stop")
    contacts.suppress("sms", "+15550100002", "stop")

    response = twilio_post(INBOUND, sms(body))

    assert replies_in(response) == []
    assert contacts.suppressed("sms", NUMBER) is None
    assert contacts.suppressed("sms", "+15550100002") == "stop"
    assert received(sink.events) == [("cus_a", "twilio:SM0001", NUMBER, body)]


@pytest.mark.parametrize(
    "body", ["HELP", "info", "YES", "no", "stop texting me", "", "Where is it?"]
)
def test_other_messages_change_no_suppression_and_are_published(
    body: str, twilio_post: Post, known: Known, contacts: Contacts, sink: FakeEventSink,
    tables: Callable[[], dict[str, list[Any]]],
) -> None:  # fmt: skip
    known("sms", NUMBER, "cus_a")
    contacts.suppress("sms", NUMBER, "bounce", list_id="")

    response = twilio_post(INBOUND, sms(body))

    assert replies_in(response) == []
    assert tables()["suppressions"] == [("sms", NUMBER, "", "bounce")]
    assert received(sink.events) == [("cus_a", "twilio:SM0001", NUMBER, body)]


@pytest.mark.parametrize(
    ("body", "reply"),
    [("STOP", "stop"), ("Quit", "stop"), ("start", "start"), (" HELP ", "help"), ("info", "help")],
)
def test_an_unknown_number_gets_the_keyword_reply_in_twiml(
    body: str, reply: str, twilio_post: Post, replies: KeywordReplies, sink: FakeEventSink
) -> None:
    response = twilio_post(INBOUND, sms(body))

    assert replies_in(response) == [getattr(replies, reply)]
    assert sink.events == []


@pytest.mark.parametrize("body", ["hello", "YES", "no"])
def test_an_unknown_number_gets_no_reply_to_anything_else(
    body: str, twilio_post: Post, sink: FakeEventSink
) -> None:
    assert replies_in(twilio_post(INBOUND, sms(body))) == []
    assert sink.events == []


def test_stop_from_an_unknown_number_is_still_suppressed(
    twilio_post: Post, contacts: Contacts
) -> None:
    twilio_post(INBOUND, sms("STOP"))
    assert contacts.suppressed("sms", NUMBER) == "stop"


def test_reply_text_is_escaped_into_valid_twiml(
    client_for: Callable[[ApiSettings], TestClient], settings: ApiSettings, contacts: Contacts,
    sink: FakeEventSink, sign_twilio: Callable[..., str],
) -> None:  # fmt: skip
    help_text = "Acme <support> & co: reply STOP"
    app = create_app(settings, contacts, sink, KeywordReplies("s", "t", help_text))
    params = sms("HELP")
    signature = sign_twilio(f"http://testserver{INBOUND}", params)
    with TestClient(app) as client:
        response = client.post(INBOUND, data=params, headers={"X-Twilio-Signature": signature})
    assert replies_in(response) == [help_text]


def test_a_retried_message_sid_publishes_nothing_and_sends_no_second_reply(
    twilio_post: Post, known: Known, sink: FakeEventSink
) -> None:
    known("sms", "+15550100003", "cus_a")
    assert replies_in(twilio_post(INBOUND, sms("help", sid="SM1", sender="+15550100009"))) == [
        "Acme: help at acme.test. Reply STOP to opt out."
    ]
    twilio_post(INBOUND, sms("where is my parcel", sid="SM2", sender="+15550100003"))
    assert len(sink.events) == 1

    assert replies_in(twilio_post(INBOUND, sms("help", sid="SM1", sender="+15550100009"))) == []
    again = twilio_post(INBOUND, sms("where is my parcel", sid="SM2", sender="+15550100003"))
    assert replies_in(again) == []
    assert len(sink.events) == 1


BAD_SIGNATURES: dict[str, dict[str, Any]] = {
    "missing": {"signature": ""},
    "garbage": {"signature": "bm90IGEgc2lnbmF0dXJl"},
    "another token": {"token": "not-our-token"},
    "another URL": {"signed_url": "http://testserver/webhooks/twilio/status"},
}


@pytest.mark.parametrize("bad", BAD_SIGNATURES.values(), ids=BAD_SIGNATURES.keys())
def test_a_bad_signature_is_refused_and_changes_nothing(
    bad: dict[str, Any], twilio_post: Post, known: Known, sink: FakeEventSink,
    contacts: Contacts, tables: Callable[[], dict[str, list[Any]]],
) -> None:  # fmt: skip
    known("sms", NUMBER, "cus_a")
    before = tables()

    assert twilio_post(INBOUND, sms("STOP"), **bad).status_code == 403
    status = twilio_post(status_url(), callback("delivered"), **bad)
    assert status.status_code == 403

    assert tables() == before
    assert contacts.suppressed("sms", NUMBER) is None
    assert sink.events == []
    assert twilio_post(INBOUND, sms("STOP")).status_code == 200  # the sid was not taken
    assert len(sink.events) == 1


def test_a_signature_over_other_parameters_is_refused(
    client: TestClient, sign_twilio: Callable[..., str], contacts: Contacts, sink: FakeEventSink
) -> None:
    signature = sign_twilio(f"http://testserver{INBOUND}", sms("hello"))
    response = client.post(INBOUND, data=sms("STOP"), headers={"X-Twilio-Signature": signature})
    assert response.status_code == 403
    assert contacts.suppressed("sms", NUMBER) is None
    assert sink.events == []


@pytest.mark.parametrize(
    "public_url", ["https://hooks.example.com/sms-gw", "https://hooks.example.com/sms-gw/"]
)
def test_behind_a_proxy_the_public_url_is_the_signed_one(
    public_url: str, client_for: Callable[[ApiSettings], TestClient], settings: ApiSettings,
    sign_twilio: Callable[..., str], known: Known, sink: FakeEventSink,
) -> None:  # fmt: skip
    behind = client_for(
        settings.model_copy(update={"public_url": ApiSettings(public_url=public_url).public_url})
    )
    known("sms", NUMBER, "cus_a")

    def post(signed_url: str, sid: str) -> int:
        params = sms("hi", sid=sid)
        signature = sign_twilio(signed_url, params)
        return behind.post(
            INBOUND, data=params, headers={"X-Twilio-Signature": signature}
        ).status_code

    assert post(f"http://testserver{INBOUND}", "SM1") == 403
    assert post(f"https://hooks.example.com{INBOUND}", "SM2") == 403  # the prefix is signed too
    assert sink.events == []
    assert post(f"https://hooks.example.com/sms-gw{INBOUND}", "SM3") == 200
    assert (
        post(f"https://hooks.example.com:443/sms-gw{INBOUND}", "SM4") == 200
    )  # Twilio's port quirk
    assert [e.event_id for e in sink.events] == ["twilio:SM3", "twilio:SM4"]


def test_without_a_public_url_a_signature_on_the_public_url_is_refused(
    twilio_post: Post, sink: FakeEventSink
) -> None:
    response = twilio_post(INBOUND, sms("hi"), signed_url=f"https://hooks.example.com{INBOUND}")
    assert response.status_code == 403


def test_a_message_without_sid_or_sender_is_a_bad_request(twilio_post: Post) -> None:
    params = sms("hi")
    del params["MessageSid"], params["SmsSid"]
    assert twilio_post(INBOUND, params).status_code == 400


# -- status callbacks --------------------------------------------------------------------------


def status_url(query: str = "message_id=msg_1&customer_id=cus_a&attempt=2") -> str:
    """The status callback URL we give Twilio when sending (query carries our ids)."""
    return f"{STATUS}?{query}" if query else STATUS


def callback(status: str, sid: str = "SM9", error: str | None = None) -> dict[str, str]:
    """A status callback's fields."""
    fields = {"MessageSid": sid, "SmsSid": sid, "MessageStatus": status, "SmsStatus": status,
              "AccountSid": "AC123", "From": OURS, "To": NUMBER}  # fmt: skip
    return fields if error is None else {**fields, "ErrorCode": error}


@pytest.mark.parametrize(
    ("reported", "ours", "error"),
    [
        ("queued", "queued", None), ("sending", "queued", None), ("sent", "sent", None),
        ("delivered", "delivered", None), ("read", "delivered", None),
        ("undelivered", "undelivered", "30003"), ("failed", "failed", "30006"),
        ("canceled", "failed", None),
    ],
)  # fmt: skip
def test_a_status_callback_becomes_message_status(
    reported: str, ours: str, error: str | None, twilio_post: Post, sink: FakeEventSink,
    now: datetime,
) -> None:  # fmt: skip
    response = twilio_post(status_url(), callback(reported, error=error))

    assert response.status_code == 200
    [event] = sink.events
    assert isinstance(event, MessageStatus)
    assert (event.event_id, event.customer_id, event.source, event.occurred_at) == (
        f"twilio:SM9:{reported}", "cus_a", "twilio", now,
    )  # fmt: skip
    assert event.data.model_dump() == {
        "message_id": "msg_1", "channel": "sms", "status": ours, "attempt": 2,
        "provider": "twilio", "provider_id": "SM9", "error_code": error,
        "provider_event": reported, "detail": None,
    }  # fmt: skip


def test_the_attempt_defaults_to_1(twilio_post: Post, sink: FakeEventSink) -> None:
    twilio_post(status_url("message_id=msg_1&customer_id=cus_a"), callback("sent"))
    twilio_post(
        status_url("message_id=msg_2&customer_id=cus_a&attempt=x"), callback("sent", sid="SM8")
    )
    assert [e.data.attempt for e in sink.events if isinstance(e, MessageStatus)] == [1, 1]


def test_an_unknown_status_is_answered_and_ignored(
    twilio_post: Post, sink: FakeEventSink, tables: Callable[[], dict[str, list[Any]]]
) -> None:
    assert twilio_post(status_url(), callback("receiving")).status_code == 200
    assert sink.events == []
    assert tables()["seen"] == []


@pytest.mark.parametrize(
    "query", ["", "message_id=msg_1", "customer_id=cus_a", "message_id=&customer_id=cus_a"]
)
def test_a_status_for_a_message_not_ours_is_answered_logged_and_ignored(
    query: str, twilio_post: Post, sink: FakeEventSink, caplog: pytest.LogCaptureFixture,
    tables: Callable[[], dict[str, list[Any]]],
) -> None:  # fmt: skip
    with caplog.at_level(logging.WARNING, logger="outreach.api"):
        assert twilio_post(status_url(query), callback("delivered")).status_code == 200
    assert sink.events == []
    assert tables()["seen"] == []
    assert "names no message of ours" in caplog.text


def test_status_callbacks_are_taken_once_per_sid_and_status(
    twilio_post: Post, sink: FakeEventSink
) -> None:
    for status in ("sent", "sent", "delivered", "sent", "delivered"):
        assert twilio_post(status_url(), callback(status)).status_code == 200
    assert [e.event_id for e in sink.events] == ["twilio:SM9:sent", "twilio:SM9:delivered"]


def test_a_status_that_cannot_be_published_is_taken_on_retry(
    twilio_post: Post, sink: FakeEventSink
) -> None:
    sink.failure = RuntimeError("Kafka is down")
    assert twilio_post(status_url(), callback("delivered")).status_code == 503
    sink.failure = None
    assert twilio_post(status_url(), callback("delivered")).status_code == 200
    assert [e.event_id for e in sink.events] == ["twilio:SM9:delivered"]


def test_behind_a_proxy_a_status_callback_is_checked_on_the_public_url_with_its_query(
    client_for: Callable[[ApiSettings], TestClient], settings: ApiSettings,
    sign_twilio: Callable[..., str], sink: FakeEventSink,
) -> None:  # fmt: skip
    behind = client_for(settings.model_copy(update={"public_url": "https://hooks.example.com"}))
    query = "message_id=msg_1&customer_id=cus_a&attempt=2"

    def post(signed_url: str, sid: str) -> int:
        params = callback("delivered", sid=sid)
        headers = {"X-Twilio-Signature": sign_twilio(signed_url, params)}
        return behind.post(f"{STATUS}?{query}", data=params, headers=headers).status_code

    assert post(f"https://hooks.example.com{STATUS}", "SM1") == 403  # the query is signed too
    assert post(f"https://hooks.example.com{STATUS}?{query}", "SM2") == 200
    assert [e.event_id for e in sink.events] == ["twilio:SM2:delivered"]
