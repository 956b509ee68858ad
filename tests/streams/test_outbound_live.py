"""The demo path with the real providers' SDKs: worker -> Twilio (a local double) -> the
customer's STOP posted to ``outreach api`` -> the next notice is not an SMS.

Everything runs for real: the broker, ``outreach worker`` with ``OUTREACH_SMS_CHANNEL=twilio``
(the twilio SDK talking HTTP to the double), ``outreach api`` (a uvicorn process, the request
signed as Twilio signs it), the store. Event times are the wall clock's, in a time zone where it
is midday, so quiet hours never hold a message back whenever the suite runs.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from livesupport import REPO, WorkerProcess, applied, performed_keys, wait_for
from outbound.doubles import TwilioDouble
from twilio.request_validator import RequestValidator

from outreach.streams.publish import EventPublisher
from outreach.streams.topics import Topics

SID, TOKEN, SERVICE = "AC" + "1" * 32, "twilio-token-e2e", "MG" + "2" * 32
PHONE, EMAIL = "+14155550123", "stop.me@example.com"
CUSTOMER = "cus_e2e"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def midday_zone(now: datetime) -> str:
    """An IANA zone (Etc/GMT-N: N hours east of UTC) where it is about noon now."""
    east = (12 - now.hour) % 24
    east = east - 24 if east > 14 else east  # Etc/GMT spans -12..+14
    return f"Etc/GMT{-east:+d}" if east else "Etc/UTC"


def iso(at: datetime) -> str:
    return at.astimezone(UTC).isoformat().replace("+00:00", "Z")


def customer(now: datetime) -> dict[str, Any]:
    return {
        "event_id": "evt_profile", "type": "customer.updated", "customer_id": CUSTOMER,
        "occurred_at": iso(now - timedelta(minutes=10)), "source": "crm", "schema_version": 1,
        "data": {
            "phone": PHONE, "email": EMAIL, "timezone": midday_zone(now), "locale": "en-US",
            "tier": "standard",
            "consent": {"sms": {"transactional": True, "marketing": False},
                        "email": {"transactional": True, "marketing": False}},
        },
    }  # fmt: skip


def late_parcel(
    event_id: str, at: datetime, promised: datetime, late_by: timedelta
) -> dict[str, Any]:
    return {
        "event_id": event_id, "type": "shipment.updated", "customer_id": CUSTOMER,
        "occurred_at": iso(at), "source": "oms", "schema_version": 1,
        "data": {
            "shipment_id": "shp_e2e", "order_id": "ORD-E2E", "carrier": "ups",
            "status": "in_transit", "promised_delivery": iso(promised),
            "estimated_delivery": iso(promised + late_by),
        },
    }  # fmt: skip


class ApiProcess:
    """``outreach api`` on a free port, its output in ``log``."""

    def __init__(self, bootstrap: str, topics: Topics, database_url: str, log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {
            **os.environ, "OUTREACH_TOPIC_PREFIX": topics.prefix,
            "OUTREACH_TWILIO_AUTH_TOKEN": TOKEN, "COLUMNS": "200",
        }  # fmt: skip
        args = [
            sys.executable, "-m", "outreach.cli", "api", "--port", str(self.port),
            "--kafka-url", bootstrap, "--database-url", database_url,
            "--rules", str(REPO / "rules"),
        ]  # fmt: skip
        self.log = log
        with log.open("ab") as out:
            self.process = subprocess.Popen(args, env=env, stdout=out, stderr=out, cwd=REPO)

    def ready(self) -> bool:
        assert self.process.poll() is None, self.log.read_text()
        try:
            return httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def text_in(self, body: str, sid: str) -> httpx.Response:
        """An inbound SMS from the customer, signed with the account's token by the SDK."""
        form = {"MessageSid": sid, "AccountSid": SID, "From": PHONE, "To": "+15005550006",
                "Body": body}  # fmt: skip
        url = f"{self.url}/webhooks/twilio/inbound"
        signature = RequestValidator(TOKEN).compute_signature(url, form)
        return httpx.post(url, data=form, headers={"X-Twilio-Signature": signature}, timeout=10)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
        self.process.wait(timeout=30)


