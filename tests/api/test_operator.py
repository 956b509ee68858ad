"""The operator API against the real store (SQLite and PostgreSQL) and the real batch processor.

Auth (no key, wrong scope, revoked key), ingest (valid, invalid -> 422 and the DLQ), the
approvals queue end to end (a pending action listed, approved through the API, applied by the
worker's processor, its outcome and approver recorded), the timeline of a replayed scenario,
kill switches, rule reloads (a bad set refused with file:line, the running one stays),
/readyz and /metrics.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from fastapi.testclient import TestClient
from livesupport import Feed, drain_records, make_processor
from prometheus_client.parser import text_string_to_metric_families
from support import make_event, profile, shipment_exception

from outreach.api import ApiSettings, FakeEventSink, create_app
from outreach.api.operator import LoadedRules
from outreach.rulebook import load_rulebook
from outreach.store import Store
from outreach.store.contacts import Contacts
from outreach.store.operator import Operator

from .conftest import REPLIES

AT = "2026-03-09T15:00:00Z"
NOW = datetime(2026, 3, 9, 17, 0, tzinfo=UTC)


shipment = shipment_exception


class Engine:
    """The worker's processor on the test store, fed event dicts or published events."""

    def __init__(self, rules: Path, store: Store) -> None:
        self.store = store
        self.feed = Feed()
        self.processor = make_processor(load_rulebook(rules), store)

    def apply(self, *events: dict[str, Any] | bytes) -> None:
        lines = [e if isinstance(e, bytes) else orjson.dumps(e) for e in events]
        self.processor.apply([self.feed.line(raw) for raw in lines])


@pytest.fixture
def rules(rules_copy: Path) -> Path:
    """Credits of 1500 for standard customers: above the auto limit, so they need a person."""
    path = rules_copy / "shipment-delay.yaml"
    path.write_text(
        path.read_text().replace(
            "credit: {standard: 500, premium: 1000}", "credit: {standard: 1500, premium: 1000}"
        )
    )
    return rules_copy


@pytest.fixture
def api(
    rules: Path, store: Store, sink: FakeEventSink, settings: ApiSettings
) -> Iterator[TestClient]:
    app = create_app(
        settings, Contacts(store), sink, REPLIES, brand="Acme", clock=lambda: NOW,
        rules=LoadedRules(load_rulebook(rules)),
    )  # fmt: skip
    with TestClient(app) as client:
        yield client


@pytest.fixture
def key(store: Store) -> Callable[[str], dict[str, str]]:
    """``key(scope)``: headers carrying a new key of that scope."""

    def make(scope: str, name: str = "") -> dict[str, str]:
        _, token = Operator(store).create_key(name or f"{scope}-key", scope)  # type: ignore[arg-type]
        return {"Authorization": f"Bearer {token}"}

    return make


# -- auth ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("post", "/v1/events", {"ingest", "admin"}),
        ("get", "/v1/approvals", {"operator", "admin"}),
        ("get", "/v1/customers/cus_1/timeline", {"operator", "admin"}),
        ("get", "/v1/rules", {"operator", "admin"}),
        ("post", "/v1/rules/reload", {"admin"}),
        ("post", "/v1/killswitch/sms", {"admin"}),
    ],
)
def test_every_endpoint_needs_a_key_of_a_scope_that_allows_it(
    api: TestClient, key: Callable[[str], dict[str, str]], method: str, path: str, allowed: set[str]
) -> None:
    body = {"active": False, "reason": "test"} if "killswitch" in path else []
    send = getattr(api, method)
    kwargs = {"json": body} if method == "post" else {}
    assert send(path, **kwargs).status_code == 401
    assert send(path, headers={"Authorization": "Bearer ok_nope_nope"}, **kwargs).status_code == 401
    assert send(path, headers={"Authorization": "Basic b2s6b2s="}, **kwargs).status_code == 401
    for scope in ("ingest", "operator", "admin"):
        answer = send(path, headers=key(scope), **kwargs)
        if scope in allowed:
            assert answer.status_code not in (401, 403), (scope, answer.text)
        else:
            assert answer.status_code == 403, (scope, answer.text)
            assert f"scope ({scope}) does not allow" in answer.json()["detail"]


