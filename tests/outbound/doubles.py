"""Local HTTP doubles of the Twilio Messages API and SendGrid v3 mail send (and its Email
Activity API's ``GET /v3/messages``).

Each double is a real HTTP server on 127.0.0.1 (a free port) in a thread, so the real SDKs
talk to it over the network. It checks the credentials the way the provider does (Twilio:
Basic ``account_sid:auth_token``; SendGrid: ``Authorization: Bearer <key>``), records every
request (method, path, query, headers, form or JSON body, when it arrived and what was
answered) and can be scripted to answer the next requests otherwise: ``status(429,
retry_after="7")``, ``status(503)``, ``slow(seconds)`` (longer than the client's timeout),
``twilio_error(21610)``, ``sendgrid_error(413)``.

Use as a context manager (``with TwilioDouble(sid, token) as api: ...``); leaving it releases
every request still held by ``slow`` and stops the server.

Run as a script, it serves both doubles until Ctrl-C and prints the variables that point
``outreach worker`` (and ``make demo``) at them, then one line per request::

    .venv/bin/python tests/outbound/doubles.py [--twilio-port 8025] [--sendgrid-port 8026]
"""

from __future__ import annotations

import abc
import base64
import json
import re
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import format_datetime, parsedate_to_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Self
from urllib.parse import parse_qs, urlsplit


@dataclass(frozen=True)
class Answer:
    """A scripted answer: a status, a JSON body and headers, after ``delay`` seconds.

    ``perform``: do what the request asked at once, and answer as usual after the delay (a
    provider that accepted the message but answered too late)."""

    status: int = 200
    body: Any = None
    headers: Mapping[str, str] = field(default_factory=dict)
    delay: float = 0.0
    perform: bool = False


def status(code: int, retry_after: str | None = None, body: Any = None) -> Answer:
    """Answer with HTTP ``code`` (and ``Retry-After`` when given)."""
    headers = {"Retry-After": retry_after} if retry_after is not None else {}
    return Answer(code, body if body is not None else {"message": f"HTTP {code}"}, headers)


def slow(seconds: float, perform: bool = False) -> Answer:
    """Answer after ``seconds``: 504, or (``perform``) do it at once and answer as usual late."""
    return Answer(504, {"message": "too late"}, delay=seconds, perform=perform)


def twilio_error(code: int, http_status: int = 400, message: str | None = None) -> Answer:
    """A Twilio error body: ``{"code": 21610, "message": ..., "status": 400}``."""
    return Answer(
        http_status,
        {
            "code": code,
            "message": message or f"Twilio error {code}",
            "more_info": f"https://www.twilio.com/docs/errors/{code}",
            "status": http_status,
        },
    )


def sendgrid_error(http_status: int, message: str | None = None) -> Answer:
    """A SendGrid error body: ``{"errors": [{"message": ..., "field": null}]}``."""
    text = message or f"SendGrid error {http_status}"
    return Answer(http_status, {"errors": [{"message": text, "field": None, "help": None}]})


