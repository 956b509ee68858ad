"""``outreach ...``: the command line. Thin: parse arguments, call the package, print."""

from __future__ import annotations

import sys
import time
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import orjson
import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn
from rich.table import Table

from outreach.cli_kafka import KafkaUrlOption, TopicPrefixOption, dlq_app, kafka_target
from outreach.cli_kafka import new_table as _table
from outreach.cli_operator import (
    LogFormatOption,
    MetricsPortOption,
    approvals_app,
    audit_app,
    explain,
    keys_app,
    scheduler,
    serve_metrics,
    setup_logging,
)
from outreach.errors import OutreachError
from outreach.events import json_schemas
from outreach.rulebook import RuleBook, describe, load_rulebook
from outreach.rules.yamlfile import RuleFileError

if TYPE_CHECKING:
    from outreach.streams.publish import PublishReport

app = typer.Typer(
    help="Event-driven proactive outreach: detect risk, fix what is allowed, tell customers first.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
schema_app = typer.Typer(help="The event contract for backend teams.", no_args_is_help=True)
rules_app = typer.Typer(help="Check and test rule folders.", no_args_is_help=True)
connectors_app = typer.Typer(
    help="The connectors file: which system each tool's effects go to.", no_args_is_help=True
)
eval_app = typer.Typer(
    help="Evaluate the LLM planner and composer against scenarios.", no_args_is_help=True
)
app.add_typer(eval_app, name="eval")
app.add_typer(schema_app, name="schema")
app.add_typer(rules_app, name="rules")
app.add_typer(connectors_app, name="connectors")
app.add_typer(approvals_app, name="approvals")
app.add_typer(keys_app, name="keys")
app.add_typer(audit_app, name="audit")
app.add_typer(dlq_app, name="dlq")
app.command()(explain)
app.command()(scheduler)

out = Console()
err = Console(stderr=True)


@app.callback()
def _every_command() -> None:
    """Event-driven proactive outreach: detect risk, fix what is allowed, tell customers first."""
    # every command logs through one handler (format, secrets cut, personal data masked);
    # the long-running ones configure it again with their --log-level and --log-format
    setup_logging("warning")


def _load(folder: Path) -> RuleBook:
    try:
        return load_rulebook(folder)
    except RuleFileError as exc:
        err.print(f"[bold red]{folder}: {len(exc.problems)} problem(s); nothing was run.[/]")
        for problem in exc.problems:
            err.print(str(problem), markup=False, highlight=False)
        raise typer.Exit(2) from None


@schema_app.command("export")
def schema_export(
    folder: Annotated[Path, typer.Argument(help="where to write <type>.schema.json files")],
) -> None:
    """Write one JSON Schema per event type."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, schema in json_schemas().items():
        (folder / f"{name}.schema.json").write_bytes(
            orjson.dumps(schema, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS) + b"\n"
        )
    out.print(f"wrote {len(json_schemas())} schemas to {folder}")


@rules_app.command("check")
def rules_check(folder: Annotated[Path, typer.Argument(help="the rules folder")]) -> None:
    """Validate a rules folder: policy, templates, rule files; explains every problem."""
    book = _load(folder)
    table = _table(str(folder), "rule", "v", "trigger", "playbook", "state", "holdout", "tests")
    for row in describe(book):
        state = "disabled" if not row["enabled"] else ("shadow" if row["shadow"] else "live")
        table.add_row(
            row["id"], str(row["version"]), row["trigger"], row["playbook"], state,
            f"{row['holdout']:g}%", str(row["tests"]),
        )  # fmt: skip
    out.print(table)
    out.print(f"[green]ok[/]: {len(book.specs)} rules, {len(book.templates.ids())} templates")


@connectors_app.command("check")
def connectors_check(
    path: Annotated[Path, typer.Argument(help="the connectors file (OUTREACH_CONNECTORS)")],
) -> None:
    """Validate a connectors file: tools, URLs, templates, and that every ${VAR} it names is
    set in this environment. Tools not listed go to the file connector."""
    from outreach.connectors.config import FileTool, StripeTool, load_connectors

    try:
        loaded = load_connectors(path)
    except RuleFileError as exc:
        err.print(f"[bold red]the connectors file cannot be loaded:[/]\n{exc}", highlight=False)
        raise typer.Exit(1) from None
    table = _table(str(path), "tool", "kind", "method", "url", "idempotent", "events")
    for tool, config in sorted(loaded.tools.items()):
        if isinstance(config, FileTool):
            table.add_row(tool, "file", "", "DATA_DIR/effects.jsonl", "yes", "")
            continue
        if isinstance(config, StripeTool):
            base = (loaded.stripe.api_base if loaded.stripe else None) or "https://api.stripe.com"
            events = "payment.failed, payment.succeeded" if tool == "retry_payment" else ""
            table.add_row(tool, "stripe", "POST", base, "yes (Idempotency-Key)", events)
            continue
        events = ", ".join(e.type for e in config.response.events)
        url = config.url.split("?", 1)[0]
        idempotent = "yes" if config.idempotent else "no"
        table.add_row(tool, config.kind, config.method, url, idempotent, events)
    out.print(table)
    out.print(f"[green]ok[/]: {len(loaded.tools)} tools; the others go to the file connector")


@eval_app.command("agents")
def eval_agents(
    scenarios: Annotated[Path, typer.Argument(help="a scenario file, e.g. scenarios/agents.yaml")],
    rules: Annotated[Path, typer.Option(help="the rules folder")] = Path("rules"),
    live: Annotated[
        bool,
        typer.Option(
            "--live/--scripted",
            help="ask the configured model (OPENAI_API_KEY / OPENAI_BASE_URL) instead of "
            "replaying each scenario's scripted model answer",
        ),
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="the whole report as JSON")] = False,
) -> None:
    """Run signal scenarios through the planner and the composer; report the policy-violation
    attempts blocked, the fallbacks by reason and the agreement with the deterministic
    playbook. Exits 1 if an attack scenario was not blocked. Without --live no key is needed:
    the scenarios' scripted model answers go through the same vetting."""
    import json

    from outreach.agents.adapters.evaluation import evaluate
    from outreach.agents.composing import TemplateComposer

    planner: Any = None
    composer: Any = TemplateComposer()
    if live:
        from outreach.agents.adapters.llm import LLMGateway, LLMSettings
        from outreach.agents.adapters.openai_composer import OpenAIComposer
        from outreach.agents.adapters.openai_planner import OpenAIPlanner

        settings = LLMSettings()
        if not settings.enabled:
            err.print("[bold red]no model configured:[/] set OPENAI_API_KEY or OPENAI_BASE_URL")
            raise typer.Exit(2)
        gateway = LLMGateway(settings)
        planner, composer = OpenAIPlanner(gateway), OpenAIComposer(gateway)
    try:
        report = evaluate(scenarios, planner, composer, rules)
    except (RuleFileError, OSError, ValueError) as exc:
        err.print(f"[bold red]the scenarios cannot be run:[/] {exc}", highlight=False)
        raise typer.Exit(2) from None
    if as_json:
        out.print_json(json.dumps(report, default=str))
    else:
        blocked = report["policy_violations_blocked"]
        fallbacks = report["planner_fallbacks"]
        table = _table(str(scenarios), "measure", "value")
        table.add_row("scenarios", str(report["scenarios"]))
        table.add_row("policy-violation attempts blocked", _counts(blocked))
        table.add_row("planner fallbacks", _counts(fallbacks))
        table.add_row("composer fallbacks", _counts(report["composer_fallbacks"]))
        table.add_row("model plans used", str(report["model_plans_used"]))
        table.add_row("agreement with the playbook", json.dumps(report["agreement"]))
        table.add_row("attacks NOT blocked", ", ".join(report["attacks_not_blocked"]) or "none")
        out.print(table)
    if report["attacks_not_blocked"]:
        raise typer.Exit(1)


def _counts(part: dict[str, Any]) -> str:
    reasons = ", ".join(f"{k} {v}" for k, v in sorted(part["by_reason"].items()))
    return f"{part['total']}" + (f" ({reasons})" if reasons else "")


@rules_app.command("test")
def rules_test(
    folder: Annotated[Path, typer.Argument(help="the rules folder")],
    only: Annotated[str | None, typer.Option("-k", help="rule id or case name contains")] = None,
) -> None:
    """Run the test cases written in the rule files."""
    from outreach.ruletests import run_all

    book = _load(folder)
    results = run_all(book, only)
    failed = [r for r in results if not r.passed]
    for result in results:
        mark = "[green]PASS[/]" if result.passed else "[bold red]FAIL[/]"
        out.print(f"{mark} {result.rule_id}: {result.name}  [dim]{result.location}[/]")
        for problem in result.problems:
            out.print(f"    {problem}", markup=False, highlight=False)
    out.print(f"{len(results) - len(failed)} passed, {len(failed)} failed")
    if not results:
        err.print("no test cases matched")
        raise typer.Exit(1)
    if failed:
        raise typer.Exit(1)


@app.command()
def replay(
    events: Annotated[Path, typer.Argument(help="a JSONL file of events")],
    rules: Annotated[Path, typer.Option("--rules", help="the rules folder")] = Path("rules"),
    out_dir: Annotated[Path, typer.Option("--out", help="folder for the decision log")] = Path(
        "decisions"
    ),
    progress: Annotated[bool, typer.Option(help="show a progress bar")] = True,
) -> None:
    """Replay (backtest) recorded events through the rules with an event-time clock."""
    from outreach.replay import replay as run_replay

    book = _load(rules)
    if not events.is_file():
        err.print(f"[bold red]cannot read the events file {events}[/]")
        raise typer.Exit(2)
    if out_dir.exists() and not out_dir.is_dir():
        err.print(f"[bold red]--out {out_dir} is a file; give a folder for the decision log[/]")
        raise typer.Exit(2)
    started = time.perf_counter()
    size = events.stat().st_size
    bar = Progress(
        TextColumn("replay"), BarColumn(), TransferSpeedColumn(), TimeRemainingColumn(),
        console=err, disable=not progress or size < 1 << 20, transient=True,
    )  # fmt: skip
    with bar:
        task = bar.add_task("replay", total=size)
        result = run_replay(
            events, book, out_dir, progress=lambda done: bar.update(task, completed=done)
        )
    elapsed = time.perf_counter() - started
    _print_summary(result.summary, elapsed, result.customers)
    out.print(
        f"decision log: {out_dir}/ (signals, actions, messages, dlq, errors .jsonl; summary.json)"
    )


def _print_summary(summary: dict[str, Any], elapsed: float, customers: int) -> None:
    events = summary["events"]
    table = Table(title="per rule")
    table.add_column("rule", no_wrap=True)
    for header in ("signals", "actions", "messages"):  # one status per line; fits 80 columns
        table.add_column(header, min_width=16, overflow="fold")
    for rule_id, row in summary["rules"].items():
        signals = [str(row["signals"])]
        signals += [f"{row[k]} {k}" for k in ("holdout", "shadow") if row[k]]
        table.add_row(
            rule_id,
            "\n".join(signals),
            "\n".join(f"{k} {v}" for k, v in row["actions"].items()) or "-",
            "\n".join(f"{k} {v}" for k, v in row["messages"].items()) or "-",
        )
    out.print(table)
    rate = events["processed"] / elapsed if elapsed > 0 else 0.0
    out.print(
        f"{events['processed']} events ({events['duplicates']} duplicates, "
        f"{events['invalid']} invalid -> dlq), {customers} customers, "
        f"{events['timers_fired']} timers fired, in {elapsed:.1f}s ({rate:,.0f} events/s)"
    )
    if events.get("rule_errors"):
        err.print(f"[yellow]{events['rule_errors']} rule evaluation errors: see errors.jsonl[/]")


@app.command()
def sample(
    customers: Annotated[int, typer.Option(min=1, help="number of customers")] = 1000,
    days: Annotated[int, typer.Option(min=1, help="simulated days")] = 30,
    seed: Annotated[int, typer.Option(help="random seed (same seed, same file)")] = 1,
    out_file: Annotated[Path | None, typer.Option("--out", help="file (default: stdout)")] = None,
) -> None:
    """Write realistic synthetic events (JSONL, in occurred_at order)."""
    from outreach.sample import write_sample

    if out_file is None:
        write_sample(sys.stdout.buffer, customers, days, seed)
        return
    count = write_sample(out_file, customers, days, seed)
    err.print(f"wrote {count} events for {customers} customers over {days} days to {out_file}")


@app.command()
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
        await ensure_topics(url, topics, settings.partitions)
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


@app.command()
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
        bool, typer.Option(help="also write the output topics to DATA_DIR/decisions/*.jsonl")
    ] = False,
    dispatch: Annotated[bool, typer.Option(help="run the effects dispatcher in-process")] = True,
    scheduler: Annotated[
        bool,
        typer.Option(
            help="run the timer scheduler in-process (active, or a standby behind another); "
            "--no-scheduler when `outreach scheduler` runs on its own"
        ),
    ] = True,
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
    from outreach.streams.runtime import WorkerSettings
    from outreach.streams.topics import KafkaSettings
    from outreach.telemetry.redact import register_settings, register_url

    # after importing faust, which configured the root logger: this replaces its handler
    telemetry = setup_logging(log_level, log_format)
    register_url(database_url or "")
    given = {
        "rules": rules, "database_url": database_url, "data_dir": data_dir, "runtime": runtime,
        "export": export or None, "dispatch": None if dispatch else False,
        "scheduler": None if scheduler else False,
    }  # fmt: skip
    try:
        chosen: dict[str, Any] = {k: v for k, v in given.items() if v is not None}
        settings = WorkerSettings(**chosen)
        kafka = KafkaSettings()
        if kafka_url:
            kafka = kafka.model_copy(update={"kafka_url": kafka_url})
    except ValidationError as exc:
        err.print(f"[bold red]invalid setting:[/] {exc}", highlight=False)
        raise typer.Exit(2) from None
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
        f"store: {settings.database_url} (state, outbox, positions); "
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


@app.command()
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
    book = _load(settings.rules)
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
    sink = KafkaEventSink(url, topics, kafka.partitions)
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


def main() -> None:
    """Entry point of the ``outreach`` script."""
    app()


if __name__ == "__main__":
    main()
