"""The sample generator itself: customers as simulated processes, events in time order.

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
from datetime import UTC, datetime, timedelta
from typing import IO, Final, cast

import orjson

from outreach.sample.catalog import (
    ACTIVITY,
    ANNUAL_PLANS,
    DAY,
    DECLINE_CODES,
    DECLINE_CUM,
    DEFAULT_START,
    DUPLICATE_RATE,
    EXCEPTION_CUM,
    EXCEPTIONS,
    FAILURE_RATE,
    FIRST_NAMES,
    HARD_DECLINES,
    HOUR,
    LAST_NAMES,
    MAIL_DOMAINS,
    MAX_DAYS,
    MONTHLY_PLANS,
    OPENING,
    ORDERS_PER_DAY,
    PROFILE_CHANGE_RATE,
    REGION_CUM,
    REGIONS,
    RETRY_SUCCESS,
    SOFT_CODES,
    SOFT_CUM,
    STORAGE,
    Customer,
    Data,
    Day,
    Metric,
    Region,
    Renewal,
    Step,
)


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
    region = rng.choices(REGIONS, cum_weights=REGION_CUM)[0][1]
    tier = "premium" if rng.random() < 0.2 else "standard"
    has_phone = rng.random() < 0.8
    if rng.random() < 0.05:
        consent = [False] * 4
    else:
        consent = [has_phone and rng.random() < 0.9, has_phone and rng.random() < 0.5]
        consent += [rng.random() < 0.97, rng.random() < 0.55]
    metrics: tuple[Metric, ...] = (rng.choice(ACTIVITY),)
    if rng.random() < 0.5:
        metrics += (rng.choice([m for m in (*ACTIVITY, STORAGE) if m is not metrics[0]]),)
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
        plan_amount=_price(rng.choice(MONTHLY_PLANS), region.money_scale),
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
    plan, amount = rng.choices(ANNUAL_PLANS, cum_weights=weights)[0]
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
        code = rng.choices(DECLINE_CODES, cum_weights=DECLINE_CUM)[0]
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
                code = rng.choices(SOFT_CODES, cum_weights=SOFT_CUM)[0]
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
    name = f"{rng.choice(FIRST_NAMES)}.{rng.choice(LAST_NAMES)}{index}"
    return f"{name}@{rng.choice(MAIL_DOMAINS)}"


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
    code = rng.choices(EXCEPTIONS, cum_weights=EXCEPTION_CUM)[0]
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
