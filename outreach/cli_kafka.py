"""The commands that talk to Kafka directly besides ``publish`` and ``worker``: ``outreach dlq
list`` and ``outreach dlq republish`` (``outreach.streams.dlq`` does the reading and sending),
and what every such command shares: the ``--kafka-url``/``--topic-prefix`` options and their
resolution, and the tables' shape. Kept apart from ``outreach.cli`` for size, as
``outreach.cli_operator`` is.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

if TYPE_CHECKING:
    from outreach.streams.dlq import StoredLetter, TopicReader
    from outreach.streams.topics import KafkaSettings, Topics

out = Console()
err = Console(stderr=True)
SHOWN = 200  # rows of the table `dlq republish` shows before asking
dlq_app = typer.Typer(
    help="The dead-letter topic: list dead letters, publish them again once fixed.",
    no_args_is_help=True,
)


def new_table(title: str, first: str, *headers: str) -> Table:
    """A table whose first column (ids) is never cut and whose other cells wrap at spaces,
    so it stays readable at 80 columns (CI logs, pipes)."""
    table = Table(title=title)
    table.add_column(first, no_wrap=True)
    for header in headers:
        table.add_column(header, overflow="fold")
    return table


KafkaUrlOption = Annotated[
    str | None, typer.Option(help="bootstrap servers (default: $OUTREACH_KAFKA_URL)")
]
TopicPrefixOption = Annotated[
    str | None, typer.Option(help="topic name prefix (default: $OUTREACH_TOPIC_PREFIX)")
]


def kafka_target(
    kafka_url: str | None, topic_prefix: str | None, what: str
) -> tuple[KafkaSettings, str, Topics]:
    """The Kafka settings, bootstrap servers and topics a command works on (options over
    ``OUTREACH_*``); exits 2 saying what to do when there is no URL or the prefix is unusable."""
    from outreach.streams.topics import KafkaSettings, Topics

    settings = KafkaSettings()
    url = kafka_url or settings.kafka_url
    if not url:
        err.print(
            f"[bold red]no Kafka {what}:[/] pass --kafka-url HOST:PORT or set "
            "OUTREACH_KAFKA_URL (or run `outreach worker`, which starts an embedded broker "
            "when none is set)"
        )
        raise typer.Exit(2)
    try:
        topics = Topics(settings.topic_prefix if topic_prefix is None else topic_prefix)
    except ValueError as exc:
        err.print(f"[bold red]--topic-prefix:[/] {exc}", highlight=False)
        raise typer.Exit(2) from None
    return settings, url, topics


def _parse_since(text: str) -> datetime:
    """``--since``: an ISO 8601 time, UTC when it has no offset."""
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise typer.BadParameter(
            f"{text!r} is not an ISO 8601 time, such as 2026-11-20T14:03:00Z"
        ) from None
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


SinceOption = Annotated[
    datetime | None,
    typer.Option(
        parser=_parse_since, metavar="ISO-TIME",
        help="only dead letters written at or after this time (their Kafka timestamp; a time "
        "without an offset is UTC)",
    ),
]  # fmt: skip
SourceTopicOption = Annotated[
    str | None,
    typer.Option(help="only dead letters of records from this topic (with or without the prefix)"),
]
MatchOption = Annotated[
    str | None, typer.Option(help="only dead letters whose error contains this text (any case)")
]


def _scan(
    url: str, topics: Topics, since: datetime | None, source: str | None, match: str | None,
    take: Callable[[StoredLetter], None],
) -> TopicReader:  # fmt: skip
    """Read the dead-letter topic from its beginning to its end, handing ``take`` each dead
    letter the filters accept; exits 2 without the topic, 1 when Kafka fails."""
    import asyncio

    from aiokafka.errors import KafkaError  # type: ignore[import-untyped,unused-ignore]

    from outreach.streams.dlq import LetterFilter, MissingTopicError, TopicReader, read_letters

    names = frozenset({source, topics.prefix + source}) if source else frozenset()
    chosen = LetterFilter(since, names, match)
    reader = TopicReader(url, [topics.dlq])

    async def run() -> None:
        async for letter in read_letters(reader, chosen):
            take(letter)

    try:
        asyncio.run(run())
    except MissingTopicError as exc:
        err.print(f"[bold red]{exc}[/] (check --topic-prefix)", highlight=False)
        raise typer.Exit(2) from None
    except KafkaError as exc:
        err.print(f"[bold red]reading {topics.dlq} on {url} failed:[/] {exc}", highlight=False)
        raise typer.Exit(1) from None
    if reader.unfinished:
        err.print(
            f"[yellow]not confirmed read to their end (no fetch answered for "
            f"{reader.quiet:.0f}s):[/] {', '.join(reader.unfinished)}; what follows may be "
            "incomplete",
            highlight=False,
        )
    return reader


@dlq_app.command("list")
def dlq_list(
    kafka_url: KafkaUrlOption = None,
    topic_prefix: TopicPrefixOption = None,
    since: SinceOption = None,
    source_topic: SourceTopicOption = None,
    match: MatchOption = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="one JSON object per line: the whole dead letter")
    ] = False,
) -> None:
    """List dead letters: what each stands for, and why.

    One row per dead letter: its partition/offset in the dead-letter topic, when it was
    written, the record it stands for (source topic, partition, offset), its key, the first
    line of its error and the size of the record. The topic is read from its beginning to its
    end without a consumer group: nothing is committed or removed. Exits 1 if the topic could
    not be read to its end."""
    from outreach.streams.dlq import json_line, letter_row

    _, url, topics = kafka_target(kafka_url, topic_prefix, "to read")
    rows: list[tuple[Any, ...]] = []  # (time, partition, offset, cells) for the table
    shown = 0

    def take(letter: StoredLetter) -> None:
        nonlocal shown
        shown += 1
        if as_json:
            sys.stdout.buffer.write(json_line(letter))
        else:
            rows.append((letter.timestamp or datetime.min.replace(tzinfo=UTC), letter.partition,
                         letter.offset, letter_row(letter)))  # fmt: skip

    reader = _scan(url, topics, since, source_topic, match, take)
    if not as_json:
        table = new_table(topics.dlq, "dlq", "time", "source", "key", "error", "size")
        for *_, row in sorted(rows, key=lambda r: r[:3]):
            table.add_row(*(Text(cell) for cell in row))
        out.print(table)
    counted = f"{shown} of {reader.read} dead letters in {topics.dlq} on {url}"
    (err if as_json else out).print(counted, highlight=False)
    if reader.unfinished:
        raise typer.Exit(1)


@dlq_app.command("republish")
def dlq_republish(
    kafka_url: KafkaUrlOption = None,
    topic_prefix: TopicPrefixOption = None,
    since: SinceOption = None,
    source_topic: SourceTopicOption = None,
    match: MatchOption = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="list what would be sent and refused; send nothing")
    ] = False,
    yes: Annotated[bool, typer.Option("--yes", help="send without asking")] = False,
) -> None:
    """Publish dead letters again, once their producer or an engine defect is fixed.

    Each one's exact bytes, keyed by its original key, go to the input topic they came from
    as a new record (acks=all). An event still invalid is dead-lettered again; a valid one is
    applied once (the engine drops an event_id it has applied within its dedup window, 7 days
    by default). Refused, with the reason: values cut at 256 KiB, empty values, records that
    did not come from an input topic (the engine's own timers, the API, webhooks). Identical
    dead letters are sent once. Asks before sending unless --yes. Exits 1 if any chosen dead
    letter was refused or not sent (with --dry-run: would be refused)."""
    import asyncio

    from aiokafka.errors import KafkaError  # type: ignore[import-untyped,unused-ignore]

    from outreach.streams.dlq import Refusal, Resend, letter_row, plan_republish, republish

    _, url, topics = kafka_target(kafka_url, topic_prefix, "to read")
    letters: list[StoredLetter] = []
    reader = _scan(url, topics, since, source_topic, match, letters.append)
    plan = plan_republish(letters, topics)
    table = new_table(f"{len(letters)} dead letters chosen", "dlq", "source", "key", "size", "to")
    chosen: list[Resend | Refusal] = [*plan.resend, *plan.refused]
    for item in chosen[:SHOWN]:  # a table of tens of thousands takes Rich minutes to draw
        dlq, _, source, key, _, size = letter_row(item.letter)
        to = item.topic if isinstance(item, Resend) else f"refused: {item.reason}"
        table.add_row(*(Text(cell) for cell in (dlq, source, key, size, to)))
    out.print(table)
    if len(chosen) > SHOWN:
        out.print(f"... and {len(chosen) - SHOWN} more (`outreach dlq list --json` lists them all)")
    repeats = f"; {plan.repeats} repeat(s) of another, sent once" if plan.repeats else ""
    out.print(f"{len(plan.resend)} to republish, {len(plan.refused)} refused{repeats}")
    failed = bool(plan.refused or reader.unfinished)
    if dry_run or not plan.resend:
        out.print("dry run: nothing sent" if dry_run else "nothing to republish")
        raise typer.Exit(1 if failed else 0)
    if not yes:
        typer.confirm(
            f"Republish {len(plan.resend)} dead letter(s) to their source topics on {url}?",
            abort=True,
        )
    try:
        report = asyncio.run(republish(url, plan.resend))
    except KafkaError as exc:
        err.print(f"[bold red]republishing to {url} failed:[/] {exc}", highlight=False)
        raise typer.Exit(1) from None
    out.print(f"republished {len(report.sent)} (acknowledged by {url})")
    for what, items in (("refused", [(r, r.reason) for r in plan.refused]),
                        ("not sent", report.unsent)):  # fmt: skip
        if items:
            err.print(f"[bold red]{what} {len(items)}:[/]")
        for item, reason in items:
            where = f"dlq {item.letter.partition}/{item.letter.offset} ({item.letter.source})"
            err.print(f"{where}: {reason}", markup=False, highlight=False, soft_wrap=True)
    if failed or report.unsent:
        raise typer.Exit(1)
