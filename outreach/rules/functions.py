"""Functions callable from rule expressions, and the registry of the state they need.

Window and fact functions read per-customer state. Their arguments that decide what is stored
(event type, field, ``where`` filter, window length) must be literals, so the loader knows
before the first event exactly which series to keep and for how long: memory grows with
customers and with what the rules ask for, never with the raw event count.

    count(type, within, where=...)            events of a type in the window (incl. this one)
    exists(type, within, where=...)           count(...) >= 1
    sum|avg|min|max(type, field, within, where=...)
    latest(type, within=..., where=...)       data of the newest such event, or null
    previous(field, n, by=...)                the n values of `field` before this event, of the
                                              triggering type and same `by` key: .count .mean
                                              .min .max .sum .last
    signaled(rule, within) / signals(rule, within)   did / how often a rule fire for the customer
    hours(x) days(x) minutes(x)               a duration from a number
    abs(x) round(x, n) len(x) lower(s) upper(s)
"""

from __future__ import annotations

import ast
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from outreach.events import DATA_MODELS, MODELS
from outreach.rules.expressions import (
    Checker,
    ExprError,
    FunctionSpec,
    Scope,
    build_function,
)
from outreach.rules.exprtypes import (
    BOOL,
    DATETIME,
    DURATION,
    NUMBER,
    STR,
    Ty,
    model_type,
    record,
    suggest,
)

BASELINE = record(
    "baseline",
    count=NUMBER,
    sum=NUMBER,
    mean=NUMBER.as_optional(),
    min=NUMBER.as_optional(),
    max=NUMBER.as_optional(),
    last=NUMBER.as_optional(),
)
Extractor = Callable[[Any, Any], Any]
MAX_WINDOW = 3650 * 86400.0  # a window decides how long events are kept: 10 years at most


@dataclass
class SeriesSpec:
    """Events of one type (optionally filtered, optionally a field's values) kept in a window."""

    id: int
    key: str
    type: str
    value: Extractor | None
    where: Extractor | None
    label: str
    retention: float = 0.0


@dataclass
class BaselineSpec:
    """The last ``n`` values of a field of one event type, per ``by`` key."""

    id: int
    key: str
    type: str
    value: Extractor
    by: Extractor | None
    label: str
    size: int = 0


@dataclass
class LatestSpec:
    """The newest event of a type (optionally filtered)."""

    id: int
    key: str
    type: str
    where: Extractor | None
    label: str


@dataclass
class Registry:
    """Everything the compiled rules read from per-customer state, shared across rules."""

    rule_ids: frozenset[str] = frozenset()
    constants: list[Any] = field(default_factory=list)
    series: dict[str, SeriesSpec] = field(default_factory=dict)
    baselines: dict[str, BaselineSpec] = field(default_factory=dict)
    latest: dict[str, LatestSpec] = field(default_factory=dict)
    signal_retention: dict[str, float] = field(default_factory=dict)

    def namespace(self) -> dict[str, Any]:
        """Globals for compiled functions: the constants ``K0``, ``K1``..."""
        return {f"K{i}": value for i, value in enumerate(self.constants)}


def _bind(
    checker: Checker, node: ast.Call, params: list[str], required: int
) -> dict[str, ast.expr]:
    name = node.func.id  # type: ignore[attr-defined]
    bound: dict[str, ast.expr] = {}
    if len(node.args) > len(params):
        raise checker.error(node, f"{name}() takes at most {len(params)} arguments")
    for param, arg in zip(params, node.args, strict=False):
        bound[param] = arg
    for kw in node.keywords:
        if kw.arg is None or kw.arg not in params:
            raise checker.error(
                node, f"{name}() has no argument '{kw.arg}'; arguments: {', '.join(params)}"
            )
        if kw.arg in bound:
            raise checker.error(node, f"{name}() got '{kw.arg}' twice")
        bound[kw.arg] = kw.value
    missing = [p for p in params[:required] if p not in bound]
    if missing:
        raise checker.error(node, f"{name}() needs {', '.join(missing)}")
    return bound


def _event_type(checker: Checker, node: ast.expr) -> str:
    if not (isinstance(node, ast.Constant) and isinstance(node.value, str)):
        raise checker.error(node, 'the event type must be quoted text, e.g. "payment.failed"')
    if node.value not in MODELS:
        known = list(MODELS)
        raise checker.error(node, f"unknown event type '{node.value}'{suggest(node.value, known)}")
    return node.value


def _window(checker: Checker, node: ast.expr | None, what: str = "within") -> float | None:
    if node is None:
        return None
    if (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id == "__duration__"
    ):
        seconds = float(node.args[0].value)  # type: ignore[attr-defined]
        if seconds <= 0:
            raise checker.error(node, f"'{what}' must be longer than zero")
        if seconds > MAX_WINDOW:
            raise checker.error(node, f"'{what}' is longer than 10 years; state is kept that long")
        return seconds
    raise checker.error(node, f"'{what}' must be a literal duration such as 7d or 24h")


