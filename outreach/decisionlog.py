"""The decision log on disk (signals/actions/messages/dlq JSONL + summary.json) and its counts.

Used by the replay runtime; the live runtime writes the same records to its output topics and
audit. Lines are compact JSON with sorted keys, timestamps RFC 3339 UTC, so two replays of the
same input write byte-identical files.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import orjson

from outreach.decisions import Decisions

FILES = ("signals", "actions", "messages", "receipts", "dlq", "errors")
_OPTS = orjson.OPT_SORT_KEYS | orjson.OPT_UTC_Z | orjson.OPT_NAIVE_UTC


def dumps(record: Any) -> bytes:
    """One JSONL line (with newline) for a record dict."""
    return orjson.dumps(record, option=_OPTS) + b"\n"


class Summary:
    """Counts per rule, per action type/status and per message status/channel.

    Actions and messages are counted in their final state (the last record of each id)."""

    def __init__(self) -> None:
        self.events = 0
        self.duplicates = 0
        self.invalid = 0
        self.engine_failures = 0  # valid events and timers the core raised on (skipped)
        self.timers_fired = 0
        self.rule_errors = 0
        self.effects = 0
        self.deliveries = 0
        self.signals: Counter[str] = Counter()
        self.shadow: Counter[str] = Counter()
        self.holdout: Counter[str] = Counter()
        self._actions: dict[str, tuple[str, str, str]] = {}  # id -> (rule, type, status)
        self._messages: dict[str, tuple[str, str, str]] = {}  # id -> (rule, channel, status)

    def add(self, decisions: Decisions) -> None:
        """Count one evaluation's decisions."""
        for signal in decisions.signals:
            self.signals[signal.rule_id] += 1
            if signal.shadow:
                self.shadow[signal.rule_id] += 1
            if signal.holdout:
                self.holdout[signal.rule_id] += 1
        for action in decisions.actions:
            self._actions[action.action_id] = (action.rule_id, action.type, action.status)
        for message in decisions.messages:
            self._messages[message.message_id] = (message.rule_id, message.channel, message.status)
        self.effects += len(decisions.effects)
        self.deliveries += len(decisions.deliveries)

    def as_dict(self) -> dict[str, Any]:
        """The ``summary.json`` document."""
        per_rule: dict[str, dict[str, Any]] = defaultdict(
            lambda: {
                "signals": 0,
                "shadow": 0,
                "holdout": 0,
                "actions": Counter(),
                "messages": Counter(),
            }
        )
        for rule, count in self.signals.items():
            per_rule[rule]["signals"] = count
            per_rule[rule]["shadow"] = self.shadow[rule]
            per_rule[rule]["holdout"] = self.holdout[rule]
        actions: dict[str, Counter[str]] = defaultdict(Counter)
        for rule, kind, status in self._actions.values():
            actions[kind][status] += 1
            per_rule[rule]["actions"][status] += 1
        messages: dict[str, Counter[str]] = defaultdict(Counter)
        for rule, channel, status in self._messages.values():
            messages[status][channel] += 1
            per_rule[rule]["messages"][status] += 1
        return {
            "events": {
                "processed": self.events,
                "duplicates": self.duplicates,
                "invalid": self.invalid,
                "engine_failures": self.engine_failures,
                "timers_fired": self.timers_fired,
                "rule_errors": self.rule_errors,
            },
            "rules": {r: _plain(v) for r, v in sorted(per_rule.items())},
            "actions": {k: dict(sorted(v.items())) for k, v in sorted(actions.items())},
            "messages": {k: dict(sorted(v.items())) for k, v in sorted(messages.items())},
            "effects": self.effects,
            "deliveries": self.deliveries,
        }


def _plain(value: dict[str, Any]) -> dict[str, Any]:
    return {k: dict(sorted(v.items())) if isinstance(v, Counter) else v for k, v in value.items()}


class DecisionLog:
    """Writes the decision-log files of one run into a folder."""

    def __init__(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder
        self.summary = Summary()
        self._files: dict[str, IO[bytes]] = {
            name: (folder / f"{name}.jsonl").open("wb", buffering=1 << 20) for name in FILES
        }

    def reset(self) -> None:
        """Discard everything written so far (a replay starting over)."""
        self.summary = Summary()
        for handle in self._files.values():
            handle.seek(0)
            handle.truncate()

    def write(self, decisions: Decisions) -> None:
        """Append one evaluation's records."""
        self.summary.add(decisions)
        if decisions.signals:
            self._files["signals"].writelines(
                dumps(s.model_dump(mode="json")) for s in decisions.signals
            )
        if decisions.actions:
            self._files["actions"].writelines(
                dumps(a.model_dump(mode="json")) for a in decisions.actions
            )
        if decisions.errors:
            self.summary.rule_errors += len(decisions.errors)
            self._files["errors"].writelines(
                dumps(e.model_dump(mode="json")) for e in decisions.errors
            )
        if decisions.messages:
            self._files["messages"].writelines(
                dumps(m.model_dump(mode="json")) for m in decisions.messages
            )
        if decisions.receipts:
            self._files["receipts"].writelines(
                dumps(r.model_dump(mode="json")) for r in decisions.receipts
            )

    def dead_letter(
        self, line: int, raw: bytes, error: str, *, engine_failure: bool = False
    ) -> None:
        """Record an input line that is not a valid event (or, ``engine_failure``, one the
        core raised on, or a timer: line 0)."""
        if engine_failure:
            self.summary.engine_failures += 1
        else:
            self.summary.invalid += 1
        text = raw.decode("utf-8", errors="replace")
        self._files["dlq"].write(dumps({"line": line, "raw": text, "error": error}))

    def close(self, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        """Flush everything and write ``summary.json``; returns the summary."""
        for handle in self._files.values():
            handle.close()
        summary = self.summary.as_dict()
        if extra:
            summary.update(extra)
        (self.folder / "summary.json").write_bytes(
            orjson.dumps(summary, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS) + b"\n"
        )
        return summary

    def __enter__(self) -> DecisionLog:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        for handle in self._files.values():
            if not handle.closed:
                handle.close()
