"""``make bench``: replay throughput and peak memory, all figures from one run.

Measures, each in a fresh process so peak RSS is its own:
  ceiling  read + validate every event (pydantic), no decisions: what parsing alone costs;
  A        outreach replay of ``outreach sample --customers 20000 --days 30`` (the target:
           >= 50,000 events/s in one process);
  B        the same customers over 60 days: twice the events, memory must stay ~flat;
  C        40,000 customers over 30 days: twice the customers, state memory ~doubles.
Prints events/s, the ratio to the ceiling, peak RSS and the memory ratios B/A and C/A (state
memory = peak RSS minus an idle process that has loaded the rules). The machine is shared and
noisy: compare ratios within one run, not absolute figures across runs.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

TARGET = 50_000
REPO = Path(__file__).resolve().parent.parent

WORKER = r"""
import gc, json, resource, sys, time
from pathlib import Path
from outreach.rulebook import load_rulebook
mode, events, out = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
book = load_rulebook(Path(sys.argv[4]))
gc.collect()
started = time.perf_counter()
count = 0
if mode == "ceiling":
    from outreach.events import parse_event
    with events.open("rb") as handle:
        for line in handle:
            parse_event(line)
            count += 1
elif mode == "replay":
    from outreach.replay import replay
    result = replay(events, book, out)
    count = result.summary["events"]["processed"] + result.summary["events"]["invalid"]
elapsed = time.perf_counter() - started
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"events": count, "seconds": elapsed, "peak": peak}))
"""


def ensure_sample(workdir: Path, customers: int, days: int) -> Path:
    """Generate (once) and return the sample file for this size."""
    path = workdir / f"events-{customers}x{days}.jsonl"
    if not path.exists():
        print(f"generating {path.name} ...", flush=True)
        tmp = path.with_suffix(".tmp")
        subprocess.run(
            [sys.executable, "-m", "outreach.cli", "sample", "--customers", str(customers),
             "--days", str(days), "--seed", "1", "--out", str(tmp)],
            check=True, cwd=REPO,
        )  # fmt: skip
        tmp.rename(path)
    return path


def measure(mode: str, events: Path, workdir: Path) -> dict[str, float]:
    """Run one measurement in a fresh interpreter."""
    out = workdir / f"out-{events.stem}"
    result = subprocess.run(
        [sys.executable, "-c", WORKER, mode, str(events), str(out), str(REPO / "rules")],
        check=True, capture_output=True, text=True, cwd=REPO,
    )  # fmt: skip
    data: dict[str, float] = json.loads(result.stdout.strip().splitlines()[-1])
    return data


def main() -> int:
    """Run the benchmark and print the table."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workdir", type=Path, default=REPO / ".bench")
    parser.add_argument("--customers", type=int, default=20_000)
    parser.add_argument("--days", type=int, default=30)
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    n, d = args.customers, args.days
    files = {
        "A": ensure_sample(args.workdir, n, d),
        "B": ensure_sample(args.workdir, n, 2 * d),
        "C": ensure_sample(args.workdir, 2 * n, d),
    }
    started = time.perf_counter()
    idle = measure("idle", files["A"], args.workdir)
    ceiling = measure("ceiling", files["A"], args.workdir)
    runs = {name: measure("replay", path, args.workdir) for name, path in files.items()}
    base = idle["peak"]

    def rate(run: dict[str, float]) -> float:
        return run["events"] / run["seconds"]

    def state_mb(run: dict[str, float]) -> float:
        return max(run["peak"] - base, 0.0) / 2**20

    print()
    print(
        f"{'run':<34}{'events':>11}{'events/s':>11}{'vs ceiling':>12}{'peak RSS':>11}{'state':>10}"
    )
    rows = [
        ("ceiling: validate only", ceiling),
        (f"A replay {n} customers x {d} days", runs["A"]),
        (f"B replay {n} customers x {2 * d} days", runs["B"]),
        (f"C replay {2 * n} customers x {d} days", runs["C"]),
    ]
    for label, run in rows:
        ratio = rate(run) / rate(ceiling)
        print(
            f"{label:<34}{int(run['events']):>11,}{rate(run):>11,.0f}{ratio:>11.0%} "
            f"{run['peak'] / 2**20:>8.0f} MB{state_mb(run):>7.0f} MB"
        )
    a, b, c = (state_mb(runs[k]) for k in "ABC")
    print()
    print(f"idle process with the rules loaded: {base / 2**20:.0f} MB")
    events_ratio = runs["B"]["events"] / runs["A"]["events"]
    print(f"events B/A = {events_ratio:.2f}x, state memory B/A = {b / a:.2f}x")
    print("  (memory should follow customers, not events: B/A near 1 while events double)")
    print(f"customers C/A = 2.00x, state memory C/A = {c / a:.2f}x")
    verdict = "meets" if rate(runs["A"]) >= TARGET else "MISSES"
    print(f"A: {rate(runs['A']):,.0f} events/s {verdict} the target of {TARGET:,} events/s")
    wall = time.perf_counter() - started
    print(f"(benchmark wall time {wall:.0f}s; the machine is shared: compare ratios)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