def _registry(checker: Checker) -> Registry:
    reg = checker.scope.registry
    if reg is None:
        raise RuntimeError("window functions need a registry")  # a loader bug, not user input
    assert isinstance(reg, Registry)
    return reg


def _sub_expr(
    checker: Checker, node: ast.expr, etype: str, want: Ty | None
) -> tuple[Extractor, str]:
    """Compile an argument evaluated on each stored event of type ``etype``.

    Returns the extractor and a stable label (exact, from the AST: it names state keys)."""
    scope = Scope(
        data=model_type(DATA_MODELS[etype], f"{etype} data"),
        event=_envelope(etype),
        customer=None,
        allow_now=False,
    )
    reg = _registry(checker)
    sub = Checker(scope, checker.rewritten, reg.constants)
    try:
        code, ty = sub.check(node)
    except ExprError as exc:
        exc.message = f"(about {etype} events) {exc.message}"
        raise
    if want is not None and ty.kind not in (want.kind, "any"):
        raise checker.error(node, f"'{checker.text(node)}' must be {want.describe()}")
    body: list[ast.stmt] = [ast.Return(code)]
    fn = build_function("extract", ["event", "data"], body, reg.namespace())
    return fn, ast.unparse(node)


def _envelope(etype: str) -> Ty:
    return record(
        "event",
        event_id=STR,
        customer_id=STR,
        occurred_at=DATETIME,
        source=STR.as_optional(),
        type=Ty("str", enum=frozenset([etype])),
    )


def envelope_type(etype: str) -> Ty:
    """The static type of ``event`` for a rule triggered by ``etype``."""
    return _envelope(etype)


def _ctx_call(method: str, *args: ast.expr) -> ast.expr:
    return ast.Call(ast.Attribute(ast.Name("ctx", ast.Load()), method, ast.Load()), list(args), [])


def _series(checker: Checker, node: ast.Call, with_field: bool) -> tuple[int, float]:
    params = ["type", "field", "within", "where"] if with_field else ["type", "within", "where"]
    args = _bind(checker, node, params, len(params) - 1)
    etype = _event_type(checker, args["type"])
    window = _window(checker, args["within"])
    assert window is not None
    value = label_value = where = label_where = None
    if with_field:
        value, label_value = _sub_expr(checker, args["field"], etype, NUMBER)
    if "where" in args:
        where, label_where = _sub_expr(checker, args["where"], etype, BOOL)
    reg = _registry(checker)
    key = f"{etype}|{label_value or ''}|{label_where or ''}"
    spec = reg.series.get(key)
    if spec is None:
        label = etype + (f" {label_value}" if label_value else "")
        label += f" where {label_where}" if label_where else ""
        spec = SeriesSpec(len(reg.series), key, etype, value, where, label)
        reg.series[key] = spec
    spec.retention = max(spec.retention, window)
    return spec.id, window


def _count(checker: Checker, node: ast.Call) -> tuple[ast.expr, Ty]:
    sid, window = _series(checker, node, with_field=False)
    return _ctx_call("count", ast.Constant(sid), ast.Constant(window)), NUMBER


def _exists(checker: Checker, node: ast.Call) -> tuple[ast.expr, Ty]:
    sid, window = _series(checker, node, with_field=False)
    return _ctx_call("exists", ast.Constant(sid), ast.Constant(window)), BOOL


def _aggregate(method: str) -> Callable[[Checker, ast.Call], tuple[ast.expr, Ty]]:
    def compile_call(checker: Checker, node: ast.Call) -> tuple[ast.expr, Ty]:
        sid, window = _series(checker, node, with_field=True)
        ty = NUMBER if method == "sum" else NUMBER.as_optional()
        return _ctx_call(method, ast.Constant(sid), ast.Constant(window)), ty

    return compile_call


def _latest(checker: Checker, node: ast.Call) -> tuple[ast.expr, Ty]:
    args = _bind(checker, node, ["type", "within", "where"], 1)
    etype = _event_type(checker, args["type"])
    window = _window(checker, args.get("within"))
    where = label_where = None
    if "where" in args:
        where, label_where = _sub_expr(checker, args["where"], etype, BOOL)
    reg = _registry(checker)
    key = f"{etype}|{label_where or ''}"
    spec = reg.latest.get(key)
    if spec is None:
        label = etype + (f" where {label_where}" if label_where else "")
        spec = LatestSpec(len(reg.latest), key, etype, where, label)
        reg.latest[key] = spec
    ty = model_type(DATA_MODELS[etype], f"{etype} data").as_optional()
    return _ctx_call("latest", ast.Constant(spec.id), ast.Constant(window)), ty


