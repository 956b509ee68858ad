"""Guardrails: what any planner's proposed action must pass before it may happen.

Checked in this order, every verdict recorded with its reason:
allow-list of tools per playbook -> kill switch per tool -> strict parameters -> idempotency
(an effect key seen before yields no second effect) -> eligibility (e.g. never retry a hard
decline) -> value threshold (auto / needs approval / deny) -> per-customer budget over a period
-> global budget per UTC day. Configuration comes from ``rules/policy.yaml``; nothing here has
business defaults of its own.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from outreach.agents.state import AgentState
from outreach.agents.tools import TOOLS, ToolName, ToolParams
from outreach.rules.durations import Duration, format_duration
from outreach.rules.state import Window

VerdictStatus = Literal["executed", "scheduled", "pending_approval", "blocked", "duplicate"]


class _Config(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Threshold(_Config):
    """Value limits: up to ``auto_max`` runs alone, up to ``approval_max`` needs a person."""

    auto_max: float | None = None
    approval_max: float | None = None
    unknown_value: Literal["auto", "approval", "deny"] = Field(
        description="what to do when the value cannot be known (e.g. no order value)"
    )

    def level(self, value: float | None) -> tuple[str, str]:
        """(``auto`` | ``approval`` | ``deny``, why)."""
        if value is None:
            return self.unknown_value, f"value unknown -> {self.unknown_value}"
        if self.auto_max is None:
            return "auto", f"{_n(value)}: no auto limit"
        if value <= self.auto_max:
            return "auto", f"{_n(value)} <= auto limit {_n(self.auto_max)}"
        if self.approval_max is None or value <= self.approval_max:
            upto = (
                "" if self.approval_max is None else f", <= approval limit {_n(self.approval_max)}"
            )
            return "approval", f"needs approval: {_n(value)} > auto limit {_n(self.auto_max)}{upto}"
        return "deny", f"denied: {_n(value)} > approval limit {_n(self.approval_max)}"


class Budget(_Config):
    """At most ``max`` (sum of values, or number of actions if ``count``) per ``period``."""

    max: float = Field(gt=0)
    period: Duration
    count: bool = False


class ToolGuard(_Config):
    """The guardrails of one tool."""

    threshold: Threshold | None = None
    per_customer: Budget | None = None
    global_per_utc_day: float | None = Field(default=None, gt=0)
    never_for_declines: list[str] = Field(default_factory=list)


class KillSwitches(_Config):
    """Emergency stops: tools and channels that must do nothing at all."""

    tools: list[ToolName] = Field(default_factory=list)
    channels: list[Literal["sms", "email"]] = Field(default_factory=list)


class GuardrailsConfig(_Config):
    """The ``guardrails:`` section of ``rules/policy.yaml``."""

    playbooks: dict[str, list[ToolName]] = Field(description="allow-list of tools per playbook")
    tools: dict[ToolName, ToolGuard] = Field(default_factory=dict)
    kill_switches: KillSwitches = Field(default_factory=KillSwitches)
    effect_memory: Duration = Field(description="how long effect keys are remembered")
    approval_expiry: Duration = Field(
        default=timedelta(hours=48),
        description="how long an action waits for a person's approval before it expires",
    )


class Ledger(Protocol):
    """What all customers share: global daily budgets (the guardrails) and run-time controls
    such as a template paused on a channel after carrier filtering (the contact policy)."""

    def total(self, key: str) -> float:
        """Spent so far under ``key``."""
        ...

    def add(self, key: str, amount: float) -> None:
        """Spend ``amount`` under ``key``."""
        ...

    def control(self, kind: str, name: str) -> str | None:
        """Why ``name`` of ``kind`` is switched off, or ``None``."""
        ...

    def set_control(self, kind: str, name: str, reason: str) -> None:
        """Switch ``name`` of ``kind`` off (kept until an operator lifts it)."""
        ...


class SharedLedger:
    """The in-memory ``Ledger`` (replay). The live runtime uses the store's ledger
    (``outreach.store.StoreLedger``), whose rows are locked inside each batch's transaction."""

    def __init__(self) -> None:
        self.totals: dict[str, float] = {}
        self.controls: dict[tuple[str, str], str] = {}

    def total(self, key: str) -> float:
        """Spent so far under ``key``."""
        return self.totals.get(key, 0.0)

    def add(self, key: str, amount: float) -> None:
        """Spend ``amount`` under ``key``."""
        self.totals[key] = self.totals.get(key, 0.0) + amount

    def control(self, kind: str, name: str) -> str | None:
        """Why ``name`` of ``kind`` is switched off, or ``None``."""
        return self.controls.get((kind, name))

    def set_control(self, kind: str, name: str, reason: str) -> None:
        """Switch ``name`` of ``kind`` off."""
        self.controls[(kind, name)] = reason


