"""Outbound wiring: settings from the environment, start-up errors, routing by channel."""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import UTC, datetime
from email.utils import format_datetime
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import orjson
import pytest
from outbound.doubles import SendGridDouble, TwilioDouble
from pydantic import ValidationError

from outreach.decisions import Delivery
from outreach.errors import PermanentDeliveryError
from outreach.outbound.channels import FileChannel
from outreach.outbound.config import (
    ChannelConfigError,
    ChannelRouter,
    OutboundSettings,
    build_channel,
    retry_after_seconds,
)
from outreach.outbound.sendgrid import SendGridEmailChannel, SendGridSettings
from outreach.outbound.twilio import TwilioSettings, TwilioSmsChannel
from outreach.outbound.unsubscribe import UnsubscribeLinks

SID = "AC" + "3" * 32
TOKEN = "twilio-config-token"
KEY = "SG.config.key"
SECRET = "config-unsubscribe-secret"
PUBLIC = "https://hooks.example.com"


@pytest.fixture(autouse=True)
def _no_outreach_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings come from the test, not from the shell that runs it."""
    for name in list(os.environ):
        if name.startswith("OUTREACH_"):
            monkeypatch.delenv(name)


def delivery(channel: str, **changes: str) -> Delivery:
    to = "+15557654321" if channel == "sms" else "ada@example.com"
    values = {
        "message_id": f"m-{channel}",
        "customer_id": "c-9",
        "channel": channel,
        "to": to,
        "purpose": "marketing",
        "subject": "Spring sale" if channel == "email" else None,
        "body": "Spring sale at Acme. Leave: %unsubscribe_url%",
        **changes,
    }
    return Delivery.model_validate(values)


def build(tmp_path: Path) -> ChannelRouter:
    """The channels the (patched) environment configures."""
    return build_channel(OutboundSettings(), TwilioSettings(), SendGridSettings(), tmp_path)


async def test_by_default_both_kinds_go_to_one_file_channel(tmp_path: Path) -> None:
    router = build(tmp_path)
    assert isinstance(router.sms, FileChannel)
    assert router.sms is router.email
    await router.send(delivery("sms"), "msg:m-sms")
    await router.send(delivery("email"), "msg:m-email")
    lines = (tmp_path / "messages.jsonl").read_bytes().splitlines()
    assert [orjson.loads(line)["channel"] for line in lines] == ["sms", "email"]
    await router.close()


def test_every_missing_variable_is_named_in_one_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OUTREACH_SMS_CHANNEL", "twilio")
    monkeypatch.setenv("OUTREACH_EMAIL_CHANNEL", "sendgrid")
    with pytest.raises(ChannelConfigError) as caught:
        build(tmp_path)
    message = str(caught.value)
    for variable in (
        "OUTREACH_TWILIO_ACCOUNT_SID",
        "OUTREACH_TWILIO_AUTH_TOKEN",
        "OUTREACH_TWILIO_MESSAGING_SERVICE_SID",
        "OUTREACH_TWILIO_FROM_NUMBER",
        "OUTREACH_SENDGRID_API_KEY",
        "OUTREACH_SENDGRID_FROM_EMAIL",
        "OUTREACH_SENDGRID_MARKETING_GROUP_ID",
        "OUTREACH_UNSUBSCRIBE_SECRET",
        "OUTREACH_PUBLIC_URL",
    ):
        assert variable in message
    assert len(message.splitlines()) == 1 + 8  # a heading, then one line per problem
    assert not (tmp_path / "messages.jsonl").exists()


def test_only_the_configured_providers_are_checked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OUTREACH_EMAIL_CHANNEL", "sendgrid")
    monkeypatch.setenv("OUTREACH_SENDGRID_API_KEY", KEY)
    monkeypatch.setenv("OUTREACH_SENDGRID_FROM_EMAIL", "news@acme.example")
    monkeypatch.setenv("OUTREACH_SENDGRID_MARKETING_GROUP_ID", "12")
    monkeypatch.setenv("OUTREACH_PUBLIC_URL", PUBLIC)
    with pytest.raises(ChannelConfigError) as caught:
        build(tmp_path)
    assert "OUTREACH_UNSUBSCRIBE_SECRET" in str(caught.value)
    assert "TWILIO" not in str(caught.value)
    assert "OUTREACH_PUBLIC_URL" not in str(caught.value)


def test_an_unknown_channel_name_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OUTREACH_SMS_CHANNEL", "carrier-pigeon")
    with pytest.raises(ValidationError, match="sms_channel"):
        OutboundSettings()


@pytest.mark.parametrize("url", ["hooks.example.com", "https://h.example/?x=1"])
def test_the_public_url_must_be_a_base_url(url: str) -> None:
    with pytest.raises(ValidationError, match="not a base URL"):
        OutboundSettings(public_url=url)


@pytest.fixture
def twilio_api() -> Iterator[TwilioDouble]:
    with TwilioDouble(SID, TOKEN) as double:
        yield double


@pytest.fixture
def sendgrid_api() -> Iterator[SendGridDouble]:
    with SendGridDouble(KEY) as double:
        yield double


@pytest.fixture
def providers_env(
    monkeypatch: pytest.MonkeyPatch, twilio_api: TwilioDouble, sendgrid_api: SendGridDouble
) -> None:
    """The environment of a deployment that sends through both providers (the doubles)."""
    for name, value in {
        "OUTREACH_SMS_CHANNEL": "twilio",
        "OUTREACH_EMAIL_CHANNEL": "sendgrid",
        "OUTREACH_PUBLIC_URL": PUBLIC + "/",
        "OUTREACH_UNSUBSCRIBE_SECRET": SECRET,
        "OUTREACH_TWILIO_ACCOUNT_SID": SID,
        "OUTREACH_TWILIO_AUTH_TOKEN": TOKEN,
        "OUTREACH_TWILIO_FROM_NUMBER": "+15550001111",
        "OUTREACH_TWILIO_API_BASE": twilio_api.url,
        "OUTREACH_SENDGRID_API_KEY": KEY,
        "OUTREACH_SENDGRID_FROM_EMAIL": "news@acme.example",
        "OUTREACH_SENDGRID_MARKETING_GROUP_ID": "12",
        "OUTREACH_SENDGRID_API_HOST": sendgrid_api.url,
    }.items():
        monkeypatch.setenv(name, value)


@pytest.mark.usefixtures("providers_env")
async def test_the_configured_providers_send_each_kind(
    tmp_path: Path, twilio_api: TwilioDouble, sendgrid_api: SendGridDouble
) -> None:
    router = build(tmp_path)
    assert isinstance(router.sms, TwilioSmsChannel)
    assert isinstance(router.email, SendGridEmailChannel)

    await router.send(delivery("sms"), "msg:m-sms")
    await router.send(delivery("email"), "msg:m-email")
    await router.close()

    [sms] = twilio_api.creates()
    callback = urlsplit(sms.form["StatusCallback"])
    assert f"{callback.scheme}://{callback.netloc}{callback.path}" == (
        PUBLIC + "/webhooks/twilio/status"
    )
    assert parse_qs(callback.query)["message_id"] == ["m-sms"]
    [email] = sendgrid_api.sends()
    link = email.json["headers"]["List-Unsubscribe"][1:-1]
    assert link.startswith(PUBLIC + "/unsubscribe/")
    links = UnsubscribeLinks(SECRET, PUBLIC)
    assert links.verify(link.rsplit("/", 1)[1]).address == "ada@example.com"
    assert email.json["asm"] == {"group_id": 12}
    assert not (tmp_path / "messages.jsonl").exists()


@pytest.mark.usefixtures("providers_env")
def test_a_configured_status_callback_is_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OUTREACH_TWILIO_STATUS_CALLBACK_URL", "https://other.example/status")
    router = build(tmp_path)
    assert isinstance(router.sms, TwilioSmsChannel)
    assert router.sms.settings.status_callback_url == "https://other.example/status"


async def test_one_provider_and_the_file_channel_mix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, twilio_api: TwilioDouble
) -> None:
    monkeypatch.setenv("OUTREACH_SMS_CHANNEL", "twilio")
    monkeypatch.setenv("OUTREACH_TWILIO_ACCOUNT_SID", SID)
    monkeypatch.setenv("OUTREACH_TWILIO_AUTH_TOKEN", TOKEN)
    monkeypatch.setenv("OUTREACH_TWILIO_MESSAGING_SERVICE_SID", "MG" + "4" * 32)
    monkeypatch.setenv("OUTREACH_TWILIO_API_BASE", twilio_api.url)
    router = build(tmp_path)
    await router.send(delivery("email"), "msg:m-email")
    await router.close()
    assert isinstance(router.email, FileChannel)
    assert twilio_api.requests == []
    assert (tmp_path / "messages.jsonl").exists()


async def test_a_delivery_for_no_known_channel_fails_permanently(tmp_path: Path) -> None:
    router = build(tmp_path)
    with pytest.raises(PermanentDeliveryError) as caught:
        await router.send(delivery("push"), "msg:m-push")
    assert caught.value.code == "channel"
    assert (tmp_path / "messages.jsonl").read_bytes() == b""


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        ("7", 7.0),
        ("0.5", 0.5),
        ("-3", 0.0),
        (format_datetime(datetime.fromtimestamp(1_000_030, UTC), usegmt=True), 30.0),
        ("soon", None),
        ("inf", None),
        ("", None),
        (None, None),
    ],
)
def test_retry_after_reads_seconds_and_http_dates(
    header: str | None, seconds: float | None
) -> None:
    assert retry_after_seconds(header, now=1_000_000.0) == seconds
