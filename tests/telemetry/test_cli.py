"""The commands' logging and metrics options (--log-format, OUTREACH_LOG_FORMAT,
--metrics-port / OUTREACH_METRICS_PORT), and what they print past the log filter."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url
from typer.testing import CliRunner

from outreach.cli import app


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A port something already listens on."""
    with socket.socket() as sock:
        sock.bind(("0.0.0.0", 0))  # noqa: S104 - where the metrics server binds
        sock.listen()
        yield sock.getsockname()[1]


def test_the_scheduler_serves_metrics_on_the_port_asked_or_says_why_not(
    tmp_path: Path, busy_port: int
) -> None:
    result = CliRunner().invoke(
        app,
        ["scheduler", "--kafka-url", "127.0.0.1:1", "--database-url",
         f"sqlite:///{tmp_path}/s.db", "--metrics-port", str(busy_port)],
    )  # fmt: skip
    assert result.exit_code == 2, result.output
    assert f"cannot serve metrics on port {busy_port}" in result.stderr


def test_the_worker_reads_the_metrics_port_from_the_environment(
    tmp_path: Path, busy_port: int
) -> None:
    result = CliRunner().invoke(
        app,
        ["worker", "--data-dir", str(tmp_path / "data"), "--database-url",
         f"sqlite:///{tmp_path}/w.db", "--until-idle"],
        env={"OUTREACH_KAFKA_URL": "127.0.0.1:1", "OUTREACH_METRICS_PORT": str(busy_port)},
    )  # fmt: skip
    assert result.exit_code == 2, result.output
    assert f"cannot serve metrics on port {busy_port}" in result.stderr


def test_every_command_refuses_an_unknown_log_format(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app, ["schema", "export", str(tmp_path)], env={"OUTREACH_LOG_FORMAT": "xml"}
    )
    assert result.exit_code == 2
    assert "invalid logging setting" in result.stderr
    assert not list(tmp_path.iterdir())


def test_the_worker_names_its_store_without_the_password(postgres_url: str, tmp_path: Path) -> None:
    """The closing summary goes to the terminal (and a container's log) past the log filter."""
    result = CliRunner().invoke(
        app,
        ["worker", "--data-dir", str(tmp_path / "data"), "--until-idle", "--no-scheduler"],
        env={"OUTREACH_DATABASE_URL": postgres_url, "OUTREACH_KAFKA_URL": None, "COLUMNS": "400"},
    )
    assert result.exit_code == 0, result.output
    password = make_url(postgres_url).password
    assert password and f":{password}@" in postgres_url
    assert "store: postgresql" in result.stderr and f":{password}@" not in result.stderr
    assert ":***@" in result.stderr


def test_a_worker_flag_overrides_the_environment_both_ways(tmp_path: Path) -> None:
    """``--no-export`` wins over ``OUTREACH_EXPORT=true`` (and ``--scheduler`` over
    ``OUTREACH_SCHEDULER=false``): a flag at its default used to defer to the environment."""
    data = tmp_path / "data"
    result = CliRunner().invoke(
        app,
        ["worker", "--data-dir", str(data), "--database-url", f"sqlite:///{tmp_path}/w.db",
         "--until-idle", "--no-export", "--no-scheduler"],
        env={"OUTREACH_EXPORT": "true", "OUTREACH_KAFKA_URL": None, "COLUMNS": "400"},
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "decision log:" not in result.stderr
    assert not (data / "decisions").exists()


@pytest.mark.parametrize(
    ("variable", "value", "named"),
    [("OUTREACH_TOPIC_PREFIX", "bad prefix", "topic prefix 'bad prefix'"),
     ("OUTREACH_OUTBOX_RETENTION", "soon", "outbox_retention")],
)  # fmt: skip
def test_a_bad_setting_stops_the_worker_before_anything_starts(
    tmp_path: Path, variable: str, value: str, named: str
) -> None:
    data = tmp_path / "data"
    result = CliRunner().invoke(
        app,
        ["worker", "--data-dir", str(data), "--database-url", f"sqlite:///{tmp_path}/w.db"],
        env={variable: value, "OUTREACH_KAFKA_URL": None, "COLUMNS": "400"},
    )
    assert result.exit_code == 2, result.output
    assert "invalid setting" in result.stderr and named in result.stderr
    assert not data.exists() and not (tmp_path / "w.db").exists()  # no broker, no store
