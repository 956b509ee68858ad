"""``outreach explain | approvals | scheduler``: the operator's commands over the store.

They read the store the workers write (``OUTREACH_DATABASE_URL``); approving or rejecting
publishes an ``approval.decided`` event to Kafka (``OUTREACH_KAFKA_URL``) for the worker that
owns the customer, which runs it through the guardrails again.
"""

from __future__ import annotations

import asyncio
import getpass
import time
import uuid
from datetime import UTC, datetime
from typing import Annotated, Any

import orjson
import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from outreach.store.operator import Approval, Operator, iso

approvals_app = typer.Typer(help="The approvals queue: list, show, approve, reject.",
                            no_args_is_help=True)  # fmt: skip

out = Console()
err = Console(stderr=True)
DatabaseOption = Annotated[
    str | None,
    typer.Option(help="the store (default: $OUTREACH_DATABASE_URL or sqlite:///outreach.db)"),
]
LogFormatOption = Annotated[
    str | None,
    typer.Option(help="log lines as json or text (default: $OUTREACH_LOG_FORMAT or text)"),
]
MetricsPortOption = Annotated[
    int | None,
    typer.Option(
        min=0, max=65535,
        help="serve this process's Prometheus metrics at :PORT/metrics "
        "(default: $OUTREACH_METRICS_PORT; unset: not served)",
    ),
]  # fmt: skip


def setup_logging(level: str, fmt: str | None = None) -> Any:
    """``outreach.telemetry.logs.configure_logging`` for a command (JSON or text, secrets cut,
    personal data masked); exits 2 on an invalid format or redaction setting. Returns the
    command's ``TelemetrySettings``."""
    from pydantic import ValidationError

    from outreach.telemetry.logs import TelemetrySettings, configure_logging

    try:
        settings = TelemetrySettings()
        configure_logging(level, fmt, settings=settings)
    except (ValidationError, ValueError) as exc:
        err.print(f"[bold red]invalid logging setting:[/] {exc}", highlight=False)
        raise typer.Exit(2) from None
    return settings


def serve_metrics(port: int | None, settings: Any) -> None:
    """Start this process's metrics endpoint if ``port`` (else ``OUTREACH_METRICS_PORT``) is
    set; exits 2 if the port cannot be bound."""
    from outreach.telemetry.metrics import serve

    chosen = port if port is not None else settings.metrics_port
    if chosen is None:
        return
    try:
        serve(chosen)
    except OSError as exc:
        err.print(f"[bold red]cannot serve metrics on port {chosen}:[/] {exc}", highlight=False)
        raise typer.Exit(2) from None


def open_operator(database_url: str | None) -> Operator:
    """The operator's view of the store (``--database-url``, else the environment), migrated."""
    from outreach.store import Store, StoreSettings

    store = Store(database_url or StoreSettings().database_url)
    store.migrate()
    return Operator(store)


# -- explain -------------------------------------------------------------------------------


def explain(
    customer_id: Annotated[str, typer.Argument(help="the customer to explain")],
    database_url: DatabaseOption = None,
    limit: Annotated[int, typer.Option(help="the most recent N entries")] = 1000,
    json_out: Annotated[bool, typer.Option("--json", help="JSON lines instead of text")] = False,
) -> None:
    """Why did we message this customer? Everything recorded about them, in time order:
    events, signals with their evidence and rule version, actions with every guardrail
    verdict, messages with every contact-policy verdict, deliveries, replies, approvals."""
    operator = open_operator(database_url)
    try:
        entries = operator.timeline(customer_id, limit)
    finally:
        operator.store.close()
    if json_out:
        for entry in entries:
            out.out(orjson.dumps(entry).decode(), highlight=False)
        return
    if not entries:
        err.print(f"nothing recorded for customer {customer_id!r} in this store")
        raise typer.Exit(1)
    out.print(f"[bold]{escape(customer_id)}[/]: {len(entries)} entries", highlight=False)
    for entry in entries:
        for line in describe_entry(entry):
            out.print(line, highlight=False)