def _previous(checker: Checker, node: ast.Call) -> tuple[ast.expr, Ty]:
    args = _bind(checker, node, ["field", "n", "by"], 2)
    etype = checker.scope.trigger
    if etype is None:
        raise checker.error(node, "previous() needs a triggering event")
    n_node = args["n"]
    if not (isinstance(n_node, ast.Constant) and isinstance(n_node.value, int)) or not (
        1 <= n_node.value <= 1000
    ):
        raise checker.error(n_node, "n must be a whole number from 1 to 1000")
    value, label_value = _sub_expr(checker, args["field"], etype, NUMBER)
    by = label_by = None
    if "by" in args:
        by, label_by = _sub_expr(checker, args["by"], etype, None)
    reg = _registry(checker)
    key = f"{etype}|{label_value}|{label_by or ''}"
    spec = reg.baselines.get(key)
    if spec is None:
        label = f"{etype} {label_value}" + (f" by {label_by}" if label_by else "")
        spec = BaselineSpec(len(reg.baselines), key, etype, value, by, label)
        reg.baselines[key] = spec
    spec.size = max(spec.size, n_node.value)
    return _ctx_call("previous", ast.Constant(spec.id), ast.Constant(n_node.value)), BASELINE


def _signals(as_bool: bool) -> Callable[[Checker, ast.Call], tuple[ast.expr, Ty]]:
    def compile_call(checker: Checker, node: ast.Call) -> tuple[ast.expr, Ty]:
        args = _bind(checker, node, ["rule", "within"], 2)
        rule = args["rule"]
        if not (isinstance(rule, ast.Constant) and isinstance(rule.value, str)):
            raise checker.error(rule, 'the rule must be its quoted id, e.g. "usage-decline"')
        reg = _registry(checker)
        if reg.rule_ids and rule.value not in reg.rule_ids:
            known = sorted(reg.rule_ids)
            raise checker.error(rule, f"no rule has id '{rule.value}'{suggest(rule.value, known)}")
        window = _window(checker, args["within"])
        assert window is not None
        reg.signal_retention[rule.value] = max(reg.signal_retention.get(rule.value, 0), window)
        method = "signaled" if as_bool else "signals"
        ty = BOOL if as_bool else NUMBER
        return _ctx_call(method, ast.Constant(rule.value), ast.Constant(window)), ty

    return compile_call


def _unit(seconds: int) -> Callable[[Checker, ast.Call], tuple[ast.expr, Ty]]:
    def compile_call(checker: Checker, node: ast.Call) -> tuple[ast.expr, Ty]:
        args = _bind(checker, node, ["amount"], 1)
        code, ty = checker.check(args["amount"])
        if ty.kind not in ("number", "any"):
            raise checker.error(node, "the amount must be a number")
        call = ast.Call(ast.Name("_seconds", ast.Load()), [code, ast.Constant(seconds)], [])
        return call, DURATION.as_optional(ty.optional)

    return compile_call


def _plain(name: str, kinds: tuple[str, ...], result: Ty | None) -> Callable[..., Any]:
    def compile_call(checker: Checker, node: ast.Call) -> tuple[ast.expr, Ty]:
        params = ["value", "digits"] if name == "round" else ["value"]
        args = _bind(checker, node, params, 1)
        code, ty = checker.check(args["value"])
        if ty.kind not in (*kinds, "any"):
            raise checker.error(
                node, f"{name}() works on {' or '.join(kinds)}, not {ty.describe()}"
            )
        extra = []
        if "digits" in args:
            digits = args["digits"]
            if not (isinstance(digits, ast.Constant) and type(digits.value) is int):
                raise checker.error(digits, "round() digits must be a whole number, e.g. 2")
            extra = [digits]
        out = result or ty
        return ast.Call(ast.Name(f"_{name}", ast.Load()), [code, *extra], []), out.as_optional(
            ty.optional
        )

    return compile_call


def standard_functions() -> dict[str, FunctionSpec]:
    """Every function a rule expression may call."""
    return {
        "count": FunctionSpec("count(type, within, where=...)", _count),
        "exists": FunctionSpec("exists(type, within, where=...)", _exists),
        "sum": FunctionSpec("sum(type, field, within, where=...)", _aggregate("sum")),
        "avg": FunctionSpec("avg(type, field, within, where=...)", _aggregate("avg")),
        "min": FunctionSpec("min(type, field, within, where=...)", _aggregate("min")),
        "max": FunctionSpec("max(type, field, within, where=...)", _aggregate("max")),
        "latest": FunctionSpec("latest(type, within=..., where=...)", _latest),
        "previous": FunctionSpec("previous(field, n, by=...)", _previous),
        "signaled": FunctionSpec("signaled(rule, within)", _signals(True)),
        "signals": FunctionSpec("signals(rule, within)", _signals(False)),
        "hours": FunctionSpec("hours(x)", _unit(3600)),
        "days": FunctionSpec("days(x)", _unit(86400)),
        "minutes": FunctionSpec("minutes(x)", _unit(60)),
        "abs": FunctionSpec("abs(x)", _plain("abs", ("number", "duration"), None)),
        "round": FunctionSpec("round(x, digits)", _plain("round", ("number",), None)),
        "len": FunctionSpec("len(x)", _plain("len", ("str", "list"), NUMBER)),
        "lower": FunctionSpec("lower(text)", _plain("lower", ("str",), STR)),
        "upper": FunctionSpec("upper(text)", _plain("upper", ("str",), STR)),
    }
