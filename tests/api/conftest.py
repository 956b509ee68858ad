"""Fixtures for the HTTP app: the real store (SQLite and PostgreSQL), a recording sink, the
app behind FastAPI's TestClient, and requests signed the way Twilio and SendGrid sign them."""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import orjson
import pytest
import sqlalchemy as sa
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from fastapi.testclient import TestClient
from sendgrid.helpers.eventwebhook import EventWebhookHeader
from twilio.request_validator import RequestValidator

from outreach.api import ApiSettings, FakeEventSink, KeywordReplies, create_app
from outreach.store import Store
from outreach.store.contacts import Contacts, address_rows
from outreach.store.schema import inbound_seen, suppressions

NOW = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)
TWILIO_TOKEN = "twilio-auth-token-for-tests"
UNSUBSCRIBE_SECRET = "unsubscribe-secret-for-tests"
REPLIES = KeywordReplies(
    stop="Acme: you are unsubscribed. Reply START to resubscribe.",
    start="Acme: you are subscribed again.",
    help="Acme: help at acme.test. Reply STOP to opt out.",
)
Tables = dict[str, list[tuple[Any, ...]]]


def public_key_b64(key: ec.EllipticCurvePrivateKey) -> str:
    """The verification key as SendGrid shows it: base64 of the DER SubjectPublicKeyInfo."""
    der = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return base64.b64encode(der).decode()


def sendgrid_signature(key: ec.EllipticCurvePrivateKey, timestamp: str, payload: bytes) -> str:
    """What SendGrid puts in X-Twilio-Email-Event-Webhook-Signature: base64 DER ECDSA-SHA256
    over timestamp + payload."""
    der = key.sign(timestamp.encode() + payload, ec.ECDSA(hashes.SHA256()))
    return base64.b64encode(der).decode()


def twilio_signature(url: str, params: dict[str, str], token: str = TWILIO_TOKEN) -> str:
    """What Twilio puts in X-Twilio-Signature, computed by the SDK itself."""
    return str(RequestValidator(token).compute_signature(url, params))


@pytest.fixture(scope="session")
def sendgrid_key() -> ec.EllipticCurvePrivateKey:
    """The P-256 key "SendGrid" signs the test webhooks with."""
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture
def settings(sendgrid_key: ec.EllipticCurvePrivateKey) -> ApiSettings:
    """Every webhook configured; no public URL (the request URL is the signed one)."""
    return ApiSettings(
        public_url=None,
        twilio_auth_token=TWILIO_TOKEN,
        sendgrid_webhook_public_key=public_key_b64(sendgrid_key),
        unsubscribe_secret=UNSUBSCRIBE_SECRET,
        stripe_webhook_secret="whsec_test_outreach",
    )


@pytest.fixture
def contacts(store: Store) -> Contacts:
    """The address tables on the test's database."""
    return Contacts(store)


@pytest.fixture
def sink() -> FakeEventSink:
    """Records every event the app publishes."""
    return FakeEventSink()


@pytest.fixture
def client_for(
    contacts: Contacts, sink: FakeEventSink
) -> Iterator[Callable[[ApiSettings], TestClient]]:
    """``client_for(settings)``: the app on the test's store and sink, at a fixed clock."""
    made: list[TestClient] = []

    def build(settings: ApiSettings) -> TestClient:
        app = create_app(settings, contacts, sink, REPLIES, brand="Acme", clock=lambda: NOW)
        client = TestClient(app)
        made.append(client)
        return client

    yield build
    for client in made:
        client.close()


@pytest.fixture
def client(client_for: Callable[[ApiSettings], TestClient], settings: ApiSettings) -> TestClient:
    """The app with every webhook configured."""
    return client_for(settings)


@pytest.fixture
def known(store: Store) -> Callable[[str, str, str], None]:
    """``known(channel, address, customer_id)``: put an address in the address book, the way
    the worker does when a profile changes."""

    def add(channel: str, address: str, customer_id: str) -> None:
        _, added = address_rows(customer_id, [], [(channel, address)])
        with store.batch() as batch:
            batch.set_addresses([], added)

    return add


@pytest.fixture
def tables(store: Store) -> Callable[[], Tables]:
    """``tables()``: the rows the webhooks write (suppressions, callbacks seen), sorted."""

    def read() -> Tables:
        with store.engine.connect() as conn:
            rows = conn.execute(
                sa.select(
                    suppressions.c.channel,
                    suppressions.c.address,
                    suppressions.c.list_id,
                    suppressions.c.reason,
                )
            )
            seen = conn.execute(sa.select(inbound_seen.c.source, inbound_seen.c.id))
            return {"suppressions": sorted(map(tuple, rows)), "seen": sorted(map(tuple, seen))}

    return read


@pytest.fixture
def twilio_post(client: TestClient) -> Callable[..., httpx.Response]:
    """``twilio_post(path, params, signed_url=None, signature=None)``: a form POST signed for
    ``http://testserver`` + path (or ``signed_url``), as Twilio sends it."""

    def post(
        path: str,
        params: dict[str, str],
        signed_url: str | None = None,
        signature: str | None = None,
        token: str = TWILIO_TOKEN,
    ) -> httpx.Response:
        url = signed_url or f"http://testserver{path}"
        sign = twilio_signature(url, params, token) if signature is None else signature
        headers = {"X-Twilio-Signature": sign} if sign else {}
        return client.post(path, data=params, headers=headers)

    return post


@pytest.fixture
def now() -> datetime:
    """The app's clock (fixed)."""
    return NOW


@pytest.fixture
def replies() -> KeywordReplies:
    """What the app texts back to keywords from unknown numbers."""
    return REPLIES


@pytest.fixture
def sign_twilio() -> Callable[..., str]:
    """``sign_twilio(url, params, token=...)``: Twilio's signature, by the SDK."""
    return twilio_signature


@pytest.fixture
def sendgrid_post(
    client: TestClient, sendgrid_key: ec.EllipticCurvePrivateKey
) -> Callable[..., httpx.Response]:
    """``sendgrid_post(entries, at=NOW, key=None, signed=None, headers=None)``: the event
    webhook POST as SendGrid sends it, signed at ``at`` with ``key`` over ``signed`` (default:
    the body); ``headers`` replaces the signature headers."""

    def post(
        entries: Any,
        *,
        at: datetime = NOW,
        key: ec.EllipticCurvePrivateKey | None = None,
        signed: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> httpx.Response:
        body = entries if isinstance(entries, bytes) else orjson.dumps(entries)
        timestamp = str(int(at.timestamp()))
        signature = sendgrid_signature(
            key or sendgrid_key, timestamp, body if signed is None else signed
        )
        sent = {EventWebhookHeader.SIGNATURE: signature, EventWebhookHeader.TIMESTAMP: timestamp}
        sent = sent if headers is None else headers
        return client.post(
            "/webhooks/sendgrid/events",
            content=body,
            headers={"Content-Type": "application/json", **sent},
        )

    return post


@pytest.fixture
def sign_sendgrid() -> Callable[[ec.EllipticCurvePrivateKey, str, bytes], str]:
    """``sign_sendgrid(key, timestamp, payload)``: SendGrid's signature header value."""
    return sendgrid_signature


@pytest.fixture
def sendgrid_public_key(sendgrid_key: ec.EllipticCurvePrivateKey) -> str:
    """The base64 verification key, as SendGrid's console shows it."""
    return public_key_b64(sendgrid_key)
