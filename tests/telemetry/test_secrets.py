"""Secrets never reach the logs: plant a distinct random value in every secret the engine
reads, run real code paths that log failures at DEBUG, and grep everything written.

What is captured: the real handler's output (``configure_logging`` as the commands call it,
JSON, DEBUG), and ``stderr`` of a real ``outreach scheduler`` process. What proves the test
can fail: beside the real handler sits a plain handler WITHOUT the redaction filter, with the
same formatter; planted values DO appear there (python-http-client logs SendGrid's
``Authorization`` header at DEBUG, a connector's unreachable URL carries its token, and one
careless line logs every value), so the real handler's output being clean is the filter's
doing, not the absence of anything to hide.
"""

from __future__ import annotations

import base64
import io
import logging
import os
import random
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote, quote_plus

import pytest
from fastapi.testclient import TestClient
from llm.doubles import OpenAIDouble
from outbound.doubles import SendGridDouble, TwilioDouble
from pydantic import SecretStr

from outreach.agents.adapters.llm import LLMError, LLMGateway, LLMSettings
from outreach.agents.connectors import Effect
from outreach.api import ApiSettings, FakeEventSink, KeywordReplies, create_app
from outreach.connectors import ConnectorsSettings, build_connector
from outreach.decisions import Delivery
from outreach.outbound.config import ChannelRouter, OutboundSettings
from outreach.outbound.sendgrid import SendGridEmailChannel, SendGridSettings
from outreach.outbound.twilio import TwilioSettings, TwilioSmsChannel
from outreach.outbound.unsubscribe import UnsubscribeLinks
from outreach.scheduling import SchedulerSettings
from outreach.store import Store, StoreSettings
from outreach.store.contacts import Contacts
from outreach.store.operator import Operator
from outreach.streams.dispatcher import Dispatcher, DispatcherOptions
from outreach.telemetry.logs import UtcJsonFormatter, configure_logging
from outreach.telemetry.redact import register_settings

SID = "AC" + "7" * 32
REPO = Path(__file__).resolve().parents[2]


def planted_value(prefix: str = "") -> str:
    """A value no code would produce by chance (``-`` and ``_`` too, so URL-encoding and
    base64 forms differ from it)."""
    return prefix + secrets.token_urlsafe(24)


