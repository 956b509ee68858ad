"""The SendGrid email channel, with the real SDK against a local double of v3 mail send."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest
from outbound.doubles import Answer, SendGridDouble, sendgrid_error, slow, status
from pydantic import SecretStr

from outreach.decisions import Delivery
from outreach.errors import DeliveryHeld, PermanentDeliveryError, TransientDeliveryError
from outreach.ids import make_id
from outreach.outbound.config import ChannelConfigError
from outreach.outbound.sendgrid import RECONCILE_LIMIT, SendGridEmailChannel, SendGridSettings
from outreach.outbound.unsubscribe import (
    MARKETING_LIST,
    UNSUBSCRIBE_MARKER,
    UnsubscribeLinks,
    Unsubscription,
)

KEY = "SG.test-key.secret"
SENDER = "news@acme.example"
GROUP = 4242
LINKS = UnsubscribeLinks("unsubscribe-test-secret", "https://hooks.example.com/")


@pytest.fixture(autouse=True)
def _no_outreach_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings come from the test, not from the shell that runs it."""
    for name in list(os.environ):
        if name.startswith("OUTREACH_"):
            monkeypatch.delenv(name)


@pytest.fixture
def api() -> Iterator[SendGridDouble]:
    with SendGridDouble(KEY) as double:
        yield double


def settings(api: SendGridDouble, **changes: Any) -> SendGridSettings:
    values: dict[str, Any] = {
        "api_key": SecretStr(KEY),
        "from_email": SENDER,
        "from_name": "Acme",
        "marketing_group_id": GROUP,
        "api_host": api.url,
        "rate": 1000.0,
        "timeout": 0.5,
    }
    return SendGridSettings(**{**values, **changes})


@pytest.fixture
def channel(api: SendGridDouble) -> SendGridEmailChannel:
    return SendGridEmailChannel(settings(api), LINKS)


def email(**changes: Any) -> Delivery:
    values: dict[str, Any] = {
        "message_id": "m-1",
        "customer_id": "c-9",
        "channel": "email",
        "to": "ada@example.com",
        "purpose": "transactional",
        "subject": "Your card was declined",
        "body": "Hello Ada, please update your card.",
    }
    return Delivery(**{**values, **changes})


def marketing(**changes: Any) -> Delivery:
    body = f"Spring sale! Leave this list: {UNSUBSCRIBE_MARKER}"
    return email(purpose="marketing", subject="Spring sale", body=body, **changes)


def token_of(header: str) -> str:
    """The token of ``<https://.../unsubscribe/<token>>``."""
    assert header.startswith("<https://hooks.example.com/unsubscribe/") and header.endswith(">")
    return header[1:-1].rsplit("/", 1)[1]


# -- the request ----------------------------------------------------------------------------


async def test_a_transactional_email_is_from_to_subject_text_and_custom_args(
    api: SendGridDouble, channel: SendGridEmailChannel
) -> None:
    delivery = email(attempt=2)
    result = await channel.send(delivery, delivery.key)

    [request] = api.sends()
    assert request.method == "POST"
    assert request.header("Authorization") == f"Bearer {KEY}"
    assert request.json == {
        "from": {"email": SENDER, "name": "Acme"},
        "subject": "Your card was declined",
        "personalizations": [{"to": [{"email": "ada@example.com"}]}],
        "content": [{"type": "text/plain", "value": "Hello Ada, please update your card."}],
        "custom_args": {
            "message_id": "m-1",
            "customer_id": "c-9",
            "attempt": "2",
            "key": "msg:m-1#2",
        },
    }
    [(message_id, _)] = api.accepted
    assert result.status == "sent"
    assert result.provider_id == message_id
    assert not result.replayed


