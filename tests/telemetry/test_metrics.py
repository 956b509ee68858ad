"""Per-process metrics (workers, dispatcher, LLM gateway) and the complaint tally."""

from __future__ import annotations

import random
import socket
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import orjson
import pytest
from livesupport import Feed, make_processor
from llm.doubles import OpenAIDouble, failure, text
from outbound.doubles import TwilioDouble, status, twilio_error
from pydantic import SecretStr
from support import make_event, profile

from outreach.agents.adapters.llm import LLMError, LLMGateway, LLMSettings
from outreach.agents.connectors import Effect, FakeConnector, FileConnector
from outreach.agents.planner import Planned, PlaybookPlanner
from outreach.agents.playbooks.base import Playbook, PlaybookContext
from outreach.api.metrics import EngineCollector, Metrics
from outreach.connectors import ToolRouter
from outreach.connectors.http import CircuitBreaker
from outreach.core import DecisionCore
from outreach.decisions import Delivery
from outreach.errors import TransientConnectorError, TransientDeliveryError
from outreach.outbound.twilio import TwilioSettings, TwilioSmsChannel
from outreach.rulebook import RuleBook
from outreach.store import Store
from outreach.store.operator import Operator
from outreach.store.tokens import SharedTokens
from outreach.streams.dispatcher import Dispatcher, DispatcherOptions
from outreach.telemetry import metrics
from outreach.telemetry.logs import current_ids
from outreach.telemetry.metrics import REGISTRY, error_class

SID, TOKEN = "AC" + "3" * 32, "metrics-test-token"


def value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


class Delta:
    """Samples before and after a block (the registry is the process's: other tests count)."""

    def __init__(self, *samples: tuple[str, dict[str, str]]) -> None:
        self.samples = samples
        self.before = [value(n, **labels) for n, labels in samples]

    def now(self) -> list[float]:
        return [
            value(n, **labels) - b for (n, labels), b in zip(self.samples, self.before, strict=True)
        ]


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    made = Store(f"sqlite:///{tmp_path}/outreach.db")
    made.migrate()
    yield made
    made.close()


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (TransientDeliveryError("twilio: HTTP 503", code="20500"), "5xx"),
        (TransientDeliveryError("sendgrid: answered 503", code="503"), "5xx"),
        (TransientDeliveryError("rate", retry_after=3, code="429"), "429"),
        (TransientConnectorError("rebook: Stripe rate limited (429)"), "429"),
        (TransientDeliveryError("twilio: message m: ReadTimeout: timed out"), "timeout"),
        (TransientDeliveryError("twilio: message m: ConnectionError: refused"), "connect"),
        (TransientConnectorError("rebook: answered 404 for /x"), "4xx"),
        (RuntimeError("something else"), "other"),
    ],
)
def test_provider_errors_are_classed(error: BaseException, expected: str) -> None:
    # a Twilio code like 20500 is not an HTTP status, the message's 503 is
    assert error_class(error) == expected


def effect(key: str = "eff:1") -> Effect:
    return Effect(idempotency_key=key, action_id="act_1", customer_id="cus_1",
                  tool="grant_credit", params={"amount": 500, "currency": "USD"})  # fmt: skip


def sms(message_id: str) -> Delivery:
    return Delivery(message_id=message_id, customer_id="cus_1", channel="sms", to="+14155550100",
                    purpose="transactional", subject=None, body="Acme: hello")  # fmt: skip


def queue(store: Store, key: str, kind: str, ref: str, payload: bytes, due: float) -> None:
    store.run(lambda b: b.add_outbox([(key, kind, "cus_1", ref, payload, due)]))