def test_a_revoked_key_is_refused_at_once(api: TestClient, store: Store) -> None:
    operator = Operator(store)
    made, token = operator.create_key("ci", "operator")
    headers = {"Authorization": f"Bearer {token}"}
    assert api.get("/v1/approvals", headers=headers).status_code == 200
    assert operator.revoke_key(made.key_id)
    answer = api.get("/v1/approvals", headers=headers)
    assert answer.status_code == 401 and answer.headers["www-authenticate"] == "Bearer"
    assert not operator.revoke_key(made.key_id)  # already revoked


def test_keys_are_kept_only_as_hashes(store: Store) -> None:
    operator = Operator(store)
    _, token = operator.create_key("ci", "admin")
    with store.engine.connect() as conn:
        dump = repr([tuple(r) for r in conn.exec_driver_sql("SELECT * FROM api_keys")])
    secret = token.split("_", 2)[2]
    assert secret not in dump and token not in dump
    assert operator.authenticate(token) is not None
    assert operator.authenticate(token[:-1] + ("A" if token[-1] != "A" else "B")) is None


# -- ingest --------------------------------------------------------------------------------


def test_one_valid_event_is_published_and_answered_202(
    api: TestClient, key: Callable[[str], dict[str, str]], sink: FakeEventSink
) -> None:
    event = profile("2026-03-01T12:00:00Z", "cus_9")
    answer = api.post("/v1/events", json=event, headers=key("ingest"))
    assert answer.status_code == 202, answer.text
    assert answer.json() == {
        "accepted": 1, "rejected": 0,
        "items": [{"index": 0, "status": 202, "event_id": event["event_id"], "errors": []}],
    }  # fmt: skip
    assert [e.event_id for e in sink.events] == [event["event_id"]]


def test_a_batch_with_invalid_items_is_422_per_item_and_the_valid_ones_still_go(
    api: TestClient, key: Callable[[str], dict[str, str]], sink: FakeEventSink
) -> None:
    good = profile("2026-03-01T12:00:00Z", "cus_9")
    bad_status = shipment(AT)
    bad_status["data"]["status"] = "lost"
    engine_type = make_event("timer.fired", AT, "cus_9", timer_id="t1", due_at=AT)
    answer = api.post(
        "/v1/events", json=[good, bad_status, "not an object", engine_type], headers=key("ingest")
    )
    assert answer.status_code == 422
    body = answer.json()
    assert (body["accepted"], body["rejected"]) == (1, 3)
    assert [i["status"] for i in body["items"]] == [202, 422, 422, 422]
    assert any("data.status" in e and "lost" in e for e in body["items"][1]["errors"])
    assert "engine event type" in body["items"][3]["errors"][0]
    assert [e.event_id for e in sink.events] == [good["event_id"]]
    letters = [orjson.loads(v) for _, v in sink.dead_letters]
    assert [(d["topic"], d["offset"]) for d in letters] == [
        ("http:/v1/events", 1), ("http:/v1/events", 2), ("http:/v1/events", 3),
    ]  # fmt: skip
    assert orjson.loads(letters[0]["raw"]) == bad_status  # the raw item, exactly
    assert sink.dead_letters[0][0] == b"cus_1"  # keyed by its customer when it names one
    text = api.get("/metrics").text  # this process's count of what /v1/events took
    assert 'outreach_api_events_total{result="accepted"} 1.0' in text
    assert 'outreach_api_events_total{result="rejected"} 3.0' in text


