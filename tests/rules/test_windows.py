"""Per-customer windows, facts, audience, cooldown, holdout and rollout, through real replays.

Each test builds a rules folder from scratch (the shipped policy.yaml, one ``note`` template,
its own rule files with the ``notify`` playbook) and replays events in memory. Window values
are read back from the signals' evidence: every ``let`` binding appears there under its name.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from support import (
    Run,
    later,
    make_event,
    minimal_folder,
    profile,
    run_events,
)

from outreach.events import event_from_obj
from outreach.replay import Replayer
from outreach.rulebook import RuleBook, load_rulebook
from outreach.ruletests import MemoryLog

T0 = "2026-03-02T15:00:00Z"  # 15:00 UTC: outside quiet hours for a UTC customer


def build(tmp_path: Path, *rules: dict[str, Any]) -> RuleBook:
    """A rules folder with the shipped policy, the ``note`` template and ``rules``."""
    folder = minimal_folder(tmp_path)
    for rule in rules:
        spec = {
            "owner": "qa@example.com",
            "description": "a test rule",
            "playbook": "notify",
            "params": {"template": "note", "purpose": "transactional"},
            **rule,
        }
        # JSON is YAML: no quoting surprises in expressions
        (folder / f"{spec['id']}.yaml").write_text(json.dumps(spec, indent=2), encoding="utf-8")
    return load_rulebook(folder)


def probe(tmp_path: Path, trigger: str, **let: str) -> RuleBook:
    """A rule ``probe`` that fires on every ``trigger`` event and records ``let`` values."""
    return build(tmp_path, {"id": "probe", "trigger": trigger, "let": let})


def values(run: Run, rule_id: str = "probe", customer: str | None = None) -> list[dict[str, Any]]:
    """The evidence of each signal of ``rule_id`` (optionally of one customer), in order."""
    return [
        s["evidence"]
        for s in run.signals
        if s["rule_id"] == rule_id and (customer is None or s["customer_id"] == customer)
    ]


def failed(
    at: str,
    customer: str = "cus_1",
    amount: int = 100,
    invoice: str = "in_1",
    decline: str = "insufficient_funds",
    event_id: str | None = None,
) -> dict[str, Any]:
    return make_event(
        "payment.failed", at, customer, event_id,
        payment_id=f"py_{invoice}", invoice_id=invoice, amount=amount, currency="USD",
        decline_code=decline, attempt=1,
    )  # fmt: skip


def succeeded(at: str, customer: str = "cus_1", invoice: str = "in_1") -> dict[str, Any]:
    return make_event(
        "payment.succeeded", at, customer,
        payment_id=f"py_ok_{invoice}", invoice_id=invoice, amount=100, currency="USD",
    )  # fmt: skip


def usage(at: str, value: float, metric: str = "seats", customer: str = "cus_1") -> dict[str, Any]:
    return make_event(
        "usage.reported", at, customer,
        metric=metric, value=value, period_start=later(at, days=-1), period_end=at,
    )  # fmt: skip


# --- count, exists, where ---------------------------------------------------------------------


def test_count_includes_the_current_event_and_excludes_the_window_start(tmp_path: Path) -> None:
    book = probe(tmp_path, "payment.failed", n='count("payment.failed", 7d)')
    run = run_events(
        book,
        [
            failed(T0),
            failed(later(T0, days=7, seconds=-1)),  # 1 s inside the first one's window
            failed(later(T0, days=7)),  # exactly 7d after the first: the first drops out
        ],
    )
    assert [v["n"] for v in values(run)] == [1, 2, 2]


def test_a_late_event_counts_only_what_happened_up_to_its_own_time(tmp_path: Path) -> None:
    """The live runtime may see events out of order: the window is (t - 7d, t] of each event."""
    book = probe(tmp_path, "payment.failed", n='count("payment.failed", 7d)')
    log = MemoryLog()
    replayer = Replayer(book, log)
    for raw in (
        failed(later(T0, hours=2), event_id="second"),
        failed(later(T0, hours=1), event_id="first_arriving_late"),
        failed(later(T0, hours=3), event_id="third"),
    ):
        replayer.feed_event(event_from_obj(raw))
    counts = {s["event_id"]: s["evidence"]["n"] for s in log.signals}
    assert counts == {"second": 1, "first_arriving_late": 1, "third": 3}


def test_count_is_per_customer_and_per_type(tmp_path: Path) -> None:
    book = probe(
        tmp_path,
        "payment.failed",
        failures='count("payment.failed", 30d)',
        successes='count("payment.succeeded", 30d)',
    )
    run = run_events(
        book,
        [
            failed(T0, "cus_1"),
            failed(later(T0, hours=1), "cus_2"),
            succeeded(later(T0, hours=2), "cus_1"),
            failed(later(T0, hours=3), "cus_1"),
        ],
    )
    assert [(v["failures"], v["successes"]) for v in values(run, customer="cus_1")] == [
        (1, 0),
        (2, 1),
    ]
    assert [(v["failures"], v["successes"]) for v in values(run, customer="cus_2")] == [(1, 0)]


def test_where_filters_the_counted_events(tmp_path: Path) -> None:
    book = probe(
        tmp_path,
        "payment.failed",
        soft='count("payment.failed", 30d, where=data.decline_code == "insufficient_funds")',
        big='count("payment.failed", 30d, where=data.amount >= 1000)',
        any='count("payment.failed", 30d)',
    )
    run = run_events(
        book,
        [
            failed(T0, amount=500, decline="insufficient_funds"),
            failed(later(T0, hours=1), amount=5000, decline="expired_card"),
            failed(later(T0, hours=2), amount=1500, decline="insufficient_funds"),
        ],
    )
    assert [(v["soft"], v["big"], v["any"]) for v in values(run)] == [
        (1, 0, 1),
        (1, 1, 2),
        (2, 2, 3),
    ]


def test_exists_sees_other_event_types_within_the_window(tmp_path: Path) -> None:
    book = probe(tmp_path, "payment.failed", paid_recently='exists("payment.succeeded", 3d)')
    run = run_events(
        book,
        [
            failed(T0),
            succeeded(later(T0, days=1)),
            failed(later(T0, days=2)),
            failed(later(T0, days=4)),  # exactly 3d after the success: outside (t-3d, t]
        ],
    )
    assert [v["paid_recently"] for v in values(run)] == [False, True, False]


# --- sum, avg, min, max -----------------------------------------------------------------------


def test_sum_avg_min_max_over_a_field(tmp_path: Path) -> None:
    book = probe(
        tmp_path,
        "payment.failed",
        total='sum("payment.failed", data.amount, 7d)',
        mean='avg("payment.failed", data.amount, 7d)',
        low='min("payment.failed", data.amount, 7d)',
        high='max("payment.failed", data.amount, 7d)',
    )
    run = run_events(
        book,
        [
            failed(T0, amount=9999),  # leaves the window before the last event
            failed(later(T0, days=3), amount=100),
            failed(later(T0, days=4), amount=250),
            failed(later(T0, days=7), amount=50),
        ],
    )
    last = values(run)[-1]
    assert (last["total"], last["low"], last["high"]) == (400.0, 50.0, 250.0)
    assert last["mean"] == pytest.approx(400 / 3)
    first = values(run)[0]
    assert (first["total"], first["mean"], first["low"], first["high"]) == (9999.0,) * 4


def test_aggregates_of_an_empty_window_are_zero_or_null(tmp_path: Path) -> None:
    book = probe(
        tmp_path,
        "payment.succeeded",
        total='sum("payment.failed", data.amount, 7d)',
        mean='avg("payment.failed", data.amount, 7d)',
        low='min("payment.failed", data.amount, 7d)',
        high='max("payment.failed", data.amount, 7d)',
        n='count("payment.failed", 7d)',
    )
    run = run_events(book, [failed(T0), succeeded(later(T0, days=8))])
    got = {k: values(run)[0][k] for k in ("total", "mean", "low", "high", "n")}
    assert got == {"total": 0.0, "mean": None, "low": None, "high": None, "n": 0}


def test_missing_values_are_not_aggregated(tmp_path: Path) -> None:
    book = probe(
        tmp_path,
        "shipment.updated",
        total='sum("shipment.updated", data.order_value.amount, 30d)',
        n='count("shipment.updated", 30d)',
    )

    def shipment(at: str, value: int | None) -> dict[str, Any]:
        data: dict[str, Any] = {
            "shipment_id": "sh_1", "order_id": "o_1", "carrier": "ups", "status": "in_transit",
            "promised_delivery": later(at, days=2),
        }  # fmt: skip
        if value is not None:
            data["order_value"] = {"amount": value, "currency": "USD"}
        return make_event("shipment.updated", at, **data)

    run = run_events(book, [shipment(T0, 1200), shipment(later(T0, hours=1), None)])
    assert [(v["total"], v["n"]) for v in values(run)] == [(1200.0, 1), (1200.0, 2)]


# --- latest -----------------------------------------------------------------------------------


def test_latest_returns_the_newest_event_data_or_null(tmp_path: Path) -> None:
    book = probe(
        tmp_path,
        "payment.failed",
        tier='latest("customer.updated").tier',
        recent_tier='latest("customer.updated", within=1d).tier',
        this_amount='latest("payment.failed").amount',
    )
    run = run_events(
        book,
        [
            failed(T0, amount=10),  # no profile yet
            profile(later(T0, hours=1), tier="standard"),
            profile(later(T0, hours=2), tier="premium"),
            failed(later(T0, hours=3), amount=20),
            failed(later(T0, days=2), amount=30),  # the profile is now 2d old
        ],
    )
    got = [(v["tier"], v["recent_tier"], v["this_amount"]) for v in values(run)]
    assert got == [(None, None, 10), ("premium", "premium", 20), ("premium", None, 30)]


def test_latest_with_where_keeps_the_newest_matching_event(tmp_path: Path) -> None:
    book = probe(
        tmp_path,
        "payment.succeeded",
        hard='latest("payment.failed", where=data.decline_code == "expired_card").amount',
    )
    run = run_events(
        book,
        [
            failed(T0, amount=111, decline="expired_card"),
            failed(later(T0, hours=1), amount=222, decline="insufficient_funds"),
            succeeded(later(T0, hours=2)),
            failed(later(T0, hours=3), amount=333, decline="expired_card"),
            succeeded(later(T0, hours=4)),
        ],
    )
    assert [v["hard"] for v in values(run)] == [111, 333]


# --- previous ---------------------------------------------------------------------------------


def test_previous_excludes_the_current_event_and_partitions_by_key(tmp_path: Path) -> None:
    book = probe(
        tmp_path, "usage.reported", base="previous(data.value, 3, by=data.metric)", m="data.metric"
    )
    run = run_events(
        book,
        [
            usage(T0, 10),
            usage(later(T0, days=1), 1000, metric="api_calls"),
            usage(later(T0, days=2), 20),
            usage(later(T0, days=3), 30),
            usage(later(T0, days=4), 40),
            usage(later(T0, days=5), 50),
        ],
    )
    seats = [v["base"] for v in values(run) if v["m"] == "seats"]
    assert [b["count"] for b in seats] == [0, 1, 2, 3, 3]
    assert seats[0]["mean"] is None and seats[0]["last"] is None
    assert seats[3] == {
        "count": 3,
        "sum": 60.0,
        "mean": 20.0,
        "min": 10.0,
        "max": 30.0,
        "last": 30.0,
    }
    assert seats[4]["sum"] == 90.0 and seats[4]["min"] == 20.0  # only the last 3 are kept
    api = [v["base"] for v in values(run) if v["m"] == "api_calls"]
    assert api == [{"count": 0, "sum": 0.0, "mean": None, "min": None, "max": None, "last": None}]


def test_previous_with_two_sizes_keeps_enough_for_the_larger(tmp_path: Path) -> None:
    book = probe(
        tmp_path,
        "usage.reported",
        two="previous(data.value, 2).sum",
        four="previous(data.value, 4).sum",
    )
    run = run_events(book, [usage(later(T0, days=i), v) for i, v in enumerate([1, 2, 4, 8, 16])])
    assert [(v["two"], v["four"]) for v in values(run)] == [
        (0.0, 0.0),
        (1.0, 1.0),
        (3.0, 3.0),
        (6.0, 7.0),
        (12.0, 15.0),
    ]


def test_previous_without_by_mixes_every_metric(tmp_path: Path) -> None:
    book = probe(tmp_path, "usage.reported", base="previous(data.value, 5)")
    run = run_events(book, [usage(T0, 10), usage(later(T0, days=1), 1000, metric="api_calls")])
    assert values(run)[1]["base"]["last"] == 10.0


def test_previous_is_per_customer(tmp_path: Path) -> None:
    book = probe(tmp_path, "usage.reported", base="previous(data.value, 3)")
    run = run_events(
        book, [usage(T0, 10, customer="cus_1"), usage(later(T0, hours=1), 20, customer="cus_2")]
    )
    assert values(run, customer="cus_2")[0]["base"]["count"] == 0


# --- signaled / signals -----------------------------------------------------------------------


def test_signaled_and_signals_see_another_rules_recent_signals(tmp_path: Path) -> None:
    book = build(
        tmp_path,
        {"id": "big-failure", "trigger": "payment.failed", "when": "data.amount >= 1000"},
        {
            "id": "probe",
            "trigger": "payment.succeeded",
            "let": {"seen": 'signaled("big-failure", 7d)', "times": 'signals("big-failure", 30d)'},
        },
    )
    run = run_events(
        book,
        [
            failed(T0, amount=5000),
            failed(later(T0, hours=1), amount=10),  # does not fire big-failure
            failed(later(T0, days=1), amount=2000),
            succeeded(later(T0, days=2)),
            succeeded(later(T0, days=8, hours=1)),  # 7d after the last big failure
            succeeded(later(T0, days=2), customer="cus_2"),
        ],
    )
    assert [(v["seen"], v["times"]) for v in values(run, customer="cus_1")] == [
        (True, 2),
        (False, 2),
    ]
    assert [(v["seen"], v["times"]) for v in values(run, customer="cus_2")] == [(False, 0)]


# --- audience ---------------------------------------------------------------------------------


def _fired(book: RuleBook, profiles: list[dict[str, Any]]) -> list[str]:
    """Customers for whom the rule fired on one payment.failed each, after their profile."""
    events = list(profiles)
    for i, p in enumerate(profiles):
        events.append(failed(later(T0, hours=1, minutes=i), p["customer_id"]))
    run = run_events(book, events)
    return sorted(s["customer_id"] for s in run.signals)


def test_audience_tier(tmp_path: Path) -> None:
    book = build(
        tmp_path, {"id": "probe", "trigger": "payment.failed", "audience": {"tier": ["premium"]}}
    )
    fired = _fired(
        book, [profile(T0, "cus_p", tier="premium"), profile(T0, "cus_s", tier="standard")]
    )
    assert fired == ["cus_p"]
    run = run_events(book, [failed(T0, "cus_unknown")])  # no profile: standard tier
    assert run.signals == []


def test_audience_locale_prefix(tmp_path: Path) -> None:
    book = build(
        tmp_path, {"id": "probe", "trigger": "payment.failed", "audience": {"locale": ["fr"]}}
    )
    profiles = [
        profile(T0, "cus_fr", locale="fr"),
        profile(T0, "cus_frca", locale="fr-CA"),
        profile(T0, "cus_frfr", locale="fr_FR"),
        profile(T0, "cus_fra", locale="fra"),  # another language that starts with 'fr'
        profile(T0, "cus_en", locale="en-CA"),
    ]
    assert _fired(book, profiles) == ["cus_fr", "cus_frca", "cus_frfr"]


def test_audience_exact_locale_does_not_match_the_bare_language(tmp_path: Path) -> None:
    book = build(
        tmp_path, {"id": "probe", "trigger": "payment.failed", "audience": {"locale": ["fr-CA"]}}
    )
    profiles = [
        profile(T0, "cus_fr", locale="fr"),
        profile(T0, "cus_frca", locale="fr-ca"),
        profile(T0, "cus_frfr", locale="fr-FR"),
    ]
    assert _fired(book, profiles) == ["cus_frca"]


def test_audience_country_comes_from_the_locale_region(tmp_path: Path) -> None:
    book = build(
        tmp_path, {"id": "probe", "trigger": "payment.failed", "audience": {"country": ["CA"]}}
    )
    profiles = [
        profile(T0, "cus_enca", locale="en-CA"),
        profile(T0, "cus_frca", locale="fr_ca"),
        profile(T0, "cus_us", locale="en-US"),
        profile(T0, "cus_fr", locale="fr"),  # no region: no country
    ]
    assert _fired(book, profiles) == ["cus_enca", "cus_frca"]


def test_audience_consent_requires_every_listed_consent(tmp_path: Path) -> None:
    book = build(
        tmp_path,
        {
            "id": "probe",
            "trigger": "payment.failed",
            "audience": {"consent": ["sms.marketing", "email.transactional"]},
        },
    )
    profiles = [
        profile(T0, "cus_both", sms=(False, True), mail=(True, False)),
        profile(T0, "cus_sms_only", sms=(True, True), mail=(False, True)),
        profile(T0, "cus_mail_only", sms=(True, False), mail=(True, True)),
    ]
    assert _fired(book, profiles) == ["cus_both"]


def test_audience_when_is_an_extra_condition(tmp_path: Path) -> None:
    book = build(
        tmp_path,
        {
            "id": "probe",
            "trigger": "payment.failed",
            "audience": {"when": 'customer.tier == "premium" or data.amount >= 1000'},
        },
    )
    run = run_events(
        book,
        [
            profile(T0, "cus_p", tier="premium"),
            profile(T0, "cus_s"),
            failed(later(T0, hours=1), "cus_p", amount=10, event_id="p_small"),
            failed(later(T0, hours=1), "cus_s", amount=10, event_id="s_small"),
            failed(later(T0, hours=2), "cus_s", amount=5000, event_id="s_big"),
        ],
    )
    assert [s["event_id"] for s in run.signals] == ["p_small", "s_big"]


# --- cooldown ---------------------------------------------------------------------------------


def test_cooldown_per_customer_boundary(tmp_path: Path) -> None:
    book = build(tmp_path, {"id": "probe", "trigger": "payment.failed", "cooldown": "24h"})
    run = run_events(
        book,
        [
            failed(T0, event_id="a"),
            failed(later(T0, hours=24, seconds=-1), event_id="b"),  # still cooling down
            failed(later(T0, hours=1), "cus_2", event_id="c"),  # another customer: own cooldown
            failed(later(T0, hours=24), event_id="d"),  # exactly 24h later: allowed
            failed(later(T0, hours=25), event_id="e"),  # cooldown restarted at d
        ],
    )
    assert [s["event_id"] for s in run.signals] == ["a", "c", "d"]


def test_cooldown_per_key(tmp_path: Path) -> None:
    book = build(
        tmp_path,
        {
            "id": "probe",
            "trigger": "payment.failed",
            "key": "data.invoice_id",
            "cooldown": {"period": "24h", "per": "key"},
        },
    )
    run = run_events(
        book,
        [
            failed(T0, invoice="in_1", event_id="a"),
            failed(later(T0, hours=1), invoice="in_2", event_id="b"),  # other key: fires
            failed(later(T0, hours=2), invoice="in_1", event_id="c"),  # same key: quiet
            failed(later(T0, hours=3), invoice="in_2", event_id="d"),  # same key: quiet
        ],
    )
    assert [(s["event_id"], s["key"]) for s in run.signals] == [("a", "in_1"), ("b", "in_2")]


def test_cooldown_only_starts_when_the_rule_fires(tmp_path: Path) -> None:
    book = build(
        tmp_path,
        {
            "id": "probe",
            "trigger": "payment.failed",
            "when": "data.amount > 100",
            "cooldown": "24h",
        },
    )
    run = run_events(
        book,
        [failed(T0, amount=1, event_id="a"), failed(later(T0, hours=1), amount=500, event_id="b")],
    )
    assert [s["event_id"] for s in run.signals] == ["b"]


# --- holdout, shadow, enabled, duplicates -----------------------------------------------------


def _bucket(rule_id: str, customer_id: str) -> int:
    return int(hashlib.sha256(f"{rule_id}:{customer_id}".encode()).hexdigest()[:8], 16) % 100


def test_holdout_is_the_documented_stable_hash(tmp_path: Path) -> None:
    book = build(tmp_path, {"id": "held-rule", "trigger": "payment.failed", "holdout": "30%"})
    customers = [f"cus_{i:04d}" for i in range(1000)]
    run = run_events(book, [failed(T0, c, event_id=f"evt_{c}") for c in customers])
    flags = {s["customer_id"]: s["holdout"] for s in run.signals}
    assert len(flags) == 1000
    expected = {c: _bucket("held-rule", c) < 30 for c in customers}
    assert flags == expected
    assert 200 < sum(expected.values()) < 400  # the hash spreads: roughly 30% held out
    held = {c for c, h in expected.items() if h}
    for action in run.actions:
        assert action["customer_id"] in held and action["status"] == "skipped_holdout"
    assert {a["customer_id"] for a in run.actions} == held
    assert {m["customer_id"] for m in run.messages} == set(customers) - held


@pytest.mark.parametrize("percent", ["0%", "100%"])
def test_holdout_extremes(tmp_path: Path, percent: str) -> None:
    book = build(tmp_path, {"id": "held-rule", "trigger": "payment.failed", "holdout": percent})
    run = run_events(book, [failed(T0, f"cus_{i}") for i in range(50)])
    assert {s["holdout"] for s in run.signals} == {percent == "100%"}


@pytest.mark.parametrize("shadow", [True, False])
def test_shadow_signals_with_a_preview_and_decides_nothing(tmp_path: Path, shadow: bool) -> None:
    book = build(tmp_path, {"id": "probe", "trigger": "payment.failed", "shadow": shadow})
    run = run_events(book, [profile(T0, timezone="UTC"), failed(later(T0, hours=1))])
    [signal] = run.signals
    assert signal["shadow"] is shadow
    if shadow:
        assert signal["preview"] == {
            "actions": [],
            "messages": [{"template": "note", "purpose": "transactional"}],
        }
        assert run.actions == [] and run.messages == [] and run.log.summary.shadow["probe"] == 1
    else:
        assert signal["preview"] is None
        assert [(m["template"], m["status"]) for m in run.messages] == [("note", "sent")]


@pytest.mark.parametrize("enabled", [True, False])
def test_a_disabled_rule_never_fires(tmp_path: Path, enabled: bool) -> None:
    book = build(tmp_path, {"id": "probe", "trigger": "payment.failed", "enabled": enabled})
    run = run_events(book, [profile(T0, timezone="UTC"), failed(later(T0, hours=1))])
    assert len(run.signals) == (1 if enabled else 0)
    assert len(run.messages) == (1 if enabled else 0)


def test_duplicate_event_ids_are_ignored(tmp_path: Path) -> None:
    book = probe(tmp_path, "payment.failed", n='count("payment.failed", 30d)')
    first = failed(T0, event_id="evt_dup")
    again = dict(first, occurred_at=later(T0, hours=1))  # redelivered, even with a later time
    run = run_events(book, [first, again, failed(later(T0, hours=2), event_id="evt_next")])
    assert [(s["event_id"], s["evidence"]["n"]) for s in run.signals] == [
        ("evt_dup", 1),
        ("evt_next", 2),
    ]
    assert run.log.summary.duplicates == 1


def test_a_duplicate_does_not_join_the_baseline(tmp_path: Path) -> None:
    book = probe(tmp_path, "usage.reported", base="previous(data.value, 5)")
    first = usage(T0, 10)
    run = run_events(book, [first, dict(first), usage(later(T0, days=1), 20)])
    assert [v["base"]["count"] for v in values(run)] == [0, 1]
