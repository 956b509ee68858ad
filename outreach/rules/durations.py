"""Durations and percentages as analysts write them: ``24h``, ``7d``, ``90m``, ``2w``, ``10%``."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Annotated, Any

from pydantic import BeforeValidator, PlainSerializer

UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d|w)\s*$")
_PERCENT = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*%\s*$")


def parse_duration(value: Any) -> timedelta:
    """``"24h"`` -> ``timedelta(hours=24)``; raises ``ValueError`` saying what to write."""
    if isinstance(value, timedelta):
        return value
    if isinstance(value, str):
        match = _DURATION.match(value)
        if match:
            try:
                return timedelta(seconds=float(match.group(1)) * UNIT_SECONDS[match.group(2)])
            except OverflowError:
                raise ValueError(f"{value!r} is too long a duration") from None
    raise ValueError(
        f"{value!r} is not a duration; write a number and a unit: 90s, 30m, 24h, 7d or 2w"
    )


def format_duration(value: timedelta) -> str:
    """The form analysts write: days from 3 days up (``7d``, ``90d``), hours below (``48h``)."""
    seconds = value.total_seconds()
    if seconds and seconds % 86400 == 0 and seconds >= 3 * 86400:
        return f"{int(seconds // 86400)}d"
    for unit in ("h", "d", "m"):
        size = UNIT_SECONDS[unit]
        if seconds and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s" if seconds.is_integer() else f"{seconds!r}s"


def parse_percent(value: Any) -> float:
    """``"10%"`` or ``10`` -> ``10.0``, checked to lie in 0..100."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a percentage; write e.g. 10%")
    number: float | None = None
    if isinstance(value, int | float):
        number = float(value)
    elif isinstance(value, str) and (match := _PERCENT.match(value)):
        number = float(match.group(1))
    if number is None or not 0 <= number <= 100:
        raise ValueError(f"{value!r} is not a percentage between 0% and 100%; write e.g. 10%")
    return number


Duration = Annotated[
    timedelta,
    BeforeValidator(parse_duration),
    PlainSerializer(format_duration, return_type=str),
]
Percent = Annotated[float, BeforeValidator(parse_percent)]
