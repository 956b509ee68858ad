"""The commands' log lines: JSON or text, correlation ids, one handler for every logger."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from datetime import datetime

import httpx
import pytest
from fastapi import FastAPI

from outreach.api.logs import uvicorn_root_config
from outreach.api.metrics import Metrics
from outreach.telemetry.logs import (
    LogHandler,
    TelemetrySettings,
    configure_logging,
    correlate,
    current_ids,
)


def lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]


def test_a_json_line_has_time_level_logger_message_and_the_bound_ids():
    stream = io.StringIO()
    configure_logging("debug", "json", stream=stream)
    log = logging.getLogger("outreach.streams.dispatcher")
    with correlate(event_id="evt_1", customer_id="cus_1", signal_id=None):
        with correlate(message_id="msg_1"):
            log.info("sent %s", "m", extra={"idempotency_key": "msg:msg_1"})
        log.warning("after")
    log.error("outside")
    first, second, third = lines(stream)
    assert list(first)[:4] == ["time", "level", "logger", "message"]
    assert first["level"] == "INFO" and first["logger"] == "outreach.streams.dispatcher"
    assert first["message"] == "sent m"
    assert datetime.fromisoformat(str(first["time"]).replace("Z", "+00:00")).utcoffset() is not None
    assert str(first["time"]).endswith("Z")
    assert {k: first[k] for k in ("event_id", "customer_id", "message_id", "idempotency_key")} == {
        "event_id": "evt_1", "customer_id": "cus_1", "message_id": "msg_1",
        "idempotency_key": "msg:msg_1",
    }  # fmt: skip
    assert "signal_id" not in first  # None is not bound
    assert "message_id" not in second and second["event_id"] == "evt_1"
    assert "event_id" not in third


def test_an_explicit_extra_wins_over_the_context():
    stream = io.StringIO()
    configure_logging("info", "json", stream=stream)
    with correlate(customer_id="cus_context"):
        logging.getLogger("x").info("m", extra={"customer_id": "cus_extra"})
    assert lines(stream)[0]["customer_id"] == "cus_extra"


async def test_ids_follow_each_asyncio_task_and_do_not_leak_between_them():
    stream = io.StringIO()
    configure_logging("info", "json", stream=stream)
    log = logging.getLogger("outreach.t")
    gate = asyncio.Event()

    async def one(customer: str) -> None:
        with correlate(customer_id=customer):
            await gate.wait()
            log.info("in %s", customer)

    tasks = [asyncio.create_task(one(c)) for c in ("cus_a", "cus_b")]
    gate.set()  # each task binds its id before it waits, whichever runs first
    await asyncio.gather(*tasks)
    assert current_ids() == {}
    assert {(r["message"], r["customer_id"]) for r in lines(stream)} == {
        ("in cus_a", "cus_a"), ("in cus_b", "cus_b"),
    }  # fmt: skip


def test_the_text_format_appends_the_known_ids():
    stream = io.StringIO()
    configure_logging("info", "text", stream=stream)
    with correlate(event_id="evt_9", topic="payments", partition=3, offset=17):
        logging.getLogger("outreach.p").warning("dead letter: %s", "bad json")
    line = stream.getvalue().strip()
    assert line.endswith(
        "WARNING outreach.p: dead letter: bad json [event_id=evt_9 topic=payments partition=3 "
        "offset=17]"
    )


def test_the_format_comes_from_the_environment_unless_given(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("OUTREACH_LOG_FORMAT", "json")
    stream = io.StringIO()
    configure_logging("info", stream=stream)
    logging.getLogger("e").info("from env")
    assert lines(stream)[0]["message"] == "from env"
    stream = io.StringIO()
    configure_logging("info", "text", stream=stream)
    logging.getLogger("e").info("given")
    assert "INFO e: given" in stream.getvalue()
    with pytest.raises(ValueError, match="log format 'xml'"):
        configure_logging("info", "xml")
    monkeypatch.setenv("OUTREACH_LOG_REDACT", "phones")
    with pytest.raises(ValueError, match="unknown phones"):
        TelemetrySettings()


def test_configuring_replaces_console_handlers_and_keeps_capture_handlers(
    caplog: pytest.LogCaptureFixture,
):
    root = logging.getLogger()
    console = logging.StreamHandler()  # what basicConfig (and faust's import) install
    root.addHandler(console)
    first = configure_logging("info", "json")
    second = configure_logging("info", "text")
    assert console not in root.handlers and first not in root.handlers
    assert second in root.handlers and caplog.handler in root.handlers
    assert isinstance(second, LogHandler)


def test_uvicorn_records_go_through_the_root_handler_with_tokens_cut():
    import logging.config

    stream = io.StringIO()
    configure_logging("info", "json", stream=stream)
    logging.config.dictConfig(uvicorn_root_config())  # what uvicorn.run does with it
    logging.getLogger("uvicorn.access").info(
        '%s - "%s %s HTTP/%s" %d', "127.0.0.1:5000", "GET", "/unsubscribe/eyJhbGciOi.sig", "1.1",
        200,
    )  # fmt: skip
    logging.getLogger("uvicorn.error").info("Started server process")
    access, started = lines(stream)
    assert access["logger"] == "uvicorn.access"
    assert access["message"] == '127.0.0.1:5000 - "GET /unsubscribe/<token> HTTP/1.1" 200'
    assert started["logger"] == "uvicorn.error"


async def test_an_api_request_logs_with_its_request_id_and_answers_it():
    stream = io.StringIO()
    configure_logging("info", "json", stream=stream)
    app = FastAPI()

    @app.get("/ping")
    def ping() -> dict[str, str]:
        logging.getLogger("outreach.api.test").info("handling ping")
        return {"ok": "yes"}

    metrics = Metrics(None)
    transport = httpx.ASGITransport(app=metrics.middleware(app))
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        given = await client.get("/ping", headers={"X-Request-ID": "req-from-caller-1"})
        made = await client.get("/ping")
        refused = await client.get("/ping", headers={"X-Request-ID": "bad id with spaces"})
    assert given.headers["x-request-id"] == "req-from-caller-1"
    assert len(made.headers["x-request-id"]) == 32
    assert refused.headers["x-request-id"] != "bad id with spaces"
    logged = [r["request_id"] for r in lines(stream) if r["message"] == "handling ping"]
    assert logged == [
        "req-from-caller-1",
        made.headers["x-request-id"],
        refused.headers["x-request-id"],
    ]
