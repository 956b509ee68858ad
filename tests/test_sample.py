"""The synthetic traffic generator: valid, ordered, reproducible, realistic, and flat in memory."""

from __future__ import annotations

import io
import re
import tracemalloc
from collections import Counter, defaultdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest

from outreach.events import is_engine_type, parse_event
from outreach.sample import DEFAULT_START, HARD_DECLINES, generate, write_sample

PUBLIC_TYPES = {
    "customer.updated",
    "shipment.updated",
    "payment.failed",
    "payment.succeeded",
    "usage.reported",
    "renewal.upcoming",
    "renewal.renewed",
    "renewal.cancelled",
}
STAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")
CUSTOMERS = 500
DAY = 86_400.0

Event = dict[str, Any]


@pytest.fixture(scope="module")
def lines() -> list[bytes]:
    return list(generate(CUSTOMERS, 30, seed=11))


@pytest.fixture(scope="module")
def events(lines: list[bytes]) -> list[Event]:
    return [orjson.loads(line) for line in lines]


def of_type(events: list[Event], kind: str) -> list[Event]:
    return [e for e in events if e["type"] == kind]


def seconds(stamp: str) -> float:
    return datetime.fromisoformat(stamp).timestamp()


def test_every_line_is_a_valid_compact_public_event() -> None:
    sample = list(generate(200, 10, seed=3))
    assert len(sample) > 200 * 10
    for line in sample:
        assert not is_engine_type(parse_event(line))
        assert orjson.dumps(orjson.loads(line)) == line  # compact, no trailing newline


def test_timestamps_are_utc_seconds_in_the_window_and_never_go_back(events: list[Event]) -> None:
    stamps = [e["occurred_at"] for e in events]
    assert all(STAMP.fullmatch(s) for s in stamps)
    assert stamps == sorted(stamps)
    assert stamps[0] >= "2026-10-01T00:00:00Z"
    assert stamps[-1] < "2026-10-31T00:00:00Z"


def test_same_arguments_give_the_same_bytes() -> None:
    start = datetime(2027, 3, 1, 12, tzinfo=UTC)
    assert list(generate(60, 12, seed=5)) == list(generate(60, 12, seed=5))
    assert list(generate(20, 5, 5, start)) == list(generate(20, 5, 5, start))


def test_another_seed_or_start_gives_another_stream() -> None:
    first = list(generate(60, 12, seed=5))
    assert list(generate(60, 12, seed=6)) != first
    moved = list(generate(60, 12, 5, datetime(2027, 1, 1, tzinfo=UTC)))
    assert orjson.loads(moved[0])["occurred_at"].startswith("2027-01-01T")


def test_a_customer_story_does_not_depend_on_how_many_others_there_are() -> None:
    def story(crowd: int) -> list[bytes]:
        return [line for line in generate(crowd, 15, seed=9) if b'"cus_000003"' in line]

    assert story(5) == story(40)
    assert len(story(5)) > 15


def test_rejects_a_naive_start_and_negative_sizes() -> None:
    with pytest.raises(ValueError, match="timezone"):
        generate(1, 1, 1, datetime(2026, 10, 1))  # naive on purpose
    with pytest.raises(ValueError):
        generate(-1, 1, 1)
    with pytest.raises(ValueError):
        generate(1, -1, 1)


def test_all_public_types_appear(events: list[Event]) -> None:
    assert {e["type"] for e in events} == PUBLIC_TYPES


def test_volume_and_sources_are_realistic(events: list[Event]) -> None:
    assert 40 <= len(events) / CUSTOMERS <= 80
    sources = {(e["type"], e["source"]) for e in events}
    assert ("usage.reported", "metering") in sources
    assert ("payment.failed", "billing") in sources
    assert len({e["customer_id"] for e in events}) == CUSTOMERS


def test_each_customer_opens_with_a_full_profile(events: list[Event]) -> None:
    first: dict[str, Event] = {}
    for event in events:
        first.setdefault(event["customer_id"], event)
    assert len(first) == CUSTOMERS
    for event in first.values():
        assert event["type"] == "customer.updated"
        assert {"timezone", "locale", "tier", "consent"} <= set(event["data"])
    later = [e for e in of_type(events, "customer.updated") if "timezone" not in e["data"]]
    assert later, "expected some partial profile changes"
    assert all(len(e["data"]) == 1 for e in later)


def test_duplicates_are_rare_identical_retries(lines: list[bytes], events: list[Event]) -> None:
    copies: dict[str, list[bytes]] = defaultdict(list)
    for line, event in zip(lines, events, strict=True):
        copies[event["event_id"]].append(line)
    twice = [same for same in copies.values() if len(same) > 1]
    assert twice
    assert all(len(same) == 2 and same[0] == same[1] for same in twice)
    assert len(twice) / len(lines) < 0.02


def test_profiles_are_varied_and_consistent_with_the_region(events: list[Event]) -> None:
    profiles = [e["data"] for e in of_type(events, "customer.updated") if "timezone" in e["data"]]
    assert len({p["timezone"] for p in profiles}) >= 8
    tiers = Counter(p["tier"] for p in profiles)
    assert 0.1 < tiers["premium"] / len(profiles) < 0.3
    calling = {"America/Chicago": "+1", "Europe/London": "+44", "Asia/Tokyo": "+81"}
    locales = {"America/Chicago": "en-US", "Europe/London": "en-GB", "Asia/Tokyo": "ja-JP"}
    for p in profiles:
        if p["timezone"] in calling:
            assert p["locale"] == locales[p["timezone"]]
            assert p.get("phone", calling[p["timezone"]]).startswith(calling[p["timezone"]])
    marketing = sum(p["consent"]["email"]["marketing"] for p in profiles) / len(profiles)
    assert 0.3 < marketing < 0.7


