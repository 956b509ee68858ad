"""``outreach explain | approvals | keys`` on a real SQLite store with a customer's history."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest
from livesupport import Feed, make_processor
from support import profile, shipment_exception
from typer.testing import CliRunner

from outreach.cli import app
from outreach.rulebook import load_rulebook
from outreach.store import Store
from outreach.store.operator import Operator

runner = CliRunner()
AT = "2026-03-09T15:00:00Z"


@pytest.fixture
def url(rules_copy: Path, tmp_path: Path) -> str:
    """A store where cus_1's credit of 1500 waits for approval."""
    path = rules_copy / "shipment-delay.yaml"
    path.write_text(path.read_text().replace("standard: 500,", "standard: 1500,"))
    url = f"sqlite:///{tmp_path}/cli.db"
    store = Store(url)
    store.migrate()
    feed = Feed()
    processor = make_processor(load_rulebook(rules_copy), store)
    events = (profile("2026-03-01T12:00:00Z"), shipment_exception(AT))
    processor.apply([feed.line(orjson.dumps(e)) for e in events])
    store.close()
    return url


def invoke(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args), env={"COLUMNS": "200", "OUTREACH_KAFKA_URL": ""})
    return result.exit_code, result.stdout, result.stderr


def test_explain_tells_the_story_in_time_order(url: str) -> None:
    code, text, _ = invoke("explain", "cus_1", "--database-url", url)
    assert code == 0
    order = [text.index(w) for w in ("event customer.updated", "event shipment.updated",
                                     "signal shipment-delay", "action grant_credit")]  # fmt: skip
    assert order == sorted(order)
    assert "needs approval: 1500 > auto limit 1000" in text
    assert "- threshold: approval" in text
    code, lines, _ = invoke("explain", "cus_1", "--database-url", url, "--json")
    kinds = [orjson.loads(line)["kind"] for line in lines.splitlines()]
    assert kinds[:3] == ["event", "event", "signal"] and "message" in kinds
    code, _, err = invoke("explain", "cus_nobody", "--database-url", url)
    assert code == 1 and "nothing recorded" in err


def test_approvals_list_show_and_an_approval_without_kafka(url: str) -> None:
    code, text, _ = invoke("approvals", "list", "--database-url", url)
    assert code == 0 and "grant_credit" in text and "pending_approval" in text
    [action_id] = [a.action_id for a in Operator(Store(url)).approvals()]
    code, text, _ = invoke("approvals", "show", action_id, "--database-url", url)
    assert code == 0 and '"amount":1500' in text and "2026-03-11T15:00:00Z" in text
    code, _, err = invoke("approvals", "approve", action_id, "--database-url", url)
    assert code == 2 and "OUTREACH_KAFKA_URL" in err
    code, _, err = invoke("approvals", "reject", "act_nope", "--database-url", url)
    assert code == 1 and "no action act_nope" in err


def test_keys_are_created_listed_and_revoked(url: str) -> None:
    code, token, _ = invoke("keys", "create", "--name", "ci", "--scope", "ingest",
                            "--database-url", url)  # fmt: skip
    operator = Operator(Store(url))
    key = operator.authenticate(token.strip())
    assert code == 0 and key is not None and key.scope == "ingest"
    code, text, _ = invoke("keys", "list", "--database-url", url)
    assert key.key_id in text and token.strip() not in text
    assert invoke("keys", "revoke", key.key_id, "--database-url", url)[0] == 0
    assert operator.authenticate(token.strip()) is None
    assert invoke("keys", "revoke", key.key_id, "--database-url", url)[0] == 1
    assert invoke("keys", "create", "--name", "x", "--scope", "root",
                  "--database-url", url)[0] == 2  # fmt: skip


def test_audit_prune_deletes_old_entries_and_decided_approvals_and_keeps_pending_ones(
    url: str, rules_copy: Path
) -> None:
    store = Store(url)
    operator = Operator(store)
    try:
        before = len(operator.timeline("cus_1"))
        (pending,) = operator.approvals()
        assert before >= 3
        # a later customer whose history is recent (2 days ago) and must be kept
        feed = Feed()  # a fresh feed: another group, so its offsets are new
        processor = make_processor(load_rulebook(rules_copy), store, group="g2")
        recent = (datetime.now(UTC) - timedelta(days=2)).replace(microsecond=0)
        processor.apply([feed.line(orjson.dumps(profile(recent, "cus_2")))])
        kept = len(operator.timeline("cus_2"))
        assert kept == 1
    finally:
        store.close()
    bad = runner.invoke(app, ["audit", "prune", "--older-than", "soon", "--database-url", url])
    assert bad.exit_code == 2 and "not a duration" in bad.output
    done = runner.invoke(app, ["audit", "prune", "--older-than", "30d", "--database-url", url])
    assert done.exit_code == 0, done.output
    assert f"deleted {before} audit entries" in done.output
    store = Store(url)
    operator = Operator(store)
    try:
        assert operator.timeline("cus_1") == []
        assert len(operator.timeline("cus_2")) == kept
        # the action still waits for a person: its queue entry stays whatever its age
        assert [a.action_id for a in operator.approvals()] == [pending.action_id]
    finally:
        store.close()
