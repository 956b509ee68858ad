"""``outreach ...``: the command line. Thin: parse arguments, call the package, print.

This module builds the app, registers the commands of its ``cli_*`` siblings and holds the
offline event-file commands, ``replay`` and ``sample``.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn
from rich.table import Table

from outreach.cli_admin import audit_app, keys_app
from outreach.cli_kafka import dlq_app
from outreach.cli_operator import approvals_app, explain, scheduler, setup_logging
from outreach.cli_rules import connectors_app, eval_app, load_rules, rules_app, schema_app
from outreach.cli_serve import api, publish, worker

app = typer.Typer(
    help="Event-driven proactive outreach: detect risk, fix what is allowed, tell customers first.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
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

    book = load_rules(rules)
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


# after replay and sample: `outreach --help` lists commands in the order they are registered
app.command()(publish)
app.command()(worker)
app.command()(api)


def main() -> None:
    """Entry point of the ``outreach`` script."""
    app()


if __name__ == "__main__":
    main()