@pytest.fixture
def twilio() -> Iterator[TwilioDouble]:
    with TwilioDouble(SID, TOKEN) as double:
        yield double


def texts_to(double: TwilioDouble, number: str) -> list[str]:
    return [r.form["Body"] for r in double.creates() if r.form.get("To") == number]


async def publish(bootstrap: str, topics: Topics, *events: dict[str, Any]) -> None:
    async with EventPublisher(bootstrap, topics) as publisher:
        for event in events:
            await publisher.publish(event)
        await publisher.flush()


async def test_a_stop_posted_to_the_webhook_stops_the_next_sms(
    kafka_bootstrap: str, topics: Topics, group_id: str, tmp_path: Path, twilio: TwilioDouble
) -> None:
    url, data = f"sqlite:///{tmp_path}/store.db", tmp_path / "data"
    worker = WorkerProcess(kafka_bootstrap, topics, group_id, url, data)
    worker.env.update({
        "OUTREACH_SMS_CHANNEL": "twilio", "OUTREACH_TWILIO_ACCOUNT_SID": SID,
        "OUTREACH_TWILIO_AUTH_TOKEN": TOKEN, "OUTREACH_TWILIO_MESSAGING_SERVICE_SID": SERVICE,
        "OUTREACH_TWILIO_API_BASE": twilio.url, "OUTREACH_PUBLIC_URL": "https://hooks.example.com",
    })  # fmt: skip
    worker.start()
    api = ApiProcess(kafka_bootstrap, topics, url, data / "api.log")
    try:
        await asyncio.to_thread(wait_for, api.ready, 60, "outreach api to answer /healthz")
        now = datetime.now(UTC).replace(microsecond=0)
        promised = now + timedelta(days=1)
        first = late_parcel("evt_late_1", now - timedelta(minutes=5), promised, timedelta(days=2))
        await publish(kafka_bootstrap, topics, customer(now), first)
        await asyncio.to_thread(
            wait_for, lambda: len(texts_to(twilio, PHONE)) == 1, 90, "the delay SMS via Twilio"
        )  # fmt: skip
        (sms,) = [r for r in twilio.creates() if r.form.get("To") == PHONE]
        assert "ORD-E2E" in sms.form["Body"] and sms.form["MessagingServiceSid"] == SERVICE
        assert sms.form["StatusCallback"].startswith("https://hooks.example.com/webhooks/twilio/")

        answered = await asyncio.to_thread(api.text_in, "Stop", "SM" + "3" * 32)
        assert answered.status_code == 200, answered.text
        await asyncio.to_thread(
            wait_for, lambda: len(texts_to(twilio, PHONE)) == 2, 90, "the STOP confirmation"
        )  # fmt: skip
        assert "unsubscribed" in texts_to(twilio, PHONE)[1]

        slipped = late_parcel("evt_late_2", datetime.now(UTC), promised, timedelta(days=4))
        await publish(kafka_bootstrap, topics, slipped)
        emails = data / "messages.jsonl"
        await asyncio.to_thread(
            wait_for, lambda: bool(performed_keys(emails)), 90, "the second notice, by email"
        )  # fmt: skip
        (email,) = [orjson.loads(line) for line in emails.read_bytes().splitlines()]
        assert (email["channel"], email["to"]) == ("email", EMAIL)
        assert applied(url, group_id, topics.inputs) == 4  # profile, 2 parcels, the STOP
        assert len(texts_to(twilio, PHONE)) == 2
        # the access log: the path of a one-click unsubscribe link shows no token
        page = await asyncio.to_thread(httpx.get, f"{api.url}/unsubscribe/SeCrEtToKeN.abc")
        assert page.status_code in (400, 403, 404, 503)
        await asyncio.to_thread(
            wait_for, lambda: "/unsubscribe/<token>" in api.log.read_text(), 30, "the access log"
        )  # fmt: skip
        assert "SeCrEtToKeN" not in api.log.read_text()
    finally:
        api.stop()
        assert worker.stop() == 0, worker.log()
    assert len(texts_to(twilio, PHONE)) == 2, "an SMS went after the STOP"
