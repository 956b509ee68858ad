"""Properties of the whole engine over generated event sequences (hypothesis).

A handful of customers with random timezones (some unknown), consents, tiers and contact
details; each gets shipment, payment, usage and renewal episodes (and the odd STOP or bounce)
at random minutes over 2 to 120 days starting 2026-03-01, so quiet hours and the March DST
changes are crossed. The real core runs through ``run_events`` or the real ``replay()``.

Rules folders: ``caps`` lifts the one-offer-per-90-days budget so that marketing messages are
frequent enough for the caps to bind; ``budget`` shrinks the credit budgets (global 1500 per
UTC day, 1500 per customer per 90 days) so that they bind with a few shipments.
"""

from __future__ import annotations

import itertools
import random
import shutil
import tempfile
from collections import Counter, defaultdict
from datetime import UTC, datetime, time, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support import RULES, run_events, ts

from outreach.decisionlog import FILES
from outreach.replay import replay
from outreach.rulebook import RuleBook, load_rulebook

START = datetime(2026, 3, 1, tzinfo=UTC)
DAY = timedelta(days=1)
ZONES = [
    None,
    "UTC",
    "America/New_York",
    "America/Los_Angeles",
    "America/St_Johns",
    "Europe/Paris",
    "Asia/Kolkata",
    "Asia/Kathmandu",
    "Australia/Lord_Howe",
    "Pacific/Chatham",
    "Pacific/Kiritimati",
]
DECLINES = ["insufficient_funds", "do_not_honor", "generic_decline", "stolen_card", "expired_card"]
Event = dict[str, Any]

