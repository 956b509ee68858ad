"""``outreach worker`` on a terminal: run the live engine with a live summary.

Optionally publishes a file into the broker once the worker is up (the demo), handing its
report (with the lines not sent) to ``on_published`` as soon as that ends, and stops by itself
when everything is applied, relayed and dispatched (``until_idle``). Ctrl-C (SIGINT) or
SIGTERM stops everything cleanly: the batch in hand is finished and committed, the relays
flush, the consumer leaves its group, the embedded broker is stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import Callable
from pathlib import Path

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from outreach.agents.connectors import Connector
from outreach.outbound.channels import Channel
from outreach.streams.publish import PublishReport, publish_file
from outreach.streams.runtime import LiveEngine, Parts, WorkerSettings, quiet
from outreach.streams.topics import KafkaSettings

# (the file, what publishing it did, the brokers, the input topics)
OnPublished = Callable[[Path, PublishReport, str, tuple[str, ...]], None]


def summary(parts: Parts, note: str = "") -> Group:
    """The live summary: throughput, records, actions and messages by status, outbox."""
    totals = parts.totals
    elapsed = max(time.monotonic() - parts.started, 1e-9)
    head = Table.grid(padding=(0, 2))
    head.add_row("broker", f"{parts.bootstrap}{' (embedded)' if parts.embedded else ''}")
    head.add_row(
        "events", f"{totals.events:,}  ({totals.events / elapsed:,.0f}/s over {elapsed:,.0f} s)"
    )
    head.add_row(
        "records",
        f"{totals.records:,} consumed, {totals.dead_letters:,} to the DLQ, "
        f"{totals.redelivered:,} redelivered (skipped), {totals.duplicates:,} duplicate events",
    )
    head.add_row("signals", f"{totals.signals:,}  (timers fired: {totals.timers_fired:,})")
    head.add_row("actions", _by_status(totals.actions))
    head.add_row("messages", _by_status(totals.messages))
    dispatcher = parts.dispatcher
    if dispatcher is not None:
        d = dispatcher.stats
        head.add_row(
            "outbox",
            f"{d.done:,} performed ({d.by_kind.get('effect', 0):,} effects, "
            f"{d.by_kind.get('delivery', 0):,} messages), "
            f"{d.retried:,} retried, {d.failed:,} failed",
        )
    relay = parts.relay
    head.add_row("relayed", f"{relay.relayed:,} decision records and dead letters to Kafka")
    parts_list: list[Table | Text] = [head]
    if note:
        parts_list.append(Text(note, style="dim"))
    return Group(*parts_list)


def _by_status(counts: dict[str, int]) -> str:
    return ", ".join(f"{k} {v:,}" for k, v in sorted(counts.items())) or "-"


async def run_worker(
    settings: WorkerSettings,
    kafka: KafkaSettings,
    console: Console,
    *,
    publish: Path | None = None,
    rate: float | None = None,
    on_published: OnPublished | None = None,
    until_idle: bool = False,
    channel: Channel | None = None,
    connector: Connector | None = None,
) -> tuple[Parts, PublishReport | None]:
    """Run until Ctrl-C/SIGTERM (or, with ``until_idle``, until nothing is left to do).

    ``on_published(publish, report, bootstrap, input_topics)`` is called once ``publish`` is
    sent, while the live view runs; the report is returned too (None if publishing did not end).
    """
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    report: PublishReport | None = None
    try:
        async with LiveEngine(settings, kafka, channel, connector).running(stop) as parts:
            publishing = None
            if publish is not None:
                publishing = asyncio.create_task(
                    publish_file(publish, parts.bootstrap, parts.topics, rate)
                )
            live_view = Live(summary(parts), console=console, refresh_per_second=4, transient=True)
            with live_view as live:
                while not stop.is_set():
                    if report is None:
                        report = _ended(publishing, publish, parts, on_published)
                    note = "Ctrl-C to stop"
                    if report is not None:
                        note = f"{_published(report)}; Ctrl-C to stop"
                    elif publishing is not None:
                        note = "publishing ...; Ctrl-C to stop"
                    live.update(summary(parts, note))
                    settled = publishing is None or publishing.done()
                    if until_idle and settled and await asyncio.to_thread(quiet, parts, since=1.5):
                        break
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), timeout=0.25)
                if report is None:  # it ended as the worker was stopped
                    report = _ended(publishing, publish, parts, on_published)
                live.update(summary(parts, "stopping ..."))
            if publishing is not None and not publishing.done():
                publishing.cancel()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    console.print(summary(parts))
    return parts, report


def _ended(
    publishing: asyncio.Task[PublishReport] | None,
    publish: Path | None,
    parts: Parts,
    on_published: OnPublished | None,
) -> PublishReport | None:
    """The report of a publishing that has ended, handed to ``on_published``; else None."""
    if publishing is None or publish is None or not publishing.done():
        return None
    report = publishing.result()
    if on_published is not None:
        on_published(publish, report, parts.bootstrap, parts.topics.inputs)
    return report


def _published(report: PublishReport) -> str:
    sent = f"published {report.total:,} events"
    return f"{sent}, {report.unroutable:,} lines not sent" if report.unroutable else sent
