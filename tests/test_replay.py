"""The offline runtime on real files: DLQ, ordering, the event-time clock, refusals, summary."""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from support import RULES, later, make_event, profile
from typer.testing import CliRunner

from outreach.cli import app
from outreach.decisionlog import FILES
from outreach.replay import ReplayResult, replay
from outreach.rulebook import RuleBook
from outreach.sample import write_sample

T = "2026-03-02T15:00:00Z"  # 10:00 EST
LOGS = ("signals", "actions", "messages")


def write(path: Path, lines: list[dict[str, Any] | bytes]) -> Path:
    path.write_bytes(
        b"".join((raw if isinstance(raw, bytes) else orjson.dumps(raw)) + b"\n" for raw in lines)
    )
    return path


def in_order(path: Path) -> bool:
    """Whether the readable ``occurred_at`` values of a file never go backwards."""
    stamps = []
    for line in path.read_bytes().splitlines():
        try:
            stamp = datetime.fromisoformat(orjson.loads(line)["occurred_at"])
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            continue
        if stamp.tzinfo is not None:
            stamps.append(stamp)
    return stamps == sorted(stamps)


def read(folder: Path, name: str) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in (folder / f"{name}.jsonl").read_bytes().splitlines()]


def final(records: list[dict[str, Any]], key: str) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for record in records:
        out[record[key]] = record
    return out


def failed(at: str, customer: str = "cus_1", invoice: str = "in_1") -> dict[str, Any]:
    return make_event(
        "payment.failed",
        at,
        customer,
        payment_id=f"pay_{invoice}",
        invoice_id=invoice,
        amount=2900,
        currency="USD",
        decline_code="insufficient_funds",
        attempt=1,
    )


def shipment(at: str, customer: str, days_late: int) -> dict[str, Any]:
    return make_event(
        "shipment.updated",
        at,
        customer,
        shipment_id=f"shp_{customer}_{at[:13]}",
        order_id="ORD-1",
        carrier="dhl",
        status="in_transit",
        promised_delivery=at,
        estimated_delivery=later(at, days=days_late),
        order_value={"amount": 1000, "currency": "USD"},
    )


def run(book: RuleBook, events: Path, out: Path, **kw: Any) -> ReplayResult:
    return replay(events, book, out, **kw)


# -- the dead-letter queue ------------------------------------------------------------------

BAD_SCHEMA = {
    "event_id": "e_bad",
    "type": "payment.failed",
    "customer_id": "cus_1",
    "occurred_at": T,
    "data": {"invoice_id": "in_1"},
}
UNKNOWN_TYPE = {
    "event_id": "e_unknown",
    "type": "payment.refunded",
    "customer_id": "cus_1",
    "occurred_at": T,
    "data": {},
}
NAIVE_TIME = {**BAD_SCHEMA, "event_id": "e_naive", "occurred_at": "2026-03-02T15:00:00"}


def dlq_file(tmp_path: Path, shuffle: bool) -> Path:
    lines: list[dict[str, Any] | bytes] = [
        profile("2026-03-01T12:00:00Z"),  # 1
        b"",  # 2: blank, skipped
        b"not json",  # 3
        b'{"event_id": "caf\xe9", "type": "customer.updated"}',  # 4: not UTF-8
        BAD_SCHEMA,  # 5
        b"   \t ",  # 6: blank, skipped
        UNKNOWN_TYPE,  # 7
        NAIVE_TIME,  # 8
        b"[1, 2]",  # 9
        failed(T),  # 10
        failed(later(T, hours=1), "cus_2", "in_2"),  # 11
    ]
    if shuffle:  # valid lines out of order: the external sort runs
        lines[9], lines[10] = lines[10], lines[9]
        lines.append(failed("2026-03-01T00:00:00Z", "cus_3", "in_3"))  # 12, earliest
    return write(tmp_path / "events.jsonl", lines)


@pytest.mark.parametrize("shuffle", [False, True], ids=["ordered", "external-sort"])
def test_malformed_lines_go_to_the_dlq_with_their_line_number_and_the_run_continues(
    book: RuleBook, tmp_path: Path, shuffle: bool
) -> None:
    events = dlq_file(tmp_path, shuffle)
    assert in_order(events) is not shuffle
    result = run(book, events, tmp_path / "out", chunk_lines=3)
    dlq = read(tmp_path / "out", "dlq")
    assert sorted(d["line"] for d in dlq) == [3, 4, 5, 7, 8, 9]
    by_line = {d["line"]: d for d in dlq}
    assert by_line[3]["raw"] == "not json"
    assert by_line[4]["raw"].startswith('{"event_id": "caf')
    assert "data.payment_id" in by_line[5]["error"]
    assert "unknown event type" in by_line[7]["error"]
    assert "occurred_at" in by_line[8]["error"]
    assert all(d["error"] for d in dlq)
    assert result.summary["events"]["invalid"] == 6
    processed = 4 if shuffle else 3
    assert result.summary["events"]["processed"] == processed
    # the valid lines after the bad ones were processed
    assert {s["customer_id"] for s in read(tmp_path / "out", "signals")} >= {"cus_1", "cus_2"}


