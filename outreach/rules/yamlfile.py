"""YAML files with positions: every error in a rule file is reported as ``file:line:col: field``.

ruamel.yaml's round-trip loader keeps the line and column of every key and item; we convert
the document to plain Python values and keep an index from field paths to positions.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import MarkedYAMLError

from outreach.errors import OutreachError

Loc = tuple[str | int, ...]


@dataclass(frozen=True, order=True)
class Problem:
    """One thing wrong in one file, located for a human: file, line, column, field, message."""

    path: str
    line: int
    col: int
    field: str
    message: str
    excerpt: str = ""

    def __str__(self) -> str:
        where = f"{self.path}:{self.line}:{self.col}"
        head = (
            f"{where}: {self.field}: {self.message}" if self.field else f"{where}: {self.message}"
        )
        return f"{head}\n{self.excerpt}" if self.excerpt else head


class RuleFileError(OutreachError):
    """A rules folder that cannot be loaded; ``problems`` says every reason, located."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = sorted(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


@dataclass
class YamlDoc:
    """A loaded YAML document: plain values plus the position of every field."""

    path: str
    data: Any
    positions: dict[Loc, tuple[int, int]] = field(default_factory=dict)

    def where(self, loc: Loc) -> tuple[int, int]:
        """1-based (line, col) of the deepest existing prefix of ``loc``."""
        for end in range(len(loc), -1, -1):
            pos = self.positions.get(tuple(loc[:end]))
            if pos is not None:
                return pos
        return (1, 1)

    def problem(self, loc: Loc, message: str, excerpt: str = "") -> Problem:
        """A problem located at field path ``loc``."""
        line, col = self.where(loc)
        return Problem(self.path, line, col, dotted(loc), message, excerpt)

    def validation_problems(self, exc: ValidationError, prefix: Loc = ()) -> list[Problem]:
        """Pydantic errors as located problems, in words an analyst can act on."""
        out = []
        for err in exc.errors(include_url=False):
            loc = prefix + tuple(p for p in err["loc"] if not _is_union_tag(p))
            message = err["msg"]
            if err["type"] == "missing":
                message = "is required; add it"
            elif err["type"] == "extra_forbidden":
                message = "is not a known field here (check the spelling or remove it)"
            elif message.startswith("Value error, "):
                message = message[len("Value error, ") :]
            out.append(self.problem(loc, message))
        return out


def _is_union_tag(part: object) -> bool:
    return isinstance(part, str) and part.startswith(("function-", "tagged-union"))


def dotted(loc: Loc) -> str:
    """``("tests", 0, "events", 2, "data")`` -> ``tests[0].events[2].data``."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _plain(node: Any, loc: Loc, positions: dict[Loc, tuple[int, int]]) -> Any:
    if isinstance(node, CommentedMap):
        result = {}
        for key, value in node.items():
            child = (*loc, str(key))
            if key in node.lc.data:  # point at the key: analysts look for names
                key_line, key_col = node.lc.key(key)
            else:  # a key merged in from an anchor (<<: *x) is located at its mapping
                key_line, key_col = node.lc.line, node.lc.col
            positions[child] = (key_line + 1, key_col + 1)
            result[str(key)] = _plain(value, child, positions)
        return result
    if isinstance(node, CommentedSeq):
        items = []
        for i, value in enumerate(node):
            line, col = node.lc.item(i)
            positions[(*loc, i)] = (line + 1, col + 1)
            items.append(_plain(value, (*loc, i), positions))
        return items
    if isinstance(node, datetime):
        return datetime(
            node.year, node.month, node.day, node.hour, node.minute, node.second,
            node.microsecond, tzinfo=node.tzinfo,
        )  # fmt: skip
    if isinstance(node, date):
        return date(node.year, node.month, node.day)
    if isinstance(node, bool) or node is None:
        return node
    for kind in (int, float, str):
        if isinstance(node, kind):
            return kind(node)
    return node


def load_yaml(path: Path, display: str | None = None) -> YamlDoc:
    """Load one YAML file; raises ``RuleFileError`` for unreadable or malformed YAML."""
    shown = display or str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise RuleFileError([Problem(shown, 1, 1, "", f"cannot read the file: {exc}")]) from None
    return parse_yaml(text, shown)


def parse_yaml(text: str, shown: str) -> YamlDoc:
    """Parse YAML text that came from ``shown`` (a path or a label)."""
    yaml = YAML(typ="rt")
    try:
        node = yaml.load(text)
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        what = (exc.problem or exc.context or "not valid YAML").strip()
        raise RuleFileError([Problem(shown, line, col, "", f"YAML: {what}")]) from None
    except Exception as exc:  # ruamel raises a few unmarked errors (e.g. duplicate keys)
        raise RuleFileError([Problem(shown, 1, 1, "", f"YAML: {exc}")]) from None
    positions: dict[Loc, tuple[int, int]] = {(): (1, 1)}
    return YamlDoc(shown, _plain(node, (), positions), positions)
