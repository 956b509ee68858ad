"""The effects dispatcher against a real store (SQLite and PostgreSQL) and the file-backed
connector and channel: done, transient (backoff), permanent, giving up, and the crash between
performing a row and marking it."""

from __future__ import annotations

import asyncio
import random
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from outreach.agents.connectors import Effect, EffectResult, FakeConnector, FileConnector
from outreach.decisions import Delivery
from outreach.errors import (
    ConnectorPaused,
    DeliveryHeld,
    PermanentConnectorError,
    PermanentDeliveryError,
    TransientConnectorError,
    TransientDeliveryError,
)
from outreach.events import ActionStatusChanged, MessageStatus, parse_event
from outreach.outbound.channels import FileChannel, SendResult
from outreach.store import Store
from outreach.store.contacts import Contacts
from outreach.streams.dispatcher import Dispatcher, DispatcherOptions

LEASE = 60.0
# The error policy does not depend on the database (test_store covers finish and retry_later
# on both): these tests run on SQLite only, to keep the file fast.
SQLITE_ONLY = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


def effect(key: str = "eff:sig_1:grant_credit:cus_1") -> Effect:
    return Effect(
        idempotency_key=key, action_id="act_1", customer_id="cus_1", tool="grant_credit",
        params={"amount": 500, "currency": "USD", "reason": "late delivery"},
    )  # fmt: skip


def delivery(message_id: str = "msg_1") -> Delivery:
    return Delivery(
        message_id=message_id, customer_id="cus_1", channel="sms", to="+14155550100",
        purpose="transactional", subject=None, body="Acme: your refund is on its way.",
    )  # fmt: skip


def queue_effect(store: Store, item: Effect, due: float) -> None:
    row = (item.idempotency_key, "effect", item.customer_id, item.action_id,
           item.model_dump_json().encode(), due)  # fmt: skip
    store.run(lambda b: b.add_outbox([row]))


def queue_delivery(store: Store, item: Delivery, due: float) -> str:
    key = f"msg:{item.message_id}"
    row = (key, "delivery", item.customer_id, item.message_id, item.model_dump_json().encode(), due)
    store.run(lambda b: b.add_outbox([row]))
    return key


def lines(path: Path) -> list[dict[str, Any]]:
    """Every line of a JSONL file, parsed (fails on a line that is not JSON)."""
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


def only_row(store: Store) -> dict[str, Any]:
    [row] = store.outbox_rows()
    return row


class Setup:
    """A dispatcher over file-backed ports in ``tmp_path``."""

    def __init__(self, store: Store, tmp_path: Path, seed: int = 7, **options: Any) -> None:
        self.effects = tmp_path / "effects.jsonl"
        self.messages = tmp_path / "messages.jsonl"
        self.connector = FileConnector(self.effects)
        self.channel = FileChannel(self.messages)
        self.options = DispatcherOptions(lease=LEASE, **options)
        self.dispatcher = Dispatcher(
            store, self.connector, self.channel, self.options, random.Random(seed)
        )


@pytest.fixture
def setup(store: Store, tmp_path: Path) -> Setup:
    return Setup(store, tmp_path, backoff_base=2.0, backoff_max=30.0)


# -- done ------------------------------------------------------------------------------------


async def test_due_effects_and_deliveries_are_performed_and_marked_done(
    store: Store, setup: Setup
) -> None:
    now = time.time()
    queue_effect(store, effect(), now)
    key = queue_delivery(store, delivery(), now)
    queue_delivery(store, delivery("msg_later"), now + 3600)
    assert await setup.dispatcher.run_once(now) == 2
    rows = {r["idempotency_key"]: r for r in store.outbox_rows()}
    done = rows[effect().idempotency_key]
    sent = rows[key]
    assert (done["status"], done["attempts"], done["lease_until"], done["last_error"]) == (
        "done", 1, None, None,
    )  # fmt: skip
    assert (sent["status"], sent["attempts"]) == ("done", 1)
    assert rows["msg:msg_later"]["status"] == "pending"
    assert EffectResult.model_validate_json(done["result"]) == EffectResult(
        status="done", external_id=f"file:{effect().idempotency_key}"
    )
    assert SendResult.model_validate_json(sent["result"]) == SendResult(
        status="sent", provider_id=f"file:{key}"
    )
    [performed] = lines(setup.effects)
    assert (performed["key"], performed["tool"], performed["params"]["amount"]) == (
        effect().idempotency_key, "grant_credit", 500,
    )  # fmt: skip
    [message] = lines(setup.messages)
    assert (message["key"], message["to"], message["body"]) == (
        key, "+14155550100", delivery().body,
    )  # fmt: skip
    stats = setup.dispatcher.stats
    assert (stats.done, stats.replayed, stats.retried, stats.failed) == (2, 0, 0, 0)
    assert stats.by_kind == {"effect": 1, "delivery": 1}
    assert await setup.dispatcher.run_once(now + 1) == 0
    assert len(lines(setup.effects)) == 1 and len(lines(setup.messages)) == 1