async def test_marketing_carries_its_group_and_a_one_click_unsubscribe_link(
    api: SendGridDouble, channel: SendGridEmailChannel
) -> None:
    await channel.send(marketing(), "msg:m-1")

    [request] = api.sends()
    body = request.json
    assert body["asm"] == {"group_id": GROUP}
    headers = body["headers"]
    assert set(headers) == {"List-Unsubscribe", "List-Unsubscribe-Post"}
    assert headers["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    token = token_of(headers["List-Unsubscribe"])
    assert LINKS.verify(token) == Unsubscription("c-9", "ada@example.com", MARKETING_LIST)
    text = body["content"][0]["value"]
    assert UNSUBSCRIBE_MARKER not in text
    assert text == f"Spring sale! Leave this list: {headers['List-Unsubscribe'][1:-1]}"


@pytest.mark.parametrize(
    ("list_id", "group", "named_list"),
    [("77", 77, "77"), ("weekly-news", GROUP, "weekly-news")],
)
async def test_the_list_of_a_marketing_email_picks_group_and_link(
    api: SendGridDouble,
    channel: SendGridEmailChannel,
    list_id: str,
    group: int,
    named_list: str,
) -> None:
    await channel.send(marketing(list_id=list_id), "msg:m-1")
    body = api.sends()[0].json
    assert body["asm"] == {"group_id": group}
    unsubscription = LINKS.verify(token_of(body["headers"]["List-Unsubscribe"]))
    assert unsubscription.list_id == named_list


async def test_an_email_without_a_subject_is_refused_before_any_request(
    api: SendGridDouble, channel: SendGridEmailChannel
) -> None:
    with pytest.raises(PermanentDeliveryError) as caught:
        await channel.send(email(subject=None), "msg:m-1")
    assert caught.value.code == "subject"
    assert api.requests == []


# -- reconciliation (OUTREACH_SENDGRID_RECONCILE) ---------------------------------------------


@pytest.fixture
def reconciling(api: SendGridDouble) -> SendGridEmailChannel:
    return SendGridEmailChannel(settings(api, reconcile=True), LINKS)


def retried() -> Delivery:
    """A second attempt with an id made as the engine makes them: ``msg:msg_<hex>#2``."""
    return email(message_id=make_id("msg", "sig-1", "ref-1"), attempt=2)


def lookup_query(key: str) -> dict[str, list[str]]:
    return {"query": [f"unique_args['key']=\"{key}\""], "limit": [str(RECONCILE_LIMIT)]}


def test_reconciliation_is_off_unless_set(monkeypatch: pytest.MonkeyPatch) -> None:
    assert SendGridSettings().reconcile is False
    monkeypatch.setenv("OUTREACH_SENDGRID_RECONCILE", "true")
    assert SendGridSettings().reconcile is True


async def test_without_reconcile_a_retry_sends_again_without_a_lookup(
    api: SendGridDouble, channel: SendGridEmailChannel
) -> None:
    api.feed_sends = True  # the feed knows the first try: only a lookup would find it
    first = await channel.send(email(), "msg:m-1")
    second = await channel.send(email(), "msg:m-1", retry=True)
    assert len(api.accepted) == 2
    assert api.lookups() == []
    assert first.provider_id != second.provider_id
    assert not second.replayed


async def test_a_retry_found_in_the_activity_feed_is_not_sent_again(
    api: SendGridDouble, reconciling: SendGridEmailChannel
) -> None:
    delivery = retried()
    assert delivery.key.startswith("msg:msg_") and delivery.key.endswith("#2")
    earlier = api.add_to_feed({"key": delivery.key}, "ada@example.com")

    result = await reconciling.send(delivery, delivery.key, retry=True)

    assert api.sends() == []
    assert (result.status, result.provider_id, result.replayed) == (
        "sent",
        earlier["msg_id"],
        True,
    )
    [lookup] = api.lookups()
    assert lookup.method == "GET"
    assert lookup.header("Authorization") == f"Bearer {KEY}"
    assert lookup.query == lookup_query(delivery.key)  # '#' and quotes encoded once


async def test_a_crash_after_sendgrid_accepted_is_reconciled_on_the_retry(
    api: SendGridDouble, reconciling: SendGridEmailChannel
) -> None:
    """The whole story: the first try reached SendGrid, its row was not marked, the retry
    finds it (here the feed has it at once; SendGrid's takes seconds to minutes)."""
    api.feed_sends = True
    delivery = retried()
    first = await reconciling.send(delivery, delivery.key)
    second = await reconciling.send(delivery, delivery.key, retry=True)
    assert len(api.accepted) == 1
    assert second.replayed
    assert first.provider_id is not None and second.provider_id is not None
    assert second.provider_id.startswith(first.provider_id + ".")  # msg_id: X-Message-Id.<...>


async def test_a_retry_not_in_the_feed_is_sent_once(
    api: SendGridDouble, reconciling: SendGridEmailChannel
) -> None:
    api.add_to_feed({"key": "msg:another#2"}, "ada@example.com")
    delivery = retried()
    result = await reconciling.send(delivery, delivery.key, retry=True)
    assert len(api.lookups()) == 1
    [request] = api.sends()
    assert request.json["custom_args"]["key"] == delivery.key
    [(message_id, _)] = api.accepted
    assert (result.provider_id, result.replayed) == (message_id, False)


async def test_a_message_with_the_key_to_another_address_is_not_taken_for_it(
    api: SendGridDouble, reconciling: SendGridEmailChannel, caplog: pytest.LogCaptureFixture
) -> None:
    delivery = retried()
    api.add_to_feed({"key": delivery.key}, "someone.else@example.com")
    result = await reconciling.send(delivery, delivery.key, retry=True)
    assert len(api.accepted) == 1
    assert not result.replayed
    assert "none to the delivery's address" in caplog.text


async def test_a_first_try_is_not_looked_up(
    api: SendGridDouble, reconciling: SendGridEmailChannel
) -> None:
    delivery = retried()
    api.add_to_feed({"key": delivery.key}, "ada@example.com")
    result = await reconciling.send(delivery, delivery.key)
    assert api.lookups() == []
    assert len(api.accepted) == 1
    assert not result.replayed


@pytest.mark.parametrize("refused", [401, 403, 404])
async def test_a_refused_lookup_warns_once_and_sends(
    api: SendGridDouble,
    reconciling: SendGridEmailChannel,
    caplog: pytest.LogCaptureFixture,
    refused: int,
) -> None:
    """No add-on, or a key without email_activity.read: the operator hears it once, and the
    retries go out as they would without the setting."""
    api.script(sendgrid_error(refused, "access forbidden"))
    first = await reconciling.send(retried(), retried().key, retry=True)
    api.script(sendgrid_error(refused, "access forbidden"))
    second = await reconciling.send(retried(), retried().key, retry=True)

    assert [r.path for r in api.requests] == ["/v3/messages", "/v3/mail/send"] * 2
    assert len(api.accepted) == 2
    assert not first.replayed and not second.replayed
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "email_activity.read" in warnings[0].getMessage()
    assert "add-on" in warnings[0].getMessage()
    assert KEY not in caplog.text


async def test_another_refusal_of_the_lookup_warns_each_time_and_sends(
    api: SendGridDouble, reconciling: SendGridEmailChannel, caplog: pytest.LogCaptureFixture
) -> None:
    for _ in range(2):
        api.script(sendgrid_error(400, "error parsing input"))
        await reconciling.send(retried(), retried().key, retry=True)
    assert len(api.accepted) == 2
    assert caplog.text.count("error parsing input") == 2


async def test_an_answer_without_messages_warns_and_sends(
    api: SendGridDouble, reconciling: SendGridEmailChannel, caplog: pytest.LogCaptureFixture
) -> None:
    api.script(Answer(200, {"result": []}))
    result = await reconciling.send(retried(), retried().key, retry=True)
    assert len(api.accepted) == 1
    assert not result.replayed
    assert "no messages list (KeyError)" in caplog.text


@pytest.mark.parametrize(
    ("answer", "code", "retry_after"),
    [(status(503), "503", None), (status(429, retry_after="7"), "429", 7.0)],
)
async def test_a_failed_lookup_is_transient_and_sends_nothing(
    api: SendGridDouble,
    reconciling: SendGridEmailChannel,
    answer: Answer,
    code: str,
    retry_after: float | None,
) -> None:
    api.script(answer)
    with pytest.raises(TransientDeliveryError) as caught:
        await reconciling.send(retried(), retried().key, retry=True)
    assert (caught.value.code, caught.value.retry_after) == (code, retry_after)
    assert "looking up" in str(caught.value)
    assert len(api.lookups()) == 1
    assert api.sends() == []


async def test_a_lookup_that_times_out_is_transient_and_sends_nothing(
    api: SendGridDouble,
) -> None:
    channel = SendGridEmailChannel(settings(api, reconcile=True, timeout=0.2), LINKS)
    api.script(slow(30))
    with pytest.raises(TransientDeliveryError, match="timed out"):
        await channel.send(retried(), retried().key, retry=True)
    assert api.sends() == []


async def test_a_key_that_cannot_be_quoted_is_not_looked_up(
    api: SendGridDouble, reconciling: SendGridEmailChannel, caplog: pytest.LogCaptureFixture
) -> None:
    """The engine's keys have no quotes; one that had could close the string and match
    other messages, so it is sent as it would be without the setting."""
    key = 'msg:m"1" OR unique_args[\'key\']!="x'
    result = await reconciling.send(email(), key, retry=True)
    assert api.lookups() == []
    assert len(api.accepted) == 1
    assert not result.replayed
    assert "cannot be quoted" in caplog.text


async def test_a_lookup_waits_its_turn_on_the_rate_limit(api: SendGridDouble) -> None:
    channel = SendGridEmailChannel(settings(api, rate=20.0, reconcile=True), LINKS)
    await asyncio.gather(
        *(channel.send(email(message_id=f"m-{i}"), f"msg:m-{i}", retry=True) for i in range(4))
    )
    arrivals = sorted(r.received_at for r in api.requests)
    assert [len(api.lookups()), len(api.sends())] == [4, 4]
    assert arrivals[-1] - arrivals[0] >= 0.8 * 7 / 20  # 8 calls at 20/s: 7 gaps of 50 ms


# -- errors ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("answer", "kind", "code", "retry_after"),
    [
        (status(429, retry_after="5"), TransientDeliveryError, "429", 5.0),
        (status(500), TransientDeliveryError, "500", None),
        (status(503, retry_after="1"), TransientDeliveryError, "503", 1.0),
        (sendgrid_error(400, "Does not contain a valid address."), PermanentDeliveryError,
         "400", None),
        (sendgrid_error(401), TransientDeliveryError, "401", 300.0),
        (sendgrid_error(403, "access forbidden"), TransientDeliveryError, "403", 300.0),
        (sendgrid_error(413), PermanentDeliveryError, "413", None),
    ],
)  # fmt: skip
async def test_answers_map_to_transient_or_permanent_errors(
    api: SendGridDouble,
    channel: SendGridEmailChannel,
    answer: Answer,
    kind: type[Exception],
    code: str,
    retry_after: float | None,
) -> None:
    api.script(answer)
    with pytest.raises(kind) as caught:
        await channel.send(email(), "msg:m-1")
    error = caught.value
    assert isinstance(error, TransientDeliveryError | PermanentDeliveryError)
    assert error.code == code
    assert getattr(error, "retry_after", None) == retry_after
    assert "m-1" in str(error)
    assert api.accepted == []