PROPERTY = settings(
    max_examples=80,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def edited(root: Path, name: str, changes: list[tuple[str, str]]) -> RuleBook:
    folder = root / name
    shutil.copytree(RULES, folder)
    policy = folder / "policy.yaml"
    text = policy.read_text()
    for old, new in changes:
        assert old in text, old
        text = text.replace(old, new)
    policy.write_text(text)
    return load_rulebook(folder)


@pytest.fixture(scope="module")
def caps(tmp_path_factory: pytest.TempPathFactory) -> RuleBook:
    return edited(
        tmp_path_factory.mktemp("caps"),
        "rules",
        [("per_customer: {max: 1, period: 90d, count: true}",
          "per_customer: {max: 1000, period: 90d, count: true}")],
    )  # fmt: skip


@pytest.fixture(scope="module")
def budget(tmp_path_factory: pytest.TempPathFactory) -> RuleBook:
    return edited(
        tmp_path_factory.mktemp("budget"),
        "rules",
        [
            ("global_per_utc_day: 1000000", "global_per_utc_day: 1500"),
            ("per_customer: {max: 5000, period: 90d}", "per_customer: {max: 1500, period: 90d}"),
        ],
    )


# -- generated traffic --------------------------------------------------------------------


def stamp(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


class Traffic:
    """Builds events with unique ids; remembers each customer's timezones over time."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.zones: dict[str, list[tuple[datetime, str]]] = defaultdict(list)
        self._ids = itertools.count(1)

    def zone(self, customer: str, at: datetime) -> str:
        """The customer's timezone at ``at`` (moves never tie with a send: they are at :30s)."""
        return [zone for since, zone in sorted(self.zones[customer]) if since <= at][-1]

    def add(self, kind: str, at: datetime, customer: str, **data: Any) -> None:
        self.events.append(
            {
                "event_id": f"e{next(self._ids)}",
                "type": kind,
                "customer_id": customer,
                "occurred_at": stamp(at),
                "data": data,
            }
        )


def minutes(draw: st.DrawFn, low: int, high: int) -> timedelta:
    return timedelta(minutes=draw(st.integers(low, high)))


def shipment_episode(draw: st.DrawFn, t: Traffic, customer: str, start: datetime, n: int) -> None:
    promised = start + minutes(draw, 0, 3 * 1440)
    value = draw(st.sampled_from([None, 1000, 50000, 50001]))
    base = {
        "shipment_id": f"shp_{customer}_{n}",
        "order_id": f"ORD-{n}",
        "carrier": "ups",
        "promised_delivery": stamp(promised),
        "order_value": None if value is None else {"amount": value, "currency": "USD"},
    }
    at = start
    for _ in range(draw(st.integers(1, 3))):
        late = draw(st.sampled_from([None, 0, 23, 24, 30, 48, 72, 80, 120]))
        status = draw(st.sampled_from(["in_transit", "in_transit", "exception", "label_created"]))
        estimate = None if late is None else stamp(promised + timedelta(hours=late))
        t.add("shipment.updated", at, customer, status=status, estimated_delivery=estimate, **base)
        at += minutes(draw, 1, 2 * 1440)
    if draw(st.booleans()):
        t.add("shipment.updated", at, customer, status="delivered", **base)


def payment_episode(draw: st.DrawFn, t: Traffic, customer: str, start: datetime, n: int) -> None:
    invoice = f"in_{customer}_{n}"
    money = {"invoice_id": invoice, "amount": 2900, "currency": "USD"}
    at = start
    for attempt in range(1, draw(st.integers(1, 4)) + 1):
        code = draw(st.sampled_from(DECLINES))
        t.add("payment.failed", at, customer, payment_id=f"p{attempt}", decline_code=code,
              attempt=attempt, **money)  # fmt: skip
        at += minutes(draw, 1, 9 * 1440)
    if draw(st.booleans()):
        t.add("payment.succeeded", at, customer, payment_id="ok", **money)


def usage_episode(draw: st.DrawFn, t: Traffic, customer: str, start: datetime, n: int) -> None:
    metric = draw(st.sampled_from(["api_calls", "seats"]))
    at = start
    for _ in range(draw(st.integers(4, 8))):
        value = draw(st.sampled_from([100, 100, 100, 80, 30, 10, 0]))
        t.add("usage.reported", at, customer, metric=metric, value=value,
              period_start=stamp(at - DAY), period_end=stamp(at))  # fmt: skip
        at += minutes(draw, 60, 2 * 1440)


def renewal_episode(draw: st.DrawFn, t: Traffic, customer: str, start: datetime, n: int) -> None:
    renews = start + draw(st.sampled_from([timedelta(hours=12), 3 * DAY, 10 * DAY, 20 * DAY]))
    t.add("renewal.upcoming", start, customer, subscription_id=f"sub_{customer}_{n}",
          plan="Pro", renews_at=stamp(renews), amount=29900, currency="USD",
          auto_renew=draw(st.booleans()))  # fmt: skip


def suppression_episode(
    draw: st.DrawFn, t: Traffic, customer: str, start: datetime, n: int
) -> None:
    channel, reason = draw(st.sampled_from([("sms", "stop"), ("email", "bounce")]))
    t.add("contact.suppressed", start, customer, channel=channel, reason=reason)


def move_episode(draw: st.DrawFn, t: Traffic, customer: str, start: datetime, n: int) -> None:
    """The customer moves (or the timezone becomes unknown again)."""
    zone = draw(st.sampled_from(ZONES))
    at = start + timedelta(seconds=30)
    t.zones[customer].append((at, zone or "UTC"))
    t.add("customer.updated", at, customer, timezone=zone)


EPISODES = [
    shipment_episode,
    shipment_episode,
    payment_episode,
    usage_episode,
    usage_episode,
    renewal_episode,
    suppression_episode,
]


@st.composite
def traffic(draw: st.DrawFn, moves: bool = False) -> Traffic:
    """Generated traffic; with ``moves``, customers may change timezone on the way."""
    episodes = [*EPISODES, move_episode] if moves else EPISODES
    t = Traffic()
    span = draw(st.sampled_from([2, 10, 120])) * 1440
    for c in range(draw(st.integers(2, 5))):
        customer = f"cus_{c}"
        zone = draw(st.sampled_from(ZONES))
        t.zones[customer].append((START - DAY, zone or "UTC"))
        profile: dict[str, Any] = {
            "tier": draw(st.sampled_from(["standard", "premium"])),
            "locale": draw(st.sampled_from(["en-US", "fr-FR"])),
            "consent": {
                "sms": {"transactional": draw(st.booleans()), "marketing": draw(st.booleans())},
                "email": {"transactional": True, "marketing": draw(st.booleans())},
            },
        }
        if zone is not None:
            profile["timezone"] = zone
        if draw(st.integers(0, 4)):
            profile["phone"] = f"+1415555{c:04d}"
        if draw(st.integers(0, 4)):
            profile["email"] = f"c{c}@example.com"
        t.add("customer.updated", START - DAY, customer, **profile)
        for n in range(draw(st.integers(1, 5))):
            episode = draw(st.sampled_from(episodes))
            episode(draw, t, customer, START + minutes(draw, 0, span), n)
    t.events.sort(key=lambda e: e["occurred_at"])
    return t


# -- (a) quiet hours, (b) marketing caps ----------------------------------------------------


def in_quiet_hours(moment: datetime, zone: str) -> bool:
    local = moment.astimezone(ZoneInfo(zone)).time()
    return local >= time(21) or local < time(8)


@PROPERTY
@given(t=traffic(moves=True))
def test_nothing_is_sent_in_the_recipients_quiet_hours(caps: RuleBook, t: Traffic) -> None:
    sent = [m for m in run_events(caps, t.events).messages if m["status"] == "sent"]
    for message in sent:
        moment = ts(message["send_at"])
        zone = t.zone(message["customer_id"], moment)
        assert not in_quiet_hours(moment, zone), (zone, message["send_at"])


@PROPERTY
@given(t=traffic())
def test_no_customer_gets_more_marketing_than_the_caps(caps: RuleBook, t: Traffic) -> None:
    sends: dict[str, list[datetime]] = defaultdict(list)
    for m in run_events(caps, t.events).messages:
        if m["status"] == "sent" and m["purpose"] == "marketing":
            sends[m["customer_id"]].append(ts(m["send_at"]))
    for customer, times in sends.items():
        zone = ZoneInfo(t.zone(customer, START))
        per_day = Counter(moment.astimezone(zone).date() for moment in times)
        assert max(per_day.values()) <= 1, (customer, per_day)
        for moment in times:
            recent = [x for x in times if moment - timedelta(days=7) < x <= moment]
            assert len(recent) <= 3, (customer, sorted(times))


# -- (c) budgets --------------------------------------------------------------------------


@PROPERTY
@given(t=traffic())
def test_no_budget_is_ever_exceeded(budget: RuleBook, t: Traffic) -> None:
    tools = budget.policy.guardrails.tools
    credit_guard, offer_guard = tools["grant_credit"], tools["offer_discount"]
    assert credit_guard.per_customer is not None and offer_guard.per_customer is not None
    executed = [a for a in run_events(budget, t.events).actions if a["status"] == "executed"]
    credits = [(a["customer_id"], ts(a["at"]), a["params"]["amount"])
               for a in executed if a["type"] == "grant_credit"]  # fmt: skip
    window = timedelta(days=90)
    for customer, moment, _ in credits:
        spent = sum(
            amount for who, when, amount in credits
            if who == customer and moment - window < when <= moment
        )  # fmt: skip
        assert spent <= credit_guard.per_customer.max, (customer, moment, credits)
    per_day = Counter[Any]()
    for _, moment, amount in credits:
        per_day[moment.date()] += amount
    assert all(v <= credit_guard.global_per_utc_day for v in per_day.values()), per_day
    offers = [(a["customer_id"], ts(a["at"])) for a in executed if a["type"] == "offer_discount"]
    for customer, moment in offers:
        recent = [w for who, w in offers if who == customer and moment - window < w <= moment]
        assert len(recent) <= offer_guard.per_customer.max == 1, (customer, offers)


# -- (d) duplicates, (e) determinism through the real replay -------------------------------


def write(path: Path, events: list[Event]) -> Path:
    path.write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in events))
    return path