async def test_the_in_memory_fake_connector_is_driven_the_same_way(
    store: Store, tmp_path: Path
) -> None:
    now = time.time()
    fake = FakeConnector()
    dispatcher = Dispatcher(store, fake, FileChannel(tmp_path / "m.jsonl"), rng=random.Random(1))
    queue_effect(store, effect("k1"), now)
    queue_effect(store, effect("k2"), now)
    assert await dispatcher.run_once(now) == 2
    assert [e.idempotency_key for e in fake.effects_for("cus_1")] == ["k1", "k2"]
    assert {r["status"] for r in store.outbox_rows()} == {"done"}


# -- transient errors and backoff ------------------------------------------------------------

TRANSIENT = [
    pytest.param("effect", TransientConnectorError("503 from the billing API"), id="effect"),
    pytest.param(
        "effect", TransientConnectorError("429", retry_after=120.0), id="effect-retry-after"
    ),
    pytest.param("delivery", TransientDeliveryError("timeout"), id="delivery"),
    pytest.param(
        "delivery", TransientDeliveryError("429", retry_after=45.5), id="delivery-retry-after"
    ),
]


@SQLITE_ONLY
@pytest.mark.parametrize(("kind", "error"), TRANSIENT)
async def test_a_transient_error_puts_the_row_back_after_the_backoff_then_it_is_performed(
    store: Store, setup: Setup, kind: str, error: Exception
) -> None:
    if kind == "effect":
        queue_effect(store, effect(), 0.0)
        setup.connector.fail_next(error)
        written = setup.effects
    else:
        queue_delivery(store, delivery(), 0.0)
        setup.channel.fail_next(error)
        written = setup.messages
    retry_after = getattr(error, "retry_after", None)
    # the same seed, first draw: attempt 1 has the cap backoff_base * 2**0
    expected = max(random.Random(7).uniform(0, 2.0), retry_after or 0.0)
    before = time.time()
    assert await setup.dispatcher.run_once(before) == 1
    after = time.time()
    row = only_row(store)
    assert (row["status"], row["attempts"], row["last_error"]) == ("pending", 1, str(error))
    assert row["lease_until"] is None
    assert before + expected <= row["next_at"] <= after + expected
    assert row["next_at"] > after  # in the future
    if retry_after is not None:
        assert row["next_at"] >= before + retry_after
    assert written.read_bytes() == b""
    assert setup.dispatcher.stats.retried == 1
    assert await setup.dispatcher.run_once(row["next_at"] - 0.001) == 0  # not yet due
    assert await setup.dispatcher.run_once(row["next_at"]) == 1
    row = only_row(store)
    assert (row["status"], row["attempts"], row["last_error"]) == ("done", 2, None)
    assert len(lines(written)) == 1


@SQLITE_ONLY
async def test_a_retry_is_scheduled_from_the_now_given_to_run_once(
    store: Store, setup: Setup
) -> None:
    now = 1_000_000.0  # a driven clock, far from the wall clock
    queue_effect(store, effect(), now)
    setup.connector.fail_next(TransientConnectorError("503"))
    assert await setup.dispatcher.run_once(now) == 1
    assert now <= only_row(store)["next_at"] <= now + 2.0
    assert await setup.dispatcher.run_once(now + 2.0) == 1


@SQLITE_ONLY
async def test_an_unexpected_exception_is_treated_as_transient(store: Store, setup: Setup) -> None:
    queue_effect(store, effect(), 0.0)
    setup.connector.fail_next(RuntimeError("connection reset by peer"))
    before = time.time()
    assert await setup.dispatcher.run_once(before) == 1
    row = only_row(store)
    assert (row["status"], row["attempts"]) == ("pending", 1)
    assert row["last_error"] == "RuntimeError: connection reset by peer"
    assert before <= row["next_at"] <= time.time() + 2.0
    assert await setup.dispatcher.run_once(before + 3.0) == 1
    assert only_row(store)["status"] == "done"
    assert len(lines(setup.effects)) == 1


@SQLITE_ONLY
@pytest.mark.parametrize(
    ("kind", "error"),
    [
        pytest.param("effect", PermanentConnectorError("card account closed"), id="effect"),
        pytest.param("delivery", PermanentDeliveryError("number unreachable"), id="delivery"),
    ],
)
async def test_a_permanent_error_fails_the_row_and_it_is_never_retried(
    store: Store, setup: Setup, kind: str, error: Exception
) -> None:
    if kind == "effect":
        queue_effect(store, effect(), 0.0)
        setup.connector.fail_next(error)
    else:
        queue_delivery(store, delivery(), 0.0)
        setup.channel.fail_next(error)
    now = time.time()
    assert await setup.dispatcher.run_once(now) == 1
    row = only_row(store)
    assert (row["status"], row["attempts"], row["result"]) == ("failed", 1, None)
    assert row["last_error"] == f"permanent: {error}"
    assert (setup.dispatcher.stats.failed, setup.dispatcher.stats.retried) == (1, 0)
    assert await setup.dispatcher.run_once(now + 10 * 86400) == 0
    assert setup.effects.read_bytes() == b"" and setup.messages.read_bytes() == b""