def describe_entry(entry: dict[str, Any]) -> list[str]:
    """An entry of the timeline as a few readable lines (rich markup, escaped)."""
    at, kind, r = entry["at"], entry["kind"], entry["record"]
    head = f"[dim]{at}[/] "
    lines: list[str] = []
    if kind == "event":
        data = r.get("data", {})
        shown = ", ".join(f"{k}={_short(v)}" for k, v in list(data.items())[:6])
        lines.append(head + f"[cyan]event[/] {escape(r.get('type', '?'))} "
                     f"{escape(r.get('event_id', ''))}: {escape(shown)}")  # fmt: skip
    elif kind == "signal":
        evidence = ", ".join(f"{k}={_short(v)}" for k, v in r.get("evidence", {}).items())
        lines.append(head + f"[magenta]signal[/] {escape(r['rule_id'])} "
                     f"v{r.get('rule_version', '?')} {escape(r['signal_id'])}")  # fmt: skip
        lines.append(f"    evidence: {escape(evidence)}")
        if r.get("note"):
            lines.append(f"    {escape(r['note'])}")
    elif kind == "action":
        who = f" by {r['decided_by']}" if r.get("decided_by") else ""
        lines.append(head + f"[yellow]action[/] {escape(r['type'])} [bold]{r['status']}[/]"
                     f"{escape(who)} {escape(r['action_id'])}: {escape(r['reason'])}")  # fmt: skip
        lines += [_check(c) for c in r.get("checks", [])]
    elif kind == "message":
        to = f" to {r['to']}" if r.get("to") else ""
        lines.append(head + f"[green]message[/] {r['channel']} {r['purpose']} "
                     f"[bold]{r['status']}[/]{escape(to)} {escape(r['message_id'])}: "
                     f"{escape(r['reason'])}")  # fmt: skip
        if r.get("body"):
            lines.append(f"    \u201c{escape(r['body'])}\u201d")
        lines += [_check(c) for c in r.get("checks", [])]
    elif kind == "receipt":
        code = f" ({r['error_code']})" if r.get("error_code") else ""
        reaction = f": {r['reaction']}" if r.get("reaction") else ""
        lines.append(head + f"[blue]delivery[/] {r['channel']} {r['status']}{escape(code)} "
                     f"{escape(r['message_id'])}{escape(reaction)}")  # fmt: skip
    return lines


def _check(check: dict[str, Any]) -> str:
    return f"    - {escape(str(check.get('check')))}: {escape(str(check.get('result')))}" + (
        f" ({escape(str(check['detail']))})" if check.get("detail") else ""
    )


def _short(value: Any) -> str:
    text = value if isinstance(value, str) else orjson.dumps(value).decode()
    return text if len(text) <= 60 else text[:57] + "..."


# -- approvals ------------------------------------------------------------------------------


@approvals_app.command("list")
def approvals_list(
    database_url: DatabaseOption = None,
    status: Annotated[str, typer.Option(help="pending_approval, a final status, or all")] = (
        "pending_approval"
    ),
    limit: Annotated[int, typer.Option()] = 200,
) -> None:
    """Actions waiting for a person, oldest first (or past entries with --status)."""
    operator = open_operator(database_url)
    try:
        found = operator.approvals(None if status == "all" else status, limit)
    finally:
        operator.store.close()
    table = Table(title=f"approvals ({status})")
    for header in ("action", "customer", "tool", "params", "status", "requested", "expires"):
        table.add_column(header, overflow="fold")
    for a in found:
        params = ", ".join(f"{k}={_short(v)}" for k, v in a.record.get("params", {}).items())
        expires = iso(a.expires_at) if a.expires_at else ""
        table.add_row(a.action_id, a.customer_id, a.tool, params, a.status,
                      iso(a.requested_at), expires)  # fmt: skip
    out.print(table)
    if not found:
        out.print("nothing waiting" if status == "pending_approval" else "no entries")


@approvals_app.command("show")
def approvals_show(
    action_id: Annotated[str, typer.Argument()], database_url: DatabaseOption = None
) -> None:
    """One action of the queue: what it would do, why it needs a person, its checks."""
    operator = open_operator(database_url)
    try:
        approval = _find(operator, action_id)
    finally:
        operator.store.close()
    data = approval.as_dict()
    for key in ("action_id", "customer_id", "rule_id", "tool", "status", "requested_at",
                "expires_at", "decided_by", "request_reason", "reason"):  # fmt: skip
        out.print(f"{key:>15}: {escape(str(data[key]))}", highlight=False)
    out.print(f"{'params':>15}: {escape(orjson.dumps(data['params']).decode())}", highlight=False)
    for check in data["checks"]:
        out.print(_check(check), highlight=False)


def _find(operator: Operator, action_id: str) -> Approval:
    approval = operator.approval(action_id)
    if approval is None:
        err.print(f"[bold red]no action {escape(action_id)} has waited for approval[/]")
        raise typer.Exit(1)
    return approval


def _decide(
    action_id: str, decision: str, by: str | None, note: str | None, database_url: str | None,
    kafka_url: str | None, wait: float,
) -> None:  # fmt: skip
    operator = open_operator(database_url)  # opened (and migrated) once, polled below
    try:
        _submit(operator, action_id, decision, by, note, kafka_url, wait)
    finally:
        operator.store.close()


