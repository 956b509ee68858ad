"""The rule expression language: a checked subset of Python expressions, compiled to bytecode.

Why not an interpreter library: measured here, cel-python's interpreter takes ~420 us and
simpleeval ~7-12 us per evaluation of a typical condition; the engine's budget is ~20 us per
event for everything. So expressions are parsed by Python's own parser (``ast``), every node is
checked against a whitelist and typed against the event models (a misspelt field or a status
that does not exist is refused at load time with its column), then compiled to a Python code
object (~0.3 us per evaluation). Nothing outside the whitelist can be expressed: no imports,
no attribute access beyond the typed records, no calls beyond the functions below.

Sugar on top of Python syntax, rewritten before parsing: durations ``24h 7d 90m 30s 2w`` and
percentages ``60%``; ``true``, ``false``, ``null`` as well as ``True``, ``False``, ``None``.

An ordering comparison with a missing value is false (``null > 3`` and ``null <= 3`` are both
false); ``==`` and ``!=`` treat null as a value (``x == null`` tests for missing, so
``x != "a"`` is true when x is missing); arithmetic with a missing value is missing, and
``x / 0`` is missing: a rule never crashes on a sparse event.

The window functions (``count``, ``sum``, ``exists``, ``latest``, ``previous``, ``signaled``
...) are compiled into calls on the evaluation context; see ``functions.py``.
"""

from __future__ import annotations

import ast
import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from outreach.rules.arithmetic import binop
from outreach.rules.exprtypes import (
    ANY,
    BOOL,
    DATETIME,
    DURATION,
    NULL,
    NUMBER,
    STR,
    Ty,
    comparable,
    equatable,
    suggest,
)
from outreach.rules.helpers import HELPERS
from outreach.rules.syntax import ExprError, Rewritten, UnSugar, literal_number, parse

CONSTANT_NAMES = {"true": True, "false": False, "null": None, "True": True, "False": False}
RESERVED = {"data", "event", "customer", "now", "ctx", *CONSTANT_NAMES, "None"}


@dataclass
class Scope:
    """What names an expression may use and what they hold."""

    data: Ty | None  # the triggering event's data, or None where there is no event
    event: Ty | None
    customer: Ty | None
    names: dict[str, Ty] = field(default_factory=dict)  # let bindings so far
    functions: dict[str, FunctionSpec] = field(default_factory=dict)
    allow_now: bool = True
    trigger: str | None = None  # the triggering event type, for previous()
    registry: Any = None  # functions.Registry; typed loosely to keep this module standalone


CompileCall = Callable[["Checker", ast.Call], tuple[ast.expr, Ty]]


@dataclass(frozen=True)
class FunctionSpec:
    """A function callable from expressions: its help text and how to compile a call."""

    signature: str
    compile: CompileCall