async def test_dispatcher_attempts_latency_and_provider_errors_are_counted(
    store: Store, tmp_path: Path
) -> None:
    done = ("outreach_dispatch_attempts_total",
            {"kind": "effect", "target": "grant_credit", "outcome": "done"})  # fmt: skip
    retry = ("outreach_dispatch_attempts_total",
             {"kind": "delivery", "target": "sms", "outcome": "retry"})  # fmt: skip
    failed = ("outreach_dispatch_attempts_total",
              {"kind": "delivery", "target": "sms", "outcome": "failed"})  # fmt: skip
    e5xx = ("outreach_provider_errors_total", {"provider": "twilio", "class": "5xx"})
    e4xx = ("outreach_provider_errors_total", {"provider": "twilio", "class": "4xx"})
    timed = (
        "outreach_dispatch_perform_seconds_count",
        {"kind": "delivery", "target": "sms", "provider": "twilio"},
    )
    delta = Delta(done, retry, failed, e5xx, e4xx, timed)
    with TwilioDouble(SID, TOKEN) as api:
        channel = TwilioSmsChannel(
            TwilioSettings(account_sid=SID, auth_token=SecretStr(TOKEN), api_base=api.url,
                           from_number="+15550001111", rate=1000.0, timeout=2.0)
        )  # fmt: skip
        dispatcher = Dispatcher(
            store, FileConnector(tmp_path / "effects.jsonl"), channel,
            DispatcherOptions(lease=60.0), random.Random(1),
        )  # fmt: skip
        now = time.time()
        queue(store, "eff:1", "effect", "act_1", effect().model_dump_json().encode(), now)
        queue(store, "msg:m1", "delivery", "m1", sms("m1").model_dump_json().encode(), now)
        api.script(status(503))
        try:
            assert await dispatcher.run_once(now) == 2
            queue(store, "msg:m2", "delivery", "m2", sms("m2").model_dump_json().encode(), now)
            api.script(twilio_error(21211))
            assert await dispatcher.run_once(now) == 1
        finally:
            channel.close()
    assert delta.now() == [1, 1, 1, 1, 1, 2]


def test_open_circuits_are_exported_per_tool() -> None:
    class Breakered(FakeConnector):
        def __init__(self) -> None:
            super().__init__()
            self.breaker = CircuitBreaker(1, 60.0)

    rebook, retry = Breakered(), Breakered()
    router = ToolRouter({"rebook_shipment": rebook, "retry_payment": retry}, FakeConnector())
    metrics.watch_circuits(router)
    rebook.breaker.failure()  # one failure opens it (threshold 1)
    assert value("outreach_connector_circuit_open", tool="rebook_shipment") == 1.0
    assert value("outreach_connector_circuit_open", tool="retry_payment") == 0.0
    rebook.breaker.success()
    assert value("outreach_connector_circuit_open", tool="rebook_shipment") == 0.0


def suppressed(event_id: str, reason: str, channel: str = "email") -> bytes:
    return orjson.dumps({
        "event_id": event_id, "type": "contact.suppressed", "customer_id": "cus_1",
        "occurred_at": datetime(2026, 10, 1, 12, tzinfo=UTC).isoformat(), "source": "sendgrid",
        "data": {"channel": channel, "reason": reason, "address": "ann@example.com"},
    })  # fmt: skip


def test_complaints_are_tallied_once_and_exported_by_the_api(book: RuleBook, store: Store):
    feed = Feed()
    proc = make_processor(book, store)
    records = [
        feed.line(orjson.dumps(profile("2026-10-01T09:00:00Z", "cus_1"))),
        feed.line(suppressed("sup_1", "complaint")),
        feed.line(suppressed("sup_1", "complaint")),  # the same event again: a duplicate
        feed.line(suppressed("sup_2", "bounce")),
        feed.record("customers", b"cus_1", b"{not json"),
    ]
    delta = Delta(
        ("outreach_worker_batches_total", {}),
        ("outreach_worker_records_total", {"result": "applied"}),
        ("outreach_worker_records_total", {"result": "duplicate"}),
        ("outreach_worker_records_total", {"result": "dead_letter"}),
        ("outreach_worker_batch_seconds_count", {}),
    )
    proc.apply(records)
    proc.apply(records[:2])  # redelivered: skipped
    assert delta.now() == [2, 3, 1, 1, 2]
    assert value("outreach_worker_records_total", result="redelivered") >= 2
    tallies = Operator(store).tallies()
    assert tallies[("complaints", "email")] == 1
    assert ("complaints", "sms") not in tallies
    from prometheus_client import CollectorRegistry

    registry = CollectorRegistry()
    registry.register(EngineCollector(Operator(store)))
    assert registry.get_sample_value("outreach_complaints_total", {"channel": "email"}) == 1.0


