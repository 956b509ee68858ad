"""SendGrid's event webhook: every event kind, groups, signatures and timestamps, retries; on
requests signed as SendGrid signs them (ECDSA P-256 over timestamp + body)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import httpx
import orjson
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from sendgrid.helpers.eventwebhook import EventWebhook, EventWebhookHeader

from outreach.api import FakeEventSink
from outreach.api.webhooks import load_sendgrid_key
from outreach.events import ContactSuppressed, ContactUnsuppressed, Event, MessageStatus
from outreach.store.contacts import Contacts

pytestmark = pytest.mark.timeout(60)

EMAIL = "ann@example.com"
Post = Callable[..., httpx.Response]
Known = Callable[[str, str, str], None]
Tables = Callable[[], dict[str, list[Any]]]


def entry(event: str, sg_event_id: str = "ev1", ours: bool = True, **fields: Any) -> dict[str, Any]:
    """One event webhook entry; ``ours``: with the custom args we set when sending."""
    base: dict[str, Any] = {
        "email": EMAIL, "timestamp": 1772445000, "event": event, "sg_event_id": sg_event_id,
        "sg_message_id": "sgm_1.filter", "smtp-id": "<x@acme.test>",
    }  # fmt: skip
    if ours:
        base.update(message_id="msg_1", customer_id="cus_a", attempt="1")
    return {**base, **fields}


def summary(events: list[Event]) -> list[tuple[str, str, str, str | None, str | None]]:
    """(type, event id, customer, status or reason, list id) of each event."""
    rows: list[tuple[str, str, str, str | None, str | None]] = []
    for e in events:
        if isinstance(e, MessageStatus):
            rows.append((e.type, e.event_id, e.customer_id, e.data.status, None))
        elif isinstance(e, ContactSuppressed | ContactUnsuppressed):
            rows.append((e.type, e.event_id, e.customer_id, e.data.reason, e.data.list_id))
        else:
            raise AssertionError(f"unexpected {e.type}")
    return rows


Signer = Callable[[ec.EllipticCurvePrivateKey, str, bytes], str]


def test_the_sdk_accepts_a_signature_made_like_sendgrids(
    sendgrid_key: ec.EllipticCurvePrivateKey, sendgrid_public_key: str, sign_sendgrid: Signer
) -> None:
    payload = orjson.dumps([entry("delivered")]).decode()
    signature = sign_sendgrid(sendgrid_key, "1772445000", payload.encode())
    sdk = EventWebhook()
    key = sdk.convert_public_key_to_ecdsa(sendgrid_public_key)
    assert sdk.verify_signature(payload, signature, "1772445000", key) is True
    assert sdk.verify_signature(payload + " ", signature, "1772445000", key) is False
    assert sdk.verify_signature(payload, signature, "1772445001", key) is False


KINDS: list[tuple[dict[str, Any], list[str | None], str | None]] = [
    # (entry fields, [message.status status], suppression reason written for the address)
    ({"event": "processed"}, ["sent"], None),
    ({"event": "deferred", "response": "400 try again later", "attempt": "1"}, ["queued"], None),
    ({"event": "delivered", "response": "250 OK"}, ["delivered"], None),
    ({"event": "bounce", "type": "bounce", "status": "5.1.1", "reason": "550 no such user"},
     ["bounced"], "bounce"),
    ({"event": "bounce", "type": "blocked", "status": "4.0.0", "reason": "blocked by spamhaus"},
     ["undelivered"], None),
    ({"event": "dropped", "reason": "Bounced Address"}, ["failed"], "bounce"),
    ({"event": "dropped", "reason": "Unsubscribed Address"}, ["failed"], "unsubscribe"),
    ({"event": "dropped", "reason": "Spam Reporting Address"}, ["failed"], "complaint"),
    ({"event": "dropped", "reason": "Invalid"}, ["failed"], "unusable"),
    ({"event": "dropped", "reason": "Invalid SMTPAPI header"}, ["failed"], None),
    ({"event": "spamreport"}, [], "complaint"),
    ({"event": "unsubscribe"}, [], "unsubscribe"),
    ({"event": "open", "useragent": "Mozilla"}, [], None),
    ({"event": "click", "url": "https://acme.test"}, [], None),
]  # fmt: skip


@pytest.mark.parametrize(
    ("fields", "statuses", "suppression"),
    KINDS,
    ids=[f"{k[0]['event']}-{i}" for i, k in enumerate(KINDS)],
)
def test_each_event_kind(
    fields: dict[str, Any], statuses: list[str | None], suppression: str | None,
    sendgrid_post: Post, sink: FakeEventSink, contacts: Contacts, tables: Tables,
) -> None:  # fmt: skip
    response = sendgrid_post([entry(**fields)])

    assert response.status_code == 200, response.text
    assert contacts.suppressed("email", EMAIL) == suppression
    assert tables()["suppressions"] == ([("email", EMAIL, "", suppression)] if suppression else [])
    told = (
        [("contact.suppressed", "sendgrid:ev1", "cus_a", suppression, None)] if suppression else []
    )
    status_id = "sendgrid:ev1:2" if told else "sendgrid:ev1"
    assert summary(sink.events) == told + [
        ("message.status", status_id, "cus_a", status, None) for status in statuses
    ]


def test_message_status_carries_the_providers_details(
    sendgrid_post: Post, sink: FakeEventSink
) -> None:
    bounce = entry("bounce", type="bounce", status="5.1.1", reason="550 5.1.1 no such user " * 60,
                   attempt="3")  # fmt: skip
    sendgrid_post([bounce])

    [suppressed, status] = sink.events
    assert isinstance(status, MessageStatus) and isinstance(suppressed, ContactSuppressed)
    assert status.occurred_at == datetime.fromtimestamp(1772445000, status.occurred_at.tzinfo)
    assert status.source == "sendgrid"
    assert status.data.model_dump() == {
        "message_id": "msg_1", "channel": "email", "status": "bounced", "attempt": 3,
        "provider": "sendgrid", "provider_id": "sgm_1.filter", "error_code": "5.1.1",
        "provider_event": "bounce", "detail": bounce["reason"][:1024],
    }  # fmt: skip
    assert suppressed.data.model_dump() == {
        "channel": "email",
        "reason": "bounce",
        "address": EMAIL,
        "list_id": None,
    }


def test_a_group_unsubscribe_touches_only_that_group(
    sendgrid_post: Post, sink: FakeEventSink, contacts: Contacts, tables: Tables
) -> None:
    sendgrid_post([entry("group_unsubscribe", asm_group_id=42)])

    assert tables()["suppressions"] == [("email", EMAIL, "42", "unsubscribe")]
    assert contacts.suppressed("email", EMAIL, "42") == "unsubscribe"
    assert contacts.suppressed("email", EMAIL, "43") is None
    assert contacts.suppressed("email", EMAIL) is None
    assert summary(sink.events) == [
        ("contact.suppressed", "sendgrid:ev1", "cus_a", "unsubscribe", "42")
    ]


def test_a_group_resubscribe_lifts_only_that_group(
    sendgrid_post: Post, sink: FakeEventSink, contacts: Contacts, tables: Tables
) -> None:
    contacts.suppress("email", EMAIL, "unsubscribe", "42")
    contacts.suppress("email", EMAIL, "unsubscribe", "43")
    contacts.suppress("email", EMAIL, "bounce")

    sendgrid_post([entry("group_resubscribe", asm_group_id=42)])

    assert tables()["suppressions"] == [
        ("email", EMAIL, "", "bounce"),
        ("email", EMAIL, "43", "unsubscribe"),
    ]
    assert summary(sink.events) == [
        ("contact.unsuppressed", "sendgrid:ev1", "cus_a", "resubscribe", "42")
    ]


def test_a_resubscribe_naming_no_group_lifts_nothing(
    sendgrid_post: Post, sink: FakeEventSink, contacts: Contacts, tables: Tables
) -> None:
    contacts.suppress("email", EMAIL, "bounce")
    contacts.suppress("email", EMAIL, "unsubscribe", "42")

    assert sendgrid_post([entry("group_resubscribe")]).status_code == 200

    assert len(tables()["suppressions"]) == 2
    assert sink.events == []


def test_a_suppression_with_no_customer_reaches_every_customer_of_the_address(
    sendgrid_post: Post, sink: FakeEventSink, contacts: Contacts, known: Known
) -> None:
    known("email", EMAIL, "cus_b")
    known("email", EMAIL, "cus_a")
    known("email", "bob@example.com", "cus_c")

    sendgrid_post([entry("bounce", ours=False, email="Ann@Example.COM", type="bounce")])

    assert contacts.suppressed("email", EMAIL) == "bounce"
    assert summary(sink.events) == [
        ("contact.suppressed", "sendgrid:ev1", "cus_a", "bounce", None),
        ("contact.suppressed", "sendgrid:ev1", "cus_b", "bounce", None),
    ]  # no message.status: the message is not one of ours


def test_a_suppression_reaches_the_named_customer_and_the_others_of_the_address(
    sendgrid_post: Post, sink: FakeEventSink, known: Known
) -> None:
    known("email", EMAIL, "cus_b")

    sendgrid_post([entry("spamreport")])

    assert summary(sink.events) == [
        ("contact.suppressed", "sendgrid:ev1", "cus_a", "complaint", None),
        ("contact.suppressed", "sendgrid:ev1", "cus_b", "complaint", None),
    ]


def test_a_suppression_of_an_address_nobody_has_is_still_written(
    sendgrid_post: Post, sink: FakeEventSink, contacts: Contacts
) -> None:
    sendgrid_post([entry("unsubscribe", ours=False, email="nobody@example.com")])
    assert contacts.suppressed("email", "nobody@example.com") == "unsubscribe"
    assert sink.events == []


def test_a_status_without_our_ids_publishes_nothing(
    sendgrid_post: Post, sink: FakeEventSink, tables: Tables
) -> None:
    assert sendgrid_post([entry("delivered", ours=False)]).status_code == 200
    assert sink.events == []
    assert tables()["seen"] == [("sendgrid", "ev1")]


def test_duplicate_sg_event_ids_are_taken_once(sendgrid_post: Post, sink: FakeEventSink) -> None:
    first = [entry("processed", "ev1"), entry("delivered", "ev2"), entry("delivered", "ev2")]
    sendgrid_post(first)
    sendgrid_post([entry("delivered", "ev2"), entry("open", "ev3"), entry("bounce", "ev4")])

    assert [e.event_id for e in sink.events] == [
        "sendgrid:ev1",
        "sendgrid:ev2",
        "sendgrid:ev4",
        "sendgrid:ev4:2",
    ]


def test_entries_without_an_event_id_are_taken_once_by_content(
    sendgrid_post: Post, sink: FakeEventSink
) -> None:
    anonymous = {k: v for k, v in entry("delivered").items() if k != "sg_event_id"}
    sendgrid_post([anonymous])
    sendgrid_post([anonymous])
    [event] = sink.events
    assert event.event_id.startswith("sendgrid:sha256-")


def test_a_batch_whose_publish_fails_is_taken_in_full_on_retry(
    sendgrid_post: Post, sink: FakeEventSink, contacts: Contacts
) -> None:
    batch = [entry("processed", "ev1"), entry("bounce", "ev2", type="bounce")]
    sink.failure = RuntimeError("Kafka is down")

    assert sendgrid_post(batch).status_code == 503
    assert contacts.suppressed("email", EMAIL) is None  # ev1 failed first; ev2 never started

    sink.failure = None
    assert sendgrid_post(batch).status_code == 200
    assert [e.event_id for e in sink.events] == ["sendgrid:ev1", "sendgrid:ev2", "sendgrid:ev2:2"]
    assert contacts.suppressed("email", EMAIL) == "bounce"


@pytest.mark.parametrize(
    "skew", [timedelta(minutes=-5, seconds=-1), timedelta(minutes=5, seconds=1), timedelta(days=-1)]
)
def test_old_and_future_timestamps_are_refused(
    skew: timedelta, sendgrid_post: Post, sink: FakeEventSink, tables: Tables, now: datetime
) -> None:
    response = sendgrid_post([entry("bounce", type="bounce")], at=now + skew)
    assert response.status_code == 403
    assert tables() == {"suppressions": [], "seen": []}
    assert sink.events == []


@pytest.mark.parametrize("skew", [timedelta(minutes=-4, seconds=-59), timedelta(minutes=4)])
def test_timestamps_within_five_minutes_are_accepted(
    skew: timedelta, sendgrid_post: Post, now: datetime
) -> None:
    assert sendgrid_post([entry("processed")], at=now + skew).status_code == 200


def test_bad_signatures_are_refused_and_change_nothing(
    sendgrid_post: Post, sink: FakeEventSink, tables: Tables, now: datetime,
    sendgrid_key: ec.EllipticCurvePrivateKey, sign_sendgrid: Signer,
) -> None:  # fmt: skip
    batch = [entry("bounce", type="bounce")]
    body = orjson.dumps(batch)
    stamp = str(int(now.timestamp()))
    good = sign_sendgrid(sendgrid_key, stamp, body)
    sig, ts = EventWebhookHeader.SIGNATURE, EventWebhookHeader.TIMESTAMP
    attempts = {
        "another key": sendgrid_post(batch, key=ec.generate_private_key(ec.SECP256R1())),
        "another body": sendgrid_post(batch, signed=orjson.dumps([entry("delivered")])),
        "no headers": sendgrid_post(batch, headers={}),
        "no signature": sendgrid_post(batch, headers={ts: stamp}),
        "no timestamp": sendgrid_post(batch, headers={sig: good}),
        "other timestamp": sendgrid_post(batch, headers={sig: good, ts: str(int(stamp) + 1)}),
        "timestamp not a number": sendgrid_post(batch, headers={sig: good, ts: "soon"}),
        "signature not base64": sendgrid_post(batch, headers={sig: "%%%", ts: stamp}),
        "signature not DER": sendgrid_post(batch, headers={sig: "bm90IGEgc2ln", ts: stamp}),
    }

    assert {name: r.status_code for name, r in attempts.items()} == dict.fromkeys(attempts, 403)
    assert tables() == {"suppressions": [], "seen": []}
    assert sink.events == []
    assert sendgrid_post(batch, headers={sig: good, ts: stamp}).status_code == 200  # control


@pytest.mark.parametrize("body", [b"{}", b'"x"', b"not json"])
def test_a_signed_body_that_is_not_an_array_is_a_bad_request(
    body: bytes, sendgrid_post: Post
) -> None:
    assert sendgrid_post(body).status_code == 400


def test_entries_that_are_not_objects_are_skipped(sendgrid_post: Post, sink: FakeEventSink) -> None:
    assert sendgrid_post([1, "x", entry("processed")]).status_code == 200
    assert [e.event_id for e in sink.events] == ["sendgrid:ev1"]


def test_the_key_may_be_given_as_pem(sendgrid_public_key: str) -> None:
    pem = f"-----BEGIN PUBLIC KEY-----\n{sendgrid_public_key}\n-----END PUBLIC KEY-----\n"
    assert (
        load_sendgrid_key(pem).public_numbers()
        == load_sendgrid_key(sendgrid_public_key).public_numbers()
    )


@pytest.mark.parametrize("text", ["", "not a key", "bm90IGEga2V5"])
def test_a_key_that_is_not_one_is_refused_naming_the_setting(text: str) -> None:
    with pytest.raises(ValueError, match="OUTREACH_SENDGRID_WEBHOOK_PUBLIC_KEY"):
        load_sendgrid_key(text)