class Checker:
    """Type-checks one parsed expression and builds the Python AST that computes it."""

    def __init__(self, scope: Scope, rewritten: Rewritten, constants: list[Any]) -> None:
        self.scope = scope
        self.rewritten = rewritten
        self.constants = constants
        self.percents: dict[int, float] = {}  # id of a compiled 60% constant -> 60.0
        self.uses_customer = False
        self.calls: list[tuple[str, ast.expr]] = []  # (source text, compiled) for evidence
        self.fields: list[tuple[str, ast.expr]] = []

    # -- errors ---------------------------------------------------------------------------
    def error(self, node: ast.AST, message: str) -> ExprError:
        """An ``ExprError`` pointing at ``node`` in the original source."""
        lineno = getattr(node, "lineno", 1) - 2  # the source is wrapped in "(\n...\n)"
        if lineno < 0 or lineno >= len(self.rewritten.spans):
            return ExprError(message)
        col = self.rewritten.char_col(lineno, getattr(node, "col_offset", 0))
        end_byte = getattr(node, "end_col_offset", None)
        end = col + 1 if end_byte is None else self.rewritten.char_col(lineno, end_byte)
        start = self.rewritten.original_col(lineno, col)
        stop = self.rewritten.original_col(lineno, end) if end > col else start + 1
        return ExprError(message, start, stop - start)

    def text(self, node: ast.AST) -> str:
        """The analyst's own text of a node (evidence keys, messages); rebuilt if it spans lines."""
        line = getattr(node, "lineno", 0) - 2
        end_line = getattr(node, "end_lineno", -1) - 2
        col, end_col = getattr(node, "col_offset", None), getattr(node, "end_col_offset", None)
        rw = self.rewritten
        if line == end_line and 0 <= line < len(rw.spans) and None not in (col, end_col):
            start = rw.original_col(line, rw.char_col(line, col))  # type: ignore[arg-type]
            stop = rw.original_col(line, rw.char_col(line, end_col))  # type: ignore[arg-type]
            if 0 <= start < stop:
                return rw.original[start:stop]
        return ast.unparse(UnSugar().visit(copy.deepcopy(node)))

    def constant(self, value: Any) -> ast.expr:
        """A reference to a non-literal constant (timedelta, frozenset...) held outside."""
        self.constants.append(value)
        return ast.Name(f"K{len(self.constants) - 1}", ast.Load())

    # -- dispatch -------------------------------------------------------------------------
    def check(self, node: ast.expr) -> tuple[ast.expr, Ty]:
        """Compile ``node``; returns the Python AST and its static type."""
        method = getattr(self, f"_{type(node).__name__}", None)
        if method is None:
            raise self.error(node, f"'{self.text(node)}' is not allowed in a rule expression")
        result: tuple[ast.expr, Ty] = method(node)
        return result

    def check_bool(self, node: ast.expr, what: str = "a condition") -> ast.expr:
        """Compile a node that must be true/false."""
        code, ty = self.check(node)
        if ty.kind not in ("bool", "any", "null"):
            raise self.error(
                node,
                f"{what} must be true or false, but '{self.text(node)}' is {ty.describe()}; "
                "compare it, e.g. '> 0' or '== \"x\"'",
            )
        return code

    def _Constant(self, node: ast.Constant) -> tuple[ast.expr, Ty]:
        value = node.value
        if value is None:
            return node, NULL
        if isinstance(value, bool):
            return node, BOOL
        if isinstance(value, int | float):
            return node, NUMBER
        if isinstance(value, str):
            return node, STR
        raise self.error(node, f"{value!r} is not a supported literal")

    def _Name(self, node: ast.Name) -> tuple[ast.expr, Ty]:
        name = node.id
        if name in CONSTANT_NAMES:
            return ast.Constant(CONSTANT_NAMES[name]), NULL if name == "null" else BOOL
        if name in self.scope.names:
            return ast.Name(f"L_{name}", ast.Load()), self.scope.names[name]
        builtin = {"data": self.scope.data, "event": self.scope.event}
        builtin["customer"] = self.scope.customer
        if name == "customer":
            self.uses_customer = True
        if name in builtin and builtin[name] is not None:
            return ast.Name(name, ast.Load()), builtin[name]  # type: ignore[return-value]
        if name == "now" and self.scope.allow_now:
            return ast.Name("now", ast.Load()), DATETIME
        known = [n for n, t in builtin.items() if t is not None] + list(self.scope.names)
        if self.scope.allow_now:
            known.append("now")
        raise self.error(
            node, f"unknown name '{name}'{suggest(name, known)}; names here: {', '.join(known)}"
        )

    def _Attribute(self, node: ast.Attribute) -> tuple[ast.expr, Ty]:
        base_code, base_ty = self.check(node.value)
        member = base_ty.member(node.attr)
        if base_ty.kind == "any":
            member = ANY
        if member is None:
            if base_ty.kind != "record":
                raise self.error(node, f"'{self.text(node.value)}' is {base_ty.describe()}")
            names = base_ty.member_names()
            raise self.error(
                node,
                f"'{node.attr}' is not a field of {self.text(node.value)} ({base_ty.name})"
                f"{suggest(node.attr, names)}; fields: {', '.join(names)}",
            )
        if base_ty.optional:
            code: ast.expr = _call("_get", base_code, ast.Constant(node.attr))
            member = member.as_optional()
        else:
            code = ast.Attribute(base_code, node.attr, ast.Load())
        if _is_field_path(node):
            self.fields.append((self.text(node), code))
        return code, member

    def _List(self, node: ast.List | ast.Tuple | ast.Set) -> tuple[ast.expr, Ty]:
        items = [self.check(e) for e in node.elts]
        kinds = {t.kind for _, t in items}
        if len(kinds) > 1:
            raise self.error(node, "a list must hold values of one kind (all text, all numbers)")
        item_ty = items[0][1] if items else ANY
        values = [c.value for c, _ in items if isinstance(c, ast.Constant)]
        if len(values) == len(items):
            code: ast.expr = ast.Constant(frozenset(values))  # type: ignore[arg-type]
        else:
            code = ast.Tuple([c for c, _ in items], ast.Load())
        return code, Ty("list", item=item_ty)

    _Tuple = _List
    _Set = _List

    def _BoolOp(self, node: ast.BoolOp) -> tuple[ast.expr, Ty]:
        values = [self.check_bool(v, "each side of and/or") for v in node.values]
        return ast.BoolOp(node.op, values), BOOL

    def _UnaryOp(self, node: ast.UnaryOp) -> tuple[ast.expr, Ty]:
        if isinstance(node.op, ast.Not):
            return ast.UnaryOp(ast.Not(), self.check_bool(node.operand, "what 'not' negates")), BOOL
        code, ty = self.check(node.operand)
        if isinstance(node.op, ast.USub | ast.UAdd) and ty.kind in ("number", "duration", "any"):
            if ty.optional:
                return _call("_neg", code), ty
            return ast.UnaryOp(node.op, code), ty
        raise self.error(node, f"cannot negate {ty.describe()}")

    def _IfExp(self, node: ast.IfExp) -> tuple[ast.expr, Ty]:
        test = self.check_bool(node.test, "the condition of 'x if c else y'")
        body, body_ty = self.check(node.body)
        orelse, else_ty = self.check(node.orelse)
        if not equatable(body_ty, else_ty):
            raise self.error(node, "both branches of 'x if c else y' must be of the same kind")
        result = body_ty if body_ty.kind != "null" else else_ty
        optional = body_ty.optional or else_ty.optional
        return ast.IfExp(test, body, orelse), result.as_optional(optional)

    def _BinOp(self, node: ast.BinOp) -> tuple[ast.expr, Ty]:
        left, lty = self.check(node.left)
        right, rty = self.check(node.right)
        return binop(self, node, left, lty, right, rty)

    def _Compare(self, node: ast.Compare) -> tuple[ast.expr, Ty]:
        parts: list[ast.expr] = []
        left_node = node.left
        left, lty = self.check(left_node)
        for op, right_node in zip(node.ops, node.comparators, strict=True):
            right, rty = self.check(right_node)
            parts.append(self._compare_pair(node, op, left, lty, right_node, right, rty))
            left_node, left, lty = right_node, right, rty
        return (parts[0] if len(parts) == 1 else ast.BoolOp(ast.And(), parts)), BOOL

    def _compare_pair(
        self, node: ast.Compare, op: ast.cmpop, left: ast.expr, lty: Ty,
        right_node: ast.expr, right: ast.expr, rty: Ty,
    ) -> ast.expr:  # fmt: skip
        if isinstance(op, ast.In | ast.NotIn):
            return self._membership(node, op, left, lty, right_node, right, rty)
        if isinstance(op, ast.Is | ast.IsNot):
            raise self.error(node, "use '==' and '!=' instead of 'is'")
        if isinstance(op, ast.Eq | ast.NotEq):
            if not equatable(lty, rty):
                raise self.error(
                    node, f"cannot compare {lty.describe()} with {rty.describe()}: never equal"
                )
            self._check_enum(lty, right_node, right)
            return ast.Compare(left, [op], [right])
        if not comparable(lty, rty):
            hint = ""
            if {lty.kind, rty.kind} == {"duration", "number"}:
                hint = "; write the number with a unit, e.g. 24h or 7d"
            raise self.error(node, f"cannot order {lty.describe()} against {rty.describe()}{hint}")
        if lty.optional or rty.optional:
            name = {ast.Lt: "_lt", ast.LtE: "_le", ast.Gt: "_gt", ast.GtE: "_ge"}[type(op)]
            return _call(name, left, right)
        return ast.Compare(left, [op], [right])

    def _membership(
        self, node: ast.Compare, op: ast.cmpop, left: ast.expr, lty: Ty,
        right_node: ast.expr, right: ast.expr, rty: Ty,
    ) -> ast.expr:  # fmt: skip
        if rty.kind == "list" and rty.item is not None:
            if not equatable(lty, rty.item):
                raise self.error(
                    node, f"'in' compares {lty.describe()} with a list of {rty.item.describe()}"
                )
            if isinstance(right, ast.Constant) and isinstance(right.value, frozenset) and lty.enum:
                for value in right.value:
                    self._check_enum_value(lty, right_node, value)
        elif rty.kind == "str":
            if lty.kind not in ("str", "any"):
                raise self.error(node, "'in' on text looks for a piece of text")
            if lty.optional or rty.optional:
                code = _call("_contains", right, left)
                return ast.UnaryOp(ast.Not(), code) if isinstance(op, ast.NotIn) else code
        elif rty.kind != "any":
            raise self.error(node, f"'in' needs a list or text on its right, not {rty.describe()}")
        return ast.Compare(left, [op], [right])

    def _check_enum(self, lty: Ty, right_node: ast.expr, right: ast.expr) -> None:
        if lty.enum and isinstance(right, ast.Constant) and isinstance(right.value, str):
            self._check_enum_value(lty, right_node, right.value)

    def _check_enum_value(self, lty: Ty, node: ast.expr, value: object) -> None:
        if lty.enum and isinstance(value, str) and value not in lty.enum:
            options = sorted(lty.enum)
            raise self.error(
                node,
                f"'{value}' can never match: expected one of {', '.join(options)}"
                f"{suggest(value, options)}",
            )

    def _Call(self, node: ast.Call) -> tuple[ast.expr, Ty]:
        if not isinstance(node.func, ast.Name):
            raise self.error(node, "only the listed functions can be called")
        name = node.func.id
        if name == "__duration__":
            try:
                span = timedelta(seconds=literal_number(node))
            except OverflowError:
                raise self.error(node, "this duration is too long") from None
            return self.constant(span), DURATION
        if name == "__percent__":
            percent = literal_number(node)
            ratio = ast.Constant(percent / 100.0)
            self.percents[id(ratio)] = percent
            return ratio, NUMBER
        spec = self.scope.functions.get(name)
        if spec is None:
            known = sorted(self.scope.functions)
            raise self.error(
                node.func,
                f"unknown function '{name}'{suggest(name, known)}; functions: {', '.join(known)}",
            )
        code, ty = spec.compile(self, node)
        self.calls.append((self.text(node), code))
        return code, ty


