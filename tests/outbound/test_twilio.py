"""The Twilio SMS channel, with the real SDK against a local double of the Messages API."""

from __future__ import annotations

import asyncio
import base64
import os
import socket
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from outbound.doubles import Answer, TwilioDouble, slow, status, twilio_error
from pydantic import SecretStr

from outreach.decisions import Delivery
from outreach.errors import DeliveryHeld, PermanentDeliveryError, TransientDeliveryError
from outreach.outbound.config import ChannelConfigError
from outreach.outbound.twilio import TwilioSettings, TwilioSmsChannel, status_callback_url

SID = "AC" + "1" * 32
TOKEN = "twilio-test-token"
SERVICE = "MG" + "2" * 32
NUMBER = "+15550001111"
CALLBACK = "https://hooks.example.com/webhooks/twilio/status?region=eu"


@pytest.fixture(autouse=True)
def _no_outreach_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings come from the test, not from the shell that runs it."""
    for name in list(os.environ):
        if name.startswith("OUTREACH_"):
            monkeypatch.delenv(name)


@pytest.fixture
def api() -> Iterator[TwilioDouble]:
    with TwilioDouble(SID, TOKEN) as double:
        yield double


def settings(api: TwilioDouble, **changes: Any) -> TwilioSettings:
    values: dict[str, Any] = {
        "account_sid": SID,
        "auth_token": SecretStr(TOKEN),
        "messaging_service_sid": SERVICE,
        "status_callback_url": CALLBACK,
        "api_base": api.url,
        "rate": 1000.0,
        "timeout": 0.5,
    }
    return TwilioSettings(**{**values, **changes})


@pytest.fixture
def channel(api: TwilioDouble) -> Iterator[TwilioSmsChannel]:
    made = TwilioSmsChannel(settings(api))
    yield made
    made.close()


def sms(**changes: Any) -> Delivery:
    values: dict[str, Any] = {
        "message_id": "m-1",
        "customer_id": "c-9",
        "channel": "sms",
        "to": "+15557654321",
        "purpose": "transactional",
        "subject": None,
        "body": "Acme: your card was declined. Update it at acme.example/pay",
    }
    return Delivery(**{**values, **changes})


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


# -- the request ----------------------------------------------------------------------------


async def test_send_posts_to_body_sender_and_status_callback(
    api: TwilioDouble, channel: TwilioSmsChannel
) -> None:
    delivery = sms(attempt=2)
    result = await channel.send(delivery, delivery.key)

    [request] = api.requests
    assert (request.method, request.path) == ("POST", api.messages_path)
    assert request.header("Authorization") == "Basic " + (
        base64.b64encode(f"{SID}:{TOKEN}".encode()).decode()
    )
    callback = request.form.pop("StatusCallback")
    assert request.form == {
        "To": delivery.to,
        "Body": delivery.body,
        "MessagingServiceSid": SERVICE,
    }
    url = urlsplit(callback)
    assert (url.scheme, url.netloc, url.path) == (
        "https",
        "hooks.example.com",
        "/webhooks/twilio/status",
    )
    assert parse_qs(url.query) == {
        "region": ["eu"],
        "message_id": ["m-1"],
        "customer_id": ["c-9"],
        "attempt": ["2"],
    }
    assert result.status == "sent"
    assert result.provider_id == api.messages[0]["sid"]
    assert not result.replayed


async def test_a_from_number_is_the_sender_when_there_is_no_messaging_service(
    api: TwilioDouble,
) -> None:
    channel = TwilioSmsChannel(
        settings(api, messaging_service_sid=None, from_number=NUMBER, status_callback_url=None)
    )
    try:
        await channel.send(sms(), "msg:m-1")
    finally:
        channel.close()
    [request] = api.requests
    assert request.form == {"To": "+15557654321", "Body": sms().body, "From": NUMBER}


def test_the_status_callback_keeps_its_query_and_sets_ours_once() -> None:
    url = status_callback_url(
        "https://h.example/s?message_id=stale&a=1&empty=", sms(message_id="m-7", attempt=3)
    )
    query = parse_qs(urlsplit(url).query, keep_blank_values=True)
    assert query == {
        "a": ["1"],
        "empty": [""],
        "message_id": ["m-7"],
        "customer_id": ["c-9"],
        "attempt": ["3"],
    }


# -- errors ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("answer", "kind", "code", "retry_after"),
    [
        (twilio_error(21610), PermanentDeliveryError, "21610", None),
        (twilio_error(21211), PermanentDeliveryError, "21211", None),
        (twilio_error(21614), PermanentDeliveryError, "21614", None),
        (twilio_error(21408, 400), PermanentDeliveryError, "21408", None),
        (twilio_error(20404, 404), PermanentDeliveryError, "20404", None),
        (Answer(429, {"code": 20429, "message": "Too Many Requests", "status": 429},
                {"Retry-After": "7"}), TransientDeliveryError, "20429", 7.0),
        (status(500), TransientDeliveryError, "500", None),
        (status(503, retry_after="2"), TransientDeliveryError, "503", 2.0),
    ],
)  # fmt: skip
async def test_answers_map_to_transient_or_permanent_errors(
    api: TwilioDouble,
    channel: TwilioSmsChannel,
    answer: Answer,
    kind: type[Exception],
    code: str,
    retry_after: float | None,
) -> None:
    api.script(answer)
    with pytest.raises(kind) as caught:
        await channel.send(sms(), "msg:m-1")
    error = caught.value
    assert isinstance(error, TransientDeliveryError | PermanentDeliveryError)
    assert error.code == code
    assert getattr(error, "retry_after", None) == retry_after
    assert "m-1" in str(error)
    assert api.messages == []


async def test_a_wrong_auth_token_keeps_the_message_for_later(
    api: TwilioDouble, caplog: pytest.LogCaptureFixture
) -> None:
    """The account's problem, not the message's: it waits (and the dispatcher alerts when it
    gives up) rather than being failed for good while someone fixes the token."""
    channel = TwilioSmsChannel(settings(api, auth_token=SecretStr("not-the-token")))
    try:
        with pytest.raises(TransientDeliveryError) as caught:
            await channel.send(sms(), "msg:m-1")
    finally:
        channel.close()
    assert (caught.value.code, caught.value.retry_after) == ("20003", 300.0)
    assert api.messages == []
    assert "check OUTREACH_TWILIO_ACCOUNT_SID/AUTH_TOKEN" in caplog.text
    assert "not-the-token" not in caplog.text


async def test_a_timeout_is_transient(api: TwilioDouble) -> None:
    channel = TwilioSmsChannel(settings(api, timeout=0.2))
    api.script(slow(30))
    try:
        with pytest.raises(TransientDeliveryError) as caught:
            await channel.send(sms(), "msg:m-1")
    finally:
        channel.close()
    assert "Timeout" in str(caught.value)
    assert [r.answered for r in api.requests] == [None]  # still held when the client gave up


async def test_a_refused_connection_is_transient() -> None:
    channel = TwilioSmsChannel(
        TwilioSettings(
            account_sid=SID,
            auth_token=SecretStr(TOKEN),
            from_number=NUMBER,
            api_base=f"http://127.0.0.1:{free_port()}",
            timeout=2.0,
        )
    )
    try:
        with pytest.raises(TransientDeliveryError, match="ConnectionError"):
            await channel.send(sms(), "msg:m-1")
    finally:
        channel.close()


# -- reconciliation (Twilio has no idempotency key) -------------------------------------------


async def test_a_retry_finds_the_message_twilio_accepted_and_does_not_send_it_again(
    api: TwilioDouble, channel: TwilioSmsChannel
) -> None:
    delivery = sms()
    api.script(slow(30, perform=True))  # accepted, but the answer comes too late
    with pytest.raises(TransientDeliveryError):
        await channel.send(delivery, delivery.key)
    [accepted] = api.messages
    assert accepted["date_sent"] is None  # still queued: a DateSent> filter would miss it

    result = await channel.send(delivery, delivery.key, retry=True)

    assert result.replayed
    assert result.provider_id == accepted["sid"]
    assert len(api.creates()) == 1
    [lookup] = api.lists()
    assert lookup.query["To"] == [delivery.to]
    assert "From" not in lookup.query  # a Messaging Service picks the number


async def test_a_retry_that_finds_nothing_sends(
    api: TwilioDouble, channel: TwilioSmsChannel
) -> None:
    result = await channel.send(sms(), "msg:m-1", retry=True)
    assert not result.replayed
    assert [r.method for r in api.requests] == ["GET", "POST"]
    assert result.provider_id == api.messages[0]["sid"]


@pytest.mark.parametrize(
    "earlier",
    [
        {"body": "Acme: another text"},
        {"created": datetime.now(UTC) - timedelta(hours=25)},
        {"service": "MG" + "9" * 32},
    ],
    ids=["other body", "older than 24 h", "other messaging service"],
)
async def test_a_retry_sends_when_only_a_different_message_is_found(
    api: TwilioDouble, channel: TwilioSmsChannel, earlier: dict[str, Any]
) -> None:
    delivery = sms()
    seeded = {"to": delivery.to, "body": delivery.body, "service": SERVICE, **earlier}
    old = api.add_message(**seeded)
    result = await channel.send(delivery, delivery.key, retry=True)
    assert not result.replayed
    assert result.provider_id != old["sid"]
    assert len(api.creates()) == 1


@pytest.mark.parametrize(("age", "replayed"), [(timedelta(hours=23, minutes=59), True),
                                              (timedelta(hours=24, minutes=1), False)])  # fmt: skip
async def test_the_lookup_reaches_back_24_hours_on_the_channels_clock(
    api: TwilioDouble, age: timedelta, replayed: bool
) -> None:
    delivery = sms()
    created = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)
    earlier = api.add_message(delivery.to, delivery.body, service=SERVICE, created=created)
    channel = TwilioSmsChannel(settings(api), clock=lambda: created + age)
    try:
        result = await channel.send(delivery, delivery.key, retry=True)
    finally:
        channel.close()
    assert result.replayed is replayed
    assert (result.provider_id == earlier["sid"]) is replayed
    assert len(api.creates()) == (0 if replayed else 1)


async def test_a_retry_from_a_number_looks_only_at_that_sender(api: TwilioDouble) -> None:
    channel = TwilioSmsChannel(settings(api, messaging_service_sid=None, from_number=NUMBER))
    delivery = sms()
    other = api.add_message(delivery.to, delivery.body, from_="+15559990000")
    mine = api.add_message(delivery.to, delivery.body, from_=NUMBER)
    try:
        result = await channel.send(delivery, delivery.key, retry=True)
    finally:
        channel.close()
    assert (result.replayed, result.provider_id) == (True, mine["sid"])
    assert result.provider_id != other["sid"]
    assert api.lists()[0].query["From"] == [NUMBER]
    assert api.creates() == []


async def test_a_failing_lookup_is_an_error_too(
    api: TwilioDouble, channel: TwilioSmsChannel
) -> None:
    api.script(status(503, retry_after="4"))
    with pytest.raises(TransientDeliveryError) as caught:
        await channel.send(sms(), "msg:m-1", retry=True)
    assert caught.value.retry_after == 4.0
    assert api.creates() == []


# -- backpressure ---------------------------------------------------------------------------


async def test_the_rate_limit_spaces_calls_and_drops_none(api: TwilioDouble) -> None:
    channel = TwilioSmsChannel(settings(api, rate=20.0))
    try:
        results = await asyncio.gather(
            *(channel.send(sms(message_id=f"m-{i}"), f"msg:m-{i}") for i in range(10))
        )
    finally:
        channel.close()
    assert len({r.provider_id for r in results}) == 10
    arrivals = sorted(r.received_at for r in api.creates())
    assert len(arrivals) == 10
    assert arrivals[-1] - arrivals[0] >= 0.8 * 9 / 20  # 20/s: 9 gaps of 50 ms
    busiest = max(sum(1 for t in arrivals if start <= t < start + 0.1) for start in arrivals)
    assert busiest <= 4  # about 2 per 100 ms; unthrottled, all 10 land at once


# -- configuration --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "named"),
    [
        ({"account_sid": None}, ["OUTREACH_TWILIO_ACCOUNT_SID"]),
        ({"auth_token": None}, ["OUTREACH_TWILIO_AUTH_TOKEN"]),
        ({"auth_token": SecretStr("")}, ["OUTREACH_TWILIO_AUTH_TOKEN"]),
        (
            {"messaging_service_sid": None, "from_number": None},
            ["OUTREACH_TWILIO_MESSAGING_SERVICE_SID", "OUTREACH_TWILIO_FROM_NUMBER"],
        ),
    ],
)
def test_a_missing_setting_is_named_at_construction(
    api: TwilioDouble, changes: dict[str, Any], named: list[str]
) -> None:
    with pytest.raises(ChannelConfigError) as caught:
        TwilioSmsChannel(settings(api, **changes))
    for variable in named:
        assert variable in str(caught.value)


def test_settings_come_from_outreach_twilio_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OUTREACH_TWILIO_ACCOUNT_SID", SID)
    monkeypatch.setenv("OUTREACH_TWILIO_AUTH_TOKEN", TOKEN)
    monkeypatch.setenv("OUTREACH_TWILIO_FROM_NUMBER", NUMBER)
    monkeypatch.setenv("OUTREACH_TWILIO_RATE", "2.5")
    loaded = TwilioSettings()
    assert (loaded.account_sid, loaded.from_number, loaded.rate) == (SID, NUMBER, 2.5)
    assert loaded.auth_token is not None and loaded.auth_token.get_secret_value() == TOKEN
    assert TOKEN not in repr(loaded)


# -- what a failed try says about the message (the dispatcher's next lookup) ---------------------


@pytest.mark.parametrize(
    ("answer", "unsent"),
    [
        (Answer(429, {"code": 20429, "message": "Too Many Requests", "status": 429}), True),
        (twilio_error(20003, 401, "Authenticate"), True),
        (status(500), False),  # Twilio may have taken it before failing
        (status(503, retry_after="2"), False),
    ],
)  # fmt: skip
async def test_only_an_outright_refusal_says_the_message_was_not_sent(
    api: TwilioDouble, channel: TwilioSmsChannel, answer: Answer, unsent: bool
) -> None:
    """A 429 or a refused account is Twilio not processing the request at all: the next try
    needs no lookup. After a 5xx the message may exist: it does."""
    api.script(answer)
    with pytest.raises(TransientDeliveryError) as caught:
        await channel.send(sms(), "msg:m-1")
    assert caught.value.unsent is unsent


async def test_a_refused_lookup_leaves_the_earlier_try_unknown(
    api: TwilioDouble, channel: TwilioSmsChannel
) -> None:
    api.script(Answer(429, {"code": 20429, "message": "Too Many Requests", "status": 429}))
    with pytest.raises(DeliveryHeld) as caught:  # held untried by the dispatcher
        await channel.send(sms(), "msg:m-1", retry=True)
    assert caught.value.unsent is False  # the message an earlier try sent may still be there
    assert api.creates() == []


async def test_a_lookup_refused_for_the_account_counts_as_an_attempt(api: TwilioDouble) -> None:
    """The account's problem (a wrong token) is not held for ever: the dispatcher counts it,
    gives the row up at its last attempt and the core alerts, as for a send."""
    channel = TwilioSmsChannel(settings(api, auth_token=SecretStr("not-the-token")))
    try:
        with pytest.raises(TransientDeliveryError) as caught:
            await channel.send(sms(), "msg:m-1", retry=True)
    finally:
        channel.close()
    assert not isinstance(caught.value, DeliveryHeld)
    assert caught.value.unsent is False  # an earlier try may still have gone
    assert api.creates() == []