def test_a_body_that_is_not_json_is_dead_lettered(
    api: TestClient, key: Callable[[str], dict[str, str]], sink: FakeEventSink
) -> None:
    headers = {**key("ingest"), "Content-Type": "application/json"}
    answer = api.post("/v1/events", content=b"{not json", headers=headers)
    assert answer.status_code == 422
    assert "not JSON" in answer.json()["items"][0]["errors"][0]
    assert orjson.loads(sink.dead_letters[0][1])["raw"] == "{not json"


def test_kafka_refusing_an_event_is_a_503_not_a_loss(
    api: TestClient, key: Callable[[str], dict[str, str]], sink: FakeEventSink
) -> None:
    sink.failure = RuntimeError("brokers away")
    answer = api.post("/v1/events", json=profile(AT, "cus_9"), headers=key("ingest"))
    assert answer.status_code == 503 and "try again" in answer.json()["detail"]


# -- approvals, end to end through the processor --------------------------------------------


def test_an_action_is_queued_approved_through_the_api_and_performed_once(
    api: TestClient, key: Callable[[str], dict[str, str]], sink: FakeEventSink,
    rules: Path, store: Store,
) -> None:  # fmt: skip
    engine = Engine(rules, store)
    engine.apply(profile("2026-03-01T12:00:00Z"), shipment(AT))
    listed = api.get("/v1/approvals", headers=key("operator")).json()
    assert [(a["tool"], a["status"], a["customer_id"]) for a in listed] == [
        ("grant_credit", "pending_approval", "cus_1")
    ]
    entry = listed[0]
    assert entry["params"]["amount"] == 1500
    assert entry["expires_at"] == "2026-03-11T15:00:00Z"
    assert "needs approval: 1500 > auto limit 1000" in entry["request_reason"]
    action_id = entry["action_id"]
    outbox_before = len(store.outbox_rows())

    answer = api.post(
        f"/v1/approvals/{action_id}/approve", json={"by": "alice", "note": "loyal customer"},
        headers=key("operator", "ops-console"),
    )  # fmt: skip
    assert answer.status_code == 202, answer.text
    [published] = sink.events
    assert published.type == "approval.decided" and published.customer_id == "cus_1"
    assert published.data.by == "alice (key ops-console)"  # type: ignore[union-attr]
    engine.apply(published.model_dump_json().encode())

    shown = api.get(f"/v1/approvals/{action_id}", headers=key("operator")).json()
    assert (shown["status"], shown["decided_by"]) == ("executed", "alice (key ops-console)")
    assert shown["reason"].startswith("approved by alice (key ops-console): loyal customer")
    effects = [r for r in store.outbox_rows()[outbox_before:] if r["kind"] == "effect"]
    assert [orjson.loads(r["payload"])["tool"] for r in effects] == ["grant_credit"]
    assert api.get("/v1/approvals", headers=key("operator")).json() == []
    again = api.post(f"/v1/approvals/{action_id}/approve", headers=key("operator"))
    assert again.status_code == 409 and "executed by alice" in again.json()["detail"]
    assert len(sink.events) == 1  # nothing published for the refused second answer
    assert api.post("/v1/approvals/act_nope/reject", headers=key("operator")).status_code == 404


def test_a_rejection_cancels_and_an_unanswered_action_expires(
    api: TestClient, key: Callable[[str], dict[str, str]], sink: FakeEventSink,
    rules: Path, store: Store,
) -> None:  # fmt: skip
    engine = Engine(rules, store)
    engine.apply(
        profile("2026-03-01T12:00:00Z", "cus_1"), profile("2026-03-01T12:00:00Z", "cus_2"),
        shipment(AT, "cus_1"), shipment(AT, "cus_2"),
    )  # fmt: skip
    pending = {a["customer_id"]: a["action_id"] for a in
               api.get("/v1/approvals", headers=key("operator")).json()}  # fmt: skip
    assert set(pending) == {"cus_1", "cus_2"}
    api.post(f"/v1/approvals/{pending['cus_1']}/reject", headers=key("operator", "bob"))
    engine.apply(sink.events[0].model_dump_json().encode())
    # cus_2's own next event, three days on: its expiry timer fires first on the clock
    later = "2026-03-12T15:00:00Z"
    engine.apply(
        make_event("usage.reported", later, "cus_2", metric="m", value=1, period_start=AT,
                   period_end=later)
    )  # fmt: skip
    states = {
        a["customer_id"]: (a["status"], a["decided_by"])
        for a in api.get("/v1/approvals?status=all", headers=key("operator")).json()
    }
    assert states == {"cus_1": ("cancelled", "bob"), "cus_2": ("expired", None)}