async def test_sendgrids_own_error_message_is_kept(
    api: SendGridDouble, channel: SendGridEmailChannel
) -> None:
    api.script(sendgrid_error(400, "Does not contain a valid address."))
    with pytest.raises(PermanentDeliveryError, match="Does not contain a valid address"):
        await channel.send(email(), "msg:m-1")


async def test_a_rate_limit_reset_header_stands_in_for_retry_after(
    api: SendGridDouble, channel: SendGridEmailChannel
) -> None:
    reset = int(time.time()) + 30
    api.script(Answer(429, {"errors": []}, {"X-RateLimit-Reset": str(reset)}))
    with pytest.raises(TransientDeliveryError) as caught:
        await channel.send(email(), "msg:m-1")
    assert caught.value.retry_after is not None
    assert 25 <= caught.value.retry_after <= 30


async def test_a_wrong_api_key_keeps_the_message_for_later(
    api: SendGridDouble, caplog: pytest.LogCaptureFixture
) -> None:
    """The account's problem, not the message's: it waits (and the dispatcher alerts when it
    gives up) rather than being failed for good while someone fixes the key."""
    channel = SendGridEmailChannel(settings(api, api_key=SecretStr("SG.wrong.key")), LINKS)
    with pytest.raises(TransientDeliveryError) as caught:
        await channel.send(email(), "msg:m-1")
    assert (caught.value.code, caught.value.retry_after) == ("401", 300.0)
    assert api.accepted == []
    assert "check OUTREACH_SENDGRID_API_KEY" in caplog.text
    assert "SG.wrong.key" not in caplog.text


