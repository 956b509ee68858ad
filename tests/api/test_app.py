"""The app as a whole: health, unconfigured webhooks, settings, the Kafka sink against a real
broker, and the ``outreach api`` command."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaConsumer
from fastapi.testclient import TestClient
from pydantic import ValidationError
from support import RULES
from typer.testing import CliRunner

from outreach.api import ApiSettings, FakeEventSink, KafkaEventSink, KeywordReplies, create_app
from outreach.cli import app as cli
from outreach.events import event_from_obj
from outreach.outbound.unsubscribe import UnsubscribeLinks
from outreach.store.contacts import Contacts
from outreach.streams.embedded import EmbeddedBroker
from outreach.streams.topics import Topics

pytestmark = pytest.mark.timeout(60)

Tables = Callable[[], dict[str, list[Any]]]


def test_healthz(client: TestClient) -> None:
    response = client.get("/healthz")
    assert (response.status_code, response.json()) == (200, {"status": "ok"})


def test_unconfigured_endpoints_answer_503_and_change_nothing(
    client_for: Callable[[ApiSettings], TestClient], sink: FakeEventSink, tables: Tables,
    sign_twilio: Callable[..., str],
) -> None:  # fmt: skip
    nothing: dict[str, Any] = dict.fromkeys(
        ("public_url", "twilio_auth_token", "sendgrid_webhook_public_key", "unsubscribe_secret")
    )
    bare = client_for(ApiSettings(**nothing))
    params = {"MessageSid": "SM1", "From": "+15550100001", "Body": "STOP"}
    signature = sign_twilio("http://testserver/webhooks/twilio/inbound", params)
    token = UnsubscribeLinks("unsubscribe-secret-for-tests", "").token("cus_a", "a@example.com")

    inbound = bare.post(
        "/webhooks/twilio/inbound", data=params, headers={"X-Twilio-Signature": signature}
    )
    sendgrid = bare.post("/webhooks/sendgrid/events", content=b"[]")
    unsubscribe = bare.post(f"/unsubscribe/{token}")

    assert (inbound.status_code, sendgrid.status_code, unsubscribe.status_code) == (503, 503, 503)
    assert "OUTREACH_TWILIO_AUTH_TOKEN" in inbound.text
    assert "OUTREACH_SENDGRID_WEBHOOK_PUBLIC_KEY" in sendgrid.text
    assert tables() == {"suppressions": [], "seen": []}
    assert sink.events == []


def test_a_bad_sendgrid_key_stops_the_app_from_being_built(
    contacts: Contacts, sink: FakeEventSink
) -> None:
    settings = ApiSettings(sendgrid_webhook_public_key="bm90IGEga2V5")
    with pytest.raises(ValueError, match="OUTREACH_SENDGRID_WEBHOOK_PUBLIC_KEY"):
        create_app(settings, contacts, sink, KeywordReplies("s", "t", "h"))


def test_settings_come_from_outreach_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OUTREACH_TWILIO_AUTH_TOKEN", "tok-123")
    monkeypatch.setenv("OUTREACH_UNSUBSCRIBE_SECRET", "sec-456")
    monkeypatch.setenv("OUTREACH_SENDGRID_WEBHOOK_PUBLIC_KEY", "MFkw")
    monkeypatch.setenv("OUTREACH_PUBLIC_URL", " https://hooks.example.com/base/ ")
    monkeypatch.setenv("OUTREACH_PORT", "9090")

    settings = ApiSettings()

    assert settings.twilio_auth_token is not None
    assert settings.twilio_auth_token.get_secret_value() == "tok-123"
    assert settings.unsubscribe_secret is not None
    assert settings.unsubscribe_secret.get_secret_value() == "sec-456"
    assert "tok-123" not in repr(settings) and "sec-456" not in repr(settings)
    assert settings.sendgrid_webhook_public_key == "MFkw"
    assert settings.public_url == "https://hooks.example.com/base"
    assert settings.port == 9090


@pytest.mark.parametrize("url", ["hooks.example.com", "ftp://x", "https://x/?a=1", "https://x/#f"])
def test_a_public_url_that_is_not_a_base_url_is_refused(url: str) -> None:
    with pytest.raises(ValidationError, match="is not a base URL"):
        ApiSettings(public_url=url)


def test_keyword_replies_are_filled_from_the_brand() -> None:
    class Templates:
        stop = "{brand}: stopped. {unknown}"
        start = "{brand}: started."
        help = "{brand}: {support_url} or {support_email}"

    replies = KeywordReplies.from_templates(
        Templates(), brand="Acme", support_url="https://acme.test", support_email="help@acme.test"
    )
    assert replies == KeywordReplies(
        stop="Acme: stopped. {unknown}",
        start="Acme: started.",
        help="Acme: https://acme.test or help@acme.test",
    )


# -- the Kafka sink, against a real broker -----------------------------------------------------


@pytest.fixture(scope="module")
def bootstrap() -> Iterator[str]:
    """``OUTREACH_TEST_KAFKA_URL`` if set, else the embedded broker."""
    url = os.environ.get("OUTREACH_TEST_KAFKA_URL")
    if url:
        yield url
        return
    with EmbeddedBroker() as broker:
        yield broker.bootstrap


async def read_one(bootstrap: str, topic: str) -> tuple[bytes | None, dict[str, Any]]:
    """The first record of ``topic``: (key, decoded value)."""
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
        group_id=f"g{uuid.uuid4().hex}",
    )  # fmt: skip
    await consumer.start()
    try:
        record = await asyncio.wait_for(consumer.getone(), 20)
    finally:
        await consumer.stop()
    return record.key, orjson.loads(record.value)


async def test_the_kafka_sink_publishes_to_the_customers_topic_keyed_by_customer(
    bootstrap: str,
) -> None:
    topics = Topics(f"t{uuid.uuid4().hex}.")
    sink = KafkaEventSink(bootstrap, topics, partitions=2)
    event = event_from_obj(
        {"event_id": "sendgrid:ev1", "type": "contact.suppressed", "customer_id": "cus_a",
         "occurred_at": "2026-03-02T10:00:00Z", "source": "sendgrid",
         "data": {"channel": "email", "reason": "bounce", "address": "a@example.com"}}
    )  # fmt: skip

    async with sink.lifespan(None):
        await sink.publish(event)

    key, value = await read_one(bootstrap, topics.customers)
    assert key == b"cus_a"
    assert event_from_obj(value) == event


def test_the_app_publishes_through_kafka_while_it_runs(
    bootstrap: str, contacts: Contacts, settings: ApiSettings
) -> None:
    topics = Topics(f"t{uuid.uuid4().hex}.")
    sink = KafkaEventSink(bootstrap, topics, partitions=2)
    web = create_app(
        settings, contacts, sink, KeywordReplies("s", "t", "h"), lifespan=sink.lifespan
    )
    token = UnsubscribeLinks("unsubscribe-secret-for-tests", "").token("cus_k", "k@example.com")

    with TestClient(web) as client:
        assert client.post(f"/unsubscribe/{token}").status_code == 200

    key, value = asyncio.run(read_one(bootstrap, topics.customers))
    assert key == b"cus_k"
    assert (value["type"], value["data"]["address"]) == ("contact.suppressed", "k@example.com")


def test_the_kafka_sink_refuses_to_publish_before_it_is_started() -> None:
    sink = KafkaEventSink("127.0.0.1:9", Topics(), partitions=1)
    event = event_from_obj(
        {"event_id": "e", "type": "contact.suppressed", "customer_id": "c",
         "occurred_at": "2026-03-02T10:00:00Z", "data": {"channel": "sms", "reason": "stop"}}
    )  # fmt: skip
    with pytest.raises(Exception, match="not started"):
        asyncio.run(sink.publish(event))


# -- the command -------------------------------------------------------------------------------


def test_outreach_api_without_kafka_exits_2_saying_what_to_set(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("OUTREACH_KAFKA_URL", raising=False)
    result = CliRunner().invoke(cli, ["api"], env={"COLUMNS": "200"})
    assert result.exit_code == 2
    assert "OUTREACH_KAFKA_URL" in result.stderr
    assert "outreach worker" in result.stderr


def test_outreach_api_with_a_bad_sendgrid_key_exits_2_before_listening(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OUTREACH_SENDGRID_WEBHOOK_PUBLIC_KEY", "bm90IGEga2V5")
    result = CliRunner().invoke(
        cli,
        ["api", "--kafka-url", "127.0.0.1:9", "--rules", str(RULES),
         "--database-url", f"sqlite:///{tmp_path}/api.db"],
        env={"COLUMNS": "200"},
    )  # fmt: skip
    assert result.exit_code == 2, result.output
    assert "OUTREACH_SENDGRID_WEBHOOK_PUBLIC_KEY" in result.stderr
