"""The approvals webhook against a real local HTTP receiver that checks the signature: each
new pending approval is announced once accepted, retried after a failure, never after."""

from __future__ import annotations

import hashlib
import hmac
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import orjson
import pytest
from livesupport import Feed, make_processor
from support import profile, shipment_exception

from outreach.rulebook import load_rulebook
from outreach.scheduling import SchedulerOptions, TimerScheduler
from outreach.scheduling.webhook import ApprovalsWebhook
from outreach.store import Store
from outreach.streams.topics import Topics

SECRET = "whsec-test"


class Receiver:
    """A local webhook receiver: answers with the next planned status, records what came."""

    def __init__(self) -> None:
        self.plan: list[int] = []
        self.received: list[tuple[dict[str, str], bytes]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.received.append((dict(self.headers.items()), body))
                status = receiver.plan.pop(0) if receiver.plan else 200
                if status == 200 and not receiver.valid(dict(self.headers.items()), body):
                    status = 401
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/approvals"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @staticmethod
    def valid(headers: dict[str, str], body: bytes) -> bool:
        """What a receiving team does: HMAC-SHA256 over ``<timestamp>.<body>``."""
        stamp = headers.get("X-Outreach-Timestamp", "")
        mac = hmac.new(SECRET.encode(), stamp.encode() + b"." + body, hashlib.sha256)
        return hmac.compare_digest(
            headers.get("X-Outreach-Signature", ""), f"sha256={mac.hexdigest()}"
        )


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    made = Receiver()
    made.thread.start()
    yield made
    made.server.shutdown()
    made.server.server_close()


@pytest.fixture
def store(rules_copy: Path, tmp_path: Path) -> Iterator[Store]:
    """A store where two customers' credits of 1500 wait for approval."""
    path = rules_copy / "shipment-delay.yaml"
    path.write_text(path.read_text().replace("standard: 500,", "standard: 1500,"))
    made = Store(f"sqlite:///{tmp_path}/hook.db")
    made.migrate()
    processor = make_processor(load_rulebook(rules_copy), made)
    feed = Feed()
    events = []
    for customer in ("cus_1", "cus_2"):
        events += [
            profile("2026-03-01T12:00:00Z", customer),
            shipment_exception("2026-03-09T15:00:00Z", customer),
        ]
    processor.apply([feed.line(orjson.dumps(e)) for e in events])
    yield made
    made.close()


def test_each_pending_approval_is_announced_signed_and_once_after_a_failed_try(
    store: Store, receiver: Receiver
) -> None:
    hook = ApprovalsWebhook(store, receiver.url, SECRET, timeout=5)
    try:
        receiver.plan = [503]  # the receiver is down for the first try
        assert hook.announce_once() == 0 and hook.failures == 1
        assert hook.announce_once() == 2
        assert hook.announce_once() == 0  # nothing new: nothing posted again
    finally:
        hook.close()
    assert len(receiver.received) == 3
    first, *accepted = receiver.received
    assert all(Receiver.valid(h, b) for h, b in receiver.received)
    bodies = [orjson.loads(b) for _, b in accepted]
    assert {b["type"] for b in bodies} == {"approval.pending"}
    assert {b["approval"]["customer_id"] for b in bodies} == {"cus_1", "cus_2"}
    assert all(b["approval"]["status"] == "pending_approval" for b in bodies)
    keys = [h["Idempotency-Key"] for h, _ in accepted]
    assert keys == [f"approval:{b['approval']['action_id']}" for b in bodies]
    assert first[1] == accepted[0][1]  # the failed announcement was the same one, retried


def test_a_wrong_secret_is_refused_by_the_receiver_and_retried(
    store: Store, receiver: Receiver
) -> None:
    hook = ApprovalsWebhook(store, receiver.url, "not-the-secret", timeout=5)
    try:
        assert hook.announce_once() == 0
    finally:
        hook.close()
    assert len(receiver.received) == 1  # refused (401): the round stops, nothing marked
    hook = ApprovalsWebhook(store, receiver.url, SECRET, timeout=5)
    try:
        assert hook.announce_once() == 2
    finally:
        hook.close()


def test_the_active_scheduler_announces_with_the_configured_webhook(
    store: Store, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    from outreach.scheduling import SchedulerSettings

    monkeypatch.setenv("OUTREACH_APPROVALS_WEBHOOK_URL", receiver.url)
    monkeypatch.setenv("OUTREACH_APPROVALS_WEBHOOK_SECRET", SECRET)
    options = SchedulerSettings().options()
    assert options.approvals_webhook == receiver.url
    assert SECRET not in repr(SchedulerSettings())  # a secret is never printed
    scheduler = TimerScheduler(store, Topics("unused."), "127.0.0.1:1", group="g", options=options)
    assert scheduler.webhook is not None
    try:
        scheduler.announce()
    finally:
        scheduler.webhook.close()
    assert scheduler.webhook.announced == 2


def test_no_webhook_configured_means_no_announcer(store: Store) -> None:
    options = SchedulerOptions()
    scheduler = TimerScheduler(store, Topics("unused."), "127.0.0.1:1", group="g", options=options)
    assert scheduler.webhook is None
