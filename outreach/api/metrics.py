"""``GET /metrics``: Prometheus metrics of the API and of the engine as the store records it.

The API's own: requests by route and status, request latency, events ingested, and this
process's model calls (``outreach_llm_*`` of ``outreach.telemetry.metrics``, when replies are
read by a model). The engine's,
read from the store at scrape time (so they are right however many workers there are and
survive restarts): events applied / duplicate / dead-lettered, signals per rule, actions per
type and status, messages per channel and status, spam complaints per channel and the decision
latency histogram (a
record's Kafka timestamp to the batch that applied it, see ``outreach.streams.latency``): running
totals the workers add to in each batch's transaction (the event results and complaint channels
the alerts watch are exported at 0 until counted); the outbox by kind and status, actions
waiting for approval, and the consumer lag per partition (the partition's high watermark, from
a fetch, minus the store's applied position).

Every request runs with a ``request_id`` bound for its log lines (``outreach.telemetry.logs``):
the caller's ``X-Request-ID`` when it sends a sane one, else a new one; the answer carries it.

Must not import: faust, the decision core.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from outreach.store.operator import Operator
from outreach.store.tokens import TALLY as TOKENS_TALLY
from outreach.streams import latency
from outreach.telemetry import metrics as telemetry
from outreach.telemetry.logs import correlate

log = logging.getLogger(__name__)
Lag = dict[tuple[str, int], int]
LagProbe = Callable[[], Awaitable[Lag]]
_REQUEST_ID = re.compile(r"[\w.:@/+=-]+")
# engine counters exported at 0 before their first count (see ``EngineCollector.collect``)
ALWAYS_EXPORTED = (
    *(("events", r) for r in ("applied", "duplicate", "dead_letter", "engine_failure")),
    *(("complaints", c) for c in ("sms", "email")),
)


class EngineCollector(Collector):
    """Metrics read from the store when scraped."""

    def __init__(self, operator: Operator) -> None:
        self.operator = operator
        self.lag: Lag | None = None  # set by the scrape before collecting (async probe)

    def collect(self) -> Iterator[Any]:
        """The engine's counters and gauges (nothing if the store does not answer)."""
        try:
            tallies = self.operator.tallies()
            outbox = self.operator.store.outbox_counts()
            pending = self.operator.pending_approvals()
        except Exception:  # the scrape must not fail: /readyz reports the database
            log.exception("metrics: the store did not answer")
            return
        events = CounterMetricFamily(
            "outreach_events", "Events applied by the workers", labels=["result"]
        )
        signals = CounterMetricFamily("outreach_signals", "Signals raised", labels=["rule"])
        actions = CounterMetricFamily(
            "outreach_actions", "Action status records", labels=["type", "status"]
        )
        messages = CounterMetricFamily(
            "outreach_messages", "Message status records", labels=["channel", "status"]
        )
        timers = CounterMetricFamily("outreach_timers_fired", "Scheduled work that fell due")
        complaints = CounterMetricFamily(
            "outreach_complaints",
            "Spam complaints reported by a provider (the address is suppressed)",
            labels=["channel"],
        )
        # the results and channels the alerts watch are exported from 0: a series that first
        # appears at 1 is not an increase to Prometheus, so the first failure would go unseen
        counts = dict.fromkeys(ALWAYS_EXPORTED, 0) | tallies
        for (name, label), value in sorted(counts.items()):
            if name == "events":
                events.add_metric([label], value)
            elif name == "signals":
                signals.add_metric([label], value)
            elif name == "actions":
                actions.add_metric(label.split(":", 1), value)
            elif name == "messages":
                messages.add_metric(label.split(":", 1), value)
            elif name == "timers":
                timers.add_metric([], value)
            elif name == "complaints":
                complaints.add_metric([label], value)
        yield from (events, signals, actions, messages, timers, complaints)
        buckets, seconds = latency.read(tallies)
        yield HistogramMetricFamily(
            "outreach_decision_latency_seconds",
            "Kafka record timestamp to the batch that applied it committing",
            buckets=[(repr(le) if le < math.inf else "+Inf", n) for le, n in buckets],
            sum_value=seconds,
        )
        rows = GaugeMetricFamily(
            "outreach_outbox_rows", "Outbox rows (effects, deliveries)", labels=["kind", "status"]
        )
        for (kind, status), count in sorted(outbox.items()):
            rows.add_metric([kind, status], count)
        yield rows
        yield GaugeMetricFamily(
            "outreach_approvals_pending", "Actions waiting for a person", value=pending
        )
        today = datetime.now(UTC).date().isoformat()
        yield GaugeMetricFamily(
            "outreach_llm_tokens_today",
            "LLM tokens spent on the current UTC day by every process on the store, as last "
            "exchanged (within 5 s); the budget is OUTREACH_LLM_DAILY_TOKENS",
            value=tallies.get((TOKENS_TALLY, today), 0),
        )
        if self.lag is not None:
            lag = GaugeMetricFamily(
                "outreach_consumer_lag",
                "Records not yet applied (Kafka end offset - applied position)",
                labels=["topic", "partition"],
            )
            for (topic, partition), behind in sorted(self.lag.items()):
                lag.add_metric([topic, str(partition)], behind)
            yield lag