def test_a_file_of_only_bad_lines_writes_every_file(book: RuleBook, tmp_path: Path) -> None:
    events = write(tmp_path / "events.jsonl", [b"{", b"", b"nope"])
    run(book, events, tmp_path / "out")
    contract = {"signals.jsonl", "actions.jsonl", "messages.jsonl", "dlq.jsonl", "summary.json"}
    assert contract <= {p.name for p in (tmp_path / "out").iterdir()}
    assert [d["line"] for d in read(tmp_path / "out", "dlq")] == [1, 3]


# -- ordering -------------------------------------------------------------------------------


def mixed_events(customers: int = 6) -> list[dict[str, Any]]:
    """Distinct timestamps, several customers, timers and cancellations."""
    events: list[dict[str, Any]] = []
    minute = 0

    def tick(hours: int) -> str:
        nonlocal minute
        minute += 1
        return later(T, hours=hours, minutes=minute)

    for i in range(customers):
        c = f"cus_{i}"
        events.append(
            profile(tick(0), c, mail=(True, i % 2 == 0), tier=("premium", "standard")[i % 2])
        )
        events.append(failed(tick(i * 5), c, f"in_{i}"))
        events.append(shipment(tick(i * 3), c, 1 + i % 4))
        if i % 3 == 0:
            events.append(
                make_event(
                    "payment.succeeded",
                    tick(30 + i),
                    c,
                    payment_id="ok",
                    invoice_id=f"in_{i}",
                    amount=2900,
                    currency="USD",
                )  # fmt: skip
            )
        for k, value in enumerate([100, 100, 100, 100, 20]):
            at = tick(24 * (k + 1) + i)
            events.append(
                make_event(
                    "usage.reported",
                    at,
                    c,
                    metric="api_calls",
                    value=value,
                    period_start=later(at, days=-1),
                    period_end=at,
                )  # fmt: skip
            )
    return sorted(events, key=lambda e: e["occurred_at"])


def test_shuffled_input_gives_the_same_decisions_as_sorted_input(
    book: RuleBook, tmp_path: Path
) -> None:
    events = mixed_events()
    assert len({e["occurred_at"] for e in events}) == len(events)  # no ties
    ordered = write(tmp_path / "ordered.jsonl", list(events))
    shuffled_events = list(events)
    random.Random(7).shuffle(shuffled_events)
    shuffled = write(tmp_path / "shuffled.jsonl", list(shuffled_events))
    assert in_order(ordered) and not in_order(shuffled)
    run(book, ordered, tmp_path / "a", chunk_lines=7)
    run(book, shuffled, tmp_path / "b", chunk_lines=7)
    for name in LOGS:
        first = (tmp_path / "a" / f"{name}.jsonl").read_bytes()
        assert first, name
        assert first == (tmp_path / "b" / f"{name}.jsonl").read_bytes(), name


def test_a_lowercase_z_timestamp_is_sorted_at_its_time(book: RuleBook, tmp_path: Path) -> None:
    paid = make_event("payment.succeeded", "2026-03-04T15:00:00z", payment_id="ok",
                      invoice_id="in_1", amount=2900, currency="USD")  # fmt: skip
    lines: list[dict[str, Any] | bytes] = [
        profile("2026-03-01T12:00:00Z"),
        failed(T),
        paid,  # two days after the failure: cancels retries 2 and 3
        profile("2026-02-01T00:00:00Z", "cus_9"),  # out of order: the file must be sorted
    ]
    run(book, write(tmp_path / "events.jsonl", lines), tmp_path / "out", chunk_lines=2)
    retries = final(read(tmp_path / "out", "actions"), "action_id").values()
    assert [r["status"] for r in retries] == ["executed", "cancelled", "cancelled"]


def test_a_timestamp_the_parser_reads_as_epoch_seconds_is_sorted_at_its_time(
    book: RuleBook, tmp_path: Path
) -> None:
    """The contract's parser also reads a numeric string as epoch seconds; the external sort
    read it as no time at all and put that event first, before the failure it follows."""
    paid = make_event("payment.succeeded", "2026-03-04T15:00:00Z", payment_id="ok",
                      invoice_id="in_1", amount=2900, currency="USD")  # fmt: skip
    paid["occurred_at"] = str(int(datetime.fromisoformat("2026-03-04T15:00:00+00:00").timestamp()))
    lines: list[dict[str, Any] | bytes] = [
        profile("2026-03-01T12:00:00Z"),
        failed(T),
        paid,  # two days after the failure: cancels retries 2 and 3
        profile("2026-02-01T00:00:00Z", "cus_9"),  # out of order: the file must be sorted
    ]
    run(book, write(tmp_path / "events.jsonl", lines), tmp_path / "out", chunk_lines=2)
    retries = final(read(tmp_path / "out", "actions"), "action_id").values()
    assert [r["status"] for r in retries] == ["executed", "cancelled", "cancelled"]


