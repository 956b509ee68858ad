"""Null-safe operations that compiled rule expressions call when a value may be missing.

The checker emits a plain Python operator when both sides are always present and one of these
when a side may be missing, so the common case pays nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any


def _get(obj: Any, name: str) -> Any:
    return None if obj is None else getattr(obj, name)


def _lt(a: Any, b: Any) -> bool:
    return a is not None and b is not None and a < b


def _le(a: Any, b: Any) -> bool:
    return a is not None and b is not None and a <= b


def _gt(a: Any, b: Any) -> bool:
    return a is not None and b is not None and a > b


def _ge(a: Any, b: Any) -> bool:
    return a is not None and b is not None and a >= b


def _neg(a: Any) -> Any:
    return None if a is None else -a


def _contains(haystack: Any, needle: Any) -> bool:
    return haystack is not None and needle is not None and needle in haystack


def _add(a: Any, b: Any) -> Any:
    return None if a is None or b is None else a + b


def _sub(a: Any, b: Any) -> Any:
    return None if a is None or b is None else a - b


def _mul(a: Any, b: Any) -> Any:
    return None if a is None or b is None else a * b


def _div(a: Any, b: Any) -> Any:
    if a is None or b is None or not b:
        return None
    return a / b


def _seconds(a: Any, scale: float = 1.0) -> timedelta | None:
    return None if a is None else timedelta(seconds=a * scale)


def _abs(a: Any) -> Any:
    return None if a is None else abs(a)


def _round(a: Any, digits: int = 0) -> Any:
    return None if a is None else round(a, digits)


def _len(a: Any) -> int | None:
    return None if a is None else len(a)


def _lower(a: Any) -> str | None:
    return None if a is None else str(a).lower()


def _upper(a: Any) -> str | None:
    return None if a is None else str(a).upper()


HELPERS: dict[str, Callable[..., Any]] = {
    f.__name__: f
    for f in (
        _get,
        _lt,
        _le,
        _gt,
        _ge,
        _neg,
        _contains,
        _add,
        _sub,
        _mul,
        _div,
        _seconds,
        _abs,
        _round,
        _len,
        _lower,
        _upper,
    )  # fmt: skip
}
