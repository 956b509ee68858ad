"""``outreach publish | worker | api``: the commands that run against Kafka and the store.

``publish`` sends an events file to the input topics; ``worker`` is the long-running consumer
(with ``--publish`` it sends a file too and prints the same report as ``publish``); ``api``
serves the operator API and the provider webhooks. Kept apart from ``outreach.cli`` for size,
as ``outreach.cli_kafka`` and ``outreach.cli_operator`` are.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

from outreach.cli_kafka import KafkaUrlOption, TopicPrefixOption, kafka_target
from outreach.cli_kafka import new_table as _table
from outreach.cli_operator import LogFormatOption, MetricsPortOption, serve_metrics, setup_logging
from outreach.cli_rules import load_rules
from outreach.errors import OutreachError
from outreach.rules.yamlfile import RuleFileError

if TYPE_CHECKING:
    from outreach.streams.publish import PublishReport
    from outreach.streams.runtime import WorkerSettings
    from outreach.streams.topics import KafkaSettings

out = Console()
err = Console(stderr=True)


def publish(
    events: Annotated[Path, typer.Argument(help="a JSONL file of events, one per line")],
    rate: Annotated[
        float | None, typer.Option(min=0.001, help="events per second (default: at once)")
    ] = None,
    kafka_url: KafkaUrlOption = None,
    topic_prefix: TopicPrefixOption = None,
) -> None:
    """Publish a JSONL file's events, as they are, to the input topics (keyed by customer_id).

    Exits 1 if some lines were not sent (they are listed: not routable, too large, or
    refused by the brokers).
    """
    import asyncio

    from aiokafka.errors import KafkaError  # type: ignore[import-untyped,unused-ignore]

    from outreach.streams.publish import PublishError, publish_file
    from outreach.streams.topics import ensure_topics

    settings, url, topics = kafka_target(kafka_url, topic_prefix, "to publish to")
    if not events.is_file():
        err.print(f"[bold red]cannot read the events file {events}[/]")
        raise typer.Exit(2)
    bar = Progress(
        TextColumn("publish"), BarColumn(), TransferSpeedColumn(), TimeRemainingColumn(),
        console=err, transient=True,
    )  # fmt: skip

    async def run() -> PublishReport:
        await ensure_topics(
            url, topics, settings.partitions, replication_factor=settings.replication_factor
        )
        task = bar.add_task("publish", total=events.stat().st_size)
        return await publish_file(
            events, url, topics, rate, lambda done, _: bar.update(task, completed=done)
        )

    try:
        with bar:
            report = asyncio.run(run())
    except (KafkaError, PublishError) as exc:
        err.print(f"[bold red]publishing to {url} failed:[/] {exc}", highlight=False)
        raise typer.Exit(1) from None
    _print_publish_report(events, report, url, topics.inputs)
    if report.unroutable:
        raise typer.Exit(1)


def _print_publish_report(
    events: Path, report: PublishReport, url: str, inputs: tuple[str, ...]
) -> None:
    table = _table("published", "topic", "events")
    for topic in inputs:
        table.add_row(topic, str(report.published.get(topic, 0)))
    out.print(table)
    out.print(f"{report.total} events acknowledged by {url} in {report.elapsed:.1f}s")
    if report.unroutable:
        err.print(f"[bold red]{report.unroutable} line(s) not sent:[/]")
    for line in report.unroutable_lines:
        where = f"{events}:{line.line}: {line.reason}"
        err.print(where, markup=False, highlight=False, soft_wrap=True)
    if report.unroutable > len(report.unroutable_lines):
        err.print(f"... and {report.unroutable - len(report.unroutable_lines)} more")


def worker(
    rules: Annotated[
        Path | None, typer.Option(help="rules folder (default: $OUTREACH_RULES or rules)")
    ] = None,
    kafka_url: Annotated[
        str | None,
        typer.Option(
            help="bootstrap servers (default: $OUTREACH_KAFKA_URL; none: start the embedded broker)"
        ),
    ] = None,
    database_url: Annotated[
        str | None,
        typer.Option(help="the store (default: $OUTREACH_DATABASE_URL or sqlite:///outreach.db)"),
    ] = None,
    data_dir: Annotated[
        Path | None,
        typer.Option(
            help="file channel and connector output, broker log (default: $OUTREACH_DATA_DIR or "
            ".outreach)"
        ),
    ] = None,
    runtime: Annotated[
        str | None,
        typer.Option(
            help="consumer driver: aiokafka or faust (default: $OUTREACH_RUNTIME or aiokafka)"
        ),
    ] = None,
    publish: Annotated[
        Path | None, typer.Option(help="publish this JSONL file once the worker is up (demo)")
    ] = None,
    rate: Annotated[
        float | None, typer.Option(min=0.001, help="with --publish: events per second")
    ] = None,
    until_idle: Annotated[
        bool,
        typer.Option(
            help="stop once everything is applied, relayed and dispatched (and due timers "
            "fired, unless --no-scheduler: then they are left to `outreach scheduler`)"
        ),
    ] = False,
    export: Annotated[
        bool | None,
        typer.Option(
            help="also write the output topics to DATA_DIR/decisions/*.jsonl "
            "(default: $OUTREACH_EXPORT or no)",
            show_default=False,
        ),
    ] = None,
    dispatch: Annotated[
        bool | None,
        typer.Option(
            help="run the effects dispatcher in-process (default: $OUTREACH_DISPATCH or yes)",
            show_default=False,
        ),
    ] = None,
    scheduler: Annotated[
        bool | None,
        typer.Option(
            help="run the timer scheduler in-process (active, or a standby behind another); "
            "--no-scheduler when `outreach scheduler` runs on its own "
            "(default: $OUTREACH_SCHEDULER or yes)",
            show_default=False,
        ),
    ] = None,
    log_level: Annotated[str, typer.Option(help="debug, info, warning or error")] = "warning",
    log_format: LogFormatOption = None,
    metrics_port: MetricsPortOption = None,
) -> None:
    """Run a live worker: consume the input topics, decide, write the store, relay decisions
    to the output topics, and perform due effects and messages (file connector and file
    channel by default). With no Kafka URL an embedded broker is started. Ctrl-C stops it.
    With --publish, the lines not sent are listed when publishing ends, and the exit code is 1
    (the worker runs on all the same)."""
    import asyncio

    from pydantic import ValidationError

    from outreach.connectors import ConnectorsSettings, build_connector
    from outreach.outbound.config import OutboundSettings, build_channel
    from outreach.outbound.sendgrid import SendGridSettings
    from outreach.outbound.twilio import TwilioSettings
    from outreach.streams.console import run_worker
    from outreach.telemetry.redact import redact_secrets, register_settings, register_url

    # after importing faust, which configured the root logger: this replaces its handler
    telemetry = setup_logging(log_level, log_format)
    register_url(database_url or "")
    given = {
        "rules": rules, "database_url": database_url, "data_dir": data_dir, "runtime": runtime,
        "export": export, "dispatch": dispatch, "scheduler": scheduler,
    }  # fmt: skip
    settings, kafka = _worker_settings(given, kafka_url)
    if publish is not None and not publish.is_file():
        err.print(f"[bold red]cannot read the events file {publish}[/]")
        raise typer.Exit(2)
    try:  # a channel without its credentials fails here, before anything starts
        outbound, twilio, sendgrid = OutboundSettings(), TwilioSettings(), SendGridSettings()
        connectors = ConnectorsSettings()
        register_settings(settings, kafka, outbound, twilio, sendgrid, connectors)
        channel = build_channel(outbound, twilio, sendgrid, settings.data_dir)
        connector = build_connector(settings.data_dir, connectors, outbound.public_url)
    except ValidationError as exc:
        err.print(f"[bold red]invalid outbound setting:[/] {exc}", highlight=False)
        raise typer.Exit(2) from None
    except RuleFileError as exc:
        err.print(f"[bold red]the connectors file cannot be loaded:[/]\n{exc}", highlight=False)
        raise typer.Exit(2) from None
    except OutreachError as exc:
        err.print(f"[bold red]the worker cannot start:[/] {exc}", highlight=False)
        raise typer.Exit(2) from None
    serve_metrics(metrics_port, telemetry)
    try:
        parts, report = asyncio.run(
            run_worker(
                settings, kafka, out, publish=publish, rate=rate,
                on_published=_print_publish_report, until_idle=until_idle, channel=channel,
                connector=connector,
            )
        )  # fmt: skip
    except RuleFileError as exc:
        err.print(f"[bold red]the rules cannot be loaded:[/]\n{exc}", highlight=False)
        raise typer.Exit(2) from None
    except OutreachError as exc:  # a busy store, a broker that does not start
        err.print(f"[bold red]the worker cannot start:[/] {exc}", highlight=False)
        raise typer.Exit(2) from None
    where = {"file": str(settings.data_dir / "messages.jsonl"), "twilio": "Twilio",
             "sendgrid": "SendGrid"}  # fmt: skip
    err.print(
        f"store: {redact_secrets(settings.database_url)} (state, outbox, positions); "
        f"effects performed: {_effects_where(connector, settings.data_dir)}; "
        f"SMS sent to {where[outbound.sms_channel]}; email sent to {where[outbound.email_channel]}",
        highlight=False,
    )
    if parts.exporter is not None:
        err.print(
            f"decision log: {parts.exporter.folder}/ (signals, actions, messages, dlq .jsonl)"
        )
    if parts.failure is not None:
        err.print(f"[bold red]the worker stopped on an error:[/] {parts.failure}", highlight=False)
        raise typer.Exit(1)
    if report is not None and report.unroutable:  # listed when publishing ended
        err.print(f"[bold red]{report.unroutable} line(s) of {publish} not sent[/] (listed above)")
        raise typer.Exit(1)


def api(
    host: Annotated[
        str | None, typer.Option(help="interface (default: $OUTREACH_HOST or 127.0.0.1)")
    ] = None,
    port: Annotated[int | None, typer.Option(help="port (default: $OUTREACH_PORT or 8000)")] = None,
    database_url: Annotated[
        str | None,
        typer.Option(help="the store (default: $OUTREACH_DATABASE_URL or sqlite:///outreach.db)"),
    ] = None,
    kafka_url: Annotated[
        str | None, typer.Option(help="bootstrap servers (default: $OUTREACH_KAFKA_URL)")
    ] = None,
    rules: Annotated[
        Path | None, typer.Option(help="rules folder, for the brand (default: $OUTREACH_RULES)")
    ] = None,
    log_level: Annotated[str, typer.Option(help="debug, info, warning or error")] = "info",
    log_format: LogFormatOption = None,
) -> None:
    """Serve the operator API (/v1: events, approvals, timelines, rules, kill switches; API
    keys from `outreach keys`), /healthz, /readyz, /metrics, the provider webhooks (Twilio,
    SendGrid) and the one-click unsubscribe links; every fact and decision is published to
    Kafka for the workers. OpenAPI at /openapi.json, docs at /docs. Ctrl-C stops it."""
    import uvicorn
    from pydantic import ValidationError

    from outreach.api import ApiSettings, KafkaEventSink, KeywordReplies, create_app
    from outreach.api.logs import uvicorn_root_config
    from outreach.api.metrics import kafka_lag
    from outreach.api.operator import LoadedRules
    from outreach.store import Store, StoreSettings
    from outreach.store.contacts import Contacts
    from outreach.store.operator import Operator
    from outreach.streams.topics import KafkaSettings, Topics
    from outreach.telemetry.redact import register_settings, register_url

    setup_logging(log_level, log_format)
    register_url(database_url or "")
    given: dict[str, Any] = {"host": host, "port": port, "rules": rules}
    try:
        settings = ApiSettings(**{k: v for k, v in given.items() if v is not None})
        store_settings = StoreSettings()
        kafka = KafkaSettings()
        topics = Topics(kafka.topic_prefix)
    except (ValidationError, ValueError) as exc:
        err.print(f"[bold red]invalid setting:[/] {exc}", highlight=False)
        raise typer.Exit(2) from None
    register_settings(settings, store_settings, kafka)
    url = kafka_url or kafka.kafka_url
    if not url:
        err.print(
            "[bold red]no Kafka to publish to:[/] set OUTREACH_KAFKA_URL (or pass --kafka-url) "
            "to the cluster the workers read; the embedded broker belongs to `outreach worker` "
            "and lives only as long as it does"
        )
        raise typer.Exit(2)
    book = load_rules(settings.rules)
    brand = book.policy.brand
    replies = KeywordReplies.from_templates(
        book.policy.contact.keywords,
        brand=brand.name, support_url=brand.support_url, support_email=brand.support_email,
    )  # fmt: skip
    unset = {
        "OUTREACH_TWILIO_AUTH_TOKEN": settings.twilio_auth_token,
        "OUTREACH_SENDGRID_WEBHOOK_PUBLIC_KEY": settings.sendgrid_webhook_public_key,
        "OUTREACH_UNSUBSCRIBE_SECRET": settings.unsubscribe_secret,
        "OUTREACH_STRIPE_WEBHOOK_SECRET": settings.stripe_webhook_secret,
    }
    billing = _stripe_account()
    for name in (name for name, value in unset.items() if value is None):
        err.print(f"[yellow]{name} is not set: its endpoint answers 503[/]")
    store = Store(database_url or store_settings.database_url)
    store.migrate()
    sink = KafkaEventSink(url, topics, kafka.partitions, kafka.replication_factor)
    operator = Operator(store)
    try:
        web = create_app(
            settings, Contacts(store), sink, replies, brand=brand.name, lifespan=sink.lifespan,
            rules=LoadedRules(book), lag=partial(kafka_lag, url, operator, kafka.group_id),
            billing=billing,
        )  # fmt: skip
    except ValueError as exc:  # a SendGrid key that is not one
        err.print(f"[bold red]invalid setting:[/] {exc}", highlight=False)
        raise typer.Exit(2) from None
    try:
        uvicorn.run(
            web, host=settings.host, port=settings.port, log_level=log_level.lower(),
            log_config=uvicorn_root_config(),
        )  # fmt: skip
    finally:
        store.close()


def _worker_settings(
    given: dict[str, Any], kafka_url: str | None
) -> tuple[WorkerSettings, KafkaSettings]:
    """The worker's and Kafka's settings (the options ``given``, the environment for the rest),
    every one checked now, not once the broker has started and the store is migrated; exits 2
    naming a bad one."""
    from outreach.scheduling import SchedulerSettings
    from outreach.streams.runtime import WorkerSettings
    from outreach.streams.topics import KafkaSettings, Topics

    try:
        settings = WorkerSettings(**{k: v for k, v in given.items() if v is not None})
        kafka = KafkaSettings()
        if kafka_url:
            kafka = kafka.model_copy(update={"kafka_url": kafka_url})
        Topics(kafka.topic_prefix)
        if settings.scheduler:
            SchedulerSettings().options()
    except ValueError as exc:  # pydantic's ValidationError included
        err.print(f"[bold red]invalid setting:[/] {exc}", highlight=False)
        raise typer.Exit(2) from None
    return settings, kafka


def _stripe_account() -> Any:
    """The Stripe client of the connectors file's ``stripe`` section (for ``/pay`` links), or
    None; exits 2 when the file cannot be loaded."""
    from outreach.connectors import ConnectorsSettings, StripeBilling, load_connectors

    path = ConnectorsSettings().connectors
    if path is None:
        return None
    try:
        loaded = load_connectors(path)
    except (RuleFileError, OSError) as exc:
        err.print(f"[bold red]the connectors file cannot be loaded:[/] {exc}", highlight=False)
        raise typer.Exit(2) from None
    return StripeBilling(loaded.stripe).client if loaded.stripe is not None else None


def _effects_where(connector: Any, data_dir: Path) -> str:
    """Where the worker's effects went, for the closing summary."""
    from outreach.connectors import HttpConnector, StripeBilling

    routes = getattr(connector, "routes", {})
    listed = sorted(t for t, c in routes.items() if isinstance(c, HttpConnector))
    billed = sorted(t for t, c in routes.items() if isinstance(c, StripeBilling))
    if not listed and not billed:
        return str(data_dir / "effects.jsonl")
    parts = [f"{', '.join(listed)} by HTTP"] if listed else []
    parts += [f"{', '.join(billed)} through Stripe"] if billed else []
    return f"{'; '.join(parts)} (connectors file), the rest to {data_dir / 'effects.jsonl'}"