@pytest.mark.parametrize(
    ("external", "chunk"),
    [(False, 7), (True, 1), (True, 7)],
    ids=["ordered", "tie-across-chunks", "tie-in-one-chunk"],
)
@pytest.mark.parametrize("profile_first", [True, False])
def test_ties_keep_file_order(
    book: RuleBook, tmp_path: Path, external: bool, chunk: int, profile_first: bool
) -> None:
    tied = [profile(T), failed(T)]  # the same occurred_at
    if not profile_first:
        tied.reverse()
    lines: list[dict[str, Any] | bytes] = [*tied]
    if external:  # an earlier event at the end forces the sort
        lines.append(failed("2026-03-01T00:00:00Z", "cus_9", "in_9"))
    events = write(tmp_path / "events.jsonl", lines)
    assert in_order(events) is not external
    run(book, events, tmp_path / "out", chunk_lines=chunk)
    mine = [m for m in read(tmp_path / "out", "messages") if m["customer_id"] == "cus_1"]
    # with the profile first the message has a phone to go to; without, no channel at all
    assert [m["status"] for m in mine] == (["sent"] if profile_first else ["suppressed"])


# -- the event-time clock -------------------------------------------------------------------


def test_timers_fire_at_their_due_time(book: RuleBook, tmp_path: Path) -> None:
    night = "2026-03-03T03:00:00Z"  # 22:00 EST: the notice waits for 08:00
    events = write(
        tmp_path / "events.jsonl",
        [profile("2026-03-01T12:00:00Z"), failed(night), profile("2026-03-20T12:00:00Z", "cus_x")],
    )
    run(book, events, tmp_path / "out")
    messages = read(tmp_path / "out", "messages")
    assert [(m["status"], m["send_at"]) for m in messages] == [
        ("deferred", "2026-03-03T13:00:00Z"),
        ("sent", "2026-03-03T13:00:00Z"),  # 08:00 EST
    ]
    retries = final(read(tmp_path / "out", "actions"), "action_id").values()
    assert [(a["status"], a["at"]) for a in retries] == [
        ("executed", "2026-03-04T03:00:00Z"),  # first failure + 1d
        ("executed", "2026-03-06T03:00:00Z"),
        ("executed", "2026-03-10T03:00:00Z"),
    ]


def test_the_clock_runs_on_past_the_last_event(book: RuleBook, tmp_path: Path) -> None:
    events = write(tmp_path / "events.jsonl", [profile("2026-03-01T12:00:00Z"), failed(T)])
    result = run(book, events, tmp_path / "out")
    actions = final(read(tmp_path / "out", "actions"), "action_id").values()
    assert [(a["status"], a["at"]) for a in actions][-1] == ("executed", "2026-03-09T15:00:00Z")
    assert result.summary["events"]["timers_fired"] == 3


def test_a_cancelled_timer_does_not_fire(book: RuleBook, tmp_path: Path) -> None:
    succeeded = make_event("payment.succeeded", later(T, hours=1), payment_id="ok",
                           invoice_id="in_1", amount=2900, currency="USD")  # fmt: skip
    events = write(
        tmp_path / "events.jsonl", [profile("2026-03-01T12:00:00Z"), failed(T), succeeded]
    )
    run(book, events, tmp_path / "out")
    records = read(tmp_path / "out", "actions")
    assert [a["status"] for a in records] == ["scheduled"] * 3 + ["cancelled"] * 3


# -- an unusable rules folder stops the run before any output -------------------------------


def broken_policy(folder: Path) -> str:
    (folder / "policy.yaml").write_text("brand: [unclosed\n")
    return "policy.yaml"


def unknown_playbook(folder: Path) -> str:
    path = folder / "usage-decline.yaml"
    path.write_text(path.read_text().replace("playbook: retention_offer", "playbook: retention"))
    return "unknown playbook 'retention'"


def missing_policy(folder: Path) -> str:
    (folder / "policy.yaml").unlink()
    return "policy.yaml"


def bad_expression(folder: Path) -> str:
    path = folder / "shipment-delay.yaml"
    path.write_text(path.read_text().replace("delay >= 24h", "delay >= 24"))
    return "shipment-delay.yaml"


