"""The provider webhooks: Twilio inbound SMS and status callbacks, SendGrid's event webhook.

Each handler checks the provider's signature with the provider's own SDK (403 and nothing
done when it does not hold), takes each callback once (a retry is answered 200 and changes
nothing), writes what must hold at once (STOP, bounces and unsubscribes go to the address
suppressions before the answer, so the dispatcher's check before every send sees them) and
publishes the facts as engine events keyed by customer. What the facts mean for the customer
is the core's business, not this module's.

Must not import: faust, the decision core.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

import orjson
from cryptography.hazmat.primitives.asymmetric import ec
from fastapi import APIRouter, HTTPException, Request, Response
from pydantic import SecretStr
from sendgrid.helpers.eventwebhook import (  # type: ignore[import-untyped,unused-ignore]
    EventWebhook,
    EventWebhookHeader,
)
from starlette.datastructures import FormData
from twilio.request_validator import RequestValidator  # type: ignore[import-untyped,unused-ignore]
from twilio.twiml.messaging_response import (  # type: ignore[import-untyped,unused-ignore]
    MessagingResponse,
)

from outreach.agents.replies import ReplyReader
from outreach.api.inbox import (
    Clock,
    Inbox,
    attempt_number,
    make_event,
    some,
    text_field,
)
from outreach.api.reading import read_reply
from outreach.events import Event
from outreach.outbound.feedback import TWILIO_STATUSES, SendGridOutcome, sendgrid_outcome
from outreach.outbound.keywords import Keyword, classify
from outreach.store.contacts import WHOLE_CHANNEL

log = logging.getLogger(__name__)
TWILIO_SIGNATURE = "X-Twilio-Signature"
MAX_DETAIL = 1024  # message.status detail length


class _ReplyTemplates(Protocol):
    @property
    def stop(self) -> str: ...
    @property
    def start(self) -> str: ...
    @property
    def help(self) -> str: ...


@dataclass(frozen=True)
class KeywordReplies:
    """What to text back to STOP, START and HELP from a number no customer has."""

    stop: str
    start: str
    help: str

    @classmethod
    def from_templates(cls, templates: _ReplyTemplates, **values: str) -> KeywordReplies:
        """Fill ``{brand}``-style placeholders of the policy's reply templates."""
        filled = _Placeholders(values)
        return cls(
            stop=templates.stop.format_map(filled),
            start=templates.start.format_map(filled),
            help=templates.help.format_map(filled),
        )

    def for_keyword(self, keyword: Keyword) -> str | None:
        """The reply to ``keyword``, or ``None`` for a message that is not one of these."""
        return {"stop": self.stop, "start": self.start, "help": self.help}.get(keyword)


class _Placeholders(dict[str, str]):
    def __missing__(self, key: str) -> str:  # an unknown placeholder stays as written
        return "{" + key + "}"


# -- Twilio ------------------------------------------------------------------------------------


def _twiml(reply: str | None) -> Response:
    """An empty TwiML answer, or one that texts ``reply`` back."""
    answer = MessagingResponse()
    if reply:
        answer.message(reply)
    return Response(str(answer), media_type="application/xml")


def _signed_url(request: Request, public_url: str | None) -> str:
    """The URL Twilio signed: the public one behind a proxy, else the one requested."""
    if public_url is None:
        return str(request.url)
    query = request.url.query
    return public_url + request.url.path + (f"?{query}" if query else "")


class TwilioSignature:
    """Checks ``X-Twilio-Signature`` with the SDK's ``RequestValidator``."""

    def __init__(self, auth_token: SecretStr | None, public_url: str | None) -> None:
        self.validator = RequestValidator(auth_token.get_secret_value()) if auth_token else None
        self.public_url = public_url

    async def signed_form(self, request: Request) -> FormData:
        """The request's form if Twilio signed it; 403 (503 unconfigured) otherwise."""
        if self.validator is None:
            raise HTTPException(503, "Twilio webhooks are off: set OUTREACH_TWILIO_AUTH_TOKEN")
        form = await request.form()
        signature = request.headers.get(TWILIO_SIGNATURE)
        plain = all(isinstance(value, str) for _, value in form.multi_items())
        url = _signed_url(request, self.public_url)
        if not signature or not plain or not self.validator.validate(url, form, signature):
            log.warning("api: Twilio webhook %s refused: signature does not match", url)
            raise HTTPException(403, "invalid Twilio signature")
        return form