@dataclass
class Check:
    """One guardrail's verdict on one action."""

    check: str
    result: str
    detail: str

    def as_dict(self) -> dict[str, str]:
        """JSON-ready form for the decision log."""
        return {"check": self.check, "result": self.result, "detail": self.detail}


@dataclass
class Verdict:
    """The guardrails' decision on one action, with every check that led to it."""

    status: VerdictStatus
    reason: str
    checks: list[Check] = field(default_factory=list)
    params: ToolParams | None = None
    value: float | None = None
    currency: str | None = None

    @property
    def approved(self) -> bool:
        """Whether the action will (or may, once approved) happen."""
        return self.status in ("executed", "scheduled", "pending_approval")


def _n(value: float | None) -> str:
    """A number as people read it in a reason: 1000000 or 12.5 (never 1e+06)."""
    if value is None:
        return "?"
    return f"{int(value)}" if float(value).is_integer() else f"{value:.2f}".rstrip("0")


def _ledger_key(tool: str, currency: str | None) -> str:
    return f"{tool}:{currency or '-'}"


def global_key(tool: str, currency: str | None, at: float) -> str:
    """Shared-ledger key of a tool's spend on the UTC day of ``at``."""
    day = datetime.fromtimestamp(at, UTC).date().isoformat()
    return f"{tool}:{currency or '-'}:{day}"


