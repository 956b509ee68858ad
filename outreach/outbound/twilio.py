"""The Twilio SMS channel: ``TwilioSmsChannel`` sends a ``Delivery`` through the Messages API.

It uses the official SDK (``twilio.rest.Client``, blocking, run in a worker thread), pointed at
``OUTREACH_TWILIO_API_BASE`` when that is set (a local double in tests). A message goes out
with ``To``, ``Body``, ``MessagingServiceSid`` (or ``From``) and a ``StatusCallback``: our
status webhook's URL with ``message_id``, ``customer_id`` and ``attempt`` added to its query,
which is how a status report finds its customer. Every API call first waits its turn on a
limiter (``OUTREACH_TWILIO_RATE`` calls per second, evenly spaced): a burst is delayed, never
dropped.

Errors::

    HTTP 429, 5xx, timeout, connection refused/reset  -> TransientDeliveryError
        (retry_after: the Retry-After header; code: Twilio's error code)
    HTTP 401, 403 (credentials refused, account suspended: nothing wrong with the message)
                                                      -> TransientDeliveryError
        (retry_after: ACCOUNT_RETRY_AFTER, so the messages wait for an operator to fix the
        account; the dispatcher gives up on each at its last attempt and the core alerts)
    21610 (STOP), 21211 (invalid To), 21614 (not a mobile), any other 4xx
                                                      -> PermanentDeliveryError(code=...)

Reconciliation. The Messages API has no idempotency key, so when the dispatcher says
``retry=True`` (an earlier try of this key may have reached Twilio) the channel first lists the
100 most recent messages to the same number (and from the same ``From``, or of the same
Messaging Service) and, if one created in the last 24 hours has exactly the same body, answers
with that message's SID (``replayed=True``) instead of sending. The list is filtered on
``date_created`` here rather than with ``DateSent>``: a message Twilio accepted but still
queues has no ``date_sent`` yet, and that is the message a crash right after the POST leaves.

The window that remains:

- A different message with the very same text to the same number within 24 hours (a daily
  reminder) also matches: the retry is then reported as sent without sending (one missed
  message, never a duplicate).
- A Messaging Service with Smart Encoding may store a body that differs from ours (Unicode
  punctuation replaced): no match, and the message is sent a second time.
- More than 100 messages to one number in 24 hours push the earlier try out of the lookup.
- A try that timed out is only reconciled if its next attempt comes with ``retry=True``.

Must not import: faust, aiokafka, sendgrid, openai, fastapi, sqlalchemy.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import requests
from aiolimiter import AsyncLimiter
from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict
from twilio.base.exceptions import (
    TwilioException,
    TwilioRestException,
    TwilioServiceException,
)
from twilio.http.http_client import TwilioHttpClient
from twilio.rest import Client

from outreach.decisions import Delivery
from outreach.errors import DeliveryHeld, PermanentDeliveryError, TransientDeliveryError
from outreach.outbound.channels import SendResult
from outreach.outbound.config import ACCOUNT_RETRY_AFTER, ChannelConfigError, retry_after_seconds

log = logging.getLogger(__name__)
T = TypeVar("T")

RECONCILE_WINDOW = timedelta(hours=24)
RECONCILE_LIMIT = 100  # most recent messages to the number read by one lookup


class TwilioSettings(BaseSettings):
    """The Twilio account and sender (``OUTREACH_TWILIO_*`` variables)."""

    model_config = SettingsConfigDict(env_prefix="OUTREACH_TWILIO_")

    account_sid: str | None = Field(default=None, description="the Account SID (AC...)")
    auth_token: SecretStr | None = Field(default=None, description="the account's auth token")
    messaging_service_sid: str | None = Field(
        default=None, description="the Messaging Service (MG...) that picks the sender"
    )
    from_number: str | None = Field(
        default=None, description="the sender (E.164) when there is no Messaging Service"
    )
    status_callback_url: str | None = Field(
        default=None,
        description="the public URL of our /webhooks/twilio/status (default: "
        "OUTREACH_PUBLIC_URL + /webhooks/twilio/status)",
    )
    api_base: str | None = Field(
        default=None, description="another API base URL than https://api.twilio.com (a double)"
    )
    rate: float = Field(default=10.0, gt=0, description="API calls per second, at most")
    timeout: float = Field(default=10.0, gt=0, description="seconds per HTTP request")


def twilio_problems(settings: TwilioSettings) -> list[str]:
    """What keeps ``settings`` from sending, each naming the variable to set (empty: none)."""
    problems = []
    if not settings.account_sid:
        problems.append(
            "OUTREACH_TWILIO_ACCOUNT_SID is not set (the Account SID, AC..., in the Twilio console)"
        )
    if not settings.auth_token or not settings.auth_token.get_secret_value():
        problems.append("OUTREACH_TWILIO_AUTH_TOKEN is not set (the account's auth token)")
    if not settings.messaging_service_sid and not settings.from_number:
        problems.append(
            "neither OUTREACH_TWILIO_MESSAGING_SERVICE_SID (a Messaging Service, MG...) nor "
            "OUTREACH_TWILIO_FROM_NUMBER (a Twilio number, +1...) is set: SMS needs a sender"
        )
    return problems


def status_callback_url(base: str, delivery: Delivery) -> str:
    """``base`` with ``message_id``, ``customer_id`` and ``attempt`` set in its query."""
    ours = {
        "message_id": delivery.message_id,
        "customer_id": delivery.customer_id,
        "attempt": str(delivery.attempt),
    }
    parts = urlsplit(base)
    kept = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k not in ours]
    return urlunsplit(parts._replace(query=urlencode([*kept, *ours.items()])))


class _HeaderKeepingHttpClient:
    """The SDK's HTTP client, keeping each thread's last error answer's headers.

    ``TwilioRestException`` carries no headers, and ``Retry-After`` is one; each SDK call and
    the mapping of its error run in the same worker thread, so a thread-local is enough."""

    is_async = False

    def __init__(self, timeout: float) -> None:
        self._http = TwilioHttpClient(timeout=timeout)
        self._local = threading.local()

    def request(self, method: str, url: str, **kwargs: Any) -> Any:
        """Make the request (as ``TwilioHttpClient``), remembering an error's headers."""
        self._local.headers = None
        response = self._http.request(method, url, **kwargs)
        if response.status_code >= 400:
            self._local.headers = response.headers
        return response

    def error_headers(self) -> Mapping[str, str]:
        """The headers of this thread's last error answer (empty if it was not an error)."""
        headers: Mapping[str, str] | None = getattr(self._local, "headers", None)
        return headers or {}

    def close(self) -> None:
        """Close the pooled connections."""
        if self._http.session is not None:
            self._http.session.close()