@SQLITE_ONLY
async def test_a_row_that_keeps_failing_transiently_is_failed_after_max_attempts(
    store: Store, tmp_path: Path
) -> None:
    setup = Setup(store, tmp_path, max_attempts=3, retry_for=0.0, backoff_base=1.0, backoff_max=1.0)
    queue_effect(store, effect(), 0.0)
    setup.connector.fail_next(*(TransientConnectorError(f"503 #{i}") for i in (1, 2, 3)))
    now = time.time()
    for attempt in (1, 2, 3):
        assert await setup.dispatcher.run_once(now + 10 * attempt) == 1, attempt
        assert only_row(store)["attempts"] == attempt
    row = only_row(store)
    assert row["status"] == "failed"
    assert row["last_error"] == "gave up after 3 attempts: 503 #3"
    assert (setup.dispatcher.stats.retried, setup.dispatcher.stats.failed) == (2, 1)
    assert await setup.dispatcher.run_once(now + 10 * 86400) == 0
    assert setup.effects.read_bytes() == b""


@SQLITE_ONLY
async def test_a_provider_down_for_minutes_delays_a_row_but_does_not_lose_it(
    store: Store, tmp_path: Path
) -> None:
    # the reliability suite's finding: 8 attempts of 1 s-based backoff are spent within about
    # a minute; a row keeps its retries for retry_for seconds since its first call
    setup = Setup(
        store, tmp_path, max_attempts=3, retry_for=600.0, backoff_base=1.0, backoff_max=1.0
    )
    decided = time.time()
    queue_delivery(store, delivery(), decided)
    setup.channel.fail_next(*(TransientDeliveryError(f"503 #{i}") for i in range(1, 7)))
    for attempt, at in enumerate((10, 20, 30, 300, 590, 599), start=1):  # 6 > max_attempts
        assert await setup.dispatcher.run_once(decided + at) == 1, attempt
        assert only_row(store)["status"] == "pending", attempt
    assert await setup.dispatcher.run_once(decided + 700) == 1  # the provider is back
    assert only_row(store)["status"] == "done"
    assert taken_records(store) == []  # never reported as failed
    assert len(setup.messages.read_bytes().splitlines()) == 1


@SQLITE_ONLY
async def test_past_both_limits_a_row_gives_up(store: Store, tmp_path: Path) -> None:
    setup = Setup(
        store, tmp_path, max_attempts=2, retry_for=600.0, backoff_base=1.0, backoff_max=1.0
    )
    decided = time.time()
    queue_delivery(store, delivery(), decided)
    setup.channel.fail_next(*(TransientDeliveryError(f"503 #{i}") for i in range(1, 5)))
    assert await setup.dispatcher.run_once(decided + 10) == 1  # the first call
    assert await setup.dispatcher.run_once(decided + 20) == 1  # 2 attempts, 10 s: retried
    assert await setup.dispatcher.run_once(decided + 609) == 1  # 3 attempts, 599 s: retried
    assert only_row(store)["status"] == "pending"
    assert await setup.dispatcher.run_once(decided + 610) == 1  # 4 attempts, 600 s: given up
    assert only_row(store)["status"] == "failed"
    assert only_report(store).data.detail == "gave up after 4 attempts: 503 #4"


async def test_a_row_held_longer_than_retry_for_still_gets_its_window_from_the_first_call(
    store: Store, tmp_path: Path
) -> None:
    """A row can wait for hours before its first call (a kill switch, quiet hours, an
    approval); a provider outage of a minute once it goes must not make it give up at once:
    the window counts from the first call, not from when the row was decided."""
    from outreach.store.operator import Operator

    setup = Setup(
        store, tmp_path, max_attempts=3, retry_for=600.0, backoff_base=1.0, backoff_max=1.0
    )
    operator = Operator(store)
    decided = time.time()
    queue_delivery(store, delivery(), decided)
    operator.set_kill_switch("channel", "sms", True, "provider incident")
    for held in (0, 3600, 7200):  # two hours held, far past retry_for
        assert await setup.dispatcher.run_once(decided + held) == 1
    assert (only_row(store)["attempts"], only_row(store)["first_tried_at"]) == (0, None)
    operator.set_kill_switch("channel", "sms", False, "")
    setup.channel.fail_next(*(TransientDeliveryError(f"503 #{i}") for i in range(1, 6)))
    first = decided + 7300
    for attempt, since in enumerate((0, 10, 20, 599), start=1):  # 3rd, 4th: under 600 s
        assert await setup.dispatcher.run_once(first + since) == 1, attempt
        row = only_row(store)
        assert (row["status"], row["attempts"]) == ("pending", attempt)
        assert row["first_tried_at"] == first  # set by the first call, kept by the others
    assert await setup.dispatcher.run_once(first + 600) == 1  # 5 attempts, 600 s: given up
    assert only_row(store)["status"] == "failed"
    assert only_report(store).data.detail == "gave up after 5 attempts: 503 #5"