@dataclass
class Recorded:
    """One request the double received."""

    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]  # names lower-cased
    form: dict[str, str]
    json: Any
    received_at: float  # time.monotonic()
    answered: int | None = None  # the status sent back (None: not answered yet)

    def header(self, name: str) -> str | None:
        """A request header, by case-insensitive name."""
        return self.headers.get(name.lower())


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that gave up (timeout) is expected here; say nothing."""


class HttpDouble(abc.ABC):
    """A threaded HTTP server that records requests and answers by script or by ``handle``."""

    def __init__(self, port: int = 0) -> None:
        self.requests: list[Recorded] = []
        self._script: list[Answer] = []
        self._lock = threading.Lock()
        self._released = threading.Event()
        double = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                double._serve(self)

            def do_POST(self) -> None:
                double._serve(self)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = _Server(("127.0.0.1", port), Handler)
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    @property
    def url(self) -> str:
        """``http://127.0.0.1:<port>``."""
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def script(self, *answers: Answer) -> None:
        """Answer the next requests with these, in order (then as usual again)."""
        with self._lock:
            self._script.extend(answers)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._released.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    # -- what a subclass decides ----------------------------------------------------------------

    @abc.abstractmethod
    def authorized(self, request: Recorded) -> bool:
        """Whether the request carries the right credentials."""

    @abc.abstractmethod
    def unauthorized(self) -> Answer:
        """The answer to a request with wrong credentials."""

    @abc.abstractmethod
    def handle(self, request: Recorded) -> Answer:
        """The usual answer to an authorized request."""

    # -- the plumbing ----------------------------------------------------------------------------

    def _serve(self, http: BaseHTTPRequestHandler) -> None:
        request = self._record(http)
        with self._lock:
            answer = self._script.pop(0) if self._script else None
        delay = answer.delay if answer is not None else 0.0
        if answer is None or answer.perform:
            with self._lock:
                answer = self.handle(request) if self.authorized(request) else self.unauthorized()
            delay = max(delay, answer.delay)  # ``handle`` may hold its own answer too
        self._released.wait(delay)
        request.answered = answer.status
        body = b"" if answer.body is None else json.dumps(answer.body).encode()
        try:
            http.send_response(answer.status)
            for name, value in answer.headers.items():
                http.send_header(name, value)
            if body:
                http.send_header("Content-Type", "application/json")
            http.send_header("Content-Length", str(len(body)))
            http.end_headers()
            http.wfile.write(body)
        except OSError:  # the client gave up waiting
            pass

    def _record(self, http: BaseHTTPRequestHandler) -> Recorded:
        parts = urlsplit(http.path)
        length = int(http.headers.get("Content-Length") or 0)
        raw = http.rfile.read(length) if length else b""
        kind = http.headers.get("Content-Type") or ""
        form: dict[str, str] = {}
        body: Any = None
        if kind.startswith("application/x-www-form-urlencoded"):
            form = {k: v[-1] for k, v in parse_qs(raw.decode(), keep_blank_values=True).items()}
        elif raw:
            body = json.loads(raw)
        request = Recorded(
            method=http.command,
            path=parts.path,
            query=parse_qs(parts.query, keep_blank_values=True),
            headers={k.lower(): v for k, v in http.headers.items()},
            form=form,
            json=body,
            received_at=time.monotonic(),
        )
        with self._lock:
            self.requests.append(request)
        return request


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def _twilio_time(at: datetime | None) -> str | None:
    return None if at is None else format_datetime(at.astimezone(UTC), usegmt=True)


class TwilioDouble(HttpDouble):
    """The Messages API of one account: create (form POST) and list (GET, filtered)."""

    POOL_NUMBER = "+15005550006"  # the sender a Messaging Service picks

    def __init__(self, account_sid: str, auth_token: str, port: int = 0) -> None:
        super().__init__(port)
        self.account_sid = account_sid
        self.auth_token = auth_token
        self.messages: list[dict[str, Any]] = []  # newest last

    @property
    def messages_path(self) -> str:
        """``/2010-04-01/Accounts/<sid>/Messages.json``."""
        return f"/2010-04-01/Accounts/{self.account_sid}/Messages.json"

    def creates(self) -> list[Recorded]:
        """The message create requests received (answered or not)."""
        return [r for r in self.requests if r.method == "POST"]

    def lists(self) -> list[Recorded]:
        """The message list requests received."""
        return [r for r in self.requests if r.method == "GET"]

    def add_message(
        self,
        to: str,
        body: str,
        from_: str | None = None,
        service: str | None = None,
        created: datetime | None = None,
        sent: datetime | None = None,
    ) -> dict[str, Any]:
        """Store a message as if it had been created at ``created`` (default: now)."""
        at = created or datetime.now(UTC)
        sid = "SM" + uuid.uuid4().hex
        message: dict[str, Any] = {
            "sid": sid,
            "account_sid": self.account_sid,
            "to": to,
            "from": from_ or self.POOL_NUMBER,
            "messaging_service_sid": service,
            "body": body,
            "status": "accepted" if service else "queued",
            "direction": "outbound-api",
            "num_segments": "1",
            "num_media": "0",
            "date_created": _twilio_time(at),
            "date_updated": _twilio_time(at),
            "date_sent": _twilio_time(sent),
            "error_code": None,
            "error_message": None,
            "price": None,
            "price_unit": "USD",
            "api_version": "2010-04-01",
            "uri": f"/2010-04-01/Accounts/{self.account_sid}/Messages/{sid}.json",
            "subresource_uris": {},
        }
        self.messages.append(message)
        return message

    def authorized(self, request: Recorded) -> bool:
        """Basic auth with the account SID and auth token."""
        return request.header("Authorization") == _basic(self.account_sid, self.auth_token)

    def unauthorized(self) -> Answer:
        """Twilio's 20003."""
        return twilio_error(20003, 401, "Authenticate")

    def handle(self, request: Recorded) -> Answer:
        """Create or list messages."""
        if request.path != self.messages_path:
            return twilio_error(20404, 404, "The requested resource was not found")
        if request.method == "GET":
            return self._list(request)
        form = request.form
        if not form.get("To"):
            return twilio_error(21604, 400, "A 'To' phone number is required.")
        if not form.get("Body"):
            return twilio_error(21602, 400, "Message body is required.")
        if not form.get("From") and not form.get("MessagingServiceSid"):
            return twilio_error(21603, 400, "A 'From' or 'MessagingServiceSid' is required.")
        created = self.add_message(
            form["To"], form["Body"], form.get("From"), form.get("MessagingServiceSid")
        )
        return Answer(201, created)

    def _list(self, request: Recorded) -> Answer:
        def first(name: str) -> str | None:
            return request.query.get(name, [None])[-1]

        to, sender, after = first("To"), first("From"), first("DateSent>")
        size = int(first("PageSize") or 50)
        found = [
            m
            for m in reversed(self.messages)
            if (to is None or m["to"] == to)
            and (sender is None or m["from"] == sender)
            # a DateSent filter leaves out messages not sent yet (queued: no date_sent)
            and (after is None or _sent_after(m["date_sent"], after))
        ][:size]
        return Answer(
            200,
            {
                "messages": found,
                "start": 0,
                "end": max(len(found) - 1, 0),
                "page": 0,
                "page_size": size,
                "uri": self.messages_path,
                "first_page_uri": self.messages_path,
                "previous_page_uri": None,
                "next_page_uri": None,
            },
        )


