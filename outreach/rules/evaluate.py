"""Evaluate compiled rules against one event: update windows, detect signals.

Order per event: windows and ``latest`` take the event in first (so "2 payment.failed in 7 days"
counts the one that just arrived), then each triggered rule is evaluated by priority, then the
event's value joins its ``previous()`` baselines (so a baseline never contains its own event).
"""

from __future__ import annotations

import hashlib
from datetime import datetime, timedelta
from typing import Any

from pydantic import BaseModel, ConfigDict

from outreach.events import DATA_MODELS, Event, utc_iso
from outreach.ids import make_id
from outreach.rules.compile import CompiledRule, CompiledRules
from outreach.rules.durations import format_duration
from outreach.rules.model import in_audience_locale
from outreach.rules.state import CustomerView, Latest, RuleState, Window


class Signal(BaseModel):
    """A rule fired for a customer: the start of every decision, with its evidence."""

    model_config = ConfigDict(frozen=True)

    signal_id: str
    rule_id: str
    rule_version: int
    customer_id: str
    detected_at: datetime
    evidence: dict[str, Any]
    key: str | None
    event_id: str
    event_type: str
    priority: int
    category: str
    shadow: bool = False
    holdout: bool = False
    note: str = ""  # the playbook's account of its plan
    preview: dict[str, Any] | None = None  # shadow rules: what would have been done
    # a model planner's account: source, reason, fallback, violation, audit of its calls
    planner: dict[str, Any] | None = None


class Baseline:
    """What ``previous(field, n)`` returns: the n values before this event and their stats."""

    __slots__ = ("values", "count", "sum", "mean")
    FIELDS = ("count", "sum", "mean", "min", "max", "last")

    def __init__(self, values: list[float]) -> None:
        self.values = values
        self.count = count = len(values)
        self.sum = total = float(sum(values))
        self.mean = total / count if count else None

    @property
    def min(self) -> float | None:
        return min(self.values) if self.count else None

    @property
    def max(self) -> float | None:
        return max(self.values) if self.count else None

    @property
    def last(self) -> float | None:
        return self.values[-1] if self.count else None

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form for evidence."""
        return {name: getattr(self, name) for name in self.FIELDS}


class EvalContext:
    """What compiled expressions call for windows and facts (``ctx.count(...)`` ...)."""

    __slots__ = ("rules", "state", "event", "now", "opened")

    def __init__(
        self, rules: CompiledRules, state: RuleState, event: Event, now: float, opened: Opened
    ) -> None:
        self.rules = rules
        self.state = state
        self.event = event
        self.now = now
        self.opened = opened

    def _window(self, sid: int, window: float) -> tuple[Window | None, int, int]:
        series = self.state.series.get(self.rules.series[sid].key)
        if series is None:
            return None, 0, 0
        lo, hi = series.span(self.now, window)
        return series, lo, hi

    def count(self, sid: int, window: float) -> int:
        _, lo, hi = self._window(sid, window)
        return hi - lo

    def exists(self, sid: int, window: float) -> bool:
        _, lo, hi = self._window(sid, window)
        return hi > lo

    def sum(self, sid: int, window: float) -> float:
        series, lo, hi = self._window(sid, window)
        return float(sum(series.vals[lo:hi])) if series else 0.0

    def avg(self, sid: int, window: float) -> float | None:
        series, lo, hi = self._window(sid, window)
        return sum(series.vals[lo:hi]) / (hi - lo) if series and hi > lo else None

    def min(self, sid: int, window: float) -> float | None:
        series, lo, hi = self._window(sid, window)
        return min(series.vals[lo:hi]) if series and hi > lo else None

    def max(self, sid: int, window: float) -> float | None:
        series, lo, hi = self._window(sid, window)
        return max(series.vals[lo:hi]) if series and hi > lo else None

    def latest(self, lid: int, window: float | None) -> BaseModel | None:
        spec = self.rules.latest[lid]
        entry = self.state.latest.get(spec.key)
        if entry is None or entry.ts > self.now:
            return None
        if window is not None and entry.ts <= self.now - window:
            return None
        return DATA_MODELS[spec.type].model_validate(entry.data)

    def previous(self, bid: int, n: int) -> Baseline:
        return Baseline(self.opened[bid][0][-n:])

    def signaled(self, rule_id: str, window: float) -> bool:
        times = self.state.signals.get(rule_id)
        return bool(times) and any(self.now - window < t <= self.now for t in times)  # type: ignore[union-attr]

    def signals(self, rule_id: str, window: float) -> int:
        times = self.state.signals.get(rule_id, [])
        return sum(1 for t in times if self.now - window < t <= self.now)


def ingest(rules: CompiledRules, state: RuleState, event: Event, ts: float) -> None:
    """Add the event to the windows and ``latest`` slots that any rule reads."""
    data = event.data
    for spec in rules.series_by_type.get(event.type, ()):
        if spec.where is not None and not spec.where(event, data):
            continue
        value = 1.0 if spec.value is None else spec.value(event, data)
        if value is None:
            continue
        window = state.series.get(spec.key)
        if window is None:
            window = state.series[spec.key] = Window()
        window.add(ts, float(value), spec.retention)
    for latest in rules.latest_by_type.get(event.type, ()):
        if latest.where is not None and not latest.where(event, data):
            continue
        current = state.latest.get(latest.key)
        if current is None or ts >= current.ts:
            state.latest[latest.key] = Latest(ts, data.model_dump(mode="json"))


Opened = dict[int, tuple[list[float], Any]]  # baseline id -> (its values, this event's value)


def open_baselines(rules: CompiledRules, state: RuleState, event: Event) -> Opened:
    """Before evaluation: find each baseline of the event's type and the event's own value."""
    data = event.data
    opened: Opened = {}
    for spec in rules.baselines_by_type.get(event.type, ()):
        by = "" if spec.by is None else str(spec.by(event, data))
        values = state.baselines.setdefault(spec.key, {}).setdefault(by, [])
        opened[spec.id] = (values, spec.value(event, data))
    return opened


def close_baselines(rules: CompiledRules, opened: Opened) -> None:
    """After evaluation: the event's value joins its baselines (never before: see previous)."""
    for bid, (values, value) in opened.items():
        if value is None:
            continue
        values.append(float(value))
        size = rules.baselines[bid].size
        if len(values) > size:
            del values[: len(values) - size]


