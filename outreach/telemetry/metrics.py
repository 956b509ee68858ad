"""Per-process Prometheus metrics of the workers, the dispatcher, the scheduler and the LLM
gateway, served by ``serve(port)`` (``OUTREACH_METRICS_PORT`` / ``--metrics-port``).

The API's ``/metrics`` (``outreach.api.metrics``) tells what the engine did, from the store,
across all processes. These tell how each process is doing: how long its batches take, what
its dispatcher's attempts ended in and why providers failed, whether its scheduler is the
active one. Each process counts from its start (Prometheus' ``rate`` handles restarts).

Worker: ``outreach_worker_batches_total``, ``outreach_worker_batch_seconds`` (histogram:
applying one batch, the transaction included), ``outreach_worker_records_total{result}``
(applied, duplicate, dead_letter, engine_failure, redelivered),
``outreach_worker_partitions_assigned``.

Dispatcher: ``outreach_dispatch_attempts_total{kind,target,outcome}`` (kind: effect,
delivery; target: the tool or channel; outcome: done, retry, failed, held, lost, error),
``outreach_dispatch_perform_seconds{kind,target,provider}`` (every connector or channel call:
its ``_count`` is the denominator of the provider error rate),
``outreach_provider_errors_total{provider,class}`` (provider: twilio, sendgrid, stripe, http,
file...; class: timeout, connect, 429, 5xx, 4xx, other), ``outreach_connector_circuit_open{tool}``
(1 while the tool's breaker is open or half-open).

Scheduler: ``outreach_scheduler_active`` (1 active, 0 standby),
``outreach_scheduler_timers_produced_total``, ``outreach_scheduler_rounds_total``,
``outreach_scheduler_sweeps_total``.

LLM gateway: ``outreach_llm_calls_total{purpose,outcome}`` (ok or the fallback code),
``outreach_llm_tokens_total{purpose,kind}`` (prompt, completion),
``outreach_llm_call_seconds{purpose}``.

Plus prometheus_client's ``process_*`` (memory, CPU, open files) and ``python_gc_*``.

Must not import: the engine's packages (the decision core does not count anything).
"""

from __future__ import annotations

import re
import threading
import weakref
from collections.abc import Iterator
from typing import Any, Protocol

from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    start_http_server,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

REGISTRY = CollectorRegistry(auto_describe=True)
for _standard in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
    REGISTRY.register(_standard)

_FAST = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

WORKER_BATCHES = Counter(
    "outreach_worker_batches", "Record batches applied by this worker", registry=REGISTRY
)
WORKER_BATCH_SECONDS = Histogram(
    "outreach_worker_batch_seconds", "Time to apply one batch (decode to commit)",
    buckets=_FAST, registry=REGISTRY,
)  # fmt: skip
WORKER_RECORDS = Counter(
    "outreach_worker_records", "Records handled by this worker", ["result"], registry=REGISTRY
)
WORKER_PARTITIONS = Gauge(
    "outreach_worker_partitions_assigned", "Input partitions assigned to this worker",
    registry=REGISTRY,
)  # fmt: skip
WORKER_UNALIGNED = Counter(
    "outreach_worker_unaligned_batches",
    "Batches released before a partition holding back event time caught up (applied out of "
    "event-time order across partitions), by the limit that ended the wait",
    ["limit"], registry=REGISTRY,
)  # fmt: skip
DISPATCH_ATTEMPTS = Counter(
    "outreach_dispatch_attempts", "Outbox rows handled by this dispatcher, by outcome",
    ["kind", "target", "outcome"], registry=REGISTRY,
)  # fmt: skip
DISPATCH_SECONDS = Histogram(
    "outreach_dispatch_perform_seconds", "Time of one connector or channel call",
    ["kind", "target", "provider"], buckets=_FAST, registry=REGISTRY,
)  # fmt: skip
PROVIDER_ERRORS = Counter(
    "outreach_provider_errors", "Failed connector and channel calls, by provider and class",
    ["provider", "class"], registry=REGISTRY,
)  # fmt: skip
SCHEDULER_ACTIVE = Gauge(
    "outreach_scheduler_active", "1 while this scheduler is the active one, 0 on standby",
    registry=REGISTRY,
)  # fmt: skip
SCHEDULER_PRODUCED = Counter(
    "outreach_scheduler_timers_produced", "timer.fired events produced to the timers topic",
    registry=REGISTRY,
)  # fmt: skip
SCHEDULER_ROUNDS = Counter(
    "outreach_scheduler_rounds", "Looks at the timers table while active", registry=REGISTRY
)
SCHEDULER_SWEEPS = Counter(
    "outreach_scheduler_sweeps", "Sweeps of cancelled timers' jobs", registry=REGISTRY
)
LLM_CALLS = Counter(
    "outreach_llm_calls", "Model calls by purpose and outcome (ok or the fallback code)",
    ["purpose", "outcome"], registry=REGISTRY,
)  # fmt: skip
LLM_TOKENS = Counter(
    "outreach_llm_tokens", "Model tokens spent", ["purpose", "kind"], registry=REGISTRY
)
LLM_SECONDS = Histogram(
    "outreach_llm_call_seconds", "Model call latency (the SDK's retries included)",
    ["purpose"], buckets=_FAST, registry=REGISTRY,
)  # fmt: skip