def test_the_api_exports_the_llm_tokens_every_process_spent_today(store: Store) -> None:
    from prometheus_client import CollectorRegistry

    registry = CollectorRegistry()
    registry.register(EngineCollector(Operator(store)))
    assert registry.get_sample_value("outreach_llm_tokens_today") == 0.0
    today = datetime.now(UTC).date().isoformat()
    for spent in (1200, 34):  # two processes
        tokens = SharedTokens(store)
        tokens.add(today, spent)
        tokens.add("2020-01-01", 999)  # another day: not today's
        tokens.sync()
    assert registry.get_sample_value("outreach_llm_tokens_today") == 1234.0


def test_llm_calls_and_tokens_are_counted_by_purpose_and_outcome() -> None:
    ok = ("outreach_llm_calls_total", {"purpose": "composer", "outcome": "ok"})
    bad = ("outreach_llm_calls_total", {"purpose": "composer", "outcome": "llm_error"})
    prompt = ("outreach_llm_tokens_total", {"purpose": "composer", "kind": "prompt"})
    answer = ("outreach_llm_tokens_total", {"purpose": "composer", "kind": "completion"})
    seconds = ("outreach_llm_call_seconds_count", {"purpose": "composer"})
    delta = Delta(ok, bad, prompt, answer, seconds)
    with OpenAIDouble("sk-metrics") as api:
        gateway = LLMGateway(LLMSettings(api_key=SecretStr("sk-metrics"), base_url=api.base_url,
                                         model="m", timeout=2.0, max_retries=0))  # fmt: skip
        api.script(text("hello", tokens=(11, 4)), failure(500))
        gateway.complete("composer", [{"role": "user", "content": "hi"}])
        with pytest.raises(LLMError):
            gateway.complete("composer", [{"role": "user", "content": "hi"}])
    assert delta.now() == [1, 1, 11, 4, 2]
    # the API's /metrics shows its own process's model calls (replies read by a model)
    api = Metrics(None).registry
    assert api.get_sample_value(ok[0], ok[1]) == value(ok[0], **ok[1]) >= 1


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def test_the_process_serves_its_metrics_over_http() -> None:
    server = metrics.serve(free_port(), "127.0.0.1")
    try:
        host, port = server.server_address[:2]
        body = httpx.get(f"http://{host}:{port}/metrics", timeout=5).text
    finally:
        server.shutdown()
        server.server_close()
    assert "# TYPE outreach_worker_batches_total counter" in body
    assert "# TYPE outreach_scheduler_active gauge" in body
    assert "process_resident_memory_bytes" in body or "python_gc_objects_collected_total" in body
    assert "# TYPE outreach_dispatch_attempts_total counter" in body


def test_what_the_core_logs_carries_the_event_and_customer_it_was_deciding(
    book: RuleBook, store: Store
) -> None:
    seen: list[dict[str, object]] = []

    class Watching(PlaybookPlanner):  # e.g. the model planner's "LLM call failed" lines
        def plan(self, playbook: Playbook, ctx: PlaybookContext) -> Planned:
            seen.append(current_ids())
            return super().plan(playbook, ctx)

    feed = Feed()
    proc = make_processor(DecisionCore(book, Watching()), store)
    late = make_event(
        "shipment.updated", "2026-10-01T15:00:00Z", "cus_7", shipment_id="shp_1",
        order_id="ORD-1", carrier="ups", status="in_transit",
        promised_delivery="2026-10-02T15:00:00Z", estimated_delivery="2026-10-05T15:00:00Z",
    )  # fmt: skip
    proc.apply([
        feed.line(orjson.dumps(profile("2026-10-01T09:00:00Z", "cus_7"))),
        feed.line(orjson.dumps(late)),
    ])  # fmt: skip
    assert seen == [{"event_id": late["event_id"], "customer_id": "cus_7"}]
    assert current_ids() == {}  # nothing left bound after the batch
