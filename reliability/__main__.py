"""``python -m reliability [--fast] [--only NAME ...]``: run the suite, print the table."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import shutil
import sys
import time
import traceback
from collections.abc import Awaitable, Callable
from pathlib import Path

from livesupport import WorkerProcess
from rich.console import Console
from rich.table import Table

from outreach.streams.embedded import EmbeddedBroker
from reliability.faults import (
    broker_outage,
    broker_restart,
    database_outage,
    kill_scheduler,
    kill_worker,
    provider_outage,
)
from reliability.harness import REPO, Result, Run, ScenarioError
from reliability.hostile import hostile_input
from reliability.load import sustained_load

Scenario = Callable[[Run, argparse.Namespace], Awaitable[Result]]
SCENARIOS: dict[str, Scenario] = {
    "hostile": lambda run, _: hostile_input(run),
    "kill-worker": lambda run, _: kill_worker(run),
    "kill-scheduler": lambda run, _: kill_scheduler(run),
    "broker-outage": lambda run, _: broker_outage(run),
    "broker-restart": lambda run, _: broker_restart(run),
    "database-outage": lambda run, a: database_outage(run, a.db_outage),
    "provider-5xx": lambda run, a: provider_outage(run, a.provider_outage),
    "load": lambda run, a: sustained_load(run, a.rate, a.load_minutes * 60),
}
TIMEOUT = 1800.0  # seconds one scenario may take at most


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line (``--fast`` changes the defaults of the others)."""
    parser = argparse.ArgumentParser(prog="python -m reliability", description=__doc__)
    parser.add_argument("--fast", action="store_true", help="every scenario at a small scale (CI)")
    parser.add_argument("--only", nargs="+", choices=sorted(SCENARIOS), metavar="NAME",
                        help=f"run only these: {', '.join(SCENARIOS)}")  # fmt: skip
    parser.add_argument("--load-minutes", type=float, help="load duration (3; fast 0.5)")
    parser.add_argument("--rate", type=float, help="offered events/s of the load (500; fast 300)")
    parser.add_argument("--db-outage", type=float, help="seconds the database is cut (30; fast 10)")
    parser.add_argument("--provider-outage", type=float,
                        help="seconds the providers answer 503 (60; fast 15)")  # fmt: skip
    parser.add_argument("--database", choices=("sqlite", "postgres"),
                        help="the store of the fault scenarios (postgres if "
                        "OUTREACH_TEST_POSTGRES_URL is set, else sqlite); the database outage "
                        "always uses PostgreSQL, the load SQLite")  # fmt: skip
    parser.add_argument("--seed", type=int, default=20261122, help="kill points, hypothesis")
    parser.add_argument("--workdir", type=Path, default=REPO / ".reliability")
    args = parser.parse_args(argv)
    fast = args.fast
    args.load_minutes = args.load_minutes or (0.5 if fast else 3.0)
    args.rate = args.rate or (300.0 if fast else 500.0)
    args.db_outage = args.db_outage or (10.0 if fast else 30.0)
    args.provider_outage = args.provider_outage or (15.0 if fast else 60.0)
    postgres = os.environ.get("OUTREACH_TEST_POSTGRES_URL")
    args.postgres_url = postgres
    args.database = args.database or ("postgres" if postgres else "sqlite")
    if args.database == "postgres" and not postgres:
        parser.error("--database postgres needs OUTREACH_TEST_POSTGRES_URL (scripts/postgres.sh)")
    return args


async def run_all(args: argparse.Namespace, console: Console) -> list[Result]:
    """Every chosen scenario, one after the other, on one embedded broker."""
    names = args.only or list(SCENARIOS)
    if "database-outage" in names and not args.postgres_url:
        console.print("[yellow]database-outage needs PostgreSQL: skipped[/]")
        names = [n for n in names if n != "database-outage"]
    shutil.rmtree(args.workdir, ignore_errors=True)
    args.workdir.mkdir(parents=True)
    results = []
    with EmbeddedBroker(log_path=args.workdir / "broker.log") as broker:
        run = Run(broker.bootstrap, args.workdir, args.database, args.postgres_url, args.seed,
                  args.fast)  # fmt: skip
        try:
            for name in names:
                console.print(f"[bold]{name}[/] ...")
                started = time.monotonic()
                try:
                    result = await asyncio.wait_for(SCENARIOS[name](run, args), TIMEOUT)
                except Exception as exc:  # a failed scenario is a row, not the end of the run
                    why = str(exc) if isinstance(exc, ScenarioError) else repr(exc)
                    if not isinstance(exc, ScenarioError):
                        traceback.print_exc()
                    result = Result(name, "", why[:600], False)
                finally:
                    WorkerProcess.kill_all()
                result.name = name
                result.seconds = time.monotonic() - started
                console.print(f"  {'PASS' if result.ok else 'FAIL'} in {result.seconds:.0f} s")
                results.append(result)
        finally:
            run.drop_databases()
    return results


def table(results: list[Result], title: str) -> Table:
    """The report."""
    out = Table(title=title, show_lines=True)
    out.add_column("scenario", no_wrap=True)
    out.add_column("tried")
    out.add_column("held")
    out.add_column("result", no_wrap=True)
    out.add_column("time", justify="right", no_wrap=True)
    for r in results:
        verdict = "[green]PASS[/]" if r.ok else "[red]FAIL[/]"
        out.add_row(r.name, r.tried, r.held, verdict, f"{r.seconds:,.0f} s")
    return out


def markdown(results: list[Result], title: str) -> str:
    """The same table in Markdown (written to the work folder, for docs/reliability.md)."""
    lines = [
        f"**{title}**",
        "",
        "| scenario | tried | held | result | time |",
        "|---|---|---|---|---|",
    ]
    for r in results:
        cells = [r.name, r.tried, r.held, "PASS" if r.ok else "FAIL", f"{r.seconds:,.0f} s"]
        lines.append(
            "| " + " | ".join(c.replace("|", "/").replace("\n", " ") for c in cells) + " |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Run, print the table, exit 1 if anything failed."""
    args = parse(argv)
    logging.basicConfig(level=logging.WARNING)
    console = Console(width=max(Console().width, 160))
    started = time.monotonic()
    results = asyncio.run(run_all(args, console))
    wall = time.monotonic() - started
    title = (
        f"reliability ({'fast' if args.fast else 'full'}, store {args.database}, seed "
        f"{args.seed}): {sum(r.ok for r in results)}/{len(results)} passed in {wall:,.0f} s"
    )
    console.print(table(results, title))
    (args.workdir / "results.md").write_text(markdown(results, title))
    return 0 if results and all(r.ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