@pytest.mark.parametrize(
    "breakage", [broken_policy, unknown_playbook, missing_policy, bad_expression]
)
def test_a_broken_rules_folder_stops_replay_before_any_output(
    rules_copy: Path, tmp_path: Path, breakage: Any
) -> None:
    expected = breakage(rules_copy)
    events = write(tmp_path / "events.jsonl", [profile(T), failed(T)])
    out = tmp_path / "decisions"
    result = CliRunner().invoke(
        app, ["replay", str(events), "--rules", str(rules_copy), "--out", str(out)]
    )
    assert result.exit_code != 0
    assert expected in result.stderr
    assert "nothing was run" in result.stderr
    assert not out.exists()


def test_a_missing_rules_folder_stops_replay_before_any_output(tmp_path: Path) -> None:
    events = write(tmp_path / "events.jsonl", [profile(T)])
    out = tmp_path / "decisions"
    missing = tmp_path / "no-such-rules"
    result = CliRunner().invoke(
        app, ["replay", str(events), "--rules", str(missing), "--out", str(out)]
    )
    assert result.exit_code != 0
    assert "not a readable rules folder" in result.stderr
    assert not out.exists()


def test_a_missing_events_file_writes_nothing(tmp_path: Path) -> None:
    out = tmp_path / "decisions"
    result = CliRunner().invoke(
        app, ["replay", str(tmp_path / "nope.jsonl"), "--rules", str(RULES), "--out", str(out)]
    )
    assert result.exit_code != 0
    assert "nope.jsonl" in result.stderr
    assert not out.exists()


# -- the decision log -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def sampled(book: RuleBook, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("sampled")
    events = folder / "events.jsonl"
    write_sample(events, 250, 30, 3)
    with events.open("ab") as handle:
        handle.write(b"garbage\n")
    replay(events, book, folder / "out")
    return folder / "out"


def test_summary_counts_match_the_final_states_of_the_log(sampled: Path) -> None:
    summary = orjson.loads((sampled / "summary.json").read_bytes())
    signals = read(sampled, "signals")
    actions = final(read(sampled, "actions"), "action_id").values()
    messages = final(read(sampled, "messages"), "message_id").values()
    assert len(actions) > 50 and len(messages) > 30
    assert summary["events"]["invalid"] == len(read(sampled, "dlq")) == 1
    by_type: dict[str, Counter[str]] = defaultdict(Counter)
    rule_actions: dict[str, Counter[str]] = defaultdict(Counter)
    for a in actions:
        by_type[a["type"]][a["status"]] += 1
        rule_actions[a["rule_id"]][a["status"]] += 1
    by_status: dict[str, Counter[str]] = defaultdict(Counter)
    rule_messages: dict[str, Counter[str]] = defaultdict(Counter)
    for m in messages:
        by_status[m["status"]][m["channel"]] += 1
        rule_messages[m["rule_id"]][m["status"]] += 1
    assert summary["actions"] == {k: dict(v) for k, v in by_type.items()}
    assert summary["messages"] == {k: dict(v) for k, v in by_status.items()}
    rule_signals = Counter(s["rule_id"] for s in signals)
    holdout = Counter(s["rule_id"] for s in signals if s["holdout"])
    assert set(summary["rules"]) == set(rule_signals)
    for rule_id, row in summary["rules"].items():
        assert row["signals"] == rule_signals[rule_id]
        assert row["holdout"] == holdout[rule_id]
        assert row["actions"] == dict(rule_actions[rule_id])
        assert row["messages"] == dict(rule_messages[rule_id])
    executed = sum(1 for a in actions if a["status"] == "executed")
    assert summary["effects"] == executed
    assert summary["deliveries"] == sum(1 for m in messages if m["status"] == "sent")


TERMINAL_ACTIONS = {"executed", "blocked", "skipped_holdout", "cancelled", "failed"}
TERMINAL_MESSAGES = {"sent", "suppressed", "capped"}


@pytest.mark.parametrize(
    ("name", "key", "terminal"),
    [("actions", "action_id", TERMINAL_ACTIONS), ("messages", "message_id", TERMINAL_MESSAGES)],
)
def test_the_log_is_append_only_and_a_final_status_is_final(
    sampled: Path, name: str, key: str, terminal: set[str]
) -> None:
    history: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for record in read(sampled, name):
        history[record[key]].append(record)
    assert any(len(h) > 1 for h in history.values())  # status changes are appended
    for records in history.values():
        for earlier in records[:-1]:
            assert earlier["status"] not in terminal, records
        times = [r["at" if name == "actions" else "send_at"] for r in records]
        if name == "actions":
            assert times == sorted(times), records


def test_two_replays_of_the_same_file_write_identical_logs(
    book: RuleBook, sampled: Path, tmp_path: Path
) -> None:
    events = sampled.parent / "events.jsonl"
    replay(events, book, tmp_path / "again")
    for name in [*(f"{n}.jsonl" for n in FILES), "summary.json"]:
        assert (tmp_path / "again" / name).read_bytes() == (sampled / name).read_bytes(), name
