"""``outreach connectors check`` and a worker given a connectors file that does not load."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from outreach.cli import app

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "connectors.example.yaml"
NAMED = {
    "OMS_URL": "https://oms.example.com", "OMS_TOKEN": "t0k", "BILLING_URL": "https://b.example",
    "BILLING_TOKEN": "t0k", "ZENDESK_SUBDOMAIN": "acme", "ZENDESK_BASIC_AUTH": "eA==",
    "STRIPE_API_KEY": "sk_t0k",
}  # fmt: skip


def test_the_shipped_example_checks_with_its_variables_set() -> None:
    result = CliRunner().invoke(
        app, ["connectors", "check", str(EXAMPLE)], env={**NAMED, "COLUMNS": "200"}
    )
    assert result.exit_code == 0, result.output
    for tool in ("rebook_shipment", "grant_credit", "escalate_to_human", "retry_payment"):
        assert tool in result.stdout
    assert "ok: 6 tools" in result.stdout
    assert "t0k" not in result.stdout  # header values and keys (tokens) are never printed


def test_a_missing_variable_is_named_with_its_line(tmp_path: Path) -> None:
    env = {k: v for k, v in NAMED.items() if k != "OMS_TOKEN"}
    result = CliRunner().invoke(
        app, ["connectors", "check", str(EXAMPLE)], env={**env, "COLUMNS": "400"}
    )
    assert result.exit_code == 1
    line = next(
        i for i, text in enumerate(EXAMPLE.read_text().splitlines(), 1) if "${OMS_TOKEN}" in text
    )
    assert f"connectors.example.yaml:{line}:" in result.stderr
    assert "${OMS_TOKEN} is not set in the environment" in result.stderr


def test_a_worker_refuses_to_start_with_a_bad_connectors_file(tmp_path: Path) -> None:
    bad = tmp_path / "connectors.yaml"
    bad.write_text("tools:\n  refund_everything:\n    kind: http\n    url: https://x.example\n")
    result = CliRunner().invoke(
        app,
        ["worker", "--data-dir", str(tmp_path / "data"), "--until-idle"],
        env={
            "OUTREACH_CONNECTORS": str(bad),
            "OUTREACH_KAFKA_URL": "127.0.0.1:1",
            "COLUMNS": "400",
        },  # fmt: skip
    )
    assert result.exit_code == 2, result.output
    assert "the connectors file cannot be loaded" in result.stderr
    assert f"{bad}:2:3: tools.refund_everything: not a pre-approved tool" in result.stderr