async def test_a_timeout_is_transient(api: SendGridDouble) -> None:
    channel = SendGridEmailChannel(settings(api, timeout=0.2), LINKS)
    api.script(slow(30))
    with pytest.raises(TransientDeliveryError) as caught:
        await channel.send(email(), "msg:m-1")
    assert "timed out" in str(caught.value)
    assert [r.answered for r in api.requests] == [None]


async def test_with_reconcile_an_email_that_may_have_gone_waits_for_the_feed_before_its_retry(
    api: SendGridDouble,
) -> None:
    """SendGrid's activity feed lists a message only seconds to minutes after accepting it:
    a retry looked up sooner misses it and sends it twice."""
    wait = settings(api, reconcile=True, reconcile_wait=42.0, timeout=0.2)
    channel = SendGridEmailChannel(wait, LINKS)
    api.script(slow(30, perform=True))  # accepted, answered too late
    with pytest.raises(TransientDeliveryError) as caught:
        await channel.send(email(), "msg:m-1")
    assert (caught.value.retry_after, caught.value.unsent) == (42.0, False)
    assert len(api.accepted) == 1
    api.script(status(503, retry_after="300"), status(502))  # a 5xx may have gone too
    for expected in (300.0, 42.0):  # the provider's own wait when longer
        with pytest.raises(TransientDeliveryError) as caught:
            await channel.send(email(), "msg:m-2")
        assert caught.value.retry_after == expected
    api.script(status(429, retry_after="5"))  # refused outright: nothing to wait for
    with pytest.raises(TransientDeliveryError) as caught:
        await channel.send(email(), "msg:m-3")
    assert (caught.value.retry_after, caught.value.unsent) == (5.0, True)
    off = SendGridEmailChannel(settings(api, timeout=0.2), LINKS)
    api.script(slow(30))  # without the lookup there is nothing to wait for
    with pytest.raises(TransientDeliveryError) as caught:
        await off.send(email(), "msg:m-4")
    assert caught.value.retry_after is None


