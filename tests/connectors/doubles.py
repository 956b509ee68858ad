"""A local double of the operator's own system: what an HTTP action connector talks to.

A real HTTP server on 127.0.0.1 (a free port) in a thread, so the real ``httpx`` client of
``HttpConnector`` talks to it over the network. It does what docs/connectors.md asks of a
receiving team, independently of ``outreach.signing``:

- checks ``X-Outreach-Signature`` (HMAC-SHA256 of ``<timestamp>.<raw body>``, ``sha256=<hex>``)
  and the timestamp's age, and answers 401 when either is wrong;
- keeps ``Idempotency-Key``: a key it answered with a 2xx is answered again with the same
  answer and ``Idempotent-Replayed: true``, without acting again (before the script is read);
- records every request (``requests``) and every action it performed (``performed``);
- answers by script, one step per request (then ``ok()`` again): ``ok(body)``,
  ``answer(status, body, retry_after=...)``, ``rejected(message)`` (a 2xx saying "not done"),
  ``perform_then_hang()`` (performs, then holds the answer past the client's read timeout: the
  fault case) and ``hang_before_performing()`` (a read timeout too, nothing performed).

Use as a context manager; leaving it releases every held request and stops the server.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Literal, Self

SECRET = "connector-test-secret"
HELD = 30.0  # seconds a hanging step holds its request at most (released at exit)


@dataclass(frozen=True)
class Step:
    """What the system does with one request."""

    status: int = 200
    body: Any = None  # None with ``perform``: {"id": "op_<n>", "status": "accepted"}
    headers: dict[str, str] = field(default_factory=dict)
    perform: bool = True  # the action happens; its answer is kept for the key
    hang: Literal["before", "after"] | None = None  # never answers (past any read timeout)


def ok(body: Any = None) -> Step:
    """Perform and answer 200 with ``body``."""
    return Step(200, body)


def answer(status: int, body: Any = None, retry_after: str | None = None) -> Step:
    """Answer ``status`` without performing (``Retry-After`` when given)."""
    headers = {"Retry-After": retry_after} if retry_after is not None else {}
    return Step(status, body if body is not None else {"error": f"HTTP {status}"}, headers, False)


def rejected(message: str) -> Step:
    """A 200 that says the system could not do it (kept for the key, nothing performed)."""
    return Step(200, {"status": "rejected", "error": {"message": message}}, perform=False)


def perform_then_hang() -> Step:
    """Perform, keep the answer for the key, and never send it (the client times out)."""
    return Step(hang="after")


def hang_before_performing() -> Step:
    """Hold the request without performing until the client has given up."""
    return Step(perform=False, hang="before")


@dataclass(frozen=True)
class Seen:
    """One request the system received."""

    method: str
    path: str
    headers: dict[str, str]  # names lower-cased
    raw: bytes
    body: Any
    signed: bool | None  # the signature checked out (None: the system has no secret)

    @property
    def key(self) -> str | None:
        """Its ``Idempotency-Key``."""
        return self.headers.get("idempotency-key")


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that gave up (read timeout) is expected here; say nothing."""


class OperatorSystem:
    """The receiving side of every connector request (see the module docstring)."""

    def __init__(self, secret: str | None = SECRET) -> None:
        self.secret = secret
        self.requests: list[Seen] = []
        self.performed: list[Seen] = []
        self._script: list[Step] = []
        self._kept: dict[str, tuple[int, bytes]] = {}
        self._lock = threading.Lock()
        self._released = threading.Event()
        system = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's names
                system._serve(self)

            do_PUT = do_PATCH = do_POST  # noqa: N815

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = _Server(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    def url(self, path: str = "") -> str:
        """``http://127.0.0.1:<port><path>``."""
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}{path}"

    def script(self, *steps: Step) -> None:
        """Answer the next requests (with a key not kept yet) with these, in order."""
        with self._lock:
            self._script.extend(steps)

    @property
    def performed_keys(self) -> list[str | None]:
        """The idempotency key of every action performed, in order."""
        return [seen.key for seen in self.performed]

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

    def verified(self, headers: dict[str, str], raw: bytes) -> bool | None:
        """What a receiving team does: HMAC-SHA256 over ``<timestamp>.<raw body>``, compared in
        constant time, and a timestamp within five minutes of its own clock."""
        if self.secret is None:
            return None
        stamp = headers.get("x-outreach-timestamp", "")
        try:
            recent = abs(time.time() - float(stamp)) <= 300
        except ValueError:
            return False
        mac = hmac.new(self.secret.encode(), stamp.encode() + b"." + raw, hashlib.sha256)
        given = headers.get("x-outreach-signature", "")
        return recent and hmac.compare_digest(given, f"sha256={mac.hexdigest()}")

    def _serve(self, http: BaseHTTPRequestHandler) -> None:
        raw = http.rfile.read(int(http.headers.get("Content-Length") or 0))
        headers = {k.lower(): v for k, v in http.headers.items()}
        seen = Seen(
            http.command, http.path, headers, raw, json.loads(raw) if raw else None,
            self.verified(headers, raw),
        )  # fmt: skip
        with self._lock:
            status, body, extra, hang = self._decide(seen)
        if hang:
            self._released.wait(HELD)
            return  # the client is gone: no answer
        try:
            http.send_response(status)
            for name, value in extra.items():
                http.send_header(name, value)
            http.send_header("Content-Type", "application/json")
            http.send_header("Content-Length", str(len(body)))
            http.end_headers()
            http.wfile.write(body)
        except OSError:
            pass

    def _decide(self, seen: Seen) -> tuple[int, bytes, dict[str, str], bool]:
        """(status, body, headers, hang) for one request; called under the lock."""
        self.requests.append(seen)
        if seen.signed is False:
            return 401, b'{"error": "bad signature"}', {}, False
        kept = self._kept.get(seen.key or "")
        if kept is not None:
            return kept[0], kept[1], {"Idempotent-Replayed": "true"}, False
        step = self._script.pop(0) if self._script else ok()
        body = step.body
        if step.perform:
            self.performed.append(seen)
            if body is None:
                body = {"id": f"op_{len(self.performed)}", "status": "accepted"}
        content = json.dumps(body).encode()
        if seen.key and 200 <= step.status < 300 and step.hang != "before":
            self._kept[seen.key] = (step.status, content)
        return step.status, content, step.headers, step.hang is not None


class FakeClock:
    """A monotonic clock the test moves (``CircuitBreaker(clock=...)``)."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        """Move the clock forward."""
        self.now += seconds
