"""Static types for rule expressions, derived from the event models.

The checker uses them to refuse, at load time, a misspelt field, a comparison of a timestamp
with a number or a status that does not exist, instead of failing on live traffic.
"""

from __future__ import annotations

import difflib
import types
import typing
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any, Literal, get_args, get_origin

from pydantic import AwareDatetime, BaseModel, EmailStr

Kind = Literal["bool", "number", "str", "datetime", "duration", "null", "list", "record", "any"]


@dataclass(frozen=True)
class Ty:
    """A static type: a kind, whether it may be missing, and what it holds."""

    kind: Kind
    optional: bool = False
    enum: frozenset[str] | None = None
    item: Ty | None = None
    name: str = ""
    fields: tuple[tuple[str, Ty], ...] = field(default=(), compare=False)
    model: type[BaseModel] | None = field(default=None, compare=False)

    def as_optional(self, optional: bool = True) -> Ty:
        """The same type, possibly missing."""
        return replace(self, optional=self.optional or optional)

    def required(self) -> Ty:
        """The same type, never missing."""
        return replace(self, optional=False)

    def member(self, attr: str) -> Ty | None:
        """The type of ``self.attr`` for records, or None."""
        if self.kind != "record":
            return None
        if self.model is not None:
            info = self.model.model_fields.get(attr)
            return None if info is None else from_annotation(info.annotation)
        return dict(self.fields).get(attr)

    def member_names(self) -> list[str]:
        """Field names of a record, for "did you mean" hints."""
        if self.model is not None:
            return list(self.model.model_fields)
        return [n for n, _ in self.fields]

    def describe(self) -> str:
        """Human words for error messages: ``a timestamp``, ``a number (may be missing)``."""
        words = {
            "bool": "true/false",
            "number": "a number",
            "str": "text",
            "datetime": "a timestamp",
            "duration": "a duration",
            "null": "null",
            "list": "a list",
            "record": f"{self.name or 'an object'}",
            "any": "a value",
        }[self.kind]
        if self.enum:
            words = "one of " + ", ".join(sorted(self.enum))
        return words + (" (may be missing)" if self.optional else "")


BOOL = Ty("bool")
NUMBER = Ty("number")
STR = Ty("str")
DATETIME = Ty("datetime")
DURATION = Ty("duration")
NULL = Ty("null", optional=True)
ANY = Ty("any", optional=True)


def record(name: str, **members: Ty) -> Ty:
    """A record type with named members (customer view, baseline, envelope)."""
    return Ty("record", name=name, fields=tuple(members.items()))


def model_type(model: type[BaseModel], name: str = "") -> Ty:
    """A record type backed by a pydantic model's fields."""
    return Ty("record", name=name or model.__name__, model=model)


def from_annotation(annotation: Any) -> Ty:
    """Map a pydantic field annotation to a static type."""
    origin = get_origin(annotation)
    if origin is typing.Annotated:
        return from_annotation(get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        members = [a for a in get_args(annotation) if a is not type(None)]
        optional = len(members) < len(get_args(annotation))
        base = from_annotation(members[0]) if len(members) == 1 else ANY
        return base.as_optional(optional)
    if origin is Literal:
        return Ty("str", enum=frozenset(str(a) for a in get_args(annotation)))
    simple = _SIMPLE.get(annotation)
    if simple is not None:
        return simple
    if isinstance(annotation, type):
        if issubclass(annotation, BaseModel):
            return model_type(annotation)
        for parent, mapped in _SUBCLASSES:
            if issubclass(annotation, parent):
                return mapped
    return ANY


_SIMPLE: dict[Any, Ty] = {
    AwareDatetime: DATETIME,
    EmailStr: STR,
    bool: BOOL,
    int: NUMBER,
    float: NUMBER,
    str: STR,
}
_SUBCLASSES: tuple[tuple[type, Ty], ...] = ((datetime, DATETIME), (timedelta, DURATION), (str, STR))


def suggest(word: str, options: list[str]) -> str:
    """`` (did you mean 'x'?)`` or an empty string."""
    close = difflib.get_close_matches(word, options, n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def comparable(left: Ty, right: Ty) -> bool:
    """Whether ``left <op> right`` is meaningful for ordering comparisons."""
    kinds = {left.kind, right.kind}
    if "any" in kinds:
        return True
    return left.kind == right.kind and left.kind in ("number", "str", "datetime", "duration")


def equatable(left: Ty, right: Ty) -> bool:
    """Whether ``left == right`` can ever be true (null is equatable with anything)."""
    if "null" in (left.kind, right.kind) or "any" in (left.kind, right.kind):
        return True
    return left.kind == right.kind