def in_holdout(rule_id: str, customer_id: str, percent: float) -> bool:
    """The control group: a stable hash of rule and customer, below ``percent`` of 100."""
    if percent <= 0:
        return False
    bucket = int(hashlib.sha256(f"{rule_id}:{customer_id}".encode()).hexdigest()[:8], 16) % 100
    return bucket < percent


def _audience(rule: CompiledRule, view: CustomerView | None, args: tuple[Any, ...]) -> bool:
    """The audience filters (only present when the rule reads the customer) and its ``when``."""
    if view is not None and not _in_filters(rule, view):
        return False
    return rule.audience is None or bool(rule.audience(*args))


def _in_filters(rule: CompiledRule, view: CustomerView) -> bool:
    aud = rule.spec.audience
    if aud.tier is not None and view.tier not in aud.tier:
        return False
    if aud.locale is not None and not in_audience_locale(view.locale, aud.locale):
        return False
    if aud.country is not None and view.country not in aud.country:
        return False
    if aud.consent is not None:
        for name in aud.consent:
            channel, purpose = name.split(".")
            if not getattr(getattr(view.consent, channel), purpose):
                return False
    return True


def _cooled_down(rule: CompiledRule, state: RuleState, key: str | None, now: float) -> bool:
    """True if the rule may fire (and starts its cooldown); False while it is cooling down."""
    cooldown = rule.spec.cooldown
    if cooldown is None:
        return True
    slot = rule.spec.id if cooldown.per == "customer" else f"{rule.spec.id}|{key}"
    last = state.cooldowns.get(slot)
    if last is not None and now - last < cooldown.period.total_seconds():
        return False
    state.cooldowns[slot] = now
    return True


class RuleRuntimeError(BaseModel):
    """A rule that raised while evaluating an event (e.g. an overflow on extreme data).

    The rule is skipped for that event, the other rules still run, and the error is recorded;
    the event is not lost. Load-time checks make this rare: it means data outside any range
    the rule's author imagined."""

    model_config = ConfigDict(frozen=True)

    rule_id: str
    event_id: str
    customer_id: str
    at: datetime
    error: str


def detect(
    rules: CompiledRules,
    event: Event,
    state: RuleState,
    view: CustomerView | None,
    now: datetime,
    now_ts: float,
    opened: Opened,
    errors: list[RuleRuntimeError],
) -> list[Signal]:
    """Evaluate the rules triggered by ``event``; returns the signals raised, by priority."""
    triggered = rules.by_trigger.get(event.type)
    if not triggered:
        return []
    ctx = EvalContext(rules, state, event, now_ts, opened)
    args = (event, event.data, view, ctx, now)
    signals = []
    for rule in triggered:
        try:
            signal = _evaluate_rule(rules, rule, event, state, view, args, now_ts)
        except Exception as exc:  # noqa: BLE001 - recorded per rule; the other rules still run
            message = f"{type(exc).__name__}: {exc}"
            errors.append(
                RuleRuntimeError(
                    rule_id=rule.spec.id,
                    event_id=event.event_id,
                    customer_id=event.customer_id,
                    at=now,
                    error=message,
                )
            )
            continue
        if signal is not None:
            signals.append(signal)
    return signals


def _evaluate_rule(
    rules: CompiledRules,
    rule: CompiledRule,
    event: Event,
    state: RuleState,
    view: CustomerView | None,
    args: tuple[Any, ...],
    now_ts: float,
) -> Signal | None:
    if not rule.condition(*args) or not _audience(rule, view, args):
        return None
    raw_key = rule.key(*args) if rule.key is not None else None
    key = None if raw_key is None else str(raw_key)
    evidence = jsonable(rule.evidence(*args))
    if not _cooled_down(rule, state, key, now_ts):
        return None
    spec = rule.spec
    retention = rules.registry.signal_retention.get(spec.id)
    if retention and not spec.shadow:  # a shadow rule must not steer live rules
        state.record_signal(spec.id, now_ts, retention)
    return Signal(
        signal_id=make_id("sig", spec.id, event.customer_id, event.event_id),
        rule_id=spec.id,
        rule_version=spec.version,
        customer_id=event.customer_id,
        detected_at=args[4],
        evidence=evidence,
        key=key,
        event_id=event.event_id,
        event_type=event.type,
        priority=spec.priority,
        category=spec.category,
        shadow=spec.shadow,
        holdout=not spec.shadow and in_holdout(spec.id, event.customer_id, spec.holdout),
    )


def jsonable(value: Any) -> Any:
    """Evidence values as JSON: timestamps in UTC, durations as ``47h``, models as objects."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return round(value, 6)
    if isinstance(value, datetime):
        return utc_iso(value)
    if isinstance(value, timedelta):
        return format_duration(value)
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, Baseline):
        return jsonable(value.as_dict())
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, set | frozenset):
        return sorted(jsonable(v) for v in value)
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    return str(value)
