"""The dispatcher over HTTP connectors (a real store, the local double of the operator's system,
the file connector for every other tool): a timeout after the system acted, the circuit
breaker holding one tool while the others go, an answer saying "not done", and the new states
an answer reports becoming input events."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import orjson
import pytest
from connectors.cases import MakeConnector, credit, http_tool, rebook
from connectors.doubles import (
    FakeClock,
    OperatorSystem,
    answer,
    ok,
    perform_then_hang,
    rejected,
)

from outreach.agents.connectors import Effect, EffectResult, FileConnector
from outreach.connectors import ToolRouter
from outreach.connectors.http import HttpConnector
from outreach.events import ActionStatusChanged, ShipmentUpdated, parse_event
from outreach.outbound.channels import FileChannel
from outreach.store import PendingRecord, Store
from outreach.streams.dispatcher import Dispatcher, DispatcherOptions

# The policy does not depend on the database (tests/store covers both): SQLite only.
pytestmark = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)

NOW = 1_000_000.0  # the dispatcher's driven clock
LEASE = 60.0
SEED = 7
BACKOFF = 1.0  # backoff_base = backoff_max: the first retry is due within a second


def dispatcher(store: Store, tmp_path: Path, **routes: HttpConnector) -> Dispatcher:
    """A dispatcher whose listed tools go to their HTTP connector, the rest to the file."""
    router = ToolRouter(dict(routes), FileConnector(tmp_path / "effects.jsonl"))
    options = DispatcherOptions(lease=LEASE, backoff_base=BACKOFF, backoff_max=BACKOFF)
    channel = FileChannel(tmp_path / "messages.jsonl")
    return Dispatcher(store, router, channel, options, random.Random(SEED))


def rebooking(system: OperatorSystem, idempotent: bool = True, **fields: Any) -> Any:
    """The OMS rebooking tool, read timeout 0.5s (the double holds a hanging answer longer)."""
    return http_tool(
        system.url("/v1/shipments/{{ params.shipment_id }}/rebook"), idempotent=idempotent,
        timeout={"connect": "2s", "read": "0.5s"}, **fields,
    )  # fmt: skip


def queue_effect(store: Store, effect: Effect, due: float) -> None:
    row = (effect.idempotency_key, "effect", effect.customer_id, effect.action_id,
           effect.model_dump_json().encode(), due)  # fmt: skip
    store.run(lambda b: b.add_outbox([row]))


def rows(store: Store) -> dict[str, dict[str, Any]]:
    """Every outbox row by idempotency key."""
    return {row["idempotency_key"]: row for row in store.outbox_rows()}


def only_row(store: Store) -> dict[str, Any]:
    [row] = store.outbox_rows()
    return row


def taken_records(store: Store) -> list[PendingRecord]:
    """The records queued for the relay (takes them)."""
    records: list[PendingRecord] = []
    store.take_records(100, records.extend)
    return records


def reported_failure(store: Store, effect: Effect) -> ActionStatusChanged:
    """The one record queued: the ``action.status`` telling the core the effect failed."""
    [record] = taken_records(store)
    assert (record.topic, record.key) == ("customers", effect.customer_id.encode())
    event = parse_event(record.value)
    assert isinstance(event, ActionStatusChanged)
    assert event.event_id == f"dispatch:{effect.idempotency_key}"
    d = event.data
    assert (d.action_id, d.tool, d.status) == (effect.action_id, effect.tool, "failed")
    assert d.idempotency_key == effect.idempotency_key
    return event


def file_effects(tmp_path: Path) -> list[str]:
    """The keys the file connector performed."""
    path = tmp_path / "effects.jsonl"
    return (
        [orjson.loads(line)["key"] for line in path.read_bytes().splitlines()]
        if path.exists()
        else []
    )


# -- the fault: the system acted, the answer never came ----------------------------------------


async def test_a_timeout_after_the_system_acted_is_retried_with_the_same_key_and_acted_on_once(
    store: Store, system: OperatorSystem, connect: MakeConnector, tmp_path: Path
) -> None:
    effect = rebook()
    key = effect.idempotency_key
    dispatch = dispatcher(store, tmp_path, rebook_shipment=connect(rebooking(system)))
    queue_effect(store, effect, NOW)
    system.script(perform_then_hang())
    assert await dispatch.run_once(NOW) == 1
    row = only_row(store)
    assert (row["status"], row["attempts"]) == ("pending", 1)
    assert row["last_error"].startswith("rebook_shipment: no answer from ")
    expected = random.Random(SEED).uniform(0, BACKOFF)  # the first draw of the same seed
    assert row["next_at"] == pytest.approx(NOW + expected)
    assert system.performed_keys == [key]  # it did act
    assert await dispatch.run_once(row["next_at"] - 0.001) == 0  # not before the backoff
    assert await dispatch.run_once(row["next_at"]) == 1
    row = only_row(store)
    assert (row["status"], row["attempts"], row["last_error"]) == ("done", 2, None)
    result = EffectResult.model_validate_json(row["result"])
    assert (result.status, result.replayed, result.external_id) == ("done", True, None)
    stats = dispatch.stats
    assert (stats.done, stats.retried, stats.replayed, stats.failed) == (1, 1, 1, 0)
    assert [seen.key for seen in system.requests] == [key, key]
    assert [seen.path for seen in system.requests] == ["/v1/shipments/shp_1/rebook"] * 2
    assert system.requests[0].raw == system.requests[1].raw  # the same request, resent
    assert system.performed_keys == [key]  # exactly once
    assert file_effects(tmp_path) == []


async def test_a_timeout_of_a_tool_not_declared_idempotent_fails_the_row_for_a_person(
    store: Store, system: OperatorSystem, connect: MakeConnector, tmp_path: Path
) -> None:
    effect = rebook()
    connector = connect(rebooking(system, idempotent=False))
    dispatch = dispatcher(store, tmp_path, rebook_shipment=connector)
    queue_effect(store, effect, NOW)
    system.script(perform_then_hang())
    assert await dispatch.run_once(NOW) == 1
    row = only_row(store)
    assert (row["status"], row["attempts"], row["result"]) == ("failed", 1, None)
    assert row["last_error"].startswith("permanent: rebook_shipment: no answer from ")
    assert "the outcome is unknown" in row["last_error"]
    assert (dispatch.stats.failed, dispatch.stats.retried) == (1, 0)
    assert await dispatch.run_once(NOW + 10 * 86400) == 0  # never tried again
    assert [seen.key for seen in system.requests] == [effect.idempotency_key]
    assert system.performed_keys == [effect.idempotency_key]
    assert "the outcome is unknown" in reported_failure(store, effect).data.detail


# -- the circuit breaker -----------------------------------------------------------------------


async def test_an_open_circuit_holds_its_tools_rows_untried_while_other_tools_go(
    store: Store, system: OperatorSystem, connect: MakeConnector, tmp_path: Path
) -> None:
    clock = FakeClock()
    breaker = {"failures": 2, "cooldown": "60s"}
    oms = connect(rebooking(system, breaker=breaker), clock=clock)
    billing = connect(http_tool(system.url("/credits"), idempotent=True), tool="grant_credit")
    dispatch = dispatcher(store, tmp_path, rebook_shipment=oms, grant_credit=billing)
    a1, a2, a3, b1 = rebook("a1"), rebook("a2"), rebook("a3"), credit("b1")
    queue_effect(store, a1, NOW)
    queue_effect(store, a2, NOW)
    system.script(answer(500), answer(503))
    assert await dispatch.run_once(NOW) == 2  # two failures in a row: the circuit opens
    assert oms.breaker.state == "open"
    queue_effect(store, a3, NOW + 5)
    queue_effect(store, b1, NOW + 5)
    assert await dispatch.run_once(NOW + 5) == 4
    held = rows(store)
    assert {k: (r["status"], r["attempts"]) for k, r in held.items()} == {
        "a1": ("pending", 1), "a2": ("pending", 1), "a3": ("pending", 0), "b1": ("done", 1),
    }  # fmt: skip
    for key in ("a1", "a2", "a3"):
        assert held[key]["last_error"].startswith("held: rebook_shipment: circuit open")
        assert held[key]["next_at"] == NOW + 5 + 60  # when the cooldown ends
    assert dispatch.stats.paused == 3
    assert [seen.key for seen in system.requests] == ["a1", "a2", "b1"]
    assert await dispatch.run_once(NOW + 64) == 0
    clock.advance(60)  # the breaker's own clock: the cooldown is over
    assert await dispatch.run_once(NOW + 65) == 3
    after = rows(store)
    assert {k: (r["status"], r["attempts"]) for k, r in after.items()} == {
        "a1": ("done", 2), "a2": ("done", 2), "a3": ("done", 1), "b1": ("done", 1),
    }  # fmt: skip
    assert oms.breaker.state == "closed"
    assert system.performed_keys == ["b1", "a1", "a2", "a3"]  # each once, nothing lost
    assert dispatch.stats.failed == 0


# -- the answer --------------------------------------------------------------------------------


async def test_an_answer_saying_not_done_fails_the_row_with_the_systems_reason(
    store: Store, system: OperatorSystem, connect: MakeConnector, tmp_path: Path
) -> None:
    refusing = {"failed_when": {"status": ["rejected"]}, "reason": "error.message"}
    connector = connect(rebooking(system, response=refusing))
    dispatch = dispatcher(store, tmp_path, rebook_shipment=connector)
    effect = rebook()
    queue_effect(store, effect, NOW)
    system.script(rejected("parcel already delivered"))
    assert await dispatch.run_once(NOW) == 1
    row = only_row(store)
    assert (row["status"], row["attempts"]) == ("failed", 1)
    assert row["last_error"] == "the system refused: status = 'rejected': parcel already delivered"
    result = EffectResult.model_validate_json(row["result"])
    assert result.status == "failed"
    assert (dispatch.stats.failed, dispatch.stats.done, dispatch.stats.retried) == (1, 0, 0)
    assert await dispatch.run_once(NOW + 10 * 86400) == 0
    assert len(system.requests) == 1
    reported = reported_failure(store, effect)
    assert reported.data.detail == row["last_error"]


def estimate(**data: Any) -> dict[str, Any]:
    """A ``response`` mapping: the new estimate in the answer becomes a ``shipment.updated``."""
    return {
        "external_id": "rebooking.id",
        "events": [{"when": "new_estimate", "type": "shipment.updated", "data": data}],
    }


REPORTED = {
    "shipment_id": "{{ params.shipment_id }}",
    "order_id": "{{ params.order_id }}",
    "carrier": "{{ answer.carrier }}",
    "status": "in_transit",
    "promised_delivery": "{{ answer.promised }}",
    "estimated_delivery": "{{ answer.new_estimate }}",
}
ANSWER = {
    "rebooking": {"id": "rb_1"},
    "carrier": "dhl",
    "promised": "2026-03-10T15:00:00Z",
    "new_estimate": "2026-03-12T18:00:00Z",
}


async def test_a_new_state_in_the_answer_is_queued_as_an_input_event_with_the_done_row(
    store: Store, system: OperatorSystem, connect: MakeConnector, tmp_path: Path
) -> None:
    effect = rebook()
    connector = connect(rebooking(system, response=estimate(**REPORTED)))
    dispatch = dispatcher(store, tmp_path, rebook_shipment=connector)
    queue_effect(store, effect, NOW)
    system.script(ok(ANSWER))
    assert await dispatch.run_once(NOW) == 1
    row = only_row(store)
    assert row["status"] == "done"
    assert EffectResult.model_validate_json(row["result"]).external_id == "rb_1"
    [record] = taken_records(store)
    assert (record.topic, record.key) == ("shipments", b"cus_1")
    event = parse_event(record.value)
    assert isinstance(event, ShipmentUpdated)
    assert event.event_id == f"connector:{effect.idempotency_key}:0"
    assert (event.source, event.customer_id) == ("connector:rebook_shipment", "cus_1")
    assert event.occurred_at.timestamp() == NOW
    assert (event.data.shipment_id, event.data.carrier, event.data.status) == (
        "shp_1", "dhl", "in_transit",
    )  # fmt: skip
    assert event.data.estimated_delivery is not None
    assert event.data.estimated_delivery.isoformat() == "2026-03-12T18:00:00+00:00"
    assert dispatch.stats.reported == 1


async def test_a_reported_state_that_is_not_a_valid_event_goes_to_the_dead_letter_topic(
    store: Store, system: OperatorSystem, connect: MakeConnector, tmp_path: Path
) -> None:
    effect = rebook()
    wrong = {**REPORTED, "status": "{{ answer.state }}"}  # the OMS's own word, not ours
    connector = connect(rebooking(system, response=estimate(**wrong)))
    dispatch = dispatcher(store, tmp_path, rebook_shipment=connector)
    queue_effect(store, effect, NOW)
    system.script(ok({**ANSWER, "state": "teleported"}))
    assert await dispatch.run_once(NOW) == 1
    assert only_row(store)["status"] == "done"  # the rebooking itself happened
    [record] = taken_records(store)
    assert (record.topic, record.key) == ("dlq", b"cus_1")
    dead = orjson.loads(record.value)
    assert dead["error"].startswith("connector event: ")
    assert "status" in dead["error"]
    assert dead["topic"] == "connector:rebook_shipment"
    raw = orjson.loads(dead["raw"])
    assert raw["event_id"] == f"connector:{effect.idempotency_key}:0"
    assert raw["data"]["status"] == "teleported"


async def test_an_answer_lacking_what_the_mapping_reads_dead_letters_the_event_with_why(
    store: Store, system: OperatorSystem, connect: MakeConnector, tmp_path: Path
) -> None:
    effect = rebook()
    connector = connect(rebooking(system, response=estimate(**REPORTED)))
    dispatch = dispatcher(store, tmp_path, rebook_shipment=connector)
    queue_effect(store, effect, NOW)
    answer = {k: v for k, v in ANSWER.items() if k != "carrier"}
    system.script(ok(answer))
    assert await dispatch.run_once(NOW) == 1
    assert only_row(store)["status"] == "done"
    [record] = taken_records(store)
    assert record.topic == "dlq"
    raw = orjson.loads(orjson.loads(record.value)["raw"])
    assert "does not fit response.events" in raw["mapping_error"]


async def test_an_answer_without_the_new_state_queues_no_event(
    store: Store, system: OperatorSystem, connect: MakeConnector, tmp_path: Path
) -> None:
    connector = connect(rebooking(system, response=estimate(**REPORTED)))
    dispatch = dispatcher(store, tmp_path, rebook_shipment=connector)
    queue_effect(store, rebook(), NOW)
    system.script(ok({"rebooking": {"id": "rb_1"}}))
    assert await dispatch.run_once(NOW) == 1
    assert only_row(store)["status"] == "done"
    assert taken_records(store) == []
    assert dispatch.stats.reported == 0
