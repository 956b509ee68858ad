"""The deployment assets: docker-compose.yml, Dockerfile, the lock file, the Prometheus alert
rules, the Grafana dashboard, the healthchecks and the dependency audit wrapper.

Fast and offline: files are parsed and compared with the code. Every metric a dashboard panel
or an alert names must be registered somewhere in ``outreach/`` (found by reading the source,
so a metric added by any module counts, and a renamed one fails here). ``promtool`` checks run
when it is installed (Debian's ``prometheus`` package); no Docker engine is needed.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import json
import os
import re
import shutil
import socket
import stat
import subprocess
import sys
import time
import tomllib
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from packaging.requirements import Requirement
from ruamel.yaml import YAML

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
COMPOSE = ROOT / "docker-compose.yml"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
DASHBOARD = DEPLOY / "grafana" / "outreach-dashboard.json"

ENGINE_SERVICES = ("api", "scheduler-a", "scheduler-b", "worker-1", "worker-2")
LONG_RUNNING = ("kafka", "postgres", *ENGINE_SERVICES)
RESTARTING = {"always", "unless-stopped", "on-failure"}


def _yaml(path: Path) -> Any:
    return YAML(typ="safe", pure=True).load(path.read_text())


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = _yaml(COMPOSE)
    assert isinstance(data, dict) and isinstance(data.get("services"), dict)
    return data


# -- docker-compose.yml ------------------------------------------------------------------------


def test_compose_has_every_process_with_a_healthcheck_and_a_restart_policy(compose):
    services = compose["services"]
    missing = [name for name in (*LONG_RUNNING, "init") if name not in services]
    assert not missing, f"services missing from docker-compose.yml: {missing}"
    for name in LONG_RUNNING:
        service = services[name]
        check = service.get("healthcheck") or {}
        assert check.get("test"), f"{name}: no healthcheck test"
        assert not check.get("disable"), f"{name}: healthcheck disabled"
        assert service.get("restart") in RESTARTING, (
            f"{name}: restart is {service.get('restart')!r}"
        )


def test_compose_engine_services_run_the_right_commands(compose):
    from typer.main import get_command

    from outreach.cli import app

    commands = set(get_command(app).commands)  # type: ignore[attr-defined]
    services = compose["services"]
    expected = {"api": "api", "scheduler-a": "scheduler", "scheduler-b": "scheduler"}
    expected |= {"worker-1": "worker", "worker-2": "worker"}
    for name, command in expected.items():
        argv = services[name]["command"]
        assert argv[0] == command, f"{name} runs {argv}"
        assert command in commands, f"`outreach {command}` does not exist"
    for name in ("worker-1", "worker-2"):  # scheduler-a/-b do the timers
        assert "--no-scheduler" in services[name]["command"], f"{name} runs a scheduler too"
    api = services["api"]["command"]
    assert api[api.index("--host") + 1] == "0.0.0.0", "the API must listen beyond loopback"


def test_compose_starts_the_engine_after_init_and_init_after_kafka_and_postgres(compose):
    services = compose["services"]
    init = services["init"]
    assert init.get("restart") == "no", "init is a one-shot"
    assert init["entrypoint"][-1] == "/app/prepare.py"
    for dependency in ("kafka", "postgres"):
        assert init["depends_on"][dependency]["condition"] == "service_healthy"
    for name in ENGINE_SERVICES:
        condition = services[name]["depends_on"]["init"]["condition"]
        assert condition == "service_completed_successfully", f"{name} waits for {condition}"


def test_compose_kafka_is_apache_kafka_in_kraft_mode(compose):
    kafka = compose["services"]["kafka"]
    assert kafka["image"].startswith("apache/kafka:"), kafka["image"]
    env = kafka["environment"]
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"].startswith(f"{env['KAFKA_NODE_ID']}@")
    assert "CONTROLLER" in env["KAFKA_CONTROLLER_LISTENER_NAMES"]
    assert str(env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"]).lower() == "false"
    text = COMPOSE.read_text().lower()
    assert "zookeeper" not in text, "KRaft needs no ZooKeeper"


def test_compose_keeps_state_in_named_volumes(compose):
    volumes = compose.get("volumes") or {}
    mounts = {
        "kafka": "/var/lib/kafka/data",
        "postgres": "/var/lib/postgresql/data",
        "worker-1": "/var/lib/outreach",
        "worker-2": "/var/lib/outreach",
    }
    for name, target in mounts.items():
        found = [v.split(":")[0] for v in compose["services"][name]["volumes"]]
        sources = [v for v in compose["services"][name]["volumes"] if v.endswith(f":{target}")]
        assert sources, f"{name}: nothing mounted at {target} (has {found})"
        source = sources[0].split(":")[0]
        assert source in volumes, f"{name}: {source} is not a named volume"
    assert compose["services"]["kafka"]["environment"]["KAFKA_LOG_DIRS"] == mounts["kafka"]


def _settings_variables() -> set[str]:
    """``OUTREACH_*`` names the engine's pydantic-settings classes read."""
    from pydantic_settings import BaseSettings

    for path in (ROOT / "outreach").rglob("*.py"):
        if re.search(r"^class \w+\(\w*Settings\)", path.read_text(), re.M):
            module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            importlib.import_module(module.removesuffix(".__init__"))
    names: set[str] = set()
    pending: list[type[BaseSettings]] = [BaseSettings]
    while pending:
        cls = pending.pop()
        pending.extend(cls.__subclasses__())
        prefix = cls.model_config.get("env_prefix") or ""
        if prefix.startswith("OUTREACH_"):
            names |= {f"{prefix}{field}".upper() for field in cls.model_fields}
    return names