@SQLITE_ONLY
async def test_a_row_held_by_an_open_circuit_has_not_been_tried(
    store: Store, tmp_path: Path
) -> None:
    """An open circuit refuses an effect before the provider is called: like a kill switch's,
    the hold does not start the row's window."""
    setup = Setup(
        store, tmp_path, max_attempts=2, retry_for=600.0, backoff_base=1.0, backoff_max=1.0
    )
    decided = time.time()
    queue_effect(store, effect(), decided)
    setup.connector.fail_next(ConnectorPaused("circuit open", retry_after=3600.0))
    assert await setup.dispatcher.run_once(decided) == 1
    assert (only_row(store)["attempts"], only_row(store)["first_tried_at"]) == (0, None)
    setup.connector.fail_next(TransientConnectorError("503 #1"), TransientConnectorError("503 #2"))
    assert await setup.dispatcher.run_once(decided + 3600) == 1
    assert await setup.dispatcher.run_once(decided + 3610) == 1  # 2 attempts, 10 s: retried
    assert (only_row(store)["status"], only_row(store)["first_tried_at"]) == (
        "pending", decided + 3600,
    )  # fmt: skip
    assert await setup.dispatcher.run_once(decided + 3620) == 1  # the provider is back
    assert (only_row(store)["status"], only_row(store)["first_tried_at"]) == (
        "done", decided + 3600,
    )  # fmt: skip


# -- the backoff itself ----------------------------------------------------------------------


def backoff_dispatcher(tmp_path: Path, seed: int, **options: Any) -> Dispatcher:
    # backoff touches neither the store nor the ports; the SQLite file is never opened
    store = Store(f"sqlite:///{tmp_path}/unused.db")
    return Dispatcher(
        store, FakeConnector(), FileChannel(tmp_path / "m.jsonl"),
        DispatcherOptions(**options), random.Random(seed),
    )  # fmt: skip


@pytest.mark.parametrize(("attempts", "cap"), [(1, 1.5), (2, 3.0), (4, 12.0), (9, 100.0)])
def test_backoff_is_full_jitter_over_an_exponential_cap(
    tmp_path: Path, attempts: int, cap: float
) -> None:
    dispatcher = backoff_dispatcher(tmp_path, 3, backoff_base=1.5, backoff_max=100.0)
    delays = [dispatcher.backoff(attempts, None) for _ in range(300)]
    assert all(0.0 <= d <= cap for d in delays)
    assert min(delays) < 0.1 * cap and max(delays) > 0.9 * cap  # spread over the whole range


def test_backoff_is_never_sooner_than_the_provider_asked(tmp_path: Path) -> None:
    dispatcher = backoff_dispatcher(tmp_path, 5, backoff_base=1.0, backoff_max=600.0)
    assert {dispatcher.backoff(1, 30.0) for _ in range(50)} == {30.0}  # cap 1 < 30
    delays = [dispatcher.backoff(6, 10.0) for _ in range(300)]  # cap 32
    assert min(delays) == 10.0  # a floor ...
    assert max(delays) > 30.0  # ... not a replacement for the jitter


def test_the_same_seed_gives_the_same_backoffs(tmp_path: Path) -> None:
    first, second, other = (backoff_dispatcher(tmp_path, seed) for seed in (11, 11, 12))
    sequence = [first.backoff(a, None) for a in range(1, 9)]
    assert sequence == [second.backoff(a, None) for a in range(1, 9)]
    assert sequence != [other.backoff(a, None) for a in range(1, 9)]


# -- the crash between performing and marking ------------------------------------------------


async def test_an_effect_performed_by_a_dispatcher_that_crashed_is_replayed_not_redone(
    store: Store, setup: Setup
) -> None:
    now = time.time()
    queue_effect(store, effect(), now)
    # another process claims the row and performs it, then dies before marking it
    [claimed] = store.claim_due(now, 10, LEASE)
    crashed = FileConnector(setup.effects)
    assert not (await crashed.perform(Effect.model_validate_json(claimed.payload))).replayed
    assert await setup.dispatcher.run_once(now + LEASE / 2) == 0  # its lease still holds
    assert await setup.dispatcher.run_once(now + LEASE) == 1
    row = only_row(store)
    assert (row["status"], row["attempts"]) == ("done", 2)
    assert EffectResult.model_validate_json(row["result"]).replayed
    assert setup.dispatcher.stats.replayed == 1
    assert [line["key"] for line in lines(setup.effects)] == [effect().idempotency_key]


async def test_a_delivery_sent_by_a_dispatcher_that_crashed_is_not_sent_twice(
    store: Store, setup: Setup
) -> None:
    now = time.time()
    key = queue_delivery(store, delivery(), now)
    [claimed] = store.claim_due(now, 10, LEASE)
    crashed = FileChannel(setup.messages)  # the crashed process's own channel on the file
    await crashed.send(Delivery.model_validate_json(claimed.payload), claimed.idempotency_key)
    assert await setup.dispatcher.run_once(now + LEASE) == 1
    row = only_row(store)
    assert (row["status"], row["attempts"]) == ("done", 2)
    assert SendResult.model_validate_json(row["result"]).replayed
    assert setup.dispatcher.stats.replayed == 1
    assert [line["key"] for line in lines(setup.messages)] == [key]