class TwilioSmsChannel:
    """Sends SMS through Twilio's Messages API (the ``Channel`` port)."""

    def __init__(
        self, settings: TwilioSettings, clock: Callable[[], datetime] | None = None
    ) -> None:
        problems = twilio_problems(settings)
        if problems:
            raise ChannelConfigError("Twilio SMS channel: " + "; ".join(problems))
        if not settings.status_callback_url:
            log.warning(
                "twilio: no status callback (set OUTREACH_TWILIO_STATUS_CALLBACK_URL or "
                "OUTREACH_PUBLIC_URL); delivery reports will not reach us"
            )
        self.settings = settings
        self._clock = clock or (lambda: datetime.now(UTC))
        self._http = _HeaderKeepingHttpClient(settings.timeout)
        self._client = Client(
            settings.account_sid,
            settings.auth_token.get_secret_value() if settings.auth_token else None,
            account_sid=settings.account_sid,
            http_client=self._http,
        )
        if settings.api_base:
            self._client.api.base_url = settings.api_base.rstrip("/")
        # capacity 1 refilled every 1/rate s: calls evenly spaced, no burst at start
        self._limiter = AsyncLimiter(1, 1 / settings.rate)

    async def send(self, delivery: Delivery, key: str, retry: bool = False) -> SendResult:
        """Send ``delivery`` as an SMS; with ``retry``, first look for an earlier try."""
        if retry:
            earlier = await self._call(self._find_earlier, delivery, lookup=True)
            if earlier is not None:
                log.info("twilio: %s was accepted before as %s; not sent again", key, earlier)
                return SendResult(status="sent", provider_id=earlier, replayed=True)
        sid = await self._call(self._create, delivery)
        return SendResult(status="sent", provider_id=sid)

    def close(self) -> None:
        """Close the HTTP connections."""
        self._http.close()

    async def _call(
        self, call: Callable[[Delivery], T], delivery: Delivery, lookup: bool = False
    ) -> T:
        await self._limiter.acquire()
        return await asyncio.to_thread(self._mapped, call, delivery, lookup)

    def _mapped(self, call: Callable[[Delivery], T], delivery: Delivery, lookup: bool) -> T:
        """``call(delivery)`` with the SDK's and the network's errors as ours (worker thread).
        ``lookup``: the call looks for an earlier try, so a failure leaves it unknown: held
        (``DeliveryHeld``) when Twilio cannot answer now, never ``unsent``."""
        try:
            return call(delivery)
        except TwilioException as exc:
            error = self._delivery_error(exc, delivery, lookup)
            if error is None:
                raise
            raise error from exc
        except (requests.Timeout, requests.ConnectionError) as exc:
            kind = DeliveryHeld if lookup else TransientDeliveryError
            raise kind(
                f"twilio: message {delivery.message_id}: {type(exc).__name__}: {exc}"
            ) from exc

    def _delivery_error(
        self, exc: TwilioException, delivery: Delivery, lookup: bool
    ) -> TransientDeliveryError | PermanentDeliveryError | None:
        """Ours for an HTTP error answer (``None``: not an answer from Twilio). An account
        refused (401/403) counts as an attempt even for a lookup: a broken account must give
        its rows up and alert, not hold them for ever."""
        answer = _http_answer(exc)
        if answer is None:
            return None
        status, code, text = answer
        message = f"twilio: message {delivery.message_id}: HTTP {status}, code {code}: {text}"
        if status == 429 or status >= 500:
            retry_after = retry_after_seconds(self._http.error_headers().get("Retry-After"))
            if lookup:
                return DeliveryHeld(message, retry_after=retry_after, code=code)
            return TransientDeliveryError(
                message, retry_after=retry_after, code=code, unsent=status == 429
            )
        if status in (401, 403):
            log.error("%s: check OUTREACH_TWILIO_ACCOUNT_SID/AUTH_TOKEN and the account", message)
            return TransientDeliveryError(
                message, retry_after=ACCOUNT_RETRY_AFTER, code=code, unsent=not lookup
            )
        return PermanentDeliveryError(message, code=code)

    def _sender(self) -> dict[str, str]:
        if self.settings.messaging_service_sid:
            return {"messaging_service_sid": self.settings.messaging_service_sid}
        return {"from_": str(self.settings.from_number)}

    def _create(self, delivery: Delivery) -> str:
        callback = self.settings.status_callback_url
        message = self._client.messages.create(
            to=delivery.to,
            body=delivery.body,
            status_callback=status_callback_url(callback, delivery) if callback else None,
            **self._sender(),
        )
        return str(message.sid)

    def _find_earlier(self, delivery: Delivery) -> str | None:
        """The SID of a message like ``delivery`` Twilio accepted in the last 24 h, if any."""
        since = self._clock() - RECONCILE_WINDOW
        sender = {} if self.settings.messaging_service_sid else self._sender()
        recent = self._client.messages.list(to=delivery.to, limit=RECONCILE_LIMIT, **sender)
        for message in recent:
            if message.body != delivery.body or message.date_created is None:
                continue
            if message.date_created < since:
                continue
            service = self.settings.messaging_service_sid
            if service and message.messaging_service_sid != service:
                continue
            return str(message.sid)
        return None


def _http_answer(exc: TwilioException) -> tuple[int, str, str] | None:
    """(HTTP status, Twilio error code, text) of an error answer, or ``None`` if it was not one.

    Creating raises ``TwilioRestException`` (or ``TwilioServiceException``); reading a page of
    a list raises a bare ``TwilioException("Unable to fetch page", response)``."""
    if isinstance(exc, TwilioRestException | TwilioServiceException):
        status = int(exc.status)
        text = exc.msg if isinstance(exc, TwilioRestException) else exc.detail or exc.title
        return status, str(exc.code if exc.code is not None else status), str(text)
    response = exc.args[1] if len(exc.args) > 1 else None
    answered = getattr(response, "status_code", None)
    if not isinstance(answered, int):
        return None
    try:
        payload = json.loads(getattr(response, "text", ""))
    except (TypeError, ValueError):
        payload = None
    details = payload if isinstance(payload, dict) else {}
    code = str(details.get("code", answered))
    return answered, code, str(details.get("message", exc.args[0]))