def test_compose_passes_only_variables_the_engine_reads(compose):
    known = _settings_variables()
    assert {"OUTREACH_KAFKA_URL", "OUTREACH_DATABASE_URL", "OUTREACH_GROUP_ID"} <= known
    for name in (*ENGINE_SERVICES, "init"):
        env = compose["services"][name]["environment"]
        unknown = sorted(k for k in env if k.startswith("OUTREACH_") and k not in known)
        assert not unknown, f"{name}: variables no settings class reads: {unknown}"
        assert env["OUTREACH_KAFKA_URL"] == "kafka:9092", name
        assert env["OUTREACH_DATABASE_URL"].startswith("postgresql+psycopg://"), name
        assert "@postgres:5432/" in env["OUTREACH_DATABASE_URL"], name


def test_compose_engine_logs_json_and_processes_serve_the_metrics_prometheus_scrapes(compose):
    services = compose["services"]
    for name in (*ENGINE_SERVICES, "init"):
        assert services[name]["environment"]["OUTREACH_LOG_FORMAT"].endswith("json}"), name
    prometheus = _yaml(DEPLOY / "prometheus" / "prometheus.yml")
    jobs = {job["job_name"]: job for job in prometheus["scrape_configs"]}
    for job, names in (
        ("outreach-workers", ("worker-1", "worker-2")),
        ("outreach-schedulers", ("scheduler-a", "scheduler-b")),
    ):
        targets = {t for c in jobs[job]["static_configs"] for t in c["targets"]}
        for name in names:
            port = services[name]["environment"]["OUTREACH_METRICS_PORT"]
            assert f"{name}:{port}" in targets, f"{job} does not scrape {name}:{port}"


def test_compose_healthchecks_name_checks_the_script_has(compose):
    checks = _load(DEPLOY / "healthcheck.py").CHECKS
    for name in ENGINE_SERVICES:
        test = compose["services"][name]["healthcheck"]["test"]
        assert test[:3] == ["CMD", "python", "/app/healthcheck.py"], f"{name}: {test}"
        assert test[3] in checks, f"{name}: healthcheck.py has no check {test[3]!r}"


# -- Dockerfile, .dockerignore, the lock file -------------------------------------------------