def _sent_after(date_sent: str | None, after: str) -> bool:
    if date_sent is None:
        return False
    limit = datetime.fromisoformat(after.replace("Z", "+00:00"))
    if limit.tzinfo is None:
        limit = limit.replace(tzinfo=UTC)
    return parsedate_to_datetime(date_sent) >= limit


# the one Email Activity query form the double understands: unique_args['name']="value"
_UNIQUE_ARG_QUERY = re.compile(r"unique_args\['([^']+)'\]=" r'"([^"\\]*)"')


class SendGridDouble(HttpDouble):
    """SendGrid v3 mail send for one API key, and the Email Activity feed's message filter.

    The feed holds what ``add_to_feed`` put there, and (``feed_sends = True``) every mail
    accepted, as if SendGrid had indexed it at once; ``GET /v3/messages`` answers only the
    query ``unique_args['<name>']="<value>"`` (anything else: 400, as SendGrid's parser)."""

    def __init__(self, api_key: str, port: int = 0) -> None:
        super().__init__(port)
        self.api_key = api_key
        self.accepted: list[tuple[str, Any]] = []  # (X-Message-Id, the JSON body)
        self.feed: list[dict[str, Any]] = []  # newest last; each with its "unique_args"
        self.feed_sends = False

    def sends(self) -> list[Recorded]:
        """The mail send requests received (answered or not)."""
        return [r for r in self.requests if r.path == "/v3/mail/send"]

    def lookups(self) -> list[Recorded]:
        """The Email Activity ``GET /v3/messages`` requests received."""
        return [r for r in self.requests if r.path == "/v3/messages"]

    def add_to_feed(
        self, unique_args: Mapping[str, str], to_email: str, msg_id: str | None = None
    ) -> dict[str, Any]:
        """Put a message in the Email Activity feed (``msg_id``: SendGrid-shaped by default)."""
        message = {
            "from_email": "news@acme.example",
            "msg_id": msg_id or f"{uuid.uuid4().hex[:22]}.filterdrecv-5645d9c87f-2dpvp-1-0",
            "subject": "a message",
            "to_email": to_email,
            "status": "delivered",
            "opens_count": 0,
            "clicks_count": 0,
            "last_event_time": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "unique_args": dict(unique_args),
        }
        self.feed.append(message)
        return message

    def authorized(self, request: Recorded) -> bool:
        """``Authorization: Bearer <key>``."""
        return request.header("Authorization") == f"Bearer {self.api_key}"

    def unauthorized(self) -> Answer:
        """SendGrid's 401."""
        return sendgrid_error(
            401, "The provided authorization grant is invalid, expired, or revoked"
        )

    def handle(self, request: Recorded) -> Answer:
        """Accept a well-formed mail (202 and an ``X-Message-Id``), else 400 naming the field;
        filter the feed for ``GET /v3/messages``."""
        if request.method == "GET" and request.path == "/v3/messages":
            return self._filter(request)
        if request.method != "POST" or request.path != "/v3/mail/send":
            return sendgrid_error(404, "not found")
        body = request.json if isinstance(request.json, dict) else {}
        problem = _mail_problem(body)
        if problem is not None:
            return sendgrid_error(400, problem)
        message_id = uuid.uuid4().hex[:22]
        self.accepted.append((message_id, body))
        if self.feed_sends:
            for personalization in body["personalizations"]:
                self.add_to_feed(
                    body.get("custom_args") or {},
                    personalization["to"][0]["email"],
                    f"{message_id}.filterdrecv-5645d9c87f-2dpvp-1-0",
                )
        return Answer(202, None, {"X-Message-Id": message_id})

    def _filter(self, request: Recorded) -> Answer:
        query = request.query.get("query", [""])[-1]
        limit = request.query.get("limit", [""])[-1]
        if not limit.isdecimal() or not 1 <= int(limit) <= 1000:
            return sendgrid_error(400, "limit must be an integer from 1 to 1000")
        matched = _UNIQUE_ARG_QUERY.fullmatch(query)
        if matched is None:
            return sendgrid_error(400, f"error parsing input: {query!r}")
        name, value = matched.groups()
        found = [
            {k: v for k, v in m.items() if k != "unique_args"}
            for m in reversed(self.feed)
            if m["unique_args"].get(name) == value
        ]
        return Answer(200, {"messages": found[: int(limit)]})