# -- timeline ------------------------------------------------------------------------------


def test_the_timeline_holds_everything_in_time_order(
    api: TestClient, key: Callable[[str], dict[str, str]], sink: FakeEventSink,
    rules: Path, store: Store,
) -> None:  # fmt: skip
    engine = Engine(rules, store)
    first, second = profile("2026-03-01T12:00:00Z"), shipment(AT)
    engine.apply(first, second, second)  # the second copy is a duplicate: recorded once
    action_id = api.get("/v1/approvals", headers=key("operator")).json()[0]["action_id"]
    api.post(f"/v1/approvals/{action_id}/approve", headers=key("operator", "carol"))
    engine.apply(sink.events[0].model_dump_json().encode())
    records = drain_records(store)
    entries = api.get("/v1/customers/cus_1/timeline", headers=key("operator")).json()["entries"]
    kinds = [(e["kind"], e["status"]) for e in entries]
    assert kinds[0] == ("event", None) and entries[0]["ref"] == first["event_id"]
    assert kinds[1] == ("event", None) and entries[1]["ref"] == second["event_id"]
    assert [e["ref"] for e in entries if e["kind"] == "event"].count(second["event_id"]) == 1
    # every decision record the worker relayed is on the timeline, none missing, none extra
    for topic, kind in (("signals", "signal"), ("actions", "action"), ("messages", "message")):
        relayed = records[topic]  # one customer only in this store
        shown = sorted(orjson.dumps(e["record"], option=orjson.OPT_SORT_KEYS)
                       for e in entries if e["kind"] == kind)  # fmt: skip
        assert len(shown) == len(relayed), topic
        assert shown == sorted(
            orjson.dumps(orjson.loads(v), option=orjson.OPT_SORT_KEYS) for v in relayed
        )
    signal = next(e["record"] for e in entries if e["kind"] == "signal")
    assert signal["rule_version"] >= 1 and signal["evidence"]
    credit = [e for e in entries if e["kind"] == "action" and e["record"]["type"] == "grant_credit"]
    assert [(c["status"], c["record"]["decided_by"]) for c in credit] == [
        ("pending_approval", None), ("executed", "carol"),
    ]  # fmt: skip
    assert any(c["check"] == "threshold" for c in credit[0]["record"]["checks"])
    message = next(e["record"] for e in entries if e["kind"] == "message")
    assert any(c["check"] == "channel" for c in message["checks"])
    approval_event = [e for e in entries if e["kind"] == "event"][-1]
    assert approval_event["record"]["type"] == "approval.decided"
    stamps = [e["at"] for e in entries]
    assert stamps == sorted(stamps)
    assert api.get("/v1/customers/cus_none/timeline", headers=key("operator")).json() == {
        "customer_id": "cus_none", "entries": [],
    }  # fmt: skip


# -- kill switches -------------------------------------------------------------------------


