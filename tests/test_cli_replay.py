"""``outreach sample`` then ``outreach replay``, as a user runs them."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from support import RULES
from typer.testing import CliRunner, Result

from outreach.cli import app

RULE_IDS = ("payment-recovery", "renewal-save", "shipment-delay", "usage-decline")
FILES = ["actions.jsonl", "dlq.jsonl", "messages.jsonl", "signals.jsonl", "summary.json"]


@pytest.fixture(scope="module")
def events(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("cli") / "events.jsonl"
    result = CliRunner().invoke(
        app, ["sample", "--customers", "200", "--days", "30", "--seed", "4", "--out", str(path)]
    )
    assert result.exit_code == 0, result.output
    assert "wrote" in result.stderr and "200 customers" in result.stderr
    return path


def replay(events: Path, out: Path, columns: int) -> Result:
    return CliRunner().invoke(
        app,
        ["replay", str(events), "--rules", str(RULES), "--out", str(out), "--no-progress"],
        env={"COLUMNS": str(columns)},
    )


def test_sample_writes_valid_ordered_events(events: Path) -> None:
    lines = events.read_bytes().splitlines()
    assert len(lines) > 1000
    stamps = [orjson.loads(line)["occurred_at"] for line in lines]
    assert stamps == sorted(stamps)


def test_replay_writes_the_decision_log_and_a_summary(events: Path, tmp_path: Path) -> None:
    out = tmp_path / "decisions"
    result = replay(events, out, columns=200)
    assert result.exit_code == 0, result.output
    assert set(FILES) <= {p.name for p in out.iterdir()}  # the contract's five files
    summary = orjson.loads((out / "summary.json").read_bytes())
    assert sorted(summary["rules"]) == list(RULE_IDS)  # the sample exercises every rule
    assert summary["events"]["processed"] == len(events.read_bytes().splitlines())
    lines = result.stdout.splitlines()
    for rule_id in RULE_IDS:
        row = next(line for line in lines if rule_id in line)
        assert str(summary["rules"][rule_id]["signals"]) in row
    assert f"{summary['events']['processed']} events" in result.stdout


def test_the_summary_table_names_every_rule_at_80_columns(events: Path, tmp_path: Path) -> None:
    result = replay(events, tmp_path / "decisions", columns=80)
    assert result.exit_code == 0, result.output
    for rule_id in RULE_IDS:
        assert rule_id in result.stdout


def test_an_out_path_that_is_a_file_is_refused_with_a_clear_error(
    events: Path, tmp_path: Path
) -> None:
    out = tmp_path / "decisions"
    out.write_text("not a folder")
    result = replay(events, out, columns=200)
    assert result.exit_code == 2
    assert not isinstance(result.exception, OSError)
    assert "decisions" in result.stderr