async def take_inbound(
    inbox: Inbox, form: FormData, replies: KeywordReplies, reader: ReplyReader | None = None
) -> Response:
    """An SMS to one of our numbers: STOP/START at once, then ``message.received``; a reply
    from a customer that is no keyword carries ``reader``'s reading of it (``reading``)."""
    sid = text_field(form.get("MessageSid")) or text_field(form.get("SmsSid"))
    sender, body = text_field(form.get("From")), form.get("Body")
    if sid is None or sender is None:
        raise HTTPException(400, "MessageSid and From are required")
    text = body if isinstance(body, str) else ""
    async with inbox.once("twilio", sid) as fresh:
        if not fresh:
            return _twiml(None)
        keyword = classify(text)
        if keyword == "stop":  # before answering: the dispatcher checks this before each send
            await inbox.call(inbox.contacts.suppress, "sms", sender, "stop")
        elif keyword == "start":
            await inbox.call(inbox.contacts.unsuppress, "sms", sender)
        customers = await inbox.call(inbox.contacts.customers_for, "sms", sender)
        data: dict[str, Any] = {
            "channel": "sms", "from_address": sender, "to_address": text_field(form.get("To")),
            "body": text, "provider": "twilio", "provider_id": sid,
        }  # fmt: skip
        if customers and keyword == "other" and reader is not None:
            data["understanding"] = await read_reply(reader, text)
        now = inbox.clock()
        made = (
            make_event("message.received", f"twilio:{sid}", c, now, "twilio", data)
            for c in customers
        )
        await inbox.emit(some(made))
    # a known customer's reply is the core's to send (through the outbox, in their language)
    return _twiml(None if customers else replies.for_keyword(keyword))


async def take_status(inbox: Inbox, form: FormData, query: Mapping[str, str]) -> None:
    """A delivery status callback (``message_id``, ``customer_id``, ``attempt`` in the URL)."""
    sid = text_field(form.get("MessageSid")) or text_field(form.get("SmsSid"))
    reported = text_field(form.get("MessageStatus")) or text_field(form.get("SmsStatus")) or ""
    ours = TWILIO_STATUSES.get(reported)
    message_id, customer_id = (
        text_field(query.get("message_id")),
        text_field(query.get("customer_id")),
    )
    if sid is None or ours is None:
        return
    if message_id is None or customer_id is None:
        log.warning("api: Twilio status %s for %s names no message of ours", reported, sid)
        return
    data = {
        "message_id": message_id, "channel": "sms", "status": ours,
        "attempt": attempt_number(query.get("attempt")), "provider": "twilio",
        "provider_id": sid, "error_code": text_field(form.get("ErrorCode")),
        "provider_event": reported,
    }  # fmt: skip
    async with inbox.once("twilio-status", f"{sid}:{reported}") as fresh:
        if fresh:
            event_id = f"twilio:{sid}:{reported}"
            event = make_event(
                "message.status", event_id, customer_id, inbox.clock(), "twilio", data
            )
            await inbox.emit(some([event]))


def twilio_router(
    inbox: Inbox,
    signature: TwilioSignature,
    replies: KeywordReplies,
    reader: ReplyReader | None = None,
) -> APIRouter:
    """``POST /webhooks/twilio/inbound`` and ``POST /webhooks/twilio/status`` (``reader``:
    what a free-text reply means; none: the core reads it by keywords)."""
    router = APIRouter(prefix="/webhooks/twilio")

    @router.post("/inbound")
    async def inbound(request: Request) -> Response:
        """An inbound SMS; answered with TwiML."""
        return await take_inbound(inbox, await signature.signed_form(request), replies, reader)

    @router.post("/status")
    async def status(request: Request) -> Response:
        """A status callback; always 200 once signed (even for a message not ours)."""
        await take_status(inbox, await signature.signed_form(request), request.query_params)
        return Response(status_code=200)

    return router


# -- SendGrid ----------------------------------------------------------------------------------


def load_sendgrid_key(text: str) -> ec.EllipticCurvePublicKey:
    """The event webhook verification key, from the base64 SendGrid shows (or a PEM)."""
    body = "".join(line.strip() for line in text.strip().splitlines() if "-----" not in line)
    try:
        key = EventWebhook().convert_public_key_to_ecdsa(body)
    except ValueError:
        key = None
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise ValueError(
            "OUTREACH_SENDGRID_WEBHOOK_PUBLIC_KEY is not an ECDSA public key: copy the "
            "verification key SendGrid shows under Mail Settings > Signed Event Webhook"
        )
    return key


def sendgrid_signed(
    raw: bytes, headers: Mapping[str, str], key: ec.EllipticCurvePublicKey, now: float, skew: float
) -> bool:
    """Whether ``raw`` carries a valid, recent SendGrid signature (checked by the SDK)."""
    signature = headers.get(EventWebhookHeader.SIGNATURE)
    timestamp = headers.get(EventWebhookHeader.TIMESTAMP)
    if not signature or not timestamp or not timestamp.strip().isdigit():
        return False
    if abs(now - int(timestamp)) > skew:  # a replayed (or badly clocked) request
        return False
    try:
        payload = raw.decode("utf-8")
        return bool(EventWebhook().verify_signature(payload, signature, timestamp, key))
    except ValueError:  # not UTF-8, or a signature that is not base64
        return False


