"""``outreach worker`` on a terminal: run the live engine with a live summary.

Optionally publishes a file into the broker once the worker is up (the demo) and stops by
itself when everything is applied, relayed and dispatched (``until_idle``). Ctrl-C (SIGINT) or
SIGTERM stops everything cleanly: the batch in hand is finished and committed, the relays
flush, the consumer leaves its group, the embedded broker is stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
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
    until_idle: bool = False,
    channel: Channel | None = None,
    connector: Connector | None = None,
) -> Parts:
    """Run until Ctrl-C/SIGTERM (or, with ``until_idle``, until nothing is left to do)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        async with LiveEngine(settings, kafka, channel, connector).running(stop) as parts:
            report: PublishReport | None = None
            publishing = None
            if publish is not None:
                publishing = asyncio.create_task(
                    publish_file(publish, parts.bootstrap, parts.topics, rate)
                )
            live_view = Live(summary(parts), console=console, refresh_per_second=4, transient=True)
            with live_view as live:
                while not stop.is_set():
                    note = "Ctrl-C to stop"
                    if publishing is not None and publishing.done():
                        report = publishing.result()
                        note = f"published {report.total:,} events; Ctrl-C to stop"
                    elif publishing is not None:
                        note = "publishing ...; Ctrl-C to stop"
                    live.update(summary(parts, note))
                    settled = publishing is None or publishing.done()
                    if until_idle and settled and await asyncio.to_thread(quiet, parts, since=1.5):
                        break
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), timeout=0.25)
                live.update(summary(parts, "stopping ..."))
            if publishing is not None and not publishing.done():
                publishing.cancel()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    console.print(summary(parts))
    return parts