@pytest.fixture
def planted(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict[str, str]:
    """Every secret the engine reads, set in the environment the way an operator sets it."""
    for name in list(os.environ):
        if name.startswith(("OUTREACH_", "OPENAI_", "STRIPE_")):
            monkeypatch.delenv(name)
    values = {
        "OUTREACH_TWILIO_AUTH_TOKEN": planted_value(),
        "OUTREACH_SENDGRID_API_KEY": planted_value("SG."),
        "OPENAI_API_KEY": planted_value("sk-"),
        "STRIPE_API_KEY": planted_value("sk_test_"),
        "OUTREACH_STRIPE_WEBHOOK_SECRET": planted_value("whsec_"),
        "OUTREACH_CONNECTOR_SECRET": planted_value(),
        "OUTREACH_UNSUBSCRIBE_SECRET": planted_value(),
        "OUTREACH_APPROVALS_WEBHOOK_SECRET": planted_value(),
        "OMS_TOKEN": planted_value(),  # a ${VAR} of the connectors file
        "database password": planted_value(),
    }
    for name, value in values.items():
        if " " not in name:
            monkeypatch.setenv(name, value)
    password = values["database password"]
    monkeypatch.setenv(
        "OUTREACH_DATABASE_URL", f"postgresql+psycopg://outreach:{password}@127.0.0.1:1/outreach"
    )
    monkeypatch.setenv("OUTREACH_TWILIO_ACCOUNT_SID", SID)
    return values


def forms(name: str, value: str) -> set[str]:
    """The value as it could appear in a log: as is, URL-encoded, base64, as Basic auth."""
    found = {value, quote(value, safe=""), quote_plus(value)}
    found.add(base64.b64encode(value.encode()).decode())
    if name == "OUTREACH_TWILIO_AUTH_TOKEN":
        found.add(base64.b64encode(f"{SID}:{value}".encode()).decode())
    return found


def leaks(text: str, values: dict[str, str]) -> dict[str, list[str]]:
    """The planted values (by name) found in ``text``, in any form."""
    found: dict[str, list[str]] = {}
    for name, value in values.items():
        hits = [f for f in forms(name, value) if f in text]
        if hits:
            found[name] = hits
    return found


class Captured:
    """The real handler's output, and a control handler's without the filter."""

    def __init__(self) -> None:
        self.filtered = io.StringIO()
        self.unfiltered = io.StringIO()
        self.control = logging.StreamHandler(self.unfiltered)
        self.control.setFormatter(UtcJsonFormatter())


@pytest.fixture
def captured(planted: dict[str, str]) -> Iterator[Captured]:
    capture = Captured()
    configure_logging("debug", "json", stream=capture.filtered)
    register_settings(  # what the commands register once they built their settings
        TwilioSettings(), SendGridSettings(), LLMSettings(), ConnectorsSettings(),
        OutboundSettings(), ApiSettings(), SchedulerSettings(), StoreSettings(),
    )  # fmt: skip
    logging.getLogger().addHandler(capture.control)
    yield capture
    logging.getLogger().removeHandler(capture.control)


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def sms(message_id: str) -> Delivery:
    return Delivery(message_id=message_id, customer_id="cus_1", channel="sms",
                    to="+447000000123", purpose="transactional", subject=None,
                    body="Acme: your parcel is late")  # fmt: skip


def email(message_id: str) -> Delivery:
    return Delivery(message_id=message_id, customer_id="cus_1", channel="email",
                    to="jane.doe@example.com", purpose="transactional", subject="Your parcel",
                    body="Acme: your parcel is late")  # fmt: skip


async def run_dispatcher(store: Store, tmp_path: Path, planted: dict[str, str]) -> None:
    """Twilio refusing the token, SendGrid refusing the key, a connector that is not there:
    each row is tried once and given up (logged), through the real SDKs."""
    connectors = tmp_path / "connectors.yaml"
    connectors.write_text(
        "tools:\n  rebook_shipment:\n    kind: http\n"
        f"    url: http://127.0.0.1:{closed_port()}/rebook?api_token=${{OMS_TOKEN}}\n"
        '    headers: {Authorization: "Bearer ${OMS_TOKEN}"}\n'
        "    body: {shipment_id: x}\n",
        encoding="utf-8",
    )
    connector = build_connector(
        tmp_path, ConnectorsSettings(connectors=connectors), "https://hooks.example.com"
    )
    with TwilioDouble(SID, "another-token") as twilio, SendGridDouble("SG.another") as grid:
        sms_channel = TwilioSmsChannel(TwilioSettings(
            api_base=twilio.url, from_number="+15550001111", rate=1000.0, timeout=2.0,
        ))  # fmt: skip
        links = UnsubscribeLinks(planted["OUTREACH_UNSUBSCRIBE_SECRET"], "https://h.example.com")
        email_channel = SendGridEmailChannel(SendGridSettings(
            api_host=grid.url, from_email="shop@example.com", marketing_group_id=7, rate=1000.0,
            timeout=2.0,
        ), links)  # fmt: skip
        dispatcher = Dispatcher(
            store, connector, ChannelRouter(sms_channel, email_channel),
            DispatcherOptions(max_attempts=1, retry_for=0.0), random.Random(1),
        )  # fmt: skip
        rebook = Effect(idempotency_key="eff:1", action_id="act_1", customer_id="cus_1",
                        tool="rebook_shipment", params={"shipment_id": "shp_1"})  # fmt: skip
        now = time.time()
        store.run(lambda b: b.add_outbox([
            ("eff:1", "effect", "cus_1", "act_1", rebook.model_dump_json().encode(), now),
            ("msg:m1", "delivery", "cus_1", "m1", sms("m1").model_dump_json().encode(), now),
            ("msg:m2", "delivery", "cus_1", "m2", email("m2").model_dump_json().encode(), now),
        ]))  # fmt: skip
        try:
            assert await dispatcher.run_once(now) == 3
        finally:
            sms_channel.close()
            await connector.aclose()
        assert twilio.requests and grid.requests  # the SDKs really called out
    assert {r["status"] for r in store.outbox_rows()} == {"failed"}


def run_llm() -> None:
    """The gateway against a server that refuses the key (401)."""
    with OpenAIDouble("sk-another") as api:
        gateway = LLMGateway(LLMSettings(base_url=api.base_url, timeout=2.0, max_retries=0))
        with pytest.raises(LLMError):
            gateway.complete("composer", [{"role": "user", "content": "hello"}])


def run_api(store: Store) -> str:
    """Provider webhooks with bad signatures, an operator request with a planted API key."""
    _, api_key = Operator(store).create_key("ops", "operator")
    replies = KeywordReplies(stop="stopped", start="started", help="help")
    app = create_app(ApiSettings(), Contacts(store), FakeEventSink(), replies, brand="Acme")
    with TestClient(app) as client:
        refused = client.post(
            "/webhooks/twilio/status", data={"MessageSid": "SM1", "MessageStatus": "sent"},
            headers={"X-Twilio-Signature": "bm90LWEtc2lnbmF0dXJl"},
        )  # fmt: skip
        stripe = client.post(
            "/webhooks/stripe", content=b"{}", headers={"Stripe-Signature": "t=1,v1=00"}
        )
        operator = client.get("/v1/approvals", headers={"Authorization": f"Bearer {api_key}"})
    assert refused.status_code == 403 and stripe.status_code in (400, 403)
    assert operator.status_code in (200, 401, 404)
    logging.getLogger("outreach.api.test").debug(  # what a careless handler would log
        "request headers: %s", {"authorization": f"Bearer {api_key}"}
    )
    return api_key


async def test_planted_secrets_never_reach_the_logs(
    planted: dict[str, str], captured: Captured, tmp_path: Path
) -> None:
    store = Store(f"sqlite:///{tmp_path}/outreach.db")
    store.migrate()
    try:
        await run_dispatcher(store, tmp_path, planted)
        run_llm()
        api_key = run_api(store)
    finally:
        store.close()
    logging.getLogger("outreach.test").debug(  # a careless line: every value, several ways
        "settings %s %r", dict(planted), [SecretStr(v) for v in planted.values()],
        extra={"config": dict(planted), "to": "+447000000123"},
    )  # fmt: skip
    written = captured.filtered.getvalue()
    raw = captured.unfiltered.getvalue()

    # the code paths ran and logged (else a clean log proves nothing)
    for expected in (
        "check OUTREACH_SENDGRID_API_KEY", "HEADERS", "rebook_shipment", "LLM call failed",
        "Twilio webhook", "Stripe webhook refused", "gave up after 1 attempts",
    ):  # fmt: skip
        assert expected in written, expected
    # without the filter they leak: the SDK's DEBUG headers, the connector's URL, the careless
    # line; with it, nothing does, in any form
    really_logged = leaks(raw, planted)
    assert {"OUTREACH_SENDGRID_API_KEY", "OMS_TOKEN"} <= set(really_logged)
    assert set(really_logged) == set(planted)
    assert api_key in raw
    assert leaks(written, planted) == {}
    # ok_<key id>_<secret>: the secret is url-safe base64, so it may hold "_" itself
    secret = api_key.split("_", 2)[2]
    assert len(secret) >= 40
    assert api_key not in written and secret not in written
    assert all(f"Bearer {p}" not in written for p in ("ok_", "SG."))
    # personal data is masked too (the default): the SMS number and the e-mail address
    assert "jane.doe@example.com" in raw  # python-http-client's DEBUG payload
    assert "jane.doe@example.com" not in written and "j***@example.com" in written
    assert "+447000000123" in raw and "+447000000123" not in written and "+4470****123" in written


def test_a_real_command_writes_no_planted_secret_to_stderr(
    planted: dict[str, str], tmp_path: Path
) -> None:
    """``outreach scheduler`` at DEBUG with every secret set: it migrates its store, takes the
    scheduler claim, fails to reach Kafka (a closed port) and steps down to try again, logging
    on the way; then it is stopped (SIGTERM)."""
    env = dict(os.environ)
    env.update({
        "OUTREACH_LOG_FORMAT": "json",
        "OUTREACH_APPROVALS_WEBHOOK_URL": f"http://127.0.0.1:{closed_port()}/hook",
        "PYTHONWARNINGS": "ignore",
    })  # fmt: skip
    child = subprocess.Popen(  # noqa: S603 - our own command
        [
            str(Path(sys.executable).parent / "outreach"), "scheduler", "--log-level", "debug",
            "--kafka-url", f"127.0.0.1:{closed_port()}",
            "--database-url", f"sqlite:///{tmp_path}/outreach.db",
        ],
        env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    lines: list[str] = []
    try:
        assert child.stderr is not None
        for text in child.stderr:  # until it says it stepped down (or ends)
            lines.append(text)
            if "Kafka is unreachable" in text:
                break
    finally:
        child.terminate()
        out, rest = child.communicate(timeout=60)
    stderr = "".join(lines) + rest
    assert "Kafka is unreachable" in stderr, stderr[-2000:]
    assert '"logger": "alembic.runtime.migration"' in stderr  # logged through our handler
    assert '"logger": "aiokafka"' in stderr and '"level": "DEBUG"' in stderr
    assert leaks(stderr + out, planted) == {}
