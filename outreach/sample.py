"""Synthetic event traffic: a deterministic generator of realistic input events.

Owns ``generate`` and ``write_sample`` (behind ``outreach sample``), used by demos, tests and
benchmarks. The output is JSON lines that pass ``outreach.events.parse_event``, in
non-decreasing ``occurred_at`` order, and the same arguments always give the same bytes.

Each customer draws from its own ``random.Random``, seeded from (seed, customer index) for its
traits and from (those, day) for each day's activity, so a customer's story does not depend on
how many other customers are simulated. Memory is O(customers + events in flight): a day's new
events enter a heap keyed by (occurred_at, counter) and leave it in time order; nothing is
collected and sorted as a whole. Events that would fall after the window are dropped, as a
recording of that window would not have them either.

Must not import: faust, aiokafka, twilio, sendgrid, openai, fastapi, sqlalchemy.
"""

from __future__ import annotations

import functools
import heapq
import io
import itertools
import math
import os
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import IO, Any, Final, cast

import orjson

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
_REGIONS: Final = (
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
_REGION_CUM: Final = list(itertools.accumulate(w for w, _ in _REGIONS))

_ACTIVITY: Final = (
    Metric("api_calls", 300, 60_000, 0.8, 0.08, 0.001, True, True),
    Metric("active_seats", 3, 150, 0.9, 0.03, 0.0, True, True),
    Metric("messages_sent", 100, 20_000, 0.85, 0.08, 0.001, True, True),
)
_STORAGE: Final = Metric("storage_gb", 1, 500, 1.0, 0.01, 0.003, False, False)

# Decline codes as card networks report them; hard ones are not retried by the billing system.
_DECLINES: Final = (
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
_DECLINE_CODES: Final = [code for code, _, _ in _DECLINES]
_DECLINE_CUM: Final = list(itertools.accumulate(w for _, w, _ in _DECLINES))
_SOFT_CODES: Final = [code for code, _, hard in _DECLINES if not hard]
_SOFT_CUM: Final = list(itertools.accumulate(w for _, w, hard in _DECLINES if not hard))
HARD_DECLINES: Final = frozenset(code for code, _, hard in _DECLINES if hard)

_EXCEPTIONS: Final = ("address_issue", "weather_delay", "customs_hold", "damaged")
_EXCEPTION_CUM: Final = [35, 65, 85, 100]
_MONTHLY_PLANS: Final = (2900, 4900, 9900, 24900)
_ANNUAL_PLANS: Final = (
    ("starter-annual", 29000),
    ("growth-annual", 99000),
    ("business-annual", 299000),
)
_FIRST_NAMES: Final = ("alex", "maria", "sam", "li", "noah", "emma", "lucas", "sofia", "yuki")
_LAST_NAMES: Final = ("smith", "garcia", "muller", "martin", "tanaka", "silva", "patel", "brown")
# RFC 2606 names: a demo that really sends email can never reach a stranger.
_MAIL_DOMAINS: Final = ("example.com", "example.net", "example.org")


def generate(
    customers: int, days: int, seed: int, start: datetime | None = None
) -> Iterator[bytes]:
    """Yield one compact JSON event per line (no newline), in non-decreasing occurred_at order."""
    if customers < 0 or not 0 <= days <= MAX_DAYS:
        raise ValueError(f"need customers >= 0 and 0 <= days <= {MAX_DAYS}")
    begin = DEFAULT_START if start is None else start
    if begin.tzinfo is None:
        raise ValueError("start must carry a timezone, e.g. 2026-10-01T00:00:00+00:00")
    return _Simulation(seed, int(begin.timestamp()), days).run(customers)


def write_sample(
    target: str | os.PathLike[str] | IO[bytes] | IO[str],
    customers: int,
    days: int,
    seed: int,
    start: datetime | None = None,
) -> int:
    """Write ``generate(...)`` as JSON lines to a path or stream; return the number of lines."""
    lines = generate(customers, days, seed, start)
    if isinstance(target, str | os.PathLike):
        with open(target, "wb") as fh:
            return _write_lines(fh.write, lines)
    if isinstance(target, io.TextIOBase):
        text = cast(IO[str], target)
        return _write_lines(lambda chunk: text.write(chunk.decode()), lines)
    return _write_lines(cast(IO[bytes], target).write, lines)


def _write_lines(write: Callable[[bytes], object], lines: Iterator[bytes]) -> int:
    count = 0
    while batch := list(itertools.islice(lines, 4096)):
        write(b"\n".join(batch) + b"\n")
        count += len(batch)
    return count


# RFC 3339 by table look-up: formatting timestamps was a fifth of the generator's time.
_CLOCK: Final = [f"T{m // 60:02d}:{m % 60:02d}:" for m in range(24 * 60)]
_SECONDS: Final = [f"{s:02d}Z" for s in range(60)]


@functools.lru_cache(maxsize=4096)
def _date_text(day: int) -> str:
    return (datetime(1970, 1, 1, tzinfo=UTC) + timedelta(days=day)).strftime("%Y-%m-%d")


def _iso(ts: int) -> str:
    day, sec = divmod(ts, DAY)
    return _date_text(day) + _CLOCK[sec // 60] + _SECONDS[sec % 60]


def _local_time(region: Region, u: float, first_hour: int, last_hour: int) -> int:
    """Seconds into the UTC day of a moment between two local hours, never before OPENING."""
    local = int((first_hour + (last_hour - first_hour) * u) * HOUR)
    return max(OPENING, (local - region.utc_offset_min * 60) % DAY)


def _poisson(u: float, lam: float) -> int:
    k, term = 0, math.exp(-lam)
    total = term
    while u > total and k < 50:
        k += 1
        term *= lam / k
        total += term
    return k


def _gauss(rng: random.Random) -> float:
    """Roughly standard normal and much cheaper than ``rng.gauss``."""
    return (rng.random() + rng.random() + rng.random() - 1.5) * 2.0


def _price(amount: float, scale: float) -> int:
    return max(100, int(round(amount * scale, -2)))


def _order_amount(rng: random.Random, scale: float) -> int:
    cents = 1000 * 30 ** rng.random() if rng.random() < 0.85 else 30000 * 5 ** rng.random()
    return _price(cents, scale) - 1


def _new_customer(seed: int, index: int, start: int, days: int) -> Customer:
    rng = random.Random(f"outreach-sample/{seed}/{index}")  # noqa: S311 - reproducible, not secret
    region = rng.choices(_REGIONS, cum_weights=_REGION_CUM)[0][1]
    tier = "premium" if rng.random() < 0.2 else "standard"
    has_phone = rng.random() < 0.8
    if rng.random() < 0.05:
        consent = [False] * 4
    else:
        consent = [has_phone and rng.random() < 0.9, has_phone and rng.random() < 0.5]
        consent += [rng.random() < 0.97, rng.random() < 0.55]
    metrics: tuple[Metric, ...] = (rng.choice(_ACTIVITY),)
    if rng.random() < 0.5:
        metrics += (rng.choice([m for m in (*_ACTIVITY, _STORAGE) if m is not metrics[0]]),)
    customer = Customer(
        index=index,
        cid=f"cus_{index:06d}",
        base=rng.getrandbits(64),
        region=region,
        tier=tier,
        has_email=rng.random() < 0.95,
        has_phone=has_phone,
        consent=consent,
        order_rate=ORDERS_PER_DAY * rng.gammavariate(4, 0.25),
        bill_day=rng.randrange(1, 29),
        plan_amount=_price(rng.choice(_MONTHLY_PLANS), region.money_scale),
        metrics=metrics,
        levels=[m.low * (m.high / m.low) ** rng.random() for m in metrics],
        renewal=_new_renewal(rng, index, tier, region, start, days),
    )
    if days >= 8 and rng.random() < 0.08:
        customer.decline_day = rng.randrange(4, days - 2)
        customer.decline_to = rng.uniform(0.2, 0.5)
        customer.decline_span = rng.randrange(2, 5)
        if rng.random() < 0.35:
            customer.recover_day = customer.decline_day + rng.randrange(6, 14)
    return customer


def _new_renewal(
    rng: random.Random, index: int, tier: str, region: Region, start: int, days: int
) -> Renewal | None:
    if rng.random() >= 0.3:
        return None
    weights = (10, 50, 100) if tier == "premium" else (55, 95, 100)
    plan, amount = rng.choices(_ANNUAL_PLANS, cum_weights=weights)[0]
    lead = rng.randrange(14, 22) * DAY
    renews_at = start + OPENING + lead + rng.randrange(max(HOUR, (days + 10) * DAY - lead))
    return Renewal(
        subscription_id=f"sub_{index:06d}_annual",
        plan=plan,
        amount=_price(amount, region.money_scale),
        auto_renew=rng.random() >= 0.25,
        notice_at=renews_at - lead,
        renews_at=renews_at,
    )


def _decline_factor(c: Customer, day: int) -> float:
    """Usage multiplier of a churning customer: a slide over a few days, maybe a recovery."""
    if c.decline_day < 0 or day < c.decline_day:
        return 1.0
    slide = (day - c.decline_day + 1) / c.decline_span
    factor = max(c.decline_to, 1.0 - (1.0 - c.decline_to) * slide)
    if 0 <= c.recover_day <= day:
        factor += (0.9 - factor) * min(1.0, (day - c.recover_day + 1) / 5)
    return factor


def _in_decline(c: Customer, day: int) -> bool:
    return 0 <= c.decline_day <= day and not 0 <= c.recover_day <= day


class _Simulation:
    """The event heap and the daily step of every customer."""

    def __init__(self, seed: int, start: int, days: int) -> None:
        self.seed, self.start, self.days = seed, start, days
        self.event_prefix = f"evt_{seed}"
        self.heap: list[tuple[int, int, str]] = []
        self.order = itertools.count()
        self.rng = random.Random()  # noqa: S311 - reseeded per customer and day

    def run(self, customers: int) -> Iterator[bytes]:
        crowd = [_new_customer(self.seed, i, self.start, self.days) for i in range(customers)]
        heap = self.heap
        for index in range(self.days):
            day = self._day(index)
            for c in crowd:
                self._step(c, day)
            end = day.ts + DAY
            while heap and heap[0][0] < end:
                yield heapq.heappop(heap)[2].encode()

    def _day(self, index: int) -> Day:
        ts = self.start + index * DAY
        moment = datetime.fromtimestamp(ts, UTC)
        reported = (moment - timedelta(days=1)).weekday()
        return Day(index, ts, moment.day, reported >= 5, (_iso(ts - DAY), _iso(ts)))

    def emit(self, c: Customer, at: int, kind: str, source: str, data: Data) -> None:
        """Queue one event (twice, now and then, like a producer retrying)."""
        event = {
            "event_id": c.next_id(self.event_prefix),
            "type": kind,
            "customer_id": c.cid,
            "occurred_at": _iso(at),
            "source": source,
            "schema_version": 1,
            "data": data,
        }
        # As text: orjson's bytes carry ~4 KiB of spare capacity, too much to keep in flight.
        line = orjson.dumps(event).decode()
        heapq.heappush(self.heap, (at, next(self.order), line))
        if self.rng.random() < DUPLICATE_RATE:
            heapq.heappush(self.heap, (at, next(self.order), line))

    def _step(self, c: Customer, day: Day) -> None:
        rng = self.rng
        rng.seed((c.base << 20) | day.index)
        if day.index == 0:
            self._profile(c, rng, day.ts + rng.randrange(OPENING))
        elif rng.random() < PROFILE_CHANGE_RATE:
            self._profile_change(c, rng, day.ts + _local_time(c.region, rng.random(), 8, 22))
        self._usage(c, rng, day)
        for _ in range(_poisson(rng.random(), c.order_rate)):
            self._shipment(c, rng, day.ts + _local_time(c.region, rng.random(), 8, 20))
        if day.dom == c.bill_day:
            self._invoice(c, rng, day.ts + rng.randrange(6 * HOUR, 9 * HOUR))
        renewal = c.renewal
        if renewal is not None and day.ts <= renewal.notice_at < day.ts + DAY:
            self._renewal_notice(c, renewal)
        if renewal is not None and day.ts <= renewal.renews_at < day.ts + DAY:
            self._renewal_outcome(c, rng, renewal, day.index)

    def _profile(self, c: Customer, rng: random.Random, at: int) -> None:
        data: Data = {}
        if c.has_email:
            data["email"] = _email(rng, c.index)
        if c.has_phone:
            data["phone"] = _phone(rng, c.region)
        sms_tx, sms_mk, mail_tx, mail_mk = c.consent
        data |= {
            "timezone": c.region.timezone,
            "locale": c.region.locale,
            "tier": c.tier,
            "consent": {
                "sms": {"transactional": sms_tx, "marketing": sms_mk},
                "email": {"transactional": mail_tx, "marketing": mail_mk},
            },
        }
        self.emit(c, at, "customer.updated", "crm", data)

    def _profile_change(self, c: Customer, rng: random.Random, at: int) -> None:
        """A partial update: only the changed field is sent (absent = unchanged)."""
        kind = rng.random()
        data: Data
        if kind < 0.5:
            slot = 1 if c.has_phone and rng.random() < 0.4 else 3
            c.consent[slot] = not c.consent[slot]
            channel = "sms" if slot == 1 else "email"
            data = {"consent": {channel: {"marketing": c.consent[slot]}}}
        elif kind < 0.7:
            c.has_phone = True
            data = {"phone": _phone(rng, c.region)}
        elif kind < 0.85:
            c.tier = "standard" if c.tier == "premium" else "premium"
            data = {"tier": c.tier}
        else:
            c.has_email = True
            data = {"email": _email(rng, c.index)}
        self.emit(c, at, "customer.updated", "crm", data)

    def _usage(self, c: Customer, rng: random.Random, day: Day) -> None:
        at = day.ts + OPENING + int(rng.random() * 2 * HOUR)
        decline = _decline_factor(c, day.index)
        start, end = day.period
        for i, metric in enumerate(c.metrics):
            c.levels[i] *= 1.0 + metric.drift
            seasonal = metric.weekend if day.weekend else 1.0
            trend = decline if metric.declines else 1.0
            value = c.levels[i] * seasonal * trend * (1.0 + metric.noise * _gauss(rng))
            shown = round(value) if metric.integer else round(value, 2)
            data = {"metric": metric.name, "value": shown, "period_start": start, "period_end": end}
            self.emit(c, at + i, "usage.reported", "metering", data)

    def _shipment(self, c: Customer, rng: random.Random, label_at: int) -> None:
        promised = (label_at // HOUR + 1) * HOUR + rng.randrange(2, 6) * DAY
        shows_estimate = rng.random() < 0.6  # some carriers leave estimates empty when on time
        base = {
            "shipment_id": c.next_id("shp"),
            "order_id": c.next_id("ord"),
            "carrier": rng.choice(c.region.carriers),
        }
        value = None
        if rng.random() < 0.9:
            amount = _order_amount(rng, c.region.money_scale)
            value = {"amount": amount, "currency": c.region.currency}
        promised_text = _iso(promised)
        first = (label_at, "label_created", promised, None)
        for at, status, estimate, code in [first, *_route(rng, label_at, promised)]:
            shown = estimate is not None and (estimate != promised or shows_estimate)
            data: Data = base | {
                "status": status,
                "promised_delivery": promised_text,
                "estimated_delivery": _iso(estimate) if shown and estimate is not None else None,
            }
            if code is not None:
                data["exception_code"] = code
            if value is not None:
                data["order_value"] = value
            self.emit(c, at, "shipment.updated", "oms", data)

    def _invoice(self, c: Customer, rng: random.Random, at: int) -> None:
        invoice = c.next_id("in")
        if rng.random() >= FAILURE_RATE:
            self._charge(c, at, invoice, c.plan_amount)
            return
        code = rng.choices(_DECLINE_CODES, cum_weights=_DECLINE_CUM)[0]
        self._charge(c, at, invoice, c.plan_amount, code, 1)
        if code in HARD_DECLINES:
            if rng.random() < 0.35:  # the customer puts in a new card
                self._charge(c, at + rng.randrange(DAY, 5 * DAY), invoice, c.plan_amount)
            return
        for attempt, wait in ((2, DAY), (3, 3 * DAY), (4, 7 * DAY)):
            retry_at = at + wait + rng.randrange(HOUR)
            if rng.random() < RETRY_SUCCESS:
                self._charge(c, retry_at, invoice, c.plan_amount)
                return
            if rng.random() >= 0.6:
                code = rng.choices(_SOFT_CODES, cum_weights=_SOFT_CUM)[0]
            self._charge(c, retry_at, invoice, c.plan_amount, code, attempt)

    def _charge(
        self, c: Customer, at: int, invoice: str, amount: int, code: str = "", attempt: int = 0
    ) -> None:
        """One charge attempt: succeeded, or failed with a decline code if one is given."""
        data: Data = {"payment_id": c.next_id("py"), "invoice_id": invoice, "amount": amount}
        data["currency"] = c.region.currency
        if not code:
            self.emit(c, at, "payment.succeeded", "billing", data)
            return
        data |= {"decline_code": code, "attempt": attempt}
        self.emit(c, at, "payment.failed", "billing", data)

    def _renewal_notice(self, c: Customer, r: Renewal) -> None:
        data: Data = {"subscription_id": r.subscription_id, "plan": r.plan}
        data["renews_at"] = _iso(r.renews_at)
        data |= {"amount": r.amount, "currency": c.region.currency, "auto_renew": r.auto_renew}
        self.emit(c, r.notice_at, "renewal.upcoming", "billing", data)

    def _renewal_outcome(self, c: Customer, rng: random.Random, r: Renewal, day: int) -> None:
        cancel = (0.06 if r.auto_renew else 0.5) + (0.35 if _in_decline(c, day) else 0.0)
        data = {"subscription_id": r.subscription_id, "plan": r.plan}
        if rng.random() < cancel:
            self.emit(c, r.renews_at, "renewal.cancelled", "billing", data)
            return
        self.emit(c, r.renews_at, "renewal.renewed", "billing", data)
        self._charge(c, r.renews_at + 60 + rng.randrange(HOUR), c.next_id("in"), r.amount)


def _email(rng: random.Random, index: int) -> str:
    name = f"{rng.choice(_FIRST_NAMES)}.{rng.choice(_LAST_NAMES)}{index}"
    return f"{name}@{rng.choice(_MAIL_DOMAINS)}"


def _phone(rng: random.Random, region: Region) -> str:
    low = 2 * 10 ** (region.phone_digits - 1)
    return f"{rng.choice(region.phone_prefixes)}{rng.randrange(low, 10**region.phone_digits)}"


def _route(rng: random.Random, label_at: int, promised: int) -> list[Step]:
    """What happens after the label: on time mostly, else late, an exception or refused."""
    moving = label_at + rng.randrange(4 * HOUR, 20 * HOUR)
    steps: list[Step] = [(moving, "in_transit", promised, None)]
    u = rng.random()
    if u < 0.10:
        return steps + _late(rng, moving, promised)
    if u < 0.125:
        return steps + _exception(rng, moving, promised)
    if u < 0.132:  # refused at the door, back to the sender
        out = promised - rng.randrange(2 * HOUR, 12 * HOUR)
        back = out + rng.randrange(6 * HOUR, 3 * DAY)
        return [*steps, (out, "out_for_delivery", promised, None), (back, "returned", None, None)]
    delivered = promised - rng.randrange(HOUR, min(30 * HOUR, promised - moving - 10 * HOUR))
    return steps + _delivery(rng, delivered, promised)


def _late(rng: random.Random, moving: int, promised: int) -> list[Step]:
    slipped_at = rng.randrange(moving + 2 * HOUR, promised - HOUR)
    estimate = promised + rng.randrange(1, 6) * DAY + rng.randrange(6 * HOUR)
    steps: list[Step] = [(slipped_at, "in_transit", estimate, None)]
    if rng.random() < 0.3:  # and it slips once more
        slipped_at = rng.randrange(slipped_at + 6 * HOUR, estimate - 2 * HOUR)
        estimate += rng.randrange(1, 4) * DAY
        steps.append((slipped_at, "in_transit", estimate, None))
    delivered = max(slipped_at + 6 * HOUR, estimate - rng.randrange(8 * HOUR))
    return steps + _delivery(rng, delivered, estimate)


def _exception(rng: random.Random, moving: int, promised: int) -> list[Step]:
    stuck_at = rng.randrange(moving + 2 * HOUR, promised - HOUR)
    code = rng.choices(_EXCEPTIONS, cum_weights=_EXCEPTION_CUM)[0]
    steps: list[Step] = [(stuck_at, "exception", None, code)]
    if code in ("address_issue", "damaged") and rng.random() < 0.4:
        return [*steps, (stuck_at + rng.randrange(DAY, 4 * DAY), "returned", None, None)]
    resumed = stuck_at + rng.randrange(12 * HOUR, 3 * DAY)
    estimate = max(promised, resumed + rng.randrange(1, 3) * DAY)
    steps.append((resumed, "in_transit", estimate, None))
    delivered = max(resumed + 6 * HOUR, estimate - rng.randrange(8 * HOUR))
    return steps + _delivery(rng, delivered, estimate)


def _delivery(rng: random.Random, delivered: int, estimate: int) -> list[Step]:
    out = delivered - rng.randrange(HOUR, 5 * HOUR)
    return [(out, "out_for_delivery", estimate, None), (delivered, "delivered", estimate, None)]
