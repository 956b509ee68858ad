"""The SendGrid email channel: ``SendGridEmailChannel`` sends a ``Delivery`` with v3 mail send.

It uses the official SDK (``SendGridAPIClient``, ``sendgrid.helpers.mail.Mail``; blocking, run
in a worker thread), pointed at ``OUTREACH_SENDGRID_API_HOST`` when that is set (a local double
in tests). A message goes out with from, to, subject, a plain-text body and ``custom_args``
(``message_id``, ``customer_id``, ``attempt``, ``key``), which SendGrid echoes in every event
webhook entry. Marketing email (``purpose == "marketing"``) also carries its unsubscribe
group (``asm.group_id``: the delivery's numeric ``list_id``, else
``OUTREACH_SENDGRID_MARKETING_GROUP_ID``) and a one-click unsubscribe link (RFC 8058):
``List-Unsubscribe: <URL>``, ``List-Unsubscribe-Post: List-Unsubscribe=One-Click``, and the
same URL in place of ``UNSUBSCRIBE_MARKER`` in the body. Every API call first waits its turn
on a limiter (``OUTREACH_SENDGRID_RATE`` calls per second, evenly spaced): delayed, never
dropped.

Errors::

    HTTP 429, 5xx, timeout, connection refused/reset  -> TransientDeliveryError
        (retry_after: Retry-After, else X-RateLimit-Reset; code: the HTTP status)
    HTTP 401, 403 (key refused or lacking mail send, sender not verified: the account's
    problem, not the message's)                       -> TransientDeliveryError
        (retry_after: ACCOUNT_RETRY_AFTER: the messages wait for an operator to fix it)
    any other 4xx (400 bad request, 413 too large)    -> PermanentDeliveryError(code=status)

Reconciliation (``OUTREACH_SENDGRID_RECONCILE``, off by default). Mail send has no idempotency
key. With the setting on, when the dispatcher says ``retry=True`` (an earlier try of this key
may have reached SendGrid) the channel first asks the Email Activity API for messages whose
custom argument ``key`` is ours (``GET /v3/messages`` with ``query=unique_args['key']="<key>"``
and ``limit``, URL-encoded once by the SDK) and, if one went to the same address, answers with
its ``msg_id`` (``replayed=True``) instead of sending. The API is a paid add-on ("30 days
additional email activity history") and the key needs the ``email_activity.read`` scope.
Lookup errors::

    HTTP 429, 5xx, timeout, connection refused/reset  -> DeliveryHeld (nothing sent; the row
        is held untried until Retry-After / X-RateLimit-Reset, not counted as an attempt)
    HTTP 401, 403, 404 (no add-on, no scope)          -> one warning per channel (the worker
        builds one per process); sent as usual
    any other 4xx, an answer without ``messages``     -> a warning; sent as usual

The window that remains:

- With the setting off (the default), or the lookup refused: a message SendGrid accepted is
  sent once more if its outbox row was not marked (the dispatcher crashed, or the send timed
  out after SendGrid had taken it): one duplicate per such crash or timeout.
- The feed is eventually consistent: a message shows up seconds to minutes after SendGrid
  accepted it (SendGrid states no bound). After a crash the row comes back when its lease runs
  out (60 s), which usually covers that delay. A send that timed out or answered 5xx (it may
  have gone) is retried no sooner than ``reconcile_wait`` (180 s by default) with the setting
  on, so that the feed lists it by then; a message the feed lists later than that (or than the
  lease) can still go twice.
- The API allows 6 requests per minute per account: beyond that the lookup answers 429 and the
  row is held (``Retry-After``, else ``X-RateLimit-Reset``) without counting an attempt, so
  many retries at once (after an outage) drain slowly but are not given up for it. A send
  SendGrid refused outright (429, 401, 403) raises with ``unsent=True``, and the dispatcher's
  next attempt then asks for no lookup; a failed lookup leaves the earlier try unknown.
- A key the query language cannot quote (a double quote, backslash or control character; the
  engine's keys, ``msg:msg_<hex>#<n>``, have none) is not looked up: sent as usual.

Must not import: faust, aiokafka, twilio (the SDK), openai, fastapi, sqlalchemy.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections.abc import Mapping
from typing import Any

from aiolimiter import AsyncLimiter
from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict
from python_http_client.exceptions import HTTPError
from sendgrid import SendGridAPIClient
from sendgrid.helpers.mail import (
    Asm,
    CustomArg,
    From,
    GroupId,
    Header,
    Mail,
    PlainTextContent,
    Subject,
    To,
)
from sendgrid.helpers.mail.exceptions import SendGridException

from outreach.decisions import Delivery
from outreach.errors import DeliveryHeld, PermanentDeliveryError, TransientDeliveryError
from outreach.outbound.channels import SendResult
from outreach.outbound.config import ACCOUNT_RETRY_AFTER, ChannelConfigError, retry_after_seconds
from outreach.outbound.unsubscribe import MARKETING_LIST, UnsubscribeLinks

log = logging.getLogger(__name__)

DEFAULT_HOST = "https://api.sendgrid.com"
ONE_CLICK = "List-Unsubscribe=One-Click"
RECONCILE_LIMIT = 10  # messages one lookup reads: a key is sent once, twice after a duplicate
REFUSED_LOOKUP = (401, 403, 404)  # no Email Activity add-on, or a key without the scope


class SendGridSettings(BaseSettings):
    """The SendGrid key and sender (``OUTREACH_SENDGRID_*`` variables)."""

    model_config = SettingsConfigDict(env_prefix="OUTREACH_SENDGRID_")

    api_key: SecretStr | None = Field(default=None, description="an API key with Mail Send")
    from_email: str | None = Field(default=None, description="the sender (a verified address)")
    from_name: str | None = Field(default=None, description="the sender's display name")
    marketing_group_id: int | None = Field(
        default=None, description="the unsubscribe group of marketing email (Suppressions > Groups)"
    )
    api_host: str | None = Field(
        default=None, description="another API host than https://api.sendgrid.com (a double)"
    )
    rate: float = Field(default=10.0, gt=0, description="API calls per second, at most")
    timeout: float = Field(default=10.0, gt=0, description="seconds per HTTP request")
    reconcile: bool = Field(
        default=False,
        description="look a retried email up in the Email Activity API before sending it "
        "again (a paid add-on; the key needs email_activity.read)",
    )
    reconcile_wait: float = Field(
        default=180.0,
        ge=0,
        description="with reconcile: seconds before retrying an email whose send may have "
        "reached SendGrid (a timeout, a 5xx), so that the activity feed lists it by then",
    )


def sendgrid_problems(settings: SendGridSettings) -> list[str]:
    """What keeps ``settings`` from sending, each naming the variable to set (empty: none)."""
    problems = []
    if not settings.api_key or not settings.api_key.get_secret_value():
        problems.append("OUTREACH_SENDGRID_API_KEY is not set (an API key with Mail Send access)")
    if not settings.from_email:
        problems.append("OUTREACH_SENDGRID_FROM_EMAIL is not set (a verified sender address)")
    if settings.marketing_group_id is None:
        problems.append(
            "OUTREACH_SENDGRID_MARKETING_GROUP_ID is not set (the unsubscribe group of "
            "marketing email; marketing email must carry one)"
        )
    return problems


class SendGridEmailChannel:
    """Sends email through SendGrid's v3 mail send (the ``Channel`` port)."""

    def __init__(self, settings: SendGridSettings, unsubscribe: UnsubscribeLinks | None) -> None:
        problems = sendgrid_problems(settings)
        if unsubscribe is None:
            problems.append(
                "no unsubscribe links: set OUTREACH_UNSUBSCRIBE_SECRET and OUTREACH_PUBLIC_URL "
                "(marketing email must carry a one-click unsubscribe link)"
            )
        if problems:
            raise ChannelConfigError("SendGrid email channel: " + "; ".join(problems))
        self.settings = settings
        self.unsubscribe = unsubscribe
        key = settings.api_key.get_secret_value() if settings.api_key else ""
        self._client = SendGridAPIClient(key, host=(settings.api_host or DEFAULT_HOST).rstrip("/"))
        # capacity 1 refilled every 1/rate s: calls evenly spaced, no burst at start
        self._limiter = AsyncLimiter(1, 1 / settings.rate)
        self._warned_refused = False  # the lookup's 401/403/404 is logged once

    async def send(self, delivery: Delivery, key: str, retry: bool = False) -> SendResult:
        """Send ``delivery`` as an email; with ``retry`` (and ``reconcile``) first look for an
        earlier try in the Email Activity API."""
        body = self.request_body(delivery, key)
        if retry and self.settings.reconcile:
            earlier = await self._find_earlier(delivery, key, _recipient(body))
            if earlier is not None:
                log.info("sendgrid: %s was accepted before as %s; not sent again", key, earlier)
                return SendResult(status="sent", provider_id=earlier, replayed=True)
        await self._limiter.acquire()
        try:
            message_id = await asyncio.to_thread(self._post, body, delivery)
        except TransientDeliveryError as exc:
            if self.settings.reconcile and not exc.unsent:  # it may have gone: let the feed
                exc.retry_after = max(exc.retry_after or 0.0, self.settings.reconcile_wait)
            raise  # list it before the retry looks for it
        return SendResult(status="sent", provider_id=message_id)

    def request_body(self, delivery: Delivery, key: str) -> dict[str, Any]:
        """The v3 mail send JSON for ``delivery`` (``PermanentDeliveryError`` if it cannot be)."""
        if not delivery.subject:
            raise PermanentDeliveryError(
                f"sendgrid: message {delivery.message_id} has no subject", code="subject"
            )
        list_id = delivery.list_id or MARKETING_LIST
        text = delivery.body
        if self.unsubscribe is not None:
            text = self.unsubscribe.fill(text, delivery.customer_id, delivery.to, list_id)
        try:
            mail = Mail(
                from_email=From(self.settings.from_email, self.settings.from_name),
                to_emails=To(delivery.to),
                subject=Subject(delivery.subject),
                plain_text_content=PlainTextContent(text),
            )
        except SendGridException as exc:  # the body holds something shaped like an API key
            raise PermanentDeliveryError(
                f"sendgrid: message {delivery.message_id}: {type(exc).__name__}", code="content"
            ) from exc
        for name, value in self._custom_args(delivery, key).items():
            mail.add_custom_arg(CustomArg(name, value))
        if delivery.purpose == "marketing" and self.unsubscribe is not None:
            url = self.unsubscribe.url(delivery.customer_id, delivery.to, list_id)
            mail.asm = Asm(GroupId(self._group_id(delivery)))
            mail.add_header(Header("List-Unsubscribe", f"<{url}>"))
            mail.add_header(Header("List-Unsubscribe-Post", ONE_CLICK))
        body: dict[str, Any] = mail.get()
        return body

    def close(self) -> None:
        """Nothing to release (each request opens its own connection)."""

    def _custom_args(self, delivery: Delivery, key: str) -> dict[str, str]:
        return {
            "message_id": delivery.message_id,
            "customer_id": delivery.customer_id,
            "attempt": str(delivery.attempt),
            "key": key,
        }

    def _group_id(self, delivery: Delivery) -> int:
        if delivery.list_id is not None and delivery.list_id.isdecimal():
            return int(delivery.list_id)
        return int(self.settings.marketing_group_id or 0)  # set: checked at construction

    async def _find_earlier(self, delivery: Delivery, key: str, to: str) -> str | None:
        """The ``msg_id`` of a message to ``to`` that SendGrid accepted with ``key``, if its
        Email Activity feed has one (``None``: none found, or the lookup was refused)."""
        query = activity_query(key)
        if query is None:
            log.warning("sendgrid: %r cannot be quoted in an Email Activity query; sending", key)
            return None
        await self._limiter.acquire()
        messages = await asyncio.to_thread(self._get_messages, query, delivery)
        for message in messages:
            if str(message.get("to_email", "")).casefold() == to.casefold():
                found = message.get("msg_id")
                if found:
                    return str(found)
        if messages:  # our key, another address: the query did not mean what we meant
            log.warning(
                "sendgrid: Email Activity has %d message(s) with key %s, none to the "
                "delivery's address; sending",
                len(messages),
                key,
            )
        return None

    def _get_messages(self, query: str, delivery: Delivery) -> list[dict[str, Any]]:
        """GET /v3/messages (worker thread): the messages the query matched."""
        try:
            response = self._client.client.messages.get(
                query_params={"query": query, "limit": RECONCILE_LIMIT},
                timeout=self.settings.timeout,
            )
        except HTTPError as exc:
            status = int(exc.status_code)
            message = f"sendgrid: looking up message {delivery.message_id}: HTTP {status}"
            if status == 429 or status >= 500 or status < 400:
                raise DeliveryHeld(
                    f"{message}: {_reason(exc)}",
                    retry_after=_retry_after(exc.headers or {}),
                    code=str(status),
                ) from exc
            self._lookup_refused(status, f"{message}: {_reason(exc)}")
            return []
        except OSError as exc:  # URLError, socket timeouts, refused or reset connections
            raise DeliveryHeld(
                f"sendgrid: looking up message {delivery.message_id}: {type(exc).__name__}: {exc}"
            ) from exc
        return _messages(response.body, delivery)

    def _lookup_refused(self, status: int, message: str) -> None:
        """Log a refused lookup: the add-on or the scope missing once, anything else each time."""
        if status not in REFUSED_LOOKUP:
            log.warning("%s; sending it without a lookup", message)
            return
        if self._warned_refused:
            return
        self._warned_refused = True
        log.warning(
            "%s: OUTREACH_SENDGRID_RECONCILE needs the Email Activity API (the paid add-on "
            "'30 days additional email activity history') and an API key with the "
            "email_activity.read scope; until then retried emails are sent without a lookup "
            "(a crash after SendGrid accepted one can duplicate it)",
            message,
        )

    def _post(self, body: dict[str, Any], delivery: Delivery) -> str | None:
        """POST /v3/mail/send (worker thread); the ``X-Message-Id`` SendGrid answered."""
        try:
            response = self._client.client.mail.send.post(
                request_body=body, timeout=self.settings.timeout
            )
        except HTTPError as exc:
            raise _delivery_error(exc, delivery) from exc
        except OSError as exc:  # URLError, socket timeouts, refused or reset connections
            raise TransientDeliveryError(
                f"sendgrid: message {delivery.message_id}: {type(exc).__name__}: {exc}"
            ) from exc
        message_id = response.headers.get("X-Message-Id")
        return str(message_id) if message_id else None