def _final_stage(dockerfile: str) -> list[str]:
    lines = [line.strip() for line in dockerfile.replace("\\\n", " ").splitlines()]
    instructions = [line for line in lines if line and not line.startswith("#")]
    starts = [i for i, line in enumerate(instructions) if line.upper().startswith("FROM ")]
    assert starts, "no FROM"
    return instructions[starts[-1] :]


def test_dockerfile_runs_as_a_non_root_user_with_the_outreach_entrypoint():
    stage = _final_stage((ROOT / "Dockerfile").read_text())
    users = [line.split(None, 1)[1] for line in stage if line.upper().startswith("USER ")]
    assert users, "the final stage has no USER: it would run as root"
    user = users[-1].split(":")[0]
    assert user not in {"root", "0"}, f"runs as {users[-1]}"
    entrypoints = [line for line in stage if line.upper().startswith("ENTRYPOINT ")]
    assert entrypoints and json.loads(entrypoints[-1].split(None, 1)[1]) == ["outreach"]


def test_dockerfile_uses_a_slim_python_311_plus_base_and_the_hashed_lock():
    text = (ROOT / "Dockerfile").read_text()
    base = re.search(r"^ARG PYTHON_IMAGE=python:(\d+)\.(\d+)-slim", text, re.M)
    assert base, "the base image is not python:3.x-slim"
    assert (int(base[1]), int(base[2])) >= (3, 11)
    assert re.search(r"pip install --require-hashes .*-r /tmp/requirements\.lock", text)
    for needed in ("deploy/requirements.lock", "deploy/healthcheck.py", "deploy/prepare.py"):
        assert needed in text, f"the Dockerfile does not copy {needed}"


def test_dockerignore_lets_in_exactly_what_the_dockerfile_copies():
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    rules = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    assert rules[0] == "*", "start from nothing, let in what the image needs"
    allowed = {rule[1:].rstrip("/") for rule in rules if rule.startswith("!")}
    copied = set()
    for line in _final_stage((ROOT / "Dockerfile").read_text().replace("FROM", "\nFROM")):
        if line.startswith("COPY ") and "--from=" not in line:
            copied |= set(line.split()[1:-1])
    copied |= {"pyproject.toml", "README.md", "outreach"}  # the wheel's build stage
    assert copied <= allowed, f"copied but ignored: {sorted(copied - allowed)}"
    assert ".venv" not in allowed and "tests" not in allowed


def _lock() -> dict[str, tuple[str, list[str]]]:
    """``name -> (version, hashes)`` of deploy/requirements.lock."""
    text = (DEPLOY / "requirements.lock").read_text().replace("\\\n", " ")
    pins = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        match = re.match(r"^([A-Za-z0-9._-]+)==(\S+)", line)
        assert match, f"not an exact pin: {line[:80]}"
        name = re.sub(r"[-_.]+", "-", match[1]).lower()
        pins[name] = (match[2], re.findall(r"--hash=sha256:([0-9a-f]{64})", line))
    return pins


def test_the_lock_pins_every_runtime_dependency_within_pyproject_with_hashes():
    pins = _lock()
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for spec in project["dependencies"]:
        requirement = Requirement(spec)
        name = re.sub(r"[-_.]+", "-", requirement.name).lower()
        assert name in pins, f"{name} is not in deploy/requirements.lock: bash deploy/lock.sh"
        version, _ = pins[name]
        assert requirement.specifier.contains(version, prereleases=True), (
            f"the lock pins {name}=={version}, pyproject asks {spec}: bash deploy/lock.sh"
        )
    unhashed = sorted(name for name, (_, hashes) in pins.items() if not hashes)
    assert not unhashed, f"pins without a hash (pip --require-hashes refuses): {unhashed}"
    dev = {Requirement(s).name.lower() for s in project["optional-dependencies"]["dev"]}
    shipped_dev = sorted(dev & set(pins) - {"httpx"})  # httpx is a runtime dependency too
    assert not shipped_dev, f"dev tools in the image's lock: {shipped_dev}"


# -- metrics: what the code registers ---------------------------------------------------------