class Metrics:
    """The registry of one app, its request middleware and the ``/metrics`` handler."""

    def __init__(self, operator: Operator | None, lag: LagProbe | None = None) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "outreach_api_requests", "HTTP requests", ["method", "route", "status"],
            registry=self.registry,
        )  # fmt: skip
        self.latency = Histogram(
            "outreach_api_request_seconds", "HTTP request latency", ["route"],
            registry=self.registry,
        )  # fmt: skip
        self.ingested = Counter(
            "outreach_api_events", "Events posted to /v1/events", ["result"],
            registry=self.registry,
        )  # fmt: skip
        for shared in (telemetry.LLM_CALLS, telemetry.LLM_TOKENS, telemetry.LLM_SECONDS):
            self.registry.register(shared)  # this process's model calls (reading replies)
        self.engine = EngineCollector(operator) if operator is not None else None
        if self.engine is not None:
            self.registry.register(self.engine)
        self.lag = lag

    def count_ingested(self, accepted: int, rejected: int) -> None:
        """Count the items of one ``POST /v1/events`` by result."""
        if accepted:
            self.ingested.labels("accepted").inc(accepted)
        if rejected:
            self.ingested.labels("rejected").inc(rejected)

    async def scrape(self, _request: Request) -> Response:
        """The metrics in Prometheus' text format."""
        if self.engine is not None and self.lag is not None:
            try:
                self.engine.lag = await asyncio.wait_for(self.lag(), timeout=5)
            except Exception as exc:  # Kafka away: no lag figures rather than no metrics
                log.warning("metrics: consumer lag not available: %s", exc)
                self.engine.lag = None
        body = await asyncio.to_thread(generate_latest, self.registry)
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    def middleware(self, app: ASGIApp) -> ASGIApp:
        """Counts and times every HTTP request by its route template (not its path, which
        would carry customer ids and tokens)."""

        async def wrapped(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] != "http":
                await app(scope, receive, send)
                return
            started = time.perf_counter()
            status = 500
            request_id = request_id_of(scope)

            async def sending(message: Message) -> None:
                nonlocal status
                if message["type"] == "http.response.start":
                    status = message["status"]
                    headers = [h for h in message.get("headers", []) if h[0] != b"x-request-id"]
                    message["headers"] = [*headers, (b"x-request-id", request_id.encode())]
                await send(message)

            try:
                with correlate(request_id=request_id):
                    await app(scope, receive, sending)
            finally:
                route = scope.get("route")
                template = getattr(route, "path", None) or "unmatched"
                self.requests.labels(scope["method"], template, str(status)).inc()
                self.latency.labels(template).observe(time.perf_counter() - started)

        return wrapped


def request_id_of(scope: Scope) -> str:
    """The caller's ``X-Request-ID`` (printable, at most 128 characters), or a new one."""
    for name, value in scope.get("headers", []):
        if name == b"x-request-id":
            given = bytes(value).decode("latin-1").strip()
            if 0 < len(given) <= 128 and _REQUEST_ID.fullmatch(given):
                return given
            break
    return uuid.uuid4().hex


async def kafka_lag(bootstrap: str, operator: Operator, group: str, wait: float = 3.0) -> Lag:
    """The high watermarks of the partitions the store has positions for, minus those
    positions. A watermark comes from a fetch at the position (the reply carries it, records
    or none), not from ListOffsets: the embedded broker answers that short of the log's end
    once records came in batches. A partition no fetch answers within ``wait`` seconds, or gone
    from the brokers, is left out."""
    from aiokafka import AIOKafkaConsumer, TopicPartition  # type: ignore[import-untyped,unused-ignore]

    positions = await asyncio.to_thread(operator.positions, group)
    if not positions:
        return {}
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, client_id="outreach-lag", group_id=None,
        enable_auto_commit=False, auto_offset_reset="latest", fetch_max_wait_ms=100,
        max_partition_fetch_bytes=1024,  # the watermark is wanted, not the records
    )  # fmt: skip
    try:
        await consumer.start()
        await consumer.topics()  # the metadata partitions_for_topic reads
        parts = [
            TopicPartition(t, p)
            for t, p in sorted(positions)
            if p in (consumer.partitions_for_topic(t) or ())
        ]
        if not parts:
            return {}
        consumer.assign(parts)
        for tp in parts:
            consumer.seek(tp, positions[tp.topic, tp.partition])
        highs: dict[Any, int] = {}
        deadline = time.monotonic() + wait
        while len(highs) < len(parts) and time.monotonic() < deadline:
            await consumer.getmany(timeout_ms=100, max_records=1)
            for tp in parts:
                if (high := consumer.highwater(tp)) is not None:
                    highs[tp] = high
    finally:
        await consumer.stop()
    return {
        (tp.topic, tp.partition): max(0, high - positions[tp.topic, tp.partition])
        for tp, high in highs.items()
    }