def test_a_channel_switched_off_through_the_api_sends_by_the_other_one(
    api: TestClient, key: Callable[[str], dict[str, str]], rules: Path, store: Store
) -> None:
    off = api.post("/v1/killswitch/sms", json={"reason": "provider incident"},
                   headers=key("admin", "oncall"))  # fmt: skip
    assert off.status_code == 200, off.text
    listed = api.get("/v1/killswitch", headers=key("operator")).json()
    assert [(s["kind"], s["name"], s["reason"]) for s in listed] == [
        ("channel", "sms", "provider incident (by oncall)")
    ]
    engine = Engine(rules, store)
    engine.apply(profile("2026-03-01T12:00:00Z"), shipment(AT))
    [message] = [orjson.loads(v) for v in drain_records(store)["messages"]]
    assert (message["channel"], message["status"]) == ("email", "sent")
    on = api.post("/v1/killswitch/sms", json={"active": False, "reason": "resolved"},
                  headers=key("admin"))  # fmt: skip
    assert on.status_code == 200 and api.get("/v1/killswitch", headers=key("admin")).json() == []
    unknown = api.post("/v1/killswitch/fax", json={"reason": "x"}, headers=key("admin"))
    assert unknown.status_code == 404 and "grant_credit" in unknown.json()["detail"]


def test_a_tool_switched_off_blocks_new_actions(
    api: TestClient, key: Callable[[str], dict[str, str]], rules: Path, store: Store
) -> None:
    api.post("/v1/killswitch/rebook_shipment", json={"reason": "carrier API down"},
             headers=key("admin"))  # fmt: skip
    engine = Engine(rules, store)
    engine.apply(profile("2026-03-01T12:00:00Z"), shipment(AT))
    actions = [orjson.loads(v) for v in drain_records(store)["actions"]]
    rebook = next(a for a in actions if a["type"] == "rebook_shipment")
    assert rebook["status"] == "blocked"
    assert "kill switch: rebook_shipment is switched off (carrier API down" in rebook["reason"]


# -- rules ---------------------------------------------------------------------------------


def test_a_bad_rule_set_is_refused_with_file_and_line_and_the_running_one_stays(
    api: TestClient, key: Callable[[str], dict[str, str]], rules: Path, store: Store
) -> None:
    before = api.get("/v1/rules", headers=key("operator")).json()
    assert {r["id"] for r in before["rules"]} >= {"shipment-delay", "payment-recovery"}
    path = rules / "shipment-delay.yaml"
    good = path.read_text()
    path.write_text(good.replace('"delivered", "returned"', '"delivered", "retuned"', 1))
    refused = api.post("/v1/rules/reload", headers=key("admin"))
    assert refused.status_code == 422
    [problem] = refused.json()["problems"]
    assert problem.startswith("rules/shipment-delay.yaml:") and "retuned" in problem
    assert (
        api.get("/v1/rules", headers=key("operator")).json()["fingerprint"]
        == (before["fingerprint"])
    )
    with store.batch() as batch:
        assert batch.rules_reload() is None  # no worker was asked to reload
    path.write_text(good.replace("credit: {standard: 1500", "credit: {standard: 700"))
    engine = Engine(rules, store)  # a worker still running the old rules
    done = api.post("/v1/rules/reload", headers=key("admin"))
    assert done.status_code == 200, done.text
    assert done.json()["previous"] == before["fingerprint"]
    assert done.json()["fingerprint"] != before["fingerprint"]
    engine.apply(profile("2026-03-01T12:00:00Z"), shipment(AT))  # reloads at this batch
    assert engine.processor.core.book.fingerprint == done.json()["fingerprint"]
    credit = next(orjson.loads(v) for v in drain_records(store)["actions"]
                  if orjson.loads(v)["type"] == "grant_credit")  # fmt: skip
    assert (credit["status"], credit["params"]["amount"]) == ("executed", 700)


# -- health and metrics --------------------------------------------------------------------


def test_readyz_reports_what_is_missing(api: TestClient, sink: FakeEventSink) -> None:
    assert api.get("/readyz").json() == {"status": "ready"}
    sink.failure = RuntimeError("brokers away")
    answer = api.get("/readyz")
    assert answer.status_code == 503 and answer.json()["problems"] == ["kafka: not connected"]