async def test_two_dispatchers_sharing_the_output_files_write_each_key_once(
    store: Store, tmp_path: Path
) -> None:
    now = time.time()
    first, second = Setup(store, tmp_path), Setup(store, tmp_path)
    queue_delivery(store, delivery("msg_1"), now)
    queue_effect(store, effect("eff_1"), now)
    assert await first.dispatcher.run_once(now) == 2
    # the rows come back (as after a lost lease) and the other process performs them again
    store.run(lambda b: b.conn.exec_driver_sql("UPDATE outbox SET status = 'pending'"))
    queue_delivery(store, delivery("msg_2"), now)
    assert await second.dispatcher.run_once(now) == 3
    assert second.dispatcher.stats.replayed == 2
    assert [line["key"] for line in lines(tmp_path / "messages.jsonl")] == [
        "msg:msg_1",
        "msg:msg_2",
    ]
    assert [line["key"] for line in lines(tmp_path / "effects.jsonl")] == ["eff_1"]


# -- suppressed addresses and refused deliveries, reported back to the core -----------------


def taken_records(store: Store) -> list[tuple[str, bytes | None, Any]]:
    """The records queued for the relay, as (topic, key, parsed event); takes them."""
    records: list[Any] = []
    store.take_records(100, records.extend)
    return [(r.topic, r.key, parse_event(r.value)) for r in records]


def only_report(store: Store) -> MessageStatus:
    """The one ``message.status`` event queued for the relay, checked to be about cus_1."""
    [(topic, key, event)] = taken_records(store)
    assert (topic, key) == ("customers", b"cus_1")
    assert isinstance(event, MessageStatus)
    assert (event.customer_id, event.source, event.data.status) == ("cus_1", "dispatcher", "failed")
    return event


def email(message_id: str, purpose: str, list_id: str | None) -> Delivery:
    return Delivery(
        message_id=message_id, customer_id="cus_1", channel="email", to="ann@example.com",
        purpose=purpose, subject="Hello", body="Hello from Acme", list_id=list_id,
    )  # fmt: skip


async def test_a_delivery_to_a_suppressed_number_is_failed_reported_and_never_sent(
    store: Store, setup: Setup
) -> None:
    Contacts(store).suppress("sms", " +14155550100 ", "stop")  # as the webhook wrote it
    now = 1_000_000.0
    key = queue_delivery(store, delivery().model_copy(update={"attempt": 2}), now)
    assert await setup.dispatcher.run_once(now) == 1
    row = only_row(store)
    assert (row["status"], row["last_error"], row["result"]) == ("failed", "suppressed: stop", None)
    assert setup.messages.read_bytes() == b""
    stats = setup.dispatcher.stats
    assert (stats.suppressed, stats.failed, stats.done) == (1, 1, 0)
    event = only_report(store)
    assert event.event_id == f"dispatch:{key}"
    assert event.occurred_at.timestamp() == now
    assert (event.data.message_id, event.data.channel, event.data.attempt) == ("msg_1", "sms", 2)
    assert (event.data.error_code, event.data.provider) == ("suppressed", "dispatcher")
    assert (event.data.detail, event.data.provider_event) == ("address suppressed (stop)", "stop")
    assert await setup.dispatcher.run_once(now + 10 * 86400) == 0  # never tried again
    assert taken_records(store) == []


async def test_a_compliance_reply_goes_to_a_suppressed_number(store: Store, setup: Setup) -> None:
    Contacts(store).suppress("sms", "+14155550100", "stop")
    confirmation = delivery("msg_stop").model_copy(
        update={"compliance": True, "template": "keyword_stop", "body": "Acme: unsubscribed."}
    )
    key = queue_delivery(store, confirmation, 0.0)
    queue_delivery(store, delivery("msg_notice"), 0.0)  # the same number, not a compliance reply
    assert await setup.dispatcher.run_once(time.time()) == 2
    [sent] = lines(setup.messages)
    assert (sent["key"], sent["to"], sent["compliance"]) == (key, "+14155550100", True)
    rows = {r["idempotency_key"]: r["status"] for r in store.outbox_rows()}
    assert rows == {key: "done", "msg:msg_notice": "failed"}
    assert [e.data.message_id for _, _, e in taken_records(store)] == ["msg_notice"]
    assert setup.dispatcher.stats.suppressed == 1


