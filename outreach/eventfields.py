"""The constrained field types of the event contract (``outreach.events``): ids, texts,
money, times, phone numbers, timezones, locales; each refuses what the engine could not use,
with an error a producer can act on.

Must not import: faust, aiokafka, twilio, sendgrid, openai, fastapi, sqlalchemy.
"""

from __future__ import annotations

import functools
from datetime import UTC, datetime
from typing import Annotated, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from babel.numbers import list_currencies
from pydantic import AfterValidator, AwareDatetime, Field, StringConstraints
from pydantic_core import PydanticCustomError

_CURRENCIES = frozenset(list_currencies())


def _check_currency(code: str) -> str:
    if code not in _CURRENCIES:
        raise PydanticCustomError(
            "currency", "'{code}' is not an ISO 4217 currency code (e.g. USD, EUR)", {"code": code}
        )
    return code


@functools.lru_cache(maxsize=1024)
def _zone_exists(key: str) -> bool:
    try:
        ZoneInfo(key)
    except (ZoneInfoNotFoundError, ValueError):
        return False
    return True


def _check_timezone(key: str) -> str:
    if not _zone_exists(key):
        raise PydanticCustomError(
            "timezone", "'{key}' is not an IANA timezone (e.g. Europe/Paris)", {"key": key}
        )
    return key


def _normalise_locale(tag: str) -> str:
    parts = tag.replace("_", "-").split("-")
    head = parts[0].lower()
    rest = [p.upper() if len(p) == 2 else p for p in parts[1:]]
    return "-".join([head, *rest])


# no control characters: ids are keys and database columns (PostgreSQL refuses NUL in text,
# which would fail the batch on every worker that took the partition)
Id = Annotated[str, StringConstraints(min_length=1, max_length=128, pattern=r"^[^\x00-\x1f\x7f]+$")]
Text = Annotated[str, StringConstraints(min_length=1, max_length=256)]
Currency = Annotated[str, StringConstraints(pattern=r"^[A-Z]{3}$"), AfterValidator(_check_currency)]
# Integers are bounded: the engine turns amounts into floats (thresholds, reasons) and writes
# them as JSON, which readers (orjson, JavaScript) hold exactly only up to 2**53 - 1.
MAX_MINOR_UNITS = 2**53 - 1
MinorUnits = Annotated[
    int, Field(ge=0, le=MAX_MINOR_UNITS, description="integer minor units (cents)")
]
Attempt = Annotated[int, Field(ge=1, le=10_000)]
# Every time in an event lies in [1970-01-01, 2200-01-01): the engine adds durations to them
# (retry schedules, windows, quiet hours), and a "never" sentinel such as 9999-12-31 overflows
# Python's datetime there. A time that is unknown or never comes is left out or null.
EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
LATEST = datetime(2200, 1, 1, tzinfo=UTC)
Timestamp = Annotated[
    AwareDatetime,
    Field(ge=EARLIEST, lt=LATEST, description="RFC 3339 with an offset, 1970 to 2199"),
]
E164 = Annotated[str, StringConstraints(pattern=r"^\+[1-9][0-9]{1,14}$")]
Timezone = Annotated[str, AfterValidator(_check_timezone)]
Locale = Annotated[
    str,
    StringConstraints(pattern=r"^[A-Za-z]{2,3}([-_][A-Za-z0-9]{2,8})*$", max_length=35),
    AfterValidator(_normalise_locale),
]
Tier = Literal["standard", "premium"]
ShipmentStatus = Literal[
    "label_created", "in_transit", "out_for_delivery", "delivered", "exception", "returned"
]
Channel = Literal["sms", "email"]