async def test_a_refused_connection_is_transient(api: SendGridDouble) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    channel = SendGridEmailChannel(settings(api, api_host=f"http://127.0.0.1:{port}"), LINKS)
    with pytest.raises(TransientDeliveryError, match="URLError"):
        await channel.send(email(), "msg:m-1")


# -- backpressure ---------------------------------------------------------------------------


async def test_the_rate_limit_spaces_calls_and_drops_none(api: SendGridDouble) -> None:
    channel = SendGridEmailChannel(settings(api, rate=20.0), LINKS)
    results = await asyncio.gather(
        *(channel.send(email(message_id=f"m-{i}"), f"msg:m-{i}") for i in range(10))
    )
    assert len({r.provider_id for r in results}) == 10
    arrivals = sorted(r.received_at for r in api.sends())
    assert len(arrivals) == 10
    assert arrivals[-1] - arrivals[0] >= 0.8 * 9 / 20  # 20/s: 9 gaps of 50 ms
    busiest = max(sum(1 for t in arrivals if start <= t < start + 0.1) for start in arrivals)
    assert busiest <= 4  # about 2 per 100 ms; unthrottled, all 10 land at once


# -- configuration --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "named"),
    [
        ({"api_key": None}, "OUTREACH_SENDGRID_API_KEY"),
        ({"api_key": SecretStr("")}, "OUTREACH_SENDGRID_API_KEY"),
        ({"from_email": None}, "OUTREACH_SENDGRID_FROM_EMAIL"),
        ({"marketing_group_id": None}, "OUTREACH_SENDGRID_MARKETING_GROUP_ID"),
    ],
)
def test_a_missing_setting_is_named_at_construction(
    api: SendGridDouble, changes: dict[str, Any], named: str
) -> None:
    with pytest.raises(ChannelConfigError, match=named):
        SendGridEmailChannel(settings(api, **changes), LINKS)


def test_without_unsubscribe_links_the_channel_does_not_start(api: SendGridDouble) -> None:
    with pytest.raises(ChannelConfigError) as caught:
        SendGridEmailChannel(settings(api), None)
    assert "OUTREACH_UNSUBSCRIBE_SECRET" in str(caught.value)
    assert "OUTREACH_PUBLIC_URL" in str(caught.value)


# -- what a failed try says about the message (the dispatcher's next lookup) ---------------------


@pytest.mark.parametrize(
    ("answer", "unsent"),
    [
        (status(429, retry_after="5"), True),
        (sendgrid_error(401), True),
        (sendgrid_error(403, "access forbidden"), True),
        (status(500), False),  # SendGrid may have taken it before failing
        (status(503, retry_after="1"), False),
    ],
)  # fmt: skip
async def test_only_an_outright_refusal_says_the_email_was_not_sent(
    api: SendGridDouble, channel: SendGridEmailChannel, answer: Answer, unsent: bool
) -> None:
    api.script(answer)
    with pytest.raises(TransientDeliveryError) as caught:
        await channel.send(email(), "msg:m-1")
    assert caught.value.unsent is unsent


async def test_a_refused_lookup_leaves_the_earlier_try_unknown(
    api: SendGridDouble, reconciling: SendGridEmailChannel
) -> None:
    api.script(status(429, retry_after="7"))
    with pytest.raises(DeliveryHeld) as caught:  # held untried by the dispatcher
        await reconciling.send(retried(), retried().key, retry=True)
    assert caught.value.unsent is False
    assert api.sends() == []


async def test_a_send_refused_after_a_lookup_found_nothing_says_the_email_was_not_sent(
    api: SendGridDouble, reconciling: SendGridEmailChannel
) -> None:
    api.script(Answer(200, {"messages": []}), status(429, retry_after="7"))
    with pytest.raises(TransientDeliveryError) as caught:
        await reconciling.send(retried(), retried().key, retry=True)
    assert caught.value.unsent is True
    assert (len(api.lookups()), len(api.accepted)) == (1, 0)
