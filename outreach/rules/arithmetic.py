"""Typing of ``+ - * /`` between numbers, timestamps and durations."""

from __future__ import annotations

import ast
from typing import TYPE_CHECKING

from outreach.rules.exprtypes import ANY, DATETIME, DURATION, NUMBER, STR, Ty

if TYPE_CHECKING:
    from outreach.rules.expressions import Checker

# (operator, left kind, right kind) -> result
_RESULTS: dict[tuple[type[ast.operator], str, str], Ty] = {
    (ast.Add, "number", "number"): NUMBER,
    (ast.Sub, "number", "number"): NUMBER,
    (ast.Mult, "number", "number"): NUMBER,
    (ast.Div, "number", "number"): NUMBER,
    (ast.Add, "str", "str"): STR,
    (ast.Sub, "datetime", "datetime"): DURATION,
    (ast.Add, "datetime", "duration"): DATETIME,
    (ast.Add, "duration", "datetime"): DATETIME,
    (ast.Sub, "datetime", "duration"): DATETIME,
    (ast.Add, "duration", "duration"): DURATION,
    (ast.Sub, "duration", "duration"): DURATION,
    (ast.Mult, "duration", "number"): DURATION,
    (ast.Mult, "number", "duration"): DURATION,
    (ast.Div, "duration", "number"): DURATION,
    (ast.Div, "duration", "duration"): NUMBER,
}
_SAFE = {ast.Add: "_add", ast.Sub: "_sub", ast.Mult: "_mul", ast.Div: "_div"}
_SYMBOL = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/"}


def binop(
    checker: Checker, node: ast.BinOp, left: ast.expr, lty: Ty, right: ast.expr, rty: Ty
) -> tuple[ast.expr, Ty]:
    """Type ``left <op> right``; division and missing operands go through null-safe helpers."""
    op = type(node.op)
    if op is ast.Mod:
        raise checker.error(
            node, "'%' is not supported; for a percentage write it without a space, e.g. 60%"
        )
    if op not in _SAFE:
        raise checker.error(node, "only + - * / are supported")
    if "any" in (lty.kind, rty.kind):
        result = ANY
    else:
        found = _RESULTS.get((op, lty.kind, rty.kind))
        if found is None:
            raise checker.error(
                node,
                f"cannot compute {lty.describe()} {_SYMBOL[op]} {rty.describe()}"
                + _hint(op, lty, rty),
            )
        result = found
    scaled = _percent_of(checker, op, left, right, lty.optional or rty.optional)
    if scaled is not None:
        return scaled, result.as_optional(lty.optional or rty.optional)
    optional = lty.optional or rty.optional or op is ast.Div
    if optional:
        return ast.Call(ast.Name(_SAFE[op], ast.Load()), [left, right], []), result.as_optional()
    return ast.BinOp(left, node.op, right), result


def _percent_of(
    checker: Checker, op: type[ast.operator], left: ast.expr, right: ast.expr, optional: bool
) -> ast.expr | None:
    """``60% * x`` as ``(60 * x) / 100``: exact where ``0.6 * x`` is not (0.6 * 3 < 1.8)."""
    if op is not ast.Mult:
        return None
    for pct, other in ((left, right), (right, left)):
        percent = checker.percents.get(id(pct))
        if percent is not None:
            if optional:
                scaled = ast.Call(ast.Name("_mul", ast.Load()), [ast.Constant(percent), other], [])
                return ast.Call(ast.Name("_div", ast.Load()), [scaled, ast.Constant(100)], [])
            plain = ast.BinOp(ast.Constant(percent), ast.Mult(), other)
            return ast.BinOp(plain, ast.Div(), ast.Constant(100))
    return None


def _hint(op: type[ast.operator], lty: Ty, rty: Ty) -> str:
    kinds = {lty.kind, rty.kind}
    if kinds == {"datetime", "number"} or kinds == {"duration", "number"} and op is not ast.Mult:
        return "; give the number a unit, e.g. 24h or 7d"
    if kinds == {"datetime"} and op is ast.Add:
        return "; subtract timestamps to get a duration"
    return ""
