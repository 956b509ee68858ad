"""Static tables of the sample generator: regions, metrics, plans, decline codes, rates.

Must not import: faust, aiokafka, twilio, sendgrid, openai, fastapi, sqlalchemy.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

DEFAULT_START: Final = datetime(2026, 10, 1, tzinfo=UTC)
MAX_DAYS: Final = 36_600
DAY: Final = 86_400
HOUR: Final = 3_600
OPENING: Final = 300  # s into a day before anything but the opening profile may happen
DUPLICATE_RATE: Final = 0.005  # producer retries: the same line emitted twice
PROFILE_CHANGE_RATE: Final = 0.015  # per customer and day
ORDERS_PER_DAY: Final = 1.5 / 30
FAILURE_RATE: Final = 0.07  # first charge attempt of an invoice declined
RETRY_SUCCESS: Final = 0.5  # chance that one of the billing system's own retries goes through

Data = dict[str, Any]
Step = tuple[int, str, int | None, str | None]  # (at, status, estimated_delivery, exception)


@dataclass(frozen=True, slots=True)
class Region:
    """Where a customer lives: zone, locale, money, phone numbering and local carriers."""

    timezone: str
    locale: str
    utc_offset_min: int  # standard time; only shapes the time of day of activity
    currency: str
    money_scale: float  # minor units of this currency per US cent, roughly
    phone_prefixes: tuple[str, ...]
    phone_digits: int  # random digits after the prefix, the first one 2-9
    carriers: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Metric:
    """A usage metric: its usual range, weekend dip, noise and whether a churn decline shows."""

    name: str
    low: float
    high: float
    weekend: float
    noise: float
    drift: float
    integer: bool
    declines: bool


@dataclass(frozen=True, slots=True)
class Renewal:
    """An annual plan that comes up for renewal inside (or just after) the window."""

    subscription_id: str
    plan: str
    amount: int
    auto_renew: bool
    notice_at: int
    renews_at: int


@dataclass(slots=True)
class Customer:
    """One simulated customer: traits drawn once, plus the little state that evolves."""

    index: int
    cid: str
    base: int  # seed of the customer's daily draws
    region: Region
    tier: str
    has_email: bool
    has_phone: bool
    consent: list[bool]  # sms transactional, sms marketing, email transactional, email marketing
    order_rate: float
    bill_day: int
    plan_amount: int
    metrics: tuple[Metric, ...]
    levels: list[float]
    renewal: Renewal | None
    decline_day: int = -1  # day index the usage decline starts; -1 = never
    decline_to: float = 1.0
    decline_span: int = 1
    recover_day: int = -1
    serial: int = 0  # numbers this customer's events and objects

    def next_id(self, prefix: str) -> str:
        """A fresh id for an event, order, shipment, invoice or payment of this customer."""
        self.serial += 1
        return f"{prefix}_{self.index:06d}_{self.serial}"


@dataclass(frozen=True, slots=True)
class Day:
    """One simulated day: its start, calendar facts and the usage period it reports."""

    index: int
    ts: int
    dom: int
    weekend: bool  # of the reported (previous) day
    period: tuple[str, str]


_US, _EU = ("ups", "fedex", "usps"), ("dhl", "ups")
REGIONS: Final = (
    (13, Region("America/New_York", "en-US", -300, "USD", 1, ("+1212", "+1646", "+1917"), 7, _US)),
    (9, Region("America/Chicago", "en-US", -360, "USD", 1, ("+1312", "+1773"), 7, _US)),
    (5, Region("America/Denver", "en-US", -420, "USD", 1, ("+1303", "+1720"), 7, _US)),
    (11, Region("America/Los_Angeles", "en-US", -480, "USD", 1, ("+1213", "+1415"), 7, _US)),
    (4, Region("America/Toronto", "en-CA", -300, "CAD", 1.4, ("+1416",), 7, ("canadapost", *_US))),
    (6, Region("America/Sao_Paulo", "pt-BR", -180, "BRL", 5, ("+55119",), 8, ("correios", "dhl"))),
    (9, Region("Europe/London", "en-GB", 0, "GBP", 0.8, ("+447",), 9, ("royalmail", "dpd", "dhl"))),
    (7, Region("Europe/Paris", "fr-FR", 60, "EUR", 1, ("+336", "+337"), 8, ("laposte", *_EU))),
    (7, Region("Europe/Berlin", "de-DE", 60, "EUR", 1, ("+4915", "+4917"), 8, ("dpd", *_EU))),
    (5, Region("Europe/Madrid", "es-ES", 60, "EUR", 1, ("+346",), 8, ("correos", "seur", "dhl"))),
    (5, Region("Asia/Tokyo", "ja-JP", 540, "JPY", 1.5, ("+8190", "+8180"), 8, ("yamato", "dhl"))),
    (5, Region("Asia/Kolkata", "en-IN", 330, "INR", 80, ("+919", "+918"), 9, ("bluedart", "dhl"))),
    (4, Region("Australia/Sydney", "en-AU", 600, "AUD", 1.5, ("+614",), 8, ("auspost", "dhl"))),
)
REGION_CUM: Final = list(itertools.accumulate(w for w, _ in REGIONS))

ACTIVITY: Final = (
    Metric("api_calls", 300, 60_000, 0.8, 0.08, 0.001, True, True),
    Metric("active_seats", 3, 150, 0.9, 0.03, 0.0, True, True),
    Metric("messages_sent", 100, 20_000, 0.85, 0.08, 0.001, True, True),
)
STORAGE: Final = Metric("storage_gb", 1, 500, 1.0, 0.01, 0.003, False, False)

# Decline codes as card networks report them; hard ones are not retried by the billing system.
DECLINES: Final = (
    ("insufficient_funds", 40, False),
    ("do_not_honor", 20, False),
    ("generic_decline", 15, False),
    ("card_declined", 6, False),
    ("processing_error", 3, False),
    ("try_again_later", 3, False),
    ("expired_card", 8, True),
    ("incorrect_number", 2, True),
    ("lost_card", 0.8, True),
    ("stolen_card", 0.6, True),
    ("pickup_card", 0.6, True),
    ("fraudulent", 0.6, True),
)
DECLINE_CODES: Final = [code for code, _, _ in DECLINES]
DECLINE_CUM: Final = list(itertools.accumulate(w for _, w, _ in DECLINES))
SOFT_CODES: Final = [code for code, _, hard in DECLINES if not hard]
SOFT_CUM: Final = list(itertools.accumulate(w for _, w, hard in DECLINES if not hard))
HARD_DECLINES: Final = frozenset(code for code, _, hard in DECLINES if hard)

EXCEPTIONS: Final = ("address_issue", "weather_delay", "customs_hold", "damaged")
EXCEPTION_CUM: Final = [35, 65, 85, 100]
MONTHLY_PLANS: Final = (2900, 4900, 9900, 24900)
ANNUAL_PLANS: Final = (
    ("starter-annual", 29000),
    ("growth-annual", 99000),
    ("business-annual", 299000),
)
FIRST_NAMES: Final = ("alex", "maria", "sam", "li", "noah", "emma", "lucas", "sofia", "yuki")
LAST_NAMES: Final = ("smith", "garcia", "muller", "martin", "tanaka", "silva", "patel", "brown")
# RFC 2606 names: a demo that really sends email can never reach a stranger.
MAIL_DOMAINS: Final = ("example.com", "example.net", "example.org")