def _mail_problem(body: Mapping[str, Any]) -> str | None:
    personalizations = body.get("personalizations") or []
    if not personalizations or not all(p.get("to") for p in personalizations):
        return "The personalizations field is required and must have at least one to."
    if not (body.get("from") or {}).get("email"):
        return "The from object must be provided for every email send."
    if not body.get("subject") and not all(p.get("subject") for p in personalizations):
        return "The subject is required."
    if not body.get("content"):
        return "The content value must be a string at least one character in length."
    return None


def main() -> None:
    """Serve a Twilio and a SendGrid double until Ctrl-C, printing each request."""
    import argparse

    parser = argparse.ArgumentParser(description="Local doubles of Twilio and SendGrid.")
    parser.add_argument("--twilio-port", type=int, default=8025)
    parser.add_argument("--sendgrid-port", type=int, default=8026)
    args = parser.parse_args()
    sid, token, key = "AC" + "0" * 32, "local-double-token", "SG.local-double-key"
    with (
        TwilioDouble(sid, token, args.twilio_port) as sms,
        SendGridDouble(key, args.sendgrid_port) as mail,
    ):
        print(
            "export OUTREACH_SMS_CHANNEL=twilio OUTREACH_EMAIL_CHANNEL=sendgrid",
            f"OUTREACH_TWILIO_ACCOUNT_SID={sid} OUTREACH_TWILIO_AUTH_TOKEN={token}",
            f"OUTREACH_TWILIO_FROM_NUMBER=+15005550006 OUTREACH_TWILIO_API_BASE={sms.url}",
            f"OUTREACH_SENDGRID_API_KEY={key} OUTREACH_SENDGRID_API_HOST={mail.url}",
            "OUTREACH_SENDGRID_FROM_EMAIL=news@acme.example OUTREACH_SENDGRID_MARKETING_GROUP_ID=1",
            "OUTREACH_PUBLIC_URL=http://127.0.0.1:8000 OUTREACH_UNSUBSCRIBE_SECRET=local-secret",
            flush=True,
        )
        seen = {id(sms): 0, id(mail): 0}
        try:
            while True:
                time.sleep(0.5)
                for double in (sms, mail):
                    fresh = double.requests[seen[id(double)] :]
                    seen[id(double)] += len(fresh)
                    for request in fresh:
                        to = request.form.get("To") or _first_to(request.json)
                        print(f"{request.method} {request.path} to={to} -> {request.answered}")
        except KeyboardInterrupt:
            print(f"{len(sms.messages)} SMS, {len(mail.accepted)} emails accepted")


def _first_to(body: Any) -> str | None:
    try:
        return str(body["personalizations"][0]["to"][0]["email"])
    except (KeyError, IndexError, TypeError):
        return None


if __name__ == "__main__":
    main()