def test_metrics_count_what_the_workers_applied(
    api: TestClient, key: Callable[[str], dict[str, str]], rules: Path, store: Store
) -> None:
    engine = Engine(rules, store)
    engine.apply(profile("2026-03-01T12:00:00Z"), shipment(AT))
    engine.processor.apply([engine.feed.record("customers", b"cus_1", b'{"broken": ')])
    api.get("/v1/approvals", headers=key("operator"))
    text = api.get("/metrics").text
    assert 'outreach_events_total{result="applied"} 2.0' in text
    assert 'outreach_events_total{result="dead_letter"} 1.0' in text
    assert 'outreach_signals_total{rule="shipment-delay"} 1.0' in text
    assert 'outreach_actions_total{status="pending_approval",type="grant_credit"} 1.0' in text
    assert 'outreach_messages_total{channel="sms",status="sent"} 1.0' in text
    assert "outreach_approvals_pending 1.0" in text
    assert 'outreach_outbox_rows{kind="delivery",status="pending"} 1.0' in text
    assert (
        'outreach_api_requests_total{method="GET",route="/v1/approvals",status="200"} 1.0' in text
    )


def test_metrics_export_the_watched_results_from_zero_before_any_count(api: TestClient) -> None:
    # increase() takes a series' first sample as its start: a failure counter that first
    # appeared at 1 would never fire OutreachEngineFailures for that first failure
    text = api.get("/metrics").text
    for result in ("applied", "duplicate", "dead_letter", "engine_failure"):
        assert f'outreach_events_total{{result="{result}"}} 0.0' in text
    for channel in ("sms", "email"):
        assert f'outreach_complaints_total{{channel="{channel}"}} 0.0' in text


def test_metrics_give_the_decision_latency_as_a_cumulative_histogram(
    api: TestClient, rules: Path, store: Store
) -> None:
    engine = Engine(rules, store)
    now = 1_700_000_000.0
    engine.processor.clock = lambda: now
    waits = {"cus_1": 0.02, "cus_2": 0.02, "cus_3": 0.4, "cus_4": 90.0}
    records = [
        replace(
            engine.feed.line(orjson.dumps(profile("2026-03-01T12:00:00Z", c))), timestamp=now - w
        )
        for c, w in waits.items()
    ]
    engine.processor.apply(records)
    engine.processor.apply(records)  # redelivered: not measured again
    families = {f.name: f for f in text_string_to_metric_families(api.get("/metrics").text)}
    histogram = families["outreach_decision_latency_seconds"]
    assert histogram.type == "histogram"
    samples = {(s.name, s.labels.get("le")): s.value for s in histogram.samples}
    buckets = {le: n for (name, le), n in samples.items() if name.endswith("_bucket")}
    assert buckets == {
        "0.005": 0, "0.01": 0, "0.025": 2, "0.05": 2, "0.1": 2, "0.25": 2, "0.5": 3, "1.0": 3,
        "2.5": 3, "5.0": 3, "10.0": 3, "30.0": 3, "60.0": 3, "300.0": 4, "+Inf": 4,
    }  # fmt: skip
    assert samples["outreach_decision_latency_seconds_count", None] == 4
    assert samples["outreach_decision_latency_seconds_sum", None] == pytest.approx(90.44)


def test_decisive_auditing_keeps_only_events_that_led_somewhere(rules: Path, store: Store) -> None:
    engine = Engine(rules, store)
    engine.processor.audit_all = False
    quiet = make_event(
        "usage.reported", AT, "cus_1", metric="api_calls", value=5,
        period_start="2026-03-08T15:00:00Z", period_end=AT,
    )  # fmt: skip
    first, late = profile("2026-03-01T12:00:00Z"), shipment(later_than(AT))
    engine.apply(first, quiet, late)
    events = [e["ref"] for e in Operator(store).timeline("cus_1") if e["kind"] == "event"]
    assert events == [first["event_id"], late["event_id"]]  # the usage report decided nothing


def later_than(at: str) -> str:
    return at.replace("15:00:00", "16:00:00")