def with_duplicates(events: list[Event], picks: list[int], seed: int) -> list[Event]:
    """Copies of some events, each inserted at a random position after its original."""
    rng = random.Random(seed)
    out = list(events)
    for pick in picks:
        original = events[pick % len(events)]
        position = out.index(original)
        out.insert(rng.randint(position + 1, len(out)), dict(original))
    return out


REPLAY = settings(PROPERTY, max_examples=40)


@REPLAY
@given(t=traffic(), picks=st.lists(st.integers(0, 10_000), min_size=1, max_size=12),
       seed=st.integers(0, 2**16), chunk=st.sampled_from([3, 7, 200_000]))  # fmt: skip
def test_duplicated_events_change_nothing(
    caps: RuleBook, t: Traffic, picks: list[int], seed: int, chunk: int
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        clean = write(root / "clean.jsonl", t.events)
        noisy = write(root / "noisy.jsonl", with_duplicates(t.events, picks, seed))
        replay(clean, caps, root / "a", chunk_lines=chunk)
        summary = replay(noisy, caps, root / "b", chunk_lines=chunk).summary
        assert summary["events"]["duplicates"] == len(picks)
        for name in ("signals", "actions", "messages"):
            expected = (root / "a" / f"{name}.jsonl").read_bytes()
            assert (root / "b" / f"{name}.jsonl").read_bytes() == expected, name


@REPLAY
@given(t=traffic())
def test_two_replays_of_a_file_are_byte_identical(caps: RuleBook, t: Traffic) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        events = write(root / "events.jsonl", t.events)
        replay(events, caps, root / "a")
        replay(events, caps, root / "b")
        for name in [*(f"{n}.jsonl" for n in FILES), "summary.json"]:
            assert (root / "a" / name).read_bytes() == (root / "b" / name).read_bytes(), name
