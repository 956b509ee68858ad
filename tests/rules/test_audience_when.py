"""``audience.when`` is honoured whether or not the rule reads ``customer``."""

from __future__ import annotations

from pathlib import Path

import pytest
from support import make_event, profile, run_events

from outreach.rulebook import load_rulebook


def _declining(metric: str) -> list[dict[str, object]]:
    events: list[dict[str, object]] = [profile("2026-03-01T12:00:00Z", mail=(True, True))]
    for day, value in zip(range(2, 7), (100, 100, 100, 100, 10), strict=True):
        at = f"2026-03-0{day}T15:00:00Z"
        events.append(
            make_event("usage.reported", at, metric=metric, value=value,
                       period_start="2026-03-01T00:00:00Z", period_end="2026-03-02T00:00:00Z")
        )  # fmt: skip
    return events


@pytest.mark.parametrize(
    ("audience", "metric", "fires"),
    [
        ('data.metric == "seats"', "seats", True),  # reads only the event
        ('data.metric == "seats"', "api_calls", False),
        ('customer.tier == "premium"', "seats", False),  # reads the customer (standard tier)
        ('customer.tier == "standard"', "seats", True),
    ],
)
def test_audience_when_filters_with_or_without_the_customer(
    rules_copy: Path, audience: str, metric: str, fires: bool
) -> None:
    rule = rules_copy / "usage-decline.yaml"
    text = rule.read_text()
    rule.write_text(text.replace("holdout: 10%", f"holdout: 10%\naudience:\n  when: '{audience}'"))
    result = run_events(load_rulebook(rules_copy), _declining(metric))
    assert [s["rule_id"] for s in result.signals] == (["usage-decline"] if fires else [])
