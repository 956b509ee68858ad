"""One-click unsubscribe (RFC 8058): GET confirms and changes nothing, POST unsubscribes."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

import pytest
from fastapi.testclient import TestClient

from outreach.api import FakeEventSink
from outreach.events import ContactSuppressed
from outreach.outbound.unsubscribe import UnsubscribeLinks
from outreach.store.contacts import Contacts

pytestmark = pytest.mark.timeout(60)

SECRET = "unsubscribe-secret-for-tests"  # the one the app is configured with (conftest)
ADDRESS = "Ann.Lee@Example.com"
Tables = Callable[[], dict[str, list[Any]]]


def path(token: str) -> str:
    """The path of an unsubscribe link."""
    return f"/unsubscribe/{token}"


@pytest.fixture
def token() -> str:
    """A genuine token for cus_a leaving the marketing list."""
    return UnsubscribeLinks(SECRET, "https://hooks.example.com").token("cus_a", ADDRESS)


def test_get_shows_a_confirmation_page_and_changes_nothing(
    client: TestClient, token: str, sink: FakeEventSink, tables: Tables
) -> None:
    response = client.get(path(token))

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert '<form method="post">' in response.text
    assert 'name="List-Unsubscribe" value="One-Click"' in response.text
    assert "A***@Example.com" in response.text and ADDRESS not in response.text
    assert "Acme" in response.text
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["referrer-policy"] == "no-referrer"
    assert "set-cookie" not in response.headers
    assert tables() == {"suppressions": [], "seen": []}
    assert sink.events == []


@pytest.mark.parametrize(
    ("body", "headers"),
    [
        ("List-Unsubscribe=One-Click", {"Content-Type": "application/x-www-form-urlencoded"}),
        ("", {}),
        ('{"anything": true}', {"Content-Type": "application/json"}),
    ],
)
def test_post_unsubscribes_that_list_at_once(
    body: str, headers: dict[str, str], client: TestClient, token: str, sink: FakeEventSink,
    contacts: Contacts, tables: Tables, now: datetime,
) -> None:  # fmt: skip
    response = client.post(path(token), content=body, headers=headers)

    assert response.status_code == 200
    assert "You are unsubscribed" in response.text
    assert "set-cookie" not in response.headers
    assert response.headers["cache-control"] == "no-store"
    assert tables()["suppressions"] == [
        ("email", "ann.lee@example.com", "marketing", "unsubscribe")
    ]
    assert contacts.suppressed("email", ADDRESS, "marketing") == "unsubscribe"
    assert contacts.suppressed("email", ADDRESS) is None  # other lists, transactional mail: kept
    [event] = sink.events
    assert isinstance(event, ContactSuppressed)
    assert (event.customer_id, event.source, event.occurred_at) == ("cus_a", "unsubscribe", now)
    assert event.event_id.startswith("unsub:")
    assert event.data.model_dump() == {
        "channel": "email",
        "reason": "unsubscribe",
        "address": ADDRESS,
        "list_id": "marketing",
    }


def test_a_repeated_post_publishes_the_same_event_id(
    client: TestClient, token: str, sink: FakeEventSink
) -> None:
    other = UnsubscribeLinks(SECRET, "").token("cus_a", ADDRESS, "42")
    for link in (token, token, other):
        assert client.post(path(link)).status_code == 200
    first, again, elsewhere = (e.event_id for e in sink.events)
    assert first == again
    assert elsewhere != first


def forged_tokens(token: str) -> dict[str, str]:
    """Tokens that must not work: another secret, tampered, truncated, garbage."""
    payload, signature = token.rsplit(".", 1)
    return {
        "another secret": UnsubscribeLinks("not-our-secret", "").token("cus_a", ADDRESS),
        "tampered payload": UnsubscribeLinks(SECRET, "").token("cus_b", ADDRESS).split(".")[0]
        + "."
        + signature,
        "truncated": token[:-3],
        "garbage": "not-a-token",
        "payload only": payload,
    }


def test_forged_tokens_get_403_and_change_nothing(
    client: TestClient, token: str, sink: FakeEventSink, tables: Tables
) -> None:
    for name, forged in forged_tokens(token).items():
        got = client.get(path(forged))
        posted = client.post(path(forged), content="List-Unsubscribe=One-Click")
        assert (name, got.status_code, posted.status_code) == (name, 403, 403)
        assert "not valid" in posted.text
        assert "set-cookie" not in posted.headers
    assert tables() == {"suppressions": [], "seen": []}
    assert sink.events == []
    assert client.post(path(token)).status_code == 200  # control: the genuine one works


def test_an_unsubscribe_that_cannot_be_published_is_still_written(
    client: TestClient, token: str, sink: FakeEventSink, contacts: Contacts
) -> None:
    sink.failure = RuntimeError("Kafka is down")
    refused = client.post(path(token))
    assert refused.status_code == 503
    assert "try again" in refused.text
    assert contacts.suppressed("email", ADDRESS, "marketing") == "unsubscribe"
    sink.failure = None
    assert client.post(path(token)).status_code == 200  # the page asks to press again: told
    assert len(sink.events) == 1