def _submit(
    operator: Operator, action_id: str, decision: str, by: str | None, note: str | None,
    kafka_url: str | None, wait: float,
) -> None:  # fmt: skip
    from outreach.events import ApprovalDecided, ApprovalDecidedData
    from outreach.streams.publish import EventPublisher
    from outreach.streams.topics import KafkaSettings, Topics

    approval = _find(operator, action_id)
    if approval.status != "pending_approval":
        who = f" by {approval.decided_by}" if approval.decided_by else ""
        err.print(f"[bold red]{action_id} no longer waits for approval:[/] {approval.status}{who}")
        raise typer.Exit(1)
    kafka = KafkaSettings()
    url = kafka_url or kafka.kafka_url
    if not url:
        err.print("[bold red]no Kafka to publish to:[/] set OUTREACH_KAFKA_URL (or --kafka-url)")
        raise typer.Exit(2)
    who = by or getpass.getuser()
    event = ApprovalDecided(
        event_id=f"apr_{uuid.uuid4().hex}", type="approval.decided",
        customer_id=approval.customer_id, occurred_at=datetime.now(UTC), source="cli",
        data=ApprovalDecidedData(action_id=action_id, decision=decision, by=who, note=note),
    )  # fmt: skip

    async def send() -> None:
        async with EventPublisher(url, Topics(kafka.topic_prefix), client_id="outreach-cli") as p:
            await (await p.publish(event))

    asyncio.run(send())
    out.print(f"{decision} of {action_id} by {who} submitted ({event.event_id})")
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        approval = _find(operator, action_id)
        if approval.status != "pending_approval":
            out.print(f"outcome: [bold]{approval.status}[/]: {escape(approval.record['reason'])}")
            return
        time.sleep(0.5)
    if wait:
        out.print("no outcome yet: is a worker running? `outreach approvals show` tells later")


ByOption = Annotated[str | None, typer.Option(help="who decides (default: your login name)")]
NoteOption = Annotated[str | None, typer.Option(help="why, for the record")]
KafkaOption = Annotated[str | None, typer.Option(help="bootstrap servers ($OUTREACH_KAFKA_URL)")]
WaitOption = Annotated[float, typer.Option(help="seconds to wait for the outcome (0: do not)")]


@approvals_app.command("approve")
def approvals_approve(
    action_id: Annotated[str, typer.Argument()], by: ByOption = None, note: NoteOption = None,
    database_url: DatabaseOption = None, kafka_url: KafkaOption = None, wait: WaitOption = 30.0,
) -> None:  # fmt: skip
    """Approve a pending action. The worker judges it again (budgets and kill switches may
    have moved) and performs it, or records why not."""
    _decide(action_id, "approve", by, note, database_url, kafka_url, wait)


@approvals_app.command("reject")
def approvals_reject(
    action_id: Annotated[str, typer.Argument()], by: ByOption = None, note: NoteOption = None,
    database_url: DatabaseOption = None, kafka_url: KafkaOption = None, wait: WaitOption = 30.0,
) -> None:  # fmt: skip
    """Reject a pending action: it is cancelled and never performed."""
    _decide(action_id, "reject", by, note, database_url, kafka_url, wait)


def scheduler(
    database_url: DatabaseOption = None,
    kafka_url: KafkaOption = None,
    log_level: Annotated[str, typer.Option(help="debug, info, warning or error")] = "info",
    log_format: LogFormatOption = None,
    metrics_port: MetricsPortOption = None,
) -> None:
    """Run the timer scheduler on its own: payment retries, deferred messages, follow-ups and
    approval expiries come due here and are produced to the timers topic for the workers.
    The active one also prunes, hourly, the audit trail ($OUTREACH_AUDIT_RETENTION, e.g.
    365d; unset: kept), finished outbox rows ($OUTREACH_OUTBOX_RETENTION, default 30d) and
    provider callback ids (after 7 days), and posts new pending approvals to
    $OUTREACH_APPROVALS_WEBHOOK_URL (signed with $OUTREACH_APPROVALS_WEBHOOK_SECRET).
    One scheduler is active per store; start more as hot standbys (each waits for the active
    one's lock and takes over within a second of its death). Workers run one in-process unless
    started with --no-scheduler. Ctrl-C or SIGTERM stops it."""
    import signal

    from pydantic import ValidationError

    from outreach.scheduling import SchedulerSettings, TimerScheduler
    from outreach.store import Store, StoreSettings
    from outreach.streams.topics import KafkaSettings, Topics
    from outreach.telemetry.redact import register_settings, register_url

    telemetry = setup_logging(log_level, log_format)
    kafka = KafkaSettings()
    url = kafka_url or kafka.kafka_url
    if not url:
        err.print(
            "[bold red]no Kafka to produce timers to:[/] set OUTREACH_KAFKA_URL (or --kafka-url); "
            "an embedded worker (no Kafka URL) runs its scheduler in-process"
        )
        raise typer.Exit(2)
    try:
        scheduler_settings, store_settings = SchedulerSettings(), StoreSettings()
        options = scheduler_settings.options()
    except ValidationError as exc:
        err.print(f"[bold red]invalid setting:[/] {exc}", highlight=False)
        raise typer.Exit(2) from None
    register_settings(scheduler_settings, store_settings, kafka)
    register_url(database_url or "")
    serve_metrics(metrics_port, telemetry)
    store = Store(database_url or store_settings.database_url)

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await asyncio.to_thread(store.migrate)
        topics = Topics(kafka.topic_prefix)
        await TimerScheduler(store, topics, url, group=kafka.group_id, options=options).run(stop)

    try:
        asyncio.run(run())
    finally:
        store.close()
