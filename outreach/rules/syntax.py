"""The surface syntax of rule expressions: sugar rewriting, parsing, located syntax errors.

``24h 7d 90m 30s 2w`` become ``__duration__(seconds)`` and ``60%`` becomes
``__percent__(60)`` before Python's own parser reads the text; ``Rewritten`` maps columns of
the rewritten text back to the analyst's text so every error points at what they wrote.
Names starting with ``__`` are reserved for this rewriting.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from datetime import timedelta

from outreach.rules.durations import format_duration

_LITERALS = re.compile(
    r"""("(?:\\.|[^"\\])*"|'(?:\\.|[^'\\])*')"""  # strings, left untouched
    r"|(?<![\w.])(\d+(?:\.\d+)?)(s|m|h|d|w)\b"  # durations
    r"|(?<![\w.])(\d+(?:\.\d+)?)%(?!=)"  # percentages
)
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


class ExprError(Exception):
    """A problem in one expression, with the column (0-based) and width it concerns."""

    def __init__(self, message: str, col: int | None = None, width: int = 1) -> None:
        super().__init__(message)
        self.message = message
        self.col = col
        self.width = max(width, 1)

    def excerpt(self, source: str) -> str:
        """The expression with a caret line under the offending part."""
        flat = " ".join(source.split("\n"))
        if self.col is None:
            return f"    {flat}"
        return f"    {flat}\n    {' ' * self.col}{'^' * self.width}"


@dataclass
class Rewritten:
    """Source after sugar rewriting, with a map back to original columns."""

    text: str
    original: str
    # per rewritten line: list of (new_start, new_end, orig_start, orig_end)
    spans: list[list[tuple[int, int, int, int]]]
    line_starts: list[int]  # offset of each original line in the flattened source

    def char_col(self, lineno: int, byte_col: int) -> int:
        """``ast`` columns count UTF-8 bytes; turn one into a character column."""
        line = self.text.split("\n")[lineno].encode()
        return len(line[:byte_col].decode(errors="ignore"))

    def original_col(self, lineno: int, col: int) -> int:
        """Column in the flattened original source of rewritten (line, col)."""
        shift = 0
        for new_start, new_end, orig_start, orig_end in self.spans[lineno]:
            if col >= new_end:
                shift += (new_end - new_start) - (orig_end - orig_start)
            elif col >= new_start:
                return self.line_starts[lineno] + orig_start
        return self.line_starts[lineno] + col - shift


def rewrite(source: str) -> Rewritten:
    """Replace durations and percentages with calls the checker understands."""
    lines = source.split("\n")
    out_lines: list[str] = []
    spans: list[list[tuple[int, int, int, int]]] = []
    starts, offset = [], 0
    for line in lines:
        starts.append(offset)
        offset += len(line) + 1
        pieces: list[str] = []
        line_spans: list[tuple[int, int, int, int]] = []
        pos = new_pos = 0
        for match in _LITERALS.finditer(line):
            if match.group(1):
                continue
            if match.group(2):
                seconds = float(match.group(2)) * _UNITS[match.group(3)]
                repl = f"__duration__({seconds!r})"
            else:
                repl = f"__percent__({float(match.group(4))!r})"
            pieces.append(line[pos : match.start()])
            new_pos += match.start() - pos
            line_spans.append((new_pos, new_pos + len(repl), match.start(), match.end()))
            pieces.append(repl)
            new_pos += len(repl)
            pos = match.end()
        pieces.append(line[pos:])
        out_lines.append("".join(pieces))
        spans.append(line_spans)
    return Rewritten("\n".join(out_lines), source, spans, starts)


def literal_number(node: ast.Call) -> float:
    arg = node.args[0]
    assert isinstance(arg, ast.Constant) and isinstance(arg.value, int | float)
    return float(arg.value)


class UnSugar(ast.NodeTransformer):
    """Turns ``__duration__(86400.0)`` back into ``1d`` for messages and evidence keys."""

    def visit_Call(self, node: ast.Call) -> ast.AST:
        if isinstance(node.func, ast.Name) and node.func.id in ("__duration__", "__percent__"):
            value = literal_number(node)
            if node.func.id == "__percent__":
                return ast.Name(f"{value:.15g}%", ast.Load())
            try:
                return ast.Name(format_duration(timedelta(seconds=value)), ast.Load())
            except OverflowError:
                return ast.Name(f"{value:.15g}s", ast.Load())
        self.generic_visit(node)
        return node


_STRINGS = re.compile(r"""("(?:\\.|[^"\\])*"|'(?:\\.|[^'\\])*')""")
_RESERVED_NAME = re.compile(r"(?<![\w.])__\w*")


def parse(source: str) -> tuple[ast.expr, Rewritten]:
    """Parse (after sugar rewriting); raises ``ExprError`` with the column of a syntax error."""
    outside_strings = _STRINGS.sub(lambda m: " " * len(m.group(0)), source)
    reserved = _RESERVED_NAME.search(outside_strings)
    if reserved:
        flat = outside_strings.replace("\n", " ")
        found = _RESERVED_NAME.search(flat)
        col = found.start() if found else None
        raise ExprError(f"names starting with '__' are reserved ({reserved.group(0)})", col)
    rewritten = rewrite(source)
    try:
        tree = ast.parse("(\n" + rewritten.text + "\n)", mode="eval")
    except SyntaxError as exc:
        line = (exc.lineno or 2) - 2
        col = None
        if 0 <= line < len(rewritten.spans) and exc.offset is not None:
            col = rewritten.original_col(line, exc.offset - 1)
        hint = ""
        if "&&" in source or "||" in source:
            hint = "; write 'and' / 'or' instead of '&&' / '||'"
        elif "=>" in source or "=<" in source:
            hint = "; write '>=' / '<=' instead of '=>' / '=<'"
        elif re.search(r"(?<![=!<>])=(?!=)", source):
            hint = "; compare with '==', not '='"
        raise ExprError(f"not a valid expression ({exc.msg}){hint}", col) from None
    if isinstance(tree.body, ast.Tuple):
        if not tree.body.elts:
            raise ExprError("the expression is empty")
        raise ExprError("one expression expected; for a list of values write [a, b]", 0)
    return tree.body, rewritten