def activity_query(key: str) -> str | None:
    """The Email Activity query for the messages whose custom argument ``key`` is ``key``
    (``None``: ``key`` holds a double quote, a backslash or a control character, which the
    query language has no documented way to quote)."""
    if '"' in key or "\\" in key or not key.isprintable():
        return None
    return f"unique_args['key']=\"{key}\""


def _recipient(body: Mapping[str, Any]) -> str:
    """The address a mail send body goes to (the one personalization's first ``to``)."""
    return str(body["personalizations"][0]["to"][0]["email"])


def _messages(raw: bytes | str, delivery: Delivery) -> list[dict[str, Any]]:
    """The ``messages`` of an Email Activity answer (a warning and none if it has none)."""
    try:
        messages = json.loads(raw)["messages"]
        if not isinstance(messages, list):
            raise TypeError(type(messages).__name__)
    except (ValueError, TypeError, KeyError) as exc:
        log.warning(
            "sendgrid: looking up message %s: the Email Activity API answered no messages "
            "list (%s); sending it",
            delivery.message_id,
            type(exc).__name__,
        )
        return []
    return [message for message in messages if isinstance(message, dict)]


def _delivery_error(
    exc: HTTPError, delivery: Delivery
) -> TransientDeliveryError | PermanentDeliveryError:
    status = int(exc.status_code)
    headers: Mapping[str, str] = exc.headers or {}
    message = f"sendgrid: message {delivery.message_id}: HTTP {status}: {_reason(exc)}"
    if status == 429 or status >= 500 or status < 400:
        return TransientDeliveryError(
            message, retry_after=_retry_after(headers), code=str(status), unsent=status == 429
        )
    if status in (401, 403):
        log.error("%s: check OUTREACH_SENDGRID_API_KEY and the account", message)
        return TransientDeliveryError(
            message, retry_after=ACCOUNT_RETRY_AFTER, code=str(status), unsent=True
        )
    return PermanentDeliveryError(message, code=str(status))


def _retry_after(headers: Mapping[str, str]) -> float | None:
    """``Retry-After``, else the seconds until ``X-RateLimit-Reset`` (SendGrid's own header)."""
    seconds = retry_after_seconds(headers.get("Retry-After"))
    if seconds is not None:
        return seconds
    try:
        reset = float(headers.get("X-RateLimit-Reset") or "nan")
    except ValueError:
        return None
    return max(0.0, reset - time.time()) if math.isfinite(reset) else None


def _reason(exc: HTTPError) -> str:
    """SendGrid's error messages from the answer's JSON body, else the HTTP reason."""
    try:
        errors = json.loads(exc.body)["errors"]
        return "; ".join(str(error.get("message")) for error in errors)
    except (ValueError, TypeError, KeyError, AttributeError):
        return str(exc.reason)