_KINDS = {
    "Counter": "counter", "CounterMetricFamily": "counter",
    "Gauge": "gauge", "GaugeMetricFamily": "gauge",
    "Histogram": "histogram", "HistogramMetricFamily": "histogram",
    "Summary": "summary", "SummaryMetricFamily": "summary",
    "Info": "info", "InfoMetricFamily": "info",
}  # fmt: skip
_SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("", "_sum", "_count", "_created"),
    "info": ("_info",),
}
_EXTRA_LABELS = {"histogram": {"le"}, "summary": {"quantile"}}
_METRIC_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")


def _strings(node: ast.AST | None) -> list[str] | None:
    if isinstance(node, ast.List | ast.Tuple):
        values = [e.value for e in node.elts if isinstance(e, ast.Constant)]
        return [v for v in values if isinstance(v, str)]
    return None


def registered_series(source: Path = ROOT / "outreach") -> dict[str, set[str]]:
    """Every sample name the package's prometheus metrics expose -> their label names."""
    series: dict[str, set[str]] = {}
    for path in sorted(source.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, ast.Call) or len(node.args) < 2:
                continue
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            first = node.args[0]
            if called not in _KINDS or not isinstance(first, ast.Constant):
                continue
            if not isinstance(first.value, str) or not _METRIC_NAME.match(first.value):
                continue
            kind = _KINDS[called]
            keywords = {k.arg: k.value for k in node.keywords}
            labels = _strings(node.args[2] if len(node.args) > 2 else None)
            labels = labels or _strings(keywords.get("labelnames")) or []
            labels += _strings(keywords.get("labels")) or []
            base = first.value.removesuffix("_total") if kind == "counter" else first.value
            for suffix in _SUFFIXES[kind]:
                extra = _EXTRA_LABELS.get(kind, set()) if suffix in ("", "_bucket") else set()
                series.setdefault(base + suffix, set()).update(labels, extra)
    return series


@pytest.fixture(scope="module")
def series() -> dict[str, set[str]]:
    return registered_series()


def test_the_scanner_finds_the_engine_metrics(series):
    # the scanner itself: if it found nothing, every "metric exists" check below would be vacuous
    assert series["outreach_decision_latency_seconds_bucket"] == {"le"}
    assert "outreach_decision_latency_seconds_count" in series
    assert series["outreach_events_total"] == {"result"}
    assert series["outreach_actions_total"] == {"type", "status"}
    assert series["outreach_consumer_lag"] == {"topic", "partition"}
    assert "outreach_events" not in series, "a counter is exposed as <name>_total only"
    # the processes' own (outreach/telemetry/metrics.py) and the complaint tally
    assert series["outreach_complaints_total"] == {"channel"}
    assert series["outreach_dispatch_attempts_total"] == {"kind", "target", "outcome"}
    assert series["outreach_provider_errors_total"] == {"provider", "class"}
    assert series["outreach_dispatch_perform_seconds_count"] == {"kind", "target", "provider"}
    assert series["outreach_scheduler_active"] == set()
    assert series["outreach_worker_batch_seconds_bucket"] == {"le"}
    assert series["outreach_llm_calls_total"] == {"purpose", "outcome"}
    assert "outreach_outbox_rows_total" not in series, "a gauge has no _total"


_KEYWORDS = {"and", "or", "unless", "bool", "offset", "inf", "nan", "by", "without", "on"}
_KEYWORDS |= {"ignoring", "group_left", "group_right"}
_GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
_SELECTOR = re.compile(r"(?<![\w.])([a-zA-Z_:][a-zA-Z0-9_:]*)\s*\{([^}]*)\}")
_MATCHER = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)")