async def test_leaving_an_email_list_refuses_its_marketing_but_not_transactional_mail(
    store: Store, setup: Setup
) -> None:
    Contacts(store).suppress("email", "Ann@Example.com", "unsubscribe", list_id="marketing")
    queue_delivery(store, email("msg_promo", "marketing", "marketing"), 0.0)
    queue_delivery(store, email("msg_news", "marketing", "news"), 0.0)  # another list
    queue_delivery(store, email("msg_receipt", "transactional", None), 0.0)
    # a list counts only for marketing: a transactional mail that names one still goes
    queue_delivery(store, email("msg_notice", "transactional", "marketing"), 0.0)
    assert await setup.dispatcher.run_once(time.time()) == 4
    assert sorted(line["message_id"] for line in lines(setup.messages)) == [
        "msg_news",
        "msg_notice",
        "msg_receipt",
    ]
    rows = {r["ref"]: (r["status"], r["last_error"]) for r in store.outbox_rows()}
    assert rows["msg_promo"] == ("failed", "suppressed: unsubscribe")
    event = only_report(store)
    assert (event.data.message_id, event.data.channel, event.data.error_code) == (
        "msg_promo", "email", "suppressed",
    )  # fmt: skip
    assert setup.dispatcher.stats.suppressed == 1


async def test_a_whole_channel_email_suppression_refuses_every_list_and_transactional_mail(
    store: Store, setup: Setup
) -> None:
    Contacts(store).suppress("email", "ann@example.com", "bounce")
    queue_delivery(store, email("msg_promo", "marketing", "marketing"), 0.0)
    queue_delivery(store, email("msg_receipt", "transactional", None), 0.0)
    assert await setup.dispatcher.run_once(time.time()) == 2
    assert setup.messages.read_bytes() == b""
    assert sorted(e.data.message_id for _, _, e in taken_records(store)) == [
        "msg_promo",
        "msg_receipt",
    ]
    assert setup.dispatcher.stats.suppressed == 2


async def test_a_lifted_suppression_lets_the_delivery_go(store: Store, setup: Setup) -> None:
    contacts = Contacts(store)
    contacts.suppress("sms", "+14155550100", "stop")
    assert contacts.unsuppress("sms", "+14155550100") == 1  # START
    queue_delivery(store, delivery(), 0.0)
    assert await setup.dispatcher.run_once(time.time()) == 1
    assert only_row(store)["status"] == "done"
    assert len(lines(setup.messages)) == 1
    assert taken_records(store) == []


@SQLITE_ONLY
async def test_a_permanent_channel_error_reports_the_providers_code(
    store: Store, setup: Setup
) -> None:
    key = queue_delivery(store, delivery(), 0.0)
    setup.channel.fail_next(PermanentDeliveryError("the number opted out", code="21610"))
    assert await setup.dispatcher.run_once(time.time()) == 1
    assert only_row(store)["status"] == "failed"
    event = only_report(store)
    assert event.event_id == f"dispatch:{key}"
    assert (event.data.message_id, event.data.error_code) == ("msg_1", "21610")
    assert event.data.detail == "the number opted out"
    assert setup.dispatcher.stats.suppressed == 0  # refused by the provider, not by us


@SQLITE_ONLY
async def test_a_permanent_connector_error_reports_the_action_failed(
    store: Store, setup: Setup
) -> None:
    queue_effect(store, effect(), 0.0)
    setup.connector.fail_next(PermanentConnectorError("card account closed"))
    assert await setup.dispatcher.run_once(time.time()) == 1
    assert only_row(store)["status"] == "failed"
    [(topic, key, event)] = taken_records(store)  # action.status, not message.status
    assert (topic, key) == ("customers", b"cus_1")
    assert isinstance(event, ActionStatusChanged)
    assert (event.data.status, event.data.detail) == ("failed", "card account closed")


@SQLITE_ONLY
async def test_giving_up_on_a_delivery_reports_gave_up_once(store: Store, tmp_path: Path) -> None:
    setup = Setup(store, tmp_path, max_attempts=2, retry_for=0.0, backoff_base=1.0, backoff_max=1.0)
    queue_delivery(store, delivery(), 0.0)
    setup.channel.fail_next(*(TransientDeliveryError(f"timeout #{i}") for i in (1, 2)))
    now = time.time()
    assert await setup.dispatcher.run_once(now) == 1
    assert only_row(store)["status"] == "pending"
    assert taken_records(store) == []  # a retry is not a failure yet
    assert await setup.dispatcher.run_once(now + 10) == 1
    assert only_row(store)["status"] == "failed"
    event = only_report(store)
    assert (event.data.message_id, event.data.error_code) == ("msg_1", "gave_up")
    assert event.data.detail == "gave up after 2 attempts: timeout #2"
    assert await setup.dispatcher.run_once(now + 10 * 86400) == 0
    assert setup.messages.read_bytes() == b""


class RecordingChannel:
    """A channel that records each call (key, retry) and raises the scripted errors first."""

    def __init__(self, *errors: Exception) -> None:
        self.calls: list[tuple[str, bool]] = []
        self._errors = list(errors)

    async def send(self, delivery: Delivery, key: str, retry: bool = False) -> SendResult:
        self.calls.append((key, retry))
        if self._errors:
            raise self._errors.pop(0)
        return SendResult(status="sent", provider_id=f"rec:{key}")