def _entry_id(entry: Mapping[str, Any]) -> str:
    """``sg_event_id``, or a digest of the entry when SendGrid sent none."""
    given = text_field(entry.get("sg_event_id"))
    if given is not None:
        return given
    return "sha256-" + hashlib.sha256(orjson.dumps(entry, option=orjson.OPT_SORT_KEYS)).hexdigest()


def _entry_time(entry: Mapping[str, Any], clock: Clock) -> datetime:
    """When the event happened (SendGrid's unix ``timestamp``), else now."""
    stamp = entry.get("timestamp")
    if isinstance(stamp, int) and not isinstance(stamp, bool) and stamp > 0:
        return datetime.fromtimestamp(stamp, UTC)
    return clock()


async def _address_events(
    inbox: Inbox, entry: Mapping[str, Any], outcome: SendGridOutcome, event_id: str, at: datetime
) -> list[Event | None]:
    """Write the entry's suppression (or lift) now; the events telling its customers."""
    email, list_id = text_field(entry.get("email")), outcome.list_id
    if email is None or not (outcome.suppress or outcome.unsuppress):
        return []
    if outcome.suppress:
        await inbox.call(
            inbox.contacts.suppress, "email", email, outcome.suppress, list_id or WHOLE_CHANNEL
        )
        kind, reason = "contact.suppressed", outcome.suppress
    elif list_id is None:  # lifting with no group would lift bounces and complaints too
        log.warning("api: SendGrid %s for %s names no group", entry.get("event"), event_id)
        return []
    else:
        await inbox.call(inbox.contacts.unsuppress, "email", email, list_id)
        kind, reason = "contact.unsuppressed", outcome.unsuppress or "resubscribe"
    known = await inbox.call(inbox.contacts.customers_for, "email", email)
    named = text_field(entry.get("customer_id"))
    customers = sorted({*known, named} if named else set(known))
    data = {"channel": "email", "reason": reason, "address": email, "list_id": list_id}
    return [make_event(kind, event_id, c, at, "sendgrid", data) for c in customers]


def _status_event(
    entry: Mapping[str, Any], outcome: SendGridOutcome, event_id: str, at: datetime
) -> Event | None:
    """``message.status`` for an entry about a message we sent, else ``None``."""
    message_id, customer_id = (
        text_field(entry.get("message_id")),
        text_field(entry.get("customer_id")),
    )
    if outcome.status is None or message_id is None or customer_id is None:
        return None
    detail = text_field(entry.get("reason")) or text_field(entry.get("response"))
    code = entry.get("status")
    data = {
        "message_id": message_id, "channel": "email", "status": outcome.status,
        "attempt": attempt_number(entry.get("attempt")), "provider": "sendgrid",
        "provider_id": text_field(entry.get("sg_message_id")),
        "error_code": str(code) if code not in (None, "") else None,
        "provider_event": text_field(entry.get("event")),
        "detail": detail[:MAX_DETAIL] if detail else None,
    }  # fmt: skip
    return make_event("message.status", event_id, customer_id, at, "sendgrid", data)


async def take_sendgrid_entry(inbox: Inbox, entry: Mapping[str, Any]) -> None:
    """One event webhook entry, once: suppressions now, then its events."""
    entry_id = _entry_id(entry)
    async with inbox.once("sendgrid", entry_id) as fresh:
        if not fresh:
            return
        outcome = sendgrid_outcome(entry)
        at = _entry_time(entry, inbox.clock)
        base = f"sendgrid:{entry_id}"
        told = await _address_events(inbox, entry, outcome, base, at)
        status = _status_event(entry, outcome, f"{base}:2" if told else base, at)
        await inbox.emit(some([*told, status]))


def sendgrid_router(inbox: Inbox, public_key: str | None, max_skew: float) -> APIRouter:
    """``POST /webhooks/sendgrid/events`` (a signed JSON array of events)."""
    router = APIRouter(prefix="/webhooks/sendgrid")
    key = load_sendgrid_key(public_key) if public_key else None

    @router.post("/events")
    async def events(request: Request) -> Response:
        """Bounces, drops, complaints and unsubscribes at once; delivery statuses as events."""
        if key is None:
            raise HTTPException(
                503, "SendGrid webhooks are off: set OUTREACH_SENDGRID_WEBHOOK_PUBLIC_KEY"
            )
        raw = await request.body()
        now = inbox.clock().timestamp()
        if not sendgrid_signed(raw, request.headers, key, now, max_skew):
            log.warning("api: SendGrid webhook refused: signature or timestamp does not hold")
            raise HTTPException(403, "invalid SendGrid signature")
        try:
            entries = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise HTTPException(400, "the body is not JSON") from None
        if not isinstance(entries, list):
            raise HTTPException(400, "the body is not a JSON array of events")
        for entry in entries:
            if isinstance(entry, dict):
                await take_sendgrid_entry(inbox, entry)
            else:
                log.warning("api: SendGrid entry that is not an object skipped: %.80r", entry)
        return Response(status_code=200)

    return router