def promql_references(expr: str) -> tuple[set[str], dict[str, set[str]], set[str]]:
    """The metric names an expression reads, the labels matched on each, the grouping labels."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    matched: dict[str, set[str]] = {}
    for name, inner in _SELECTOR.findall(text):
        matched.setdefault(name, set()).update(_MATCHER.findall(inner))
    grouping = {g.strip() for _, labels in _GROUPING.findall(text) for g in labels.split(",")}
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = _GROUPING.sub(" ", text)
    text = re.sub(r"\boffset\s+\w+", " ", text)
    names = set()
    for token in re.finditer(r"(?<![\w.$])[a-zA-Z_:][a-zA-Z0-9_:]*", text):
        if text[token.end() :].lstrip().startswith("("):
            continue  # a function: rate(, sum(, histogram_quantile(...
        if token[0] not in _KEYWORDS:
            names.add(token[0])
    return names, matched, grouping - {""}


def test_promql_references_reads_names_labels_and_grouping():
    names, matched, grouping = promql_references(
        "histogram_quantile(0.99, sum by (le, route) "
        '(rate(a_bucket{route=~"/x.*"}[$__rate_interval])))'
        " / on () group_left sum(b offset 1d) > bool 1e-9"
    )
    assert names == {"a_bucket", "b"}
    assert matched == {"a_bucket": {"route"}}
    assert grouping == {"le", "route"}


_TARGET_LABELS = {"instance", "job"}  # Prometheus adds them to every scraped series


def _check_expressions(exprs: dict[str, str], series: dict[str, set[str]], allowed=()) -> None:
    assert exprs, "no expressions found"
    problems = []
    for where, expr in exprs.items():
        names, matched, grouping = promql_references(expr)
        if not names:
            problems.append(f"{where}: reads no metric")
        for name in sorted(names - set(allowed)):
            if name not in series:
                problems.append(f"{where}: {name} is not registered in outreach/")
        for name, labels in matched.items():
            if name in series and labels - series[name]:
                problems.append(f"{where}: {name} has no label {sorted(labels - series[name])}")
        known = set().union(*(series.get(n, set()) for n in names)) | _TARGET_LABELS
        if names <= set(series) and grouping - known:
            problems.append(f"{where}: grouping by unknown labels {sorted(grouping - known)}")
    assert not problems, "\n".join(problems)


# -- Prometheus alert rules ---------------------------------------------------------------------

_DURATION = re.compile(r"^(\d+(ms|s|m|h|d|w|y))+$")
_RULE_KEYS = {"alert", "expr", "for", "keep_firing_for", "labels", "annotations"}


@pytest.fixture(scope="module")
def alert_rules() -> list[dict[str, Any]]:
    data = _yaml(ALERTS)
    assert set(data) == {"groups"}, "a rule file has one key: groups"
    rules = []
    names = set()
    for group in data["groups"]:
        assert set(group) <= {"name", "interval", "rules", "limit"}, group.get("name")
        assert group["name"] not in names, f"group {group['name']} twice"
        names.add(group["name"])
        assert group["rules"], f"group {group['name']} is empty"
        rules.extend(group["rules"])
    return rules


def test_alert_rules_have_prometheus_rule_group_shape(alert_rules):
    seen = set()
    for rule in alert_rules:
        name = rule.get("alert")
        assert name and set(rule) <= _RULE_KEYS, f"not an alerting rule: {rule}"
        assert name not in seen, f"{name} twice"
        seen.add(name)
        assert isinstance(rule["expr"], str) and rule["expr"].strip(), name
        assert "for" not in rule or _DURATION.match(str(rule["for"])), f"{name}: for {rule['for']}"
        assert rule["labels"]["severity"] in {"info", "warning", "critical"}, name
        assert rule["annotations"]["summary"], name


def test_alerts_cover_the_operational_signals(alert_rules):
    text = " ".join(rule["expr"] for rule in alert_rules)
    for needed in (
        "outreach_consumer_lag",
        'outreach_events_total{result="dead_letter"}',
        'outreach_events_total{result="engine_failure"}',
        'outreach_actions_total{status="blocked"}',
        "outreach_decision_latency_seconds_bucket",
        'outreach_outbox_rows{status="failed"}',
        'outreach_complaints_total{channel="email"}',
        "outreach_provider_errors_total",
        "outreach_scheduler_active",
    ):
        assert needed in text, f"no alert reads {needed}"


def test_complaint_alerts_hold_the_bulk_sender_thresholds(alert_rules):
    by_name = {rule["alert"]: rule for rule in alert_rules}
    for name, threshold, severity in (
        ("OutreachEmailComplaintRateHigh", "> 0.001", "warning"),
        ("OutreachEmailComplaintRateCritical", "> 0.003", "critical"),
    ):
        rule = by_name[name]
        assert threshold in rule["expr"] and "[1d]" in rule["expr"], name
        assert 'outreach_messages_total{channel="email", status="sent"}' in rule["expr"], name
        assert rule["labels"]["severity"] == severity, name


def test_alert_rules_read_only_metrics_the_engine_registers(alert_rules, series):
    exprs = {rule["alert"]: rule["expr"] for rule in alert_rules}
    # `up` is Prometheus' own series for the scrape target, not the engine's
    _check_expressions(exprs, series, allowed={"up"})


def _promtool() -> str:
    """``OUTREACH_PROMTOOL`` (``make test`` sets it from ``scripts/promtool.sh``), else one on
    PATH; without either the promtool checks skip, unless ``OUTREACH_REQUIRE_PROMTOOL=1``
    (CI), where a missing promtool fails instead of passing quietly."""
    path = os.environ.get("OUTREACH_PROMTOOL") or shutil.which("promtool")
    if not path:
        if os.environ.get("OUTREACH_REQUIRE_PROMTOOL") == "1":
            pytest.fail(
                "promtool is required here (OUTREACH_REQUIRE_PROMTOOL=1): run "
                "scripts/promtool.sh or install Debian's prometheus package"
            )
        pytest.skip(
            "promtool is not installed (scripts/promtool.sh, or apt-get install prometheus)"
        )
    return path


def test_promtool_accepts_the_rules_and_their_unit_tests_pass():
    promtool = _promtool()
    check = subprocess.run(
        [promtool, "check", "rules", str(ALERTS)], capture_output=True, text=True, timeout=60
    )
    assert check.returncode == 0, check.stdout + check.stderr
    tests = subprocess.run(
        [promtool, "test", "rules", "alerts.test.yml"],
        cwd=ALERTS.parent, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert tests.returncode == 0, tests.stdout + tests.stderr


# -- Grafana dashboard --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def _panel_exprs(dashboard: dict[str, Any]) -> dict[str, str]:
    exprs = {}
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            exprs[f"panel {panel['id']} {panel['title']!r} {target['refId']}"] = target["expr"]
    return exprs


def test_dashboard_is_importable_grafana_json(dashboard):
    assert dashboard["uid"] and dashboard["title"] and dashboard["schemaVersion"] >= 36
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "panel ids repeat"
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["query"] == "prometheus"
    for panel in dashboard["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, f"panel {panel['id']} overflows the grid"
        if panel["type"] not in {"row", "text"}:
            assert panel["targets"], f"panel {panel['id']} has no query"
            assert panel["datasource"]["uid"] == "${datasource}", panel["id"]


def test_dashboard_reads_only_metrics_the_engine_registers(dashboard, series):
    exprs = _panel_exprs(dashboard)
    _check_expressions(exprs, series)
    text = " ".join(exprs.values())
    assert "outreach_decision_latency_seconds_bucket" in text
    assert "outreach_consumer_lag" in text
    for needed in ("outreach_complaints_total", "outreach_provider_errors_total",
                   "outreach_dispatch_attempts_total", "outreach_scheduler_active"):  # fmt: skip
        assert needed in text, f"no panel reads {needed}"


def test_promtool_parses_every_dashboard_query(dashboard, tmp_path):
    promtool = _promtool()
    rules = [
        {"record": f"dashboard:q{i}", "expr": expr.replace("$__rate_interval", "5m")}
        for i, expr in enumerate(_panel_exprs(dashboard).values())
    ]
    path = tmp_path / "dashboard-rules.yml"
    path.write_text(json.dumps({"groups": [{"name": "dashboard", "rules": rules}]}))
    check = subprocess.run(
        [promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60
    )
    assert check.returncode == 0, check.stdout + check.stderr


def test_scanner_and_checks_fail_on_a_metric_that_does_not_exist(series):
    with pytest.raises(AssertionError, match="outreach_unicorns_total is not registered"):
        _check_expressions({"x": "rate(outreach_unicorns_total[5m])"}, series)
    with pytest.raises(AssertionError, match="has no label"):
        _check_expressions({"x": 'outreach_consumer_lag{provider="twilio"}'}, series)


# -- the scripts in the image -------------------------------------------------------------------


def _load(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"deploy_{path.stem}", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_worker_healthcheck_reads_this_hosts_clock(tmp_path, monkeypatch):
    import sqlalchemy as sa

    from outreach.store.schedule import Schedule
    from outreach.store.store import Store

    url = f"sqlite:///{tmp_path / 'store.db'}"
    store = Store(url)
    store.migrate()
    monkeypatch.setenv("OUTREACH_DATABASE_URL", url)
    monkeypatch.setenv("OUTREACH_GROUP_ID", "outreach")
    health = _load(DEPLOY / "healthcheck.py")
    host = socket.gethostname()
    try:
        assert "no clock" in (health.check_worker() or "")
        Schedule(store).beat("outreach", f"other-host:1:{'a' * 8}", None)
        assert "no clock" in (health.check_worker() or ""), "another host's clock counted"
        Schedule(store).beat("outreach", f"{host}:{os.getpid()}:abcdef12", None)
        assert health.check_worker() is None
        with store.engine.begin() as conn:  # the worker stopped beating a while ago
            stale = time.time() - health.STALE_AFTER - 5
            conn.execute(sa.text("UPDATE clocks SET seen_at = :at"), {"at": stale})
        assert "old" in (health.check_worker() or "")
        assert health.check_scheduler() is None  # SQLite: the store answers
        assert health.main(["healthcheck.py", "worker"]) == 1
        assert health.main(["healthcheck.py", "nonsense"]) == 2
    finally:
        store.close()


def test_prepare_refuses_to_run_without_a_kafka_url(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("OUTREACH_")}
    env["OUTREACH_DATABASE_URL"] = f"sqlite:///{tmp_path / 'store.db'}"
    done = subprocess.run(
        [sys.executable, str(DEPLOY / "prepare.py")], env=env, capture_output=True, text=True,
        timeout=60,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert "OUTREACH_KAFKA_URL" in done.stderr


def _fake_pip_audit(tmp_path: Path, output: str, code: int) -> Path:
    fake = tmp_path / "pip-audit"
    fake.write_text(f"#!/bin/sh\ncat <<'OUT'\n{output}\nOUT\nexit {code}\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    return fake


@pytest.mark.parametrize(
    ("output", "code", "audit", "expected"),
    [
        ("No known vulnerabilities found", 0, "", 0),
        ("Name Version ID Fix Versions\nfoo 1.0 PYSEC-2099-1 1.1", 1, "", 1),
        ("ERROR: foo: Dependency not found on PyPI and could not be audited: foo (1.0)", 1, "", 2),
        (
            "ERROR: foo: Dependency not found on PyPI and could not be audited: foo (1.0)",
            1,
            "warn",
            0,
        ),
        ("requests.exceptions.ConnectionError: Max retries exceeded", 1, "", 2),
    ],
)
def test_audit_wrapper_never_passes_an_audit_that_did_not_happen(
    tmp_path, output, code, audit, expected
):
    fake = _fake_pip_audit(tmp_path, output, code)
    env = {**os.environ, "AUDIT": audit}
    done = subprocess.run(
        ["bash", str(DEPLOY / "audit.sh"), str(fake)], env=env, capture_output=True, text=True,
        timeout=60,
    )  # fmt: skip
    assert done.returncode == expected, done.stdout + done.stderr
    if expected == 2 or audit == "warn":
        assert "NOT AUDITED" in done.stderr
