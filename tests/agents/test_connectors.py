"""The connector port: the fake's contract, and replay handing executed actions to it."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from support import make_event, profile, ts

from outreach.agents.connectors import Effect, FakeConnector
from outreach.errors import TransientConnectorError
from outreach.replay import replay
from outreach.rulebook import RuleBook
from outreach.ruletests import final_states


def effect(key: str, customer: str = "cus_1") -> Effect:
    return Effect(
        idempotency_key=key, action_id=f"act_{key}", customer_id=customer,
        tool="grant_credit", params={"amount": 500, "currency": "USD", "reason": "late"},
    )  # fmt: skip


async def test_the_fake_performs_each_key_once_and_records_every_call() -> None:
    fake = FakeConnector()
    first = await fake.perform(effect("k1"))
    again = await fake.perform(effect("k1"))
    other = await fake.perform(effect("k2"))
    assert (first.status, first.replayed) == ("done", False)
    assert again.replayed and again.external_id == first.external_id
    assert not other.replayed and other.external_id != first.external_id
    assert len(fake.calls) == 3 and set(fake.performed) == {"k1", "k2"}
    assert [e.idempotency_key for e in fake.effects_for("cus_1")] == ["k1", "k2"]


async def test_the_fake_raises_the_errors_it_is_told_to_before_performing() -> None:
    fake = FakeConnector()
    fake.fail_next(TransientConnectorError("timeout", retry_after=2.0))
    with pytest.raises(TransientConnectorError) as info:
        await fake.perform(effect("k1"))
    assert info.value.retry_after == 2.0
    assert fake.performed == {}
    assert (await fake.perform(effect("k1"))).status == "done"


def _write(path: Path, events: list[dict[str, object]]) -> Path:
    events = sorted(events, key=lambda e: ts(str(e["occurred_at"])))
    path.write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in events))
    return path


def _traffic() -> list[dict[str, object]]:
    late = {
        "shipment_id": "shp_1", "order_id": "ORD-1", "carrier": "ups", "status": "in_transit",
        "promised_delivery": "2026-03-03T17:00:00Z", "estimated_delivery": "2026-03-07T17:00:00Z",
        "order_value": {"amount": 20000, "currency": "USD"},
    }  # fmt: skip
    failed = {
        "payment_id": "p1", "invoice_id": "in_1", "amount": 2900, "currency": "USD",
        "decline_code": "insufficient_funds", "attempt": 1,
    }  # fmt: skip
    return [
        profile("2026-03-01T12:00:00Z"),
        make_event("shipment.updated", "2026-03-02T15:00:00Z", event_id="e1", **late),
        make_event("payment.failed", "2026-03-02T16:00:00Z", event_id="e2", **failed),
    ]


def test_replay_hands_every_executed_action_to_the_connector_once(
    book: RuleBook, tmp_path: Path
) -> None:
    fake = FakeConnector()
    replay(_write(tmp_path / "in.jsonl", _traffic()), book, tmp_path / "out", connector=fake)
    lines = (tmp_path / "out" / "actions.jsonl").read_bytes().splitlines()
    executed = [a for a in final_states([orjson.loads(x) for x in lines], "action_id")
                if a["status"] == "executed"]  # fmt: skip
    # rebook + credit now, three retries later on the event-time clock
    assert len(executed) == 5
    assert sorted(fake.performed) == sorted(a["idempotency_key"] for a in executed)
    assert len(fake.calls) == len(executed)


def test_duplicates_and_a_second_delivery_of_the_file_add_no_effect(
    book: RuleBook, tmp_path: Path
) -> None:
    fake = FakeConnector()
    traffic = _traffic()
    replay(_write(tmp_path / "in.jsonl", traffic), book, tmp_path / "a", connector=fake)
    performed = dict(fake.performed)
    doubled = _write(tmp_path / "doubled.jsonl", traffic + traffic[1:])
    replay(doubled, book, tmp_path / "b", connector=fake)  # redelivered after a "restart"
    assert fake.performed == performed  # the same keys, nothing new performed
    assert all(call.idempotency_key in performed for call in fake.calls)


def test_without_a_connector_replay_performs_nothing(book: RuleBook, tmp_path: Path) -> None:
    result = replay(_write(tmp_path / "in.jsonl", _traffic()), book, tmp_path / "out")
    assert result.summary["effects"] == 5  # counted, never performed
