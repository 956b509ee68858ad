"""Compile validated rule specs into fast, checked functions and an index by event type."""

from __future__ import annotations

import ast
import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from outreach.events import DATA_MODELS, EVENT_TYPES
from outreach.rules.expressions import CompiledExpr, ExprError, Scope, build_function, check
from outreach.rules.exprtypes import BOOL, STR, Ty, model_type, record
from outreach.rules.functions import (
    BaselineSpec,
    LatestSpec,
    Registry,
    SeriesSpec,
    envelope_type,
    standard_functions,
)
from outreach.rules.model import RuleSpec
from outreach.rules.yamlfile import Loc, Problem, YamlDoc

RuleFn = Callable[..., Any]  # (event, data, customer, ctx, now) -> value

_CHANNEL = record("channel consent", transactional=BOOL, marketing=BOOL)
CUSTOMER = record(
    "customer",
    tier=Ty("str", enum=frozenset({"standard", "premium"})),
    locale=STR,
    language=STR,
    country=STR.as_optional(),
    timezone=STR,
    has_phone=BOOL,
    has_email=BOOL,
    known=BOOL,
    consent=record("consent", sms=_CHANNEL, email=_CHANNEL),
)
PARAMS = ["event", "data", "customer", "ctx", "now"]


@dataclass
class CompiledCancel:
    """A compiled ``cancel_on`` entry of one rule."""

    rule_id: str
    trigger: str
    key: RuleFn
    when: RuleFn | None
    reason: str


@dataclass
class CompiledRule:
    """A rule ready to evaluate: its spec and its compiled functions."""

    spec: RuleSpec
    path: str
    condition: RuleFn
    evidence: RuleFn
    key: RuleFn | None
    audience: RuleFn | None
    reads_customer: bool = True  # expressions or audience filters use ``customer``


@dataclass
class CompiledRules:
    """All rules of a folder, indexed by the event types they react to."""

    rules: dict[str, CompiledRule]
    registry: Registry
    by_trigger: dict[str, list[CompiledRule]] = field(default_factory=dict)
    read_customer: set[str] = field(default_factory=set)  # triggers whose rules read customer
    cancels: dict[str, list[CompiledCancel]] = field(default_factory=dict)
    series_by_type: dict[str, list[SeriesSpec]] = field(default_factory=dict)
    latest_by_type: dict[str, list[LatestSpec]] = field(default_factory=dict)
    baselines_by_type: dict[str, list[BaselineSpec]] = field(default_factory=dict)
    series: list[SeriesSpec] = field(default_factory=list)  # by spec id
    latest: list[LatestSpec] = field(default_factory=list)
    baselines: list[BaselineSpec] = field(default_factory=list)


class _RuleCompiler:
    """Compiles one rule's expressions, collecting located problems instead of stopping."""

    def __init__(self, spec: RuleSpec, doc: YamlDoc, registry: Registry) -> None:
        self.spec = spec
        self.doc = doc
        self.registry = registry
        self.problems: list[Problem] = []
        self.scope = self._scope(spec.trigger)

    def _scope(self, trigger: str) -> Scope:
        return Scope(
            data=model_type(DATA_MODELS[trigger], f"{trigger} data"),
            event=envelope_type(trigger),
            customer=CUSTOMER,
            functions=standard_functions(),
            trigger=trigger,
            registry=self.registry,
        )

    def expr(self, source: str, loc: Loc, scope: Scope, want: Ty | None) -> CompiledExpr | None:
        try:
            compiled = check(source, scope, self.registry.constants)
        except ExprError as exc:
            self.problems.append(self.doc.problem(loc, exc.message, exc.excerpt(source)))
            return None
        if want is not None and compiled.ty.kind not in (want.kind, "any", "null"):
            message = f"must be {want.describe()}, but this is {compiled.ty.describe()}"
            self.problems.append(self.doc.problem(loc, message, f"    {source}"))
            return None
        return compiled

    def compile(self) -> CompiledRule | None:
        spec = self.spec
        lets: list[tuple[str, CompiledExpr]] = []
        for name, source in spec.let.items():
            compiled = self.expr(source, ("let", name), self.scope, None)
            if compiled is not None:
                self.scope.names[name] = compiled.ty
                lets.append((name, compiled))
        when = self.expr(spec.when, ("when",), self.scope, BOOL) if spec.when else None
        key = self.expr(spec.key, ("key",), self.scope, None) if spec.key else None
        audience = None
        if spec.audience.when:
            audience = self.expr(spec.audience.when, ("audience", "when"), self.scope, BOOL)
        if self.problems:
            return None
        ns = self.registry.namespace()
        assigns: list[ast.stmt] = [
            ast.Assign([ast.Name(f"L_{n}", ast.Store())], copy.deepcopy(c.code)) for n, c in lets
        ]
        result = copy.deepcopy(when.code) if when else ast.Constant(True)
        condition = build_function("condition", PARAMS, [*assigns, ast.Return(result)], ns)
        body = [*copy.deepcopy(assigns), _evidence(lets, when)]
        evidence = build_function("evidence", PARAMS, body, ns)
        aud = spec.audience
        filters = (aud.tier, aud.locale, aud.country, aud.consent)
        exprs = [c for _, c in lets] + [e for e in (when, key, audience) if e is not None]
        reads_customer = any(f is not None for f in filters) or any(e.uses_customer for e in exprs)
        return CompiledRule(
            spec=spec,
            path=self.doc.path,
            condition=condition,
            evidence=evidence,
            key=_single("key", key, ns, assigns) if key else None,
            audience=_single("audience", audience, ns, assigns) if audience else None,
            reads_customer=reads_customer,
        )

    def cancels(self) -> list[CompiledCancel]:
        out = []
        for i, cancel in enumerate(self.spec.cancel_on):
            scope = self._scope(cancel.trigger)
            scope.functions = {}  # about the cancelling event alone: no windows, no customer
            scope.customer = None
            key = self.expr(cancel.key, ("cancel_on", i, "key"), scope, None)
            when = None
            if cancel.when:
                when = self.expr(cancel.when, ("cancel_on", i, "when"), scope, BOOL)
            if key is None or (cancel.when and when is None):
                continue
            ns = self.registry.namespace()
            when_fn = _single("cancel_when", when, ns) if when else None
            key_fn = _single("cancel_key", key, ns)
            reason = cancel.reason or cancel.trigger
            out.append(CompiledCancel(self.spec.id, cancel.trigger, key_fn, when_fn, reason))
        return out