def _is_field_path(node: ast.AST) -> bool:
    while isinstance(node, ast.Attribute):
        node = node.value
    return isinstance(node, ast.Name) and node.id in ("data", "event", "customer")


def _call(name: str, *args: ast.expr) -> ast.Call:
    return ast.Call(ast.Name(name, ast.Load()), list(args), [])


@dataclass
class CompiledExpr:
    """One compiled expression: its Python AST, type and what it read (for evidence)."""

    source: str
    code: ast.expr
    ty: Ty
    calls: list[tuple[str, ast.expr]]
    fields: list[tuple[str, ast.expr]]
    uses_customer: bool = False


def check(source: str, scope: Scope, constants: list[Any]) -> CompiledExpr:
    """Parse and type-check ``source`` in ``scope``."""
    node, rewritten = parse(source)
    checker = Checker(scope, rewritten, constants)
    code, ty = checker.check(node)
    return CompiledExpr(source, code, ty, checker.calls, checker.fields, checker.uses_customer)


def build_function(
    name: str, params: list[str], body: list[ast.stmt], namespace: dict[str, Any]
) -> Callable[..., Any]:
    """Compile ``def name(params): body`` with ``namespace`` as its globals."""
    args = ast.arguments(
        posonlyargs=[], args=[ast.arg(p) for p in params], kwonlyargs=[], kw_defaults=[],
        defaults=[],
    )  # fmt: skip
    func = ast.FunctionDef(name=name, args=args, body=body, decorator_list=[], returns=None)
    module = ast.fix_missing_locations(ast.Module([func], []))
    glb = {"__builtins__": {}, **HELPERS, **namespace}
    exec(compile(module, f"<rule {name}>", "exec"), glb)  # noqa: S102 - checked whitelist AST
    fn: Callable[..., Any] = glb[name]
    return fn


__all__ = [
    "CONSTANT_NAMES",
    "RESERVED",
    "Checker",
    "CompiledExpr",
    "ExprError",
    "FunctionSpec",
    "Scope",
    "build_function",
    "check",
    "parse",
]
