"""The jinja2 sandbox message templates run in, and their localisation filters.

Filters (localised in the variant's locale, times shown in ``customer.timezone``, default UTC):
``when`` (``Wed, Mar 4, 3:00 PM``), ``day`` (``Wed, Mar 4``), ``date`` (``Mar 4, 2026``),
``money(currency)`` on integer minor units, ``percent`` (``20`` -> ``20%``). Their output uses
plain spaces and apostrophes: CLDR's no-break spaces would silently turn an SMS into UCS-2.

Must not import faust, aiokafka, twilio, sendgrid, openai, fastapi or sqlalchemy.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from datetime import date, datetime, tzinfo
from decimal import Decimal
from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfo

from babel import Locale
from babel.dates import format_date, format_skeleton, format_time
from babel.numbers import format_currency, format_percent, get_currency_precision, is_currency
from jinja2 import StrictUndefined, Undefined, pass_context
from jinja2.exceptions import SecurityError
from jinja2.runtime import Context
from jinja2.sandbox import ImmutableSandboxedEnvironment

from outreach.errors import TemplateRenderError

LOCALE_KEY = "__outreach_locale__"  # a template global: the variant's own locale tag
_PLAIN = str.maketrans({"\u00a0": " ", "\u202f": " ", "\u2009": " ", "\u2019": "'", "\u2212": "-"})


class _Sandbox(ImmutableSandboxedEnvironment):
    """Read-only sandbox that also refuses the two cheap memory bombs (``'x' * 10**9``)."""

    intercepted_binops = frozenset({"*", "**"})

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        """Refuse huge repetitions and exponents, then compute as usual."""
        sized = [len(x) for x in (left, right) if isinstance(x, str | list | tuple)]
        counts = [x for x in (left, right) if isinstance(x, int)]
        if operator == "*" and sized and counts and sized[0] * abs(counts[-1]) > 100_000:
            raise SecurityError("repetition result too large")
        if operator == "**" and isinstance(right, int) and abs(right) > 100:
            raise SecurityError("exponent too large")
        return super().call_binop(context, operator, left, right)


def _babel_locale(ctx: Context) -> Locale:
    return parse_locale(str(ctx.get(LOCALE_KEY, "en")))


@lru_cache(maxsize=256)
def parse_locale(tag: str) -> Locale:
    return Locale.parse(tag.replace("-", "_"))


@lru_cache(maxsize=256)
def _zone(name: str) -> tzinfo:
    try:
        return ZoneInfo(name)
    except (ValueError, KeyError) as exc:  # ZoneInfoNotFoundError is a KeyError
        raise TemplateRenderError(f"unknown timezone {name!r} in customer.timezone") from exc


def _customer_zone(ctx: Context) -> tzinfo:
    customer = ctx.get("customer")
    if isinstance(customer, Mapping):
        name = customer.get("timezone")
    else:
        name = getattr(customer, "timezone", None)
    return _zone(str(name or "UTC"))


def _moment(value: object, what: str) -> datetime | date:
    """An aware datetime or a date, from a datetime/date object or an RFC 3339 string."""
    if isinstance(value, str):
        try:
            value = date.fromisoformat(value) if len(value) == 10 else datetime.fromisoformat(value)
        except ValueError:
            raise TemplateRenderError(
                f"{what} expects an RFC 3339 timestamp, got {value!r}"
            ) from None
    if isinstance(value, datetime):
        if value.tzinfo is None or value.utcoffset() is None:
            raise TemplateRenderError(f"{what} refuses a timestamp without offset: {value}")
        return value
    if isinstance(value, date):
        return value
    raise TemplateRenderError(f"{what} expects a timestamp, got {type(value).__name__}")


def _local_date(ctx: Context, value: object, what: str) -> date:
    moment = _moment(value, what)
    return moment.astimezone(_customer_zone(ctx)).date() if isinstance(moment, datetime) else moment


@pass_context
def _when(ctx: Context, value: object) -> str:
    """``Wed, Mar 4, 3:00 PM``: babel cannot combine skeletons, so glue as CLDR says
    (abbreviated month -> the locale's medium date-time pattern)."""
    locale, zone, moment = _babel_locale(ctx), _customer_zone(ctx), _moment(value, "when")
    if not isinstance(moment, datetime):
        raise TemplateRenderError(f"when needs a time of day, got the date {moment}")
    moment = moment.astimezone(zone)
    day = format_skeleton("MMMEd", moment, tzinfo=zone, locale=locale)
    clock = format_time(moment, "short", tzinfo=zone, locale=locale)
    glue = str(locale.datetime_formats["medium"]).replace("'", "")
    return glue.replace("{1}", str(day)).replace("{0}", str(clock)).translate(_PLAIN)


@pass_context
def _day(ctx: Context, value: object) -> str:
    """``Wed, Mar 4``."""
    moment = _local_date(ctx, value, "day")
    return str(format_skeleton("MMMEd", moment, locale=_babel_locale(ctx))).translate(_PLAIN)


@pass_context
def _date(ctx: Context, value: object) -> str:
    """``Mar 4, 2026``."""
    moment = _local_date(ctx, value, "date")
    return str(format_date(moment, "medium", locale=_babel_locale(ctx))).translate(_PLAIN)


@pass_context
def _money(ctx: Context, amount: object, currency: str | None = None) -> str:
    """Integer minor units -> ``$19.99``; also takes ``{amount, currency}`` alone."""
    if isinstance(amount, Mapping) and currency is None:
        pair: Mapping[str, Any] = amount
        amount, currency = pair.get("amount"), pair.get("currency")
    if not isinstance(amount, int) or isinstance(amount, bool):
        raise TemplateRenderError(
            f"money expects integer minor units (1999 = 19.99), got {amount!r}"
        )
    if not isinstance(currency, str) or not _known_currency(currency):
        raise TemplateRenderError(f"money needs an ISO 4217 currency code, got {currency!r}")
    return _format_money(amount, currency, _babel_locale(ctx))


@lru_cache(maxsize=4096)
def _known_currency(code: str) -> bool:
    return bool(is_currency(code))


@lru_cache(maxsize=65536)
def _format_money(amount: int, currency: str, locale: Locale) -> str:
    """Cached: babel rebuilds currency tables per call and the same prices recur constantly."""
    value = Decimal(amount).scaleb(-int(get_currency_precision(currency)))
    return str(format_currency(value, currency, locale=locale)).translate(_PLAIN)


@pass_context
def _percent(ctx: Context, value: object) -> str:
    """``20`` -> ``20%`` (``20 %`` in fr); fractions are kept (``12.5%``)."""
    if not isinstance(value, int | float | Decimal) or isinstance(value, bool):
        raise TemplateRenderError(f"percent expects a number, got {value!r}")
    ratio = Decimal(str(value)) / 100
    text = format_percent(ratio, locale=_babel_locale(ctx), decimal_quantization=False)
    return str(text).translate(_PLAIN)


def _defined(fn: Callable[..., str]) -> Callable[..., str]:
    """Report ``'pct' is undefined`` for an undefined argument, not the filter's type error."""

    @functools.wraps(fn)  # keeps jinja's pass_context marker
    def check(ctx: Context, *args: Any) -> str:
        for arg in args:
            if isinstance(arg, Undefined):
                arg._fail_with_undefined_error()
        return fn(ctx, *args)

    return check


_FILTERS: dict[str, Callable[..., str]] = {
    "when": _when,
    "day": _day,
    "date": _date,
    "money": _money,
    "percent": _percent,
}
# the filter names template authors use
FILTERS: dict[str, Callable[..., str]] = {name: _defined(fn) for name, fn in _FILTERS.items()}


def make_environment() -> ImmutableSandboxedEnvironment:
    """The sandbox every template is compiled in."""
    env = _Sandbox(
        undefined=StrictUndefined, autoescape=False, trim_blocks=True, lstrip_blocks=True
    )
    env.filters.update(FILTERS)
    return env