def _single(
    name: str, compiled: CompiledExpr, ns: dict[str, Any], lets: list[ast.stmt] | None = None
) -> RuleFn:
    """``def name(event, data, customer, ctx, now): <lets>; return <expr>``."""
    body = [*copy.deepcopy(lets or []), ast.Return(copy.deepcopy(compiled.code))]
    return build_function(name, PARAMS, body, ns)


def _evidence(lets: list[tuple[str, CompiledExpr]], when: CompiledExpr | None) -> ast.Return:
    """``return {"let name": value, "count(...)": value, "data.x": value}``."""
    keys: list[ast.expr | None] = []
    values: list[ast.expr] = []
    seen: set[str] = set()
    for name, _ in lets:
        keys.append(ast.Constant(name))
        values.append(ast.Name(f"L_{name}", ast.Load()))
        seen.add(name)
    sources = [c for _, c in lets] + ([when] if when else [])
    for compiled in sources:
        for text, code in [*compiled.calls, *compiled.fields]:
            if text not in seen:
                seen.add(text)
                keys.append(ast.Constant(text))
                values.append(copy.deepcopy(code))
    return ast.Return(ast.Dict(keys, values))


def compile_rules(
    specs: list[tuple[RuleSpec, YamlDoc]],
) -> tuple[CompiledRules | None, list[Problem]]:
    """Compile every rule; returns the compiled set or the located problems."""
    registry = Registry(rule_ids=frozenset(spec.id for spec, _ in specs))
    problems: list[Problem] = []
    compiled: dict[str, CompiledRule] = {}
    cancels: list[CompiledCancel] = []
    for spec, doc in specs:
        rc = _RuleCompiler(spec, doc, registry)
        rule = rc.compile()
        cancels.extend(rc.cancels())
        problems.extend(rc.problems)
        if rule is not None:
            compiled[spec.id] = rule
    if problems:
        return None, problems
    out = CompiledRules(rules=compiled, registry=registry)
    for rule in sorted(compiled.values(), key=lambda r: (-r.spec.priority, r.spec.id)):
        if rule.spec.enabled:
            out.by_trigger.setdefault(rule.spec.trigger, []).append(rule)
            if rule.reads_customer:
                out.read_customer.add(rule.spec.trigger)
    for cancel in cancels:
        if compiled[cancel.rule_id].spec.enabled:
            out.cancels.setdefault(cancel.trigger, []).append(cancel)
    _index_specs(out)
    return out, []


def _index_specs(out: CompiledRules) -> None:
    reg = out.registry
    out.series = sorted(reg.series.values(), key=lambda s: s.id)
    out.latest = sorted(reg.latest.values(), key=lambda s: s.id)
    out.baselines = sorted(reg.baselines.values(), key=lambda s: s.id)
    for series in out.series:
        out.series_by_type.setdefault(series.type, []).append(series)
    for latest in out.latest:
        out.latest_by_type.setdefault(latest.type, []).append(latest)
    for baseline in out.baselines:
        out.baselines_by_type.setdefault(baseline.type, []).append(baseline)
    for etype in EVENT_TYPES:
        out.by_trigger.setdefault(etype, [])