async def test_the_channel_is_told_retry_on_the_second_claim_of_a_row(store: Store) -> None:
    channel = RecordingChannel(TransientDeliveryError("timeout: it may have gone"))
    options = DispatcherOptions(lease=LEASE, backoff_base=1.0, backoff_max=1.0)
    dispatcher = Dispatcher(store, FakeConnector(), channel, options, random.Random(3))
    first = queue_delivery(store, delivery("msg_1"), 0.0)
    other = queue_delivery(store, delivery("msg_2"), 5.0)
    now = time.time()
    assert await dispatcher.run_once(now) == 2
    assert channel.calls == [(first, False), (other, False)]
    assert await dispatcher.run_once(now + 2) == 1
    assert channel.calls[2:] == [(first, True)]
    assert {r["status"] for r in store.outbox_rows()} == {"done"}


async def test_after_an_outright_refusal_the_next_attempt_is_not_a_retry(store: Store) -> None:
    """A channel that says its failed try left no copy at the provider (a 429: ``unsent``)
    spares the next attempt its lookup; a lookup per retry after a provider's outage queued
    every row behind SendGrid's 6 lookups a minute."""
    refused = TransientDeliveryError("429: too many requests", unsent=True)
    channel = RecordingChannel(refused, TransientDeliveryError("timeout: it may have gone"))
    options = DispatcherOptions(lease=LEASE, backoff_base=1.0, backoff_max=1.0)
    dispatcher = Dispatcher(store, FakeConnector(), channel, options, random.Random(3))
    key = queue_delivery(store, delivery(), 0.0)
    now = time.time()
    assert await dispatcher.run_once(now) == 1  # refused outright
    assert await dispatcher.run_once(now + 2) == 1  # no lookup needed; then it times out
    assert await dispatcher.run_once(now + 4) == 1  # the timeout may have sent it: look up
    assert channel.calls == [(key, False), (key, False), (key, True)]
    assert only_row(store)["status"] == "done"


async def test_a_delivery_whose_earlier_try_cannot_be_looked_up_is_held_not_counted(
    store: Store,
) -> None:
    """A lookup the provider rate-limits (SendGrid's Email Activity: 6 a minute) or fails
    tells nothing about the earlier try: sending blind might send twice, and counting it as
    an attempt gave a burst of retries up unsent within the hour. The row is held untried
    until the provider's Retry-After, as many times as it takes, then looked up again."""
    lookup_429 = DeliveryHeld("lookup: HTTP 429", retry_after=60.0)
    channel = RecordingChannel(TransientDeliveryError("503"), *[lookup_429] * 12)
    options = DispatcherOptions(lease=LEASE, backoff_base=1.0, backoff_max=1.0, max_attempts=2,
                                retry_for=0.0)  # fmt: skip
    dispatcher = Dispatcher(store, FakeConnector(), channel, options, random.Random(3))
    key = queue_delivery(store, delivery(), 0.0)
    now = time.time()
    assert await dispatcher.run_once(now) == 1  # a 5xx: it may have gone
    for round_ in range(12):  # far past max_attempts, had they counted
        now += 61
        assert await dispatcher.run_once(now) == 1
        row = only_row(store)
        assert (row["status"], row["attempts"]) == ("pending", 1), round_
    assert await dispatcher.run_once(now + 61) == 1
    assert channel.calls == [(key, False)] + [(key, True)] * 13
    assert only_row(store)["status"] == "done"


async def test_a_refusal_does_not_spare_the_lookup_when_another_attempt_came_between(
    store: Store,
) -> None:
    """What this dispatcher knows holds only for the attempt right after its own: another
    dispatcher's attempt between (it crashed mid-send here) may have sent the message."""
    channel = RecordingChannel(TransientDeliveryError("429", unsent=True))
    options = DispatcherOptions(lease=LEASE, backoff_base=1.0, backoff_max=1.0)
    dispatcher = Dispatcher(store, FakeConnector(), channel, options, random.Random(3))
    key = queue_delivery(store, delivery(), 0.0)
    now = time.time()
    assert await dispatcher.run_once(now) == 1
    [claimed] = store.claim_due(now + 2, 10, LEASE)  # another dispatcher, dead mid-send
    assert claimed.attempts == 2
    assert await dispatcher.run_once(now + 2 + LEASE) == 1
    assert channel.calls == [(key, False), (key, True)]
    assert (only_row(store)["status"], only_row(store)["attempts"]) == ("done", 3)


async def test_the_channel_is_told_retry_after_a_crashed_dispatchers_lease_ran_out(
    store: Store,
) -> None:
    channel = RecordingChannel()
    dispatcher = Dispatcher(store, FakeConnector(), channel, DispatcherOptions(lease=LEASE))
    key = queue_delivery(store, delivery(), 0.0)
    now = time.time()
    [claimed] = store.claim_due(now, 10, LEASE)  # a dispatcher that died mid-send
    assert claimed.attempts == 1
    assert await dispatcher.run_once(now + LEASE) == 1
    assert channel.calls == [(key, True)]
    assert (only_row(store)["status"], only_row(store)["attempts"]) == ("done", 2)


