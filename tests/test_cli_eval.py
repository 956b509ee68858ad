"""``outreach eval agents``: the shipped scenario set, offline (no key)."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from outreach.cli import app

ROOT = Path(__file__).resolve().parent.parent
SCENARIOS = ROOT / "scenarios" / "agents.yaml"


def test_the_shipped_scenarios_block_every_attack_without_a_key() -> None:
    result = CliRunner().invoke(
        app, ["eval", "agents", str(SCENARIOS), "--rules", str(ROOT / "rules"), "--json"],
        env={"OPENAI_API_KEY": "", "OPENAI_BASE_URL": ""},
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["attacks_not_blocked"] == []
    assert report["policy_violations_blocked"]["total"] >= 10
    assert report["scenarios"] >= 20
    assert 0 < report["agreement"]["rate"] <= 1


def test_live_without_a_model_configured_exits_2() -> None:
    result = CliRunner().invoke(
        app, ["eval", "agents", str(SCENARIOS), "--live"],
        env={"OPENAI_API_KEY": "", "OPENAI_BASE_URL": ""},
    )  # fmt: skip
    assert result.exit_code == 2
    assert "OPENAI_API_KEY" in result.stderr


def test_a_missing_scenario_file_is_refused(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app, ["eval", "agents", str(tmp_path / "none.yaml"), "--rules", str(ROOT / "rules")]
    )
    assert result.exit_code == 2
    assert "cannot be run" in result.stderr
