"""Run the test cases written inside rule files: events in, expected records out.

Each case runs the whole rules folder (all rules, policy, templates) through the replay
runtime in memory, with the clock drained (or stopped at ``until``), then compares the
expected signals, actions (final state per id) and messages (final state per id) with what was
decided. A failure is explained field by field, in the analyst's terms.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from outreach.decisionlog import Summary
from outreach.decisions import Decisions
from outreach.events import InvalidEventError, event_from_obj
from outreach.replay import Replayer
from outreach.rulebook import RuleBook
from outreach.rules.model import RuleSpec, TestCase


class MemoryLog:
    """A decision log that keeps records in memory (for tests and rule cases)."""

    def __init__(self) -> None:
        self.summary = Summary()
        self.signals: list[dict[str, Any]] = []
        self.actions: list[dict[str, Any]] = []
        self.messages: list[dict[str, Any]] = []
        self.receipts: list[dict[str, Any]] = []
        self.deliveries: list[dict[str, Any]] = []  # what went to the outbox, in order
        self.effects: list[dict[str, Any]] = []
        self.dlq: list[dict[str, Any]] = []
        self.errors: list[dict[str, Any]] = []

    def write(self, decisions: Decisions) -> None:
        """Keep one evaluation's records."""
        self.summary.add(decisions)
        self.signals += [s.model_dump(mode="json") for s in decisions.signals]
        self.actions += [a.model_dump(mode="json") for a in decisions.actions]
        self.messages += [m.model_dump(mode="json") for m in decisions.messages]
        self.receipts += [r.model_dump(mode="json") for r in decisions.receipts]
        self.deliveries += [d.model_dump(mode="json") for d in decisions.deliveries]
        self.effects += [e.model_dump(mode="json") for e in decisions.effects]
        self.errors += [e.model_dump(mode="json") for e in decisions.errors]
        self.summary.rule_errors += len(decisions.errors)

    def dead_letter(
        self, line: int, raw: bytes, error: str, *, engine_failure: bool = False
    ) -> None:
        """Keep an invalid line (or one the core raised on)."""
        if engine_failure:
            self.summary.engine_failures += 1
        else:
            self.summary.invalid += 1
        self.dlq.append({"line": line, "raw": raw.decode("utf-8", "replace"), "error": error})


def final_states(records: list[dict[str, Any]], id_field: str) -> list[dict[str, Any]]:
    """The last record of each id, in order of each id's first record."""
    last: dict[str, dict[str, Any]] = {}
    for record in records:
        last[record[id_field]] = record
    return list(last.values())


@dataclass
class CaseResult:
    """The outcome of one test case."""

    rule_id: str
    name: str
    location: str
    problems: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        """True when every expectation held."""
        return not self.problems


def _events(case: TestCase) -> list[dict[str, Any]]:
    slug = re.sub(r"[^a-z0-9]+", "-", case.name.lower()).strip("-")[:40] or "case"
    items = []
    first = min(e.at for e in case.events)
    if case.customer is not None:
        items.append(
            {
                "event_id": f"{slug}-customer",
                "type": "customer.updated",
                "customer_id": case.customer_id,
                "occurred_at": first - timedelta(minutes=1),
                "data": case.customer,
            }
        )
    for i, e in enumerate(case.events, start=1):
        items.append(
            {
                "event_id": e.event_id or f"{slug}-{i}",
                "type": e.type,
                "customer_id": e.customer_id or case.customer_id,
                "occurred_at": e.at,
                "source": e.source,
                "data": e.data,
            }
        )
    return items