class OvertakenChannel(RecordingChannel):
    """The first send takes so long that the lease of the round's other rows runs out: while
    it is under way another dispatcher (``meanwhile``) runs a round."""

    def __init__(self) -> None:
        super().__init__()
        self.meanwhile: Any = None

    async def send(self, delivery: Delivery, key: str, retry: bool = False) -> SendResult:
        if self.meanwhile is not None:
            overtake, self.meanwhile = self.meanwhile, None
            await overtake()
        return await super().send(delivery, key, retry)


async def test_a_row_whose_lease_ran_out_during_a_slow_round_is_sent_once(store: Store) -> None:
    """A claim leases a whole round (up to ``batch`` rows) at once. When the round's sends
    outlast the lease (a provider's rate limit, timeouts), another dispatcher claims the rest
    and sends them; the first must not send them as well when it gets to them. (Seen with two
    dispatchers, 100 rows and a 2 s lease: 62 messages sent twice.)"""
    slow, other = OvertakenChannel(), RecordingChannel()
    options = DispatcherOptions(lease=LEASE)
    first = Dispatcher(store, FakeConnector(), slow, options)
    second = Dispatcher(store, FakeConnector(), other, options)
    keys = [queue_delivery(store, delivery(f"msg_{i}"), 0.0) for i in range(3)]
    now = time.time()

    async def overtake() -> None:
        assert await second.run_once(now + LEASE + 1) == 3  # every lease of the round ran out

    slow.meanwhile = overtake
    assert await first.run_once(now) == 3
    # the row in the provider's hands when its lease ran out went twice (the documented
    # window: one call must fit in a lease); the two not yet tried went once
    assert slow.calls == [(keys[0], False)]
    assert other.calls == [(key, True) for key in keys]
    assert (first.stats.done, second.stats.done) == (0, 3)
    assert {(r["status"], r["attempts"]) for r in store.outbox_rows()} == {("done", 2)}


class SlowThenBusy(RecordingChannel):
    """The first send takes ``slow`` seconds (a provider's latency); the second is refused
    with a Retry-After, and when it was refused is kept."""

    def __init__(self, slow: float, retry_after: float) -> None:
        super().__init__()
        self.slow, self.retry_after, self.refused_at = slow, retry_after, 0.0

    async def send(self, delivery: Delivery, key: str, retry: bool = False) -> SendResult:
        if not self.calls:
            await asyncio.sleep(self.slow)  # the provider's latency, not a synchronisation
        elif len(self.calls) == 1:
            self.calls.append((key, retry))
            self.refused_at = time.time()
            raise TransientDeliveryError("429 too many requests", retry_after=self.retry_after)
        return await super().send(delivery, key, retry)


@SQLITE_ONLY
async def test_a_providers_retry_after_counts_from_the_refusal_not_the_rounds_start(
    store: Store,
) -> None:
    """A round can last minutes (a rate-limited provider); a Retry-After or a backoff counted
    from its start could already lie in the past when the refusal came, and the row would be
    tried again at once, which is what the provider asked us not to do."""
    channel = SlowThenBusy(slow=0.4, retry_after=0.3)
    options = DispatcherOptions(lease=LEASE, backoff_base=0.001, backoff_max=0.001)
    dispatcher = Dispatcher(store, FakeConnector(), channel, options)
    queue_delivery(store, delivery("msg_slow"), 0.0)
    busy = queue_delivery(store, delivery("msg_busy"), 1.0)
    assert await dispatcher.run_once() == 2
    [row] = [r for r in store.outbox_rows() if r["idempotency_key"] == busy]
    assert row["status"] == "pending"
    assert row["next_at"] >= channel.refused_at + 0.3


# -- kill switches ---------------------------------------------------------------------------


@SQLITE_ONLY
async def test_a_kill_switch_holds_queued_rows_untried_until_it_is_lifted(
    store: Store, setup: Setup
) -> None:
    from outreach.store.operator import Operator

    operator = Operator(store)
    now = time.time()
    queue_effect(store, effect(), now)
    key = queue_delivery(store, delivery(), now)
    operator.set_kill_switch("tool", "grant_credit", True, "credits paused")
    operator.set_kill_switch("channel", "sms", True, "provider incident")
    for round_ in range(12):  # far more rounds than max_attempts: holding is not trying
        assert await setup.dispatcher.run_once(now + round_ * setup.options.hold) == 2
    rows = {r["idempotency_key"]: r for r in store.outbox_rows()}
    for row in rows.values():
        assert (row["status"], row["attempts"]) == ("pending", 0)
    assert rows[key]["last_error"] == "held: kill switch on channel sms (provider incident)"
    for path in (setup.effects, setup.messages):  # nothing performed, nothing sent
        assert not path.exists() or lines(path) == []
    assert setup.dispatcher.stats.held == 24
    operator.set_kill_switch("tool", "grant_credit", False, "")
    operator.set_kill_switch("channel", "sms", False, "")
    assert await setup.dispatcher.run_once(now + 13 * setup.options.hold) == 2
    assert {r["status"] for r in store.outbox_rows()} == {"done"}
    assert len(lines(setup.effects)) == 1 and len(lines(setup.messages)) == 1