class Guardrails:
    """Judges proposed actions against ``GuardrailsConfig``; pure until ``commit``."""

    def __init__(self, config: GuardrailsConfig) -> None:
        self.config = config

    def check(
        self,
        tool_name: str,
        raw_params: dict[str, object],
        playbook: str,
        idempotency_key: str,
        state: AgentState,
        shared: Ledger,
        now: float,
        at: float | None = None,
        recheck: bool = False,
        approved_by: str | None = None,
    ) -> Verdict:
        """Judge one proposed action; ``at`` is its scheduled time (None: now).

        ``recheck``: the action was approved earlier under this key and is now due; judge it
        again (kill switches, budgets) without treating its own key as a duplicate.
        ``approved_by``: a person approved it; a value that needs approval passes (one above
        the approval limit is still denied, and every other check still applies).
        """
        checks: list[Check] = []

        def block(check: str, reason: str) -> Verdict:
            checks.append(Check(check, "fail", reason))
            return Verdict("blocked", reason, checks)

        tool = TOOLS.get(tool_name)
        if tool is None:
            return block("tool", f"'{tool_name}' is not a pre-approved tool")
        allowed = self.config.playbooks.get(playbook, [])
        if tool_name not in allowed:
            return block("allow_list", f"{tool_name} is not allowed for playbook {playbook}")
        checks.append(Check("allow_list", "pass", f"{tool_name} allowed for {playbook}"))
        if tool_name in self.config.kill_switches.tools:
            return block("kill_switch", f"kill switch: {tool_name} is switched off")
        switched = shared.control("tool", tool_name)
        if switched is not None:
            return block("kill_switch", f"kill switch: {tool_name} is switched off ({switched})")
        try:
            params = tool.params.model_validate(raw_params)
        except ValidationError as exc:
            first = exc.errors(include_url=False)[0]
            where = ".".join(str(p) for p in first["loc"])
            return block("params", f"invalid parameters: {where}: {first['msg']}")
        if not recheck and idempotency_key in state.effects:
            checks.append(Check("idempotency", "fail", "effect already recorded"))
            return Verdict("duplicate", "effect already recorded for this key", checks)
        guard = self.config.tools.get(tool_name)
        value, currency = tool.value_of(params), tool.currency_of(params)
        verdict = Verdict("executed", "", checks, params, value, currency)
        level = self._judge(
            tool_name, guard, params, value, currency, state, shared, now, at, checks
        )
        if level == "approval" and approved_by is not None:
            checks.append(Check("approval", "pass", f"approved by {approved_by}"))
            level = "auto"
        if level in ("deny", "blocked"):
            verdict.status, verdict.reason = "blocked", checks[-1].detail
        elif level == "approval":  # why: the threshold, not the budget checks after it
            why = next(c.detail for c in reversed(checks) if c.check == "threshold")
            verdict.status, verdict.reason = "pending_approval", why
        elif at is not None and at > now:
            verdict.status, verdict.reason = "scheduled", "scheduled; rechecked when due"
        else:
            verdict.reason = "all guardrails passed"
        return verdict

    def _judge(
        self,
        tool: str,
        guard: ToolGuard | None,
        params: ToolParams,
        value: float | None,
        currency: str | None,
        state: AgentState,
        shared: Ledger,
        now: float,
        at: float | None,
        checks: list[Check],
    ) -> str:
        """Eligibility, threshold and budgets; returns auto | approval | deny | blocked."""
        if guard is None:
            checks.append(Check("threshold", "auto", "no limits configured for this tool"))
            return "auto"
        decline = getattr(params, "decline_code", None)
        if decline is not None and decline in guard.never_for_declines:
            checks.append(Check("eligibility", "fail", f"never retried after a {decline} decline"))
            return "blocked"
        level = "auto"
        if guard.threshold is not None:
            level, why = guard.threshold.level(value)
            checks.append(Check("threshold", level, why))
            if level == "deny":
                return "deny"
        when = now if at is None else max(at, now)
        if not self._within_budgets(tool, guard, value, currency, state, shared, when, checks):
            return "blocked"
        return level

    def _within_budgets(
        self,
        tool: str,
        guard: ToolGuard,
        value: float | None,
        currency: str | None,
        state: AgentState,
        shared: Ledger,
        when: float,
        checks: list[Check],
    ) -> bool:
        budget = guard.per_customer
        if budget is not None:
            ledger = state.spend.get(_ledger_key(tool, currency))
            period = budget.period.total_seconds()
            used = 0.0
            if ledger is not None:
                lo, hi = ledger.span(when, period)
                used = float(hi - lo) if budget.count else float(sum(ledger.vals[lo:hi]))
            amount = 1.0 if budget.count else (value or 0.0)
            unit = "actions" if budget.count else (currency or "")
            window = format_duration(budget.period)
            detail = (
                f"{_n(used)} + {_n(amount)} of {_n(budget.max)} {unit} per customer per {window}"
            )
            if used + amount > budget.max:
                checks.append(
                    Check("customer_budget", "fail", f"per-customer budget exceeded: {detail}")
                )
                return False
            checks.append(Check("customer_budget", "pass", detail))
        if guard.global_per_utc_day is not None:
            spent = shared.total(global_key(tool, currency, when))
            amount = value or 0.0
            limit = guard.global_per_utc_day
            detail = f"{_n(spent)} + {_n(amount)} of {_n(limit)} {currency or ''} today (UTC)"
            if spent + amount > guard.global_per_utc_day:
                checks.append(
                    Check("global_budget", "fail", f"global daily budget exceeded: {detail}")
                )
                return False
            checks.append(Check("global_budget", "pass", detail))
        return True

    def commit_spend(
        self, tool: str, verdict: Verdict, state: AgentState, shared: Ledger, when: float
    ) -> None:
        """Count an executed action against its budgets."""
        guard = self.config.tools.get(tool)  # type: ignore[call-overload]
        if guard is None:
            return
        if guard.per_customer is not None:
            key = _ledger_key(tool, verdict.currency)
            ledger = state.spend.get(key)
            if ledger is None:
                ledger = state.spend[key] = Window()
            ledger.add(when, verdict.value or 0.0, guard.per_customer.period.total_seconds())
        if guard.global_per_utc_day is not None:
            shared.add(global_key(tool, verdict.currency, when), verdict.value or 0.0)