def run_case(book: RuleBook, spec: RuleSpec, case: TestCase, location: str) -> CaseResult:
    """Run one case and compare; never raises for a failing expectation."""
    result = CaseResult(spec.id, case.name, location)
    log = MemoryLog()
    replayer = Replayer(book, log)
    events = []
    for i, raw in enumerate(_events(case)):
        try:
            events.append(event_from_obj(raw))
        except InvalidEventError as exc:
            result.problems.append(f"event {i + 1} ({raw['type']}) is not valid: {exc}")
    if result.problems:
        return result
    events.sort(key=lambda e: e.occurred_at)
    for event in events:
        replayer.feed_event(event)
    if case.until is not None:
        replayer.fire_until(case.until.timestamp())
    else:
        replayer.drain()
    actual = {
        "signals": log.signals,
        "actions": final_states(log.actions, "action_id"),
        "messages": final_states(log.messages, "message_id"),
    }
    for kind in ("signals", "actions", "messages"):
        expected = getattr(case.expect, kind)
        if expected is None:
            continue
        records = actual[kind]
        if case.scope == "rule":
            records = [r for r in records if r["rule_id"] == spec.id]
        result.problems.extend(compare(kind, expected, records))
    return result


def compare(kind: str, expected: list[dict[str, Any]], actual: list[dict[str, Any]]) -> list[str]:
    """Field-by-field differences between expected items and actual records."""
    problems = []
    if len(expected) != len(actual):
        shown = "\n".join(f"      - {brief(kind, r)}" for r in actual) or "      (none)"
        problems.append(f"{kind}: expected {len(expected)}, got {len(actual)}:\n{shown}")
    for i, (want, got) in enumerate(zip(expected, actual, strict=False)):
        for key, value in want.items():
            problem = _mismatch(key, value, got)
            if problem:
                problems.append(f"{kind}[{i}].{problem}\n      actual: {brief(kind, got)}")
    return problems


def _mismatch(key: str, want: Any, got: dict[str, Any]) -> str:
    for suffix, negate in (("_not_contains", True), ("_contains", False)):
        if key.endswith(suffix):
            name = key[: -len(suffix)]
            text = str(got.get(name) or "")
            pieces = want if isinstance(want, list) else [want]
            wrong = [p for p in pieces if (str(p) in text) == negate]
            if wrong:
                verb = "not to contain" if negate else "to contain"
                return f"{name}: expected {verb} {wrong[0]!r}, got {text!r}"
            return ""
    if key not in got:
        return f"{key}: no such field in the record; fields: {', '.join(sorted(got))}"
    if not _equal(want, got[key]):
        return f"{key}: expected {want!r}, got {got[key]!r}"
    return ""


def _equal(want: Any, got: Any) -> bool:
    if isinstance(want, datetime):
        try:
            return datetime.fromisoformat(str(got)) == want
        except ValueError:
            return False
    if isinstance(want, dict) and isinstance(got, dict):
        return all(k in got and _equal(v, got[k]) for k, v in want.items())
    if isinstance(want, list) and isinstance(got, list):
        return len(want) == len(got) and all(_equal(w, g) for w, g in zip(want, got, strict=True))
    if (
        isinstance(want, int | float)
        and isinstance(got, int | float)
        and not isinstance(want, bool)
    ):
        return float(want) == float(got)
    return bool(want == got)


def brief(kind: str, record: dict[str, Any]) -> str:
    """One line that identifies a record for a human."""
    if kind == "signals":
        return f"{record['rule_id']} key={record.get('key')} at {record['detected_at']}"
    if kind == "actions":
        return f"{record['type']} {record['status']} ({record['reason']}) at {record['at']}"
    return (
        f"{record['channel']} {record['purpose']} {record['status']} ({record['reason']}) "
        f"send_at {record['send_at']}"
    )


def run_all(book: RuleBook, only: str | None = None) -> list[CaseResult]:
    """Run every case of every rule (``only``: a substring of rule id or case name)."""
    results = []
    for spec, doc in sorted(book.specs.values(), key=lambda pair: pair[0].id):
        for i, case in enumerate(spec.tests):
            if only and only not in spec.id and only not in case.name:
                continue
            line, _ = doc.where(("tests", i))
            results.append(run_case(book, spec, case, f"{doc.path}:{line}"))
    return results