class BatchCounts(Protocol):
    """What ``observe_batch`` reads of a batch result."""

    events: int
    duplicates: int
    dead_letters: int
    engine_failures: int
    redelivered: int


def observe_batch(result: BatchCounts, seconds: float) -> None:
    """Count one applied batch."""
    WORKER_BATCHES.inc()
    WORKER_BATCH_SECONDS.observe(seconds)
    WORKER_RECORDS.labels("applied").inc(result.events - result.duplicates)
    WORKER_RECORDS.labels("duplicate").inc(result.duplicates)
    WORKER_RECORDS.labels("dead_letter").inc(result.dead_letters - result.engine_failures)
    WORKER_RECORDS.labels("engine_failure").inc(result.engine_failures)
    WORKER_RECORDS.labels("redelivered").inc(result.redelivered)


_STATUS = re.compile(r"(?<![\d.])([45]\d\d)(?![\d.])")


def error_class(exc: BaseException) -> str:
    """The class of a provider failure: timeout, connect, 429, 5xx, 4xx or other (from the
    error's ``code``, else its type and text)."""
    code = str(getattr(exc, "code", "") or "")
    if not code.isdigit() or len(code) != 3:
        found = _STATUS.search(str(exc))
        code = found.group(1) if found else ""
    text = f"{type(exc).__name__} {exc}".lower()
    if code == "429" or "rate limit" in text:
        return "429"
    if "timeout" in text or "timed out" in text:
        return "timeout"
    if code.startswith("5"):
        return "5xx"
    if code.startswith("4"):
        return "4xx"
    if any(w in text for w in ("connect", "unreachable", "refused", "network", "dns")):
        return "connect"
    return "other"


def provider_of(component: object) -> str:
    """A connector's or channel's provider label, from its class name."""
    name = type(component).__name__.lower()
    for provider in ("twilio", "sendgrid", "stripe", "file", "fake", "recording"):
        if provider in name:
            return provider
    if "http" in name:
        return "http"
    return name.removesuffix("connector").removesuffix("channel") or "unknown"


class _Breakers(Collector):
    """``outreach_connector_circuit_open`` from the breakers of the watched connectors."""

    def __init__(self) -> None:
        self._watched: weakref.WeakSet[Any] = weakref.WeakSet()
        self._lock = threading.Lock()

    def watch(self, connector: object) -> None:
        with self._lock:
            try:
                self._watched.add(connector)
            except TypeError:  # not weakly referenceable: a test double
                return

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "outreach_connector_circuit_open",
            "1 while the tool's circuit breaker is open or half-open",
            labels=["tool"],
        )
        seen: dict[str, float] = {}
        with self._lock:
            connectors = list(self._watched)
        for connector in connectors:
            routes = getattr(connector, "routes", None)
            pairs = routes.items() if isinstance(routes, dict) else []
            for tool, routed in pairs:
                breaker = getattr(routed, "breaker", None)
                state = getattr(breaker, "state", None)
                if isinstance(state, str):
                    seen[tool] = max(seen.get(tool, 0.0), 0.0 if state == "closed" else 1.0)
        for tool, value in sorted(seen.items()):
            family.add_metric([tool], value)
        yield family


BREAKERS = _Breakers()
REGISTRY.register(BREAKERS)


def watch_circuits(connector: object) -> None:
    """Export the circuit breakers of ``connector``'s routes (a ``ToolRouter``)."""
    BREAKERS.watch(connector)


def serve(port: int, addr: str = "0.0.0.0") -> Any:  # noqa: S104 - a container's port
    """Serve this process's metrics at ``http://addr:port/metrics`` (a daemon thread); returns
    the server (``shutdown()`` stops it)."""
    server, _thread = start_http_server(port, addr, registry=REGISTRY)
    return server