def test_money_is_in_the_customer_currency(events: list[Event]) -> None:
    zone = {
        e["customer_id"]: e["data"]["timezone"]
        for e in of_type(events, "customer.updated")
        if "timezone" in e["data"]
    }
    expected = {"Europe/London": "GBP", "Europe/Paris": "EUR", "Asia/Tokyo": "JPY"}
    seen = 0
    for event in of_type(events, "payment.succeeded"):
        if zone[event["customer_id"]] in expected:
            assert event["data"]["currency"] == expected[zone[event["customer_id"]]]
            seen += 1
    assert seen > 20


def test_some_shipments_run_late_or_hit_an_exception(events: list[Event]) -> None:
    shipments: dict[str, list[Event]] = defaultdict(list)
    for event in of_type(events, "shipment.updated"):
        shipments[event["data"]["shipment_id"]].append(event["data"])

    def slip(data: Event) -> float:
        estimate = data["estimated_delivery"]
        return seconds(estimate) - seconds(data["promised_delivery"]) if estimate else 0.0

    late = [s for s in shipments.values() if any(slip(d) >= DAY for d in s)]
    troubled = [s for s in shipments.values() if any(d["status"] == "exception" for d in s)]
    assert 0.05 < len(late) / len(shipments) < 0.2
    assert 0.005 < len(troubled) / len(shipments) < 0.06
    codes = {d["exception_code"] for s in troubled for d in s if d["status"] == "exception"}
    assert codes <= {"address_issue", "damaged", "weather_delay", "customs_hold"}
    assert all(s[0]["status"] == "label_created" for s in shipments.values())
    on_time = [s for s in shipments.values() if s not in late and s not in troubled]
    assert all(slip(d) == 0.0 for s in on_time for d in s)


def test_declines_mix_hard_and_soft_and_soft_ones_are_retried() -> None:
    customers = 2000  # hard declines are rare: a bigger crowd, payments only
    payments = [orjson.loads(line) for line in generate(customers, 30, 11) if b'"payment.' in line]
    failed = of_type(payments, "payment.failed")
    first = {e["data"]["invoice_id"]: e for e in failed if e["data"]["attempt"] == 1}
    codes = Counter(e["data"]["decline_code"] for e in first.values())
    assert codes.most_common(1)[0][0] == "insufficient_funds"
    assert set(codes) & HARD_DECLINES
    assert set(codes) - HARD_DECLINES
    for retry in (e for e in failed if e["data"]["attempt"] > 1):
        opening = first[retry["data"]["invoice_id"]]
        assert opening["data"]["decline_code"] not in HARD_DECLINES
        assert seconds(retry["occurred_at"]) - seconds(opening["occurred_at"]) >= DAY
    assert max(e["data"]["attempt"] for e in failed) <= 4
    assert 0.04 < len(first) / customers < 0.1


def test_some_customers_show_a_sharp_usage_drop(events: list[Event]) -> None:
    series: dict[tuple[str, str], list[float]] = defaultdict(list)
    seen: set[str] = set()
    for event in of_type(events, "usage.reported"):
        if event["event_id"] not in seen:
            seen.add(event["event_id"])
            series[(event["customer_id"], event["data"]["metric"])].append(event["data"]["value"])
    dropping = {
        customer
        for (customer, _), values in series.items()
        for i in range(4, len(values))
        if values[i] <= 0.6 * sum(values[i - 4 : i]) / 4
    }
    assert 0.02 < len(dropping) / CUSTOMERS < 0.15


def test_renewals_are_announced_two_to_three_weeks_ahead(events: list[Event]) -> None:
    notices = {e["data"]["subscription_id"]: e for e in of_type(events, "renewal.upcoming")}
    assert 0.15 < len(notices) / CUSTOMERS < 0.45
    for notice in notices.values():
        lead = seconds(notice["data"]["renews_at"]) - seconds(notice["occurred_at"])
        assert 14 * DAY <= lead < 22 * DAY
    outcomes = of_type(events, "renewal.renewed") + of_type(events, "renewal.cancelled")
    for outcome in outcomes:
        notice = notices.get(outcome["data"]["subscription_id"])
        assert notice is not None and notice["data"]["renews_at"] == outcome["occurred_at"]
    manual = sum(not n["data"]["auto_renew"] for n in notices.values()) / len(notices)
    assert 0.1 < manual < 0.4


def test_memory_does_not_grow_with_the_number_of_events() -> None:
    def peak(days: int) -> int:
        tracemalloc.start()
        try:
            count = sum(1 for _ in generate(300, days, seed=4))
            assert count > 300 * days
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    for _ in generate(300, 40, seed=4):  # warm module-level caches: neither measurement pays
        pass
    assert peak(40) < 1.5 * peak(10)


def test_write_sample_writes_one_line_per_event(tmp_path: Path) -> None:
    expected = list(generate(30, 5, seed=2))
    body = b"\n".join(expected) + b"\n"
    path = tmp_path / "events.jsonl"
    assert write_sample(path, 30, 5, 2) == len(expected)
    assert path.read_bytes() == body
    binary, text = io.BytesIO(), io.StringIO()
    assert write_sample(binary, 30, 5, 2, DEFAULT_START) == len(expected)
    assert write_sample(text, 30, 5, 2) == len(expected)
    assert binary.getvalue() == body
    assert text.getvalue() == body.decode()
