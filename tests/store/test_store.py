"""The store against real SQLite and PostgreSQL: migrations, the one-transaction batch, the
outbox (idempotency, leases, concurrent claimers), timers and records for the relay,
positions and the ledger under concurrent transactions, and the retry of lock timeouts.

Concurrency tests on PostgreSQL make the dangerous interleaving happen on purpose: the first
transaction takes its locks, then waits until the second either waits for a lock (seen in
``pg_stat_activity``) or has read without waiting (a bug: the assertion after says which)."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from outreach.store import Batch, PendingRecord, Stamp, Store, StoreBusyError, StoredState, TimerRow
from outreach.store.schema import applied_offsets, customer_state, ledger, metadata, outbox

TABLES = {
    "customer_state", "applied_offsets", "outbox", "timers", "pending_records", "ledger",
    "suppressions", "contacts", "inbound_seen", "controls", "audit", "approvals", "api_keys",
    "tallies", "clocks",
}  # fmt: skip
ONLY_POSTGRES = pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
# For tests of paths with no PostgreSQL branch (plain updates, a rollback after the callback
# raised): a fresh PostgreSQL database costs ~0.2 s, and the file must stay fast.
ONLY_SQLITE = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


def outbox_row(
    key: str, due: float = 100.0, kind: str = "effect", customer: str = "cus_1"
) -> tuple[str, str, str, str, bytes, float]:
    return (key, kind, customer, f"ref_{key}", f'{{"key": "{key}"}}'.encode(), due)


def add_outbox(store: Store, *rows: tuple[str, str, str, str, bytes, float]) -> int:
    return store.run(lambda b: b.add_outbox(list(rows)))


def rows_of(store: Store, table: sa.Table) -> list[dict[str, object]]:
    with store.engine.connect() as conn:
        return [dict(r) for r in conn.execute(sa.select(table)).mappings()]


def run_concurrently(*work: Callable[[], object], timeout: float = 20.0) -> None:
    """Run each callable in its own thread; re-raise the first error one of them raised."""
    errors: list[BaseException] = []

    def guarded(fn: Callable[[], object]) -> None:
        try:
            fn()
        except BaseException as exc:  # handed to the test thread below
            errors.append(exc)

    threads = [threading.Thread(target=guarded, args=(fn,)) for fn in work]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout)
    assert not any(t.is_alive() for t in threads), "a thread is still running (deadlock?)"
    if errors:
        raise errors[0]


def wait_for_lock_waiter(store: Store, other_went_on: threading.Event) -> None:
    """Return once another session of this PostgreSQL database waits for a lock, or once
    ``other_went_on`` is set (the other side did not wait)."""
    query = sa.text(
        "SELECT count(*) FROM pg_stat_activity "
        "WHERE datname = current_database() AND wait_event_type = 'Lock'"
    )
    deadline = time.monotonic() + 10
    with store.engine.connect() as conn:
        while not other_went_on.wait(0.005):
            waiting = conn.execute(query).scalar()
            conn.rollback()  # pg_stat_activity is a snapshot per transaction
            if waiting:
                return
            assert time.monotonic() < deadline, "the other transaction neither waited nor read"


# -- construction and migrations -------------------------------------------------------------


def test_migrate_on_an_empty_database_creates_every_table_as_schema_declares(
    database_url: str,
) -> None:
    store = Store(database_url)
    try:
        assert not TABLES & set(sa.inspect(store.engine).get_table_names())
        store.migrate()
        assert set(sa.inspect(store.engine).get_table_names()) == TABLES | {"alembic_version"}
        with store.engine.connect() as conn:
            assert compare_metadata(MigrationContext.configure(conn), metadata) == []
    finally:
        store.close()


@ONLY_POSTGRES
def test_postgres_connections_find_a_silent_peer_unless_the_url_says_otherwise(
    database_url: str,
) -> None:
    url = sa.engine.make_url(database_url).update_query_dict({"keepalives_idle": "5"})
    for given, idle in [(database_url, "30"), (url.render_as_string(hide_password=False), "5")]:
        store = Store(given)
        try:
            with store.engine.connect() as conn:
                raw = conn.connection.dbapi_connection
                assert raw is not None
                used = raw.info.get_parameters()  # what libpq connected with
        finally:
            store.close()
        assert (used["keepalives"], used["keepalives_idle"]) == ("1", idle)
        assert (used["tcp_user_timeout"], used["connect_timeout"]) == ("60000", "10")


def test_migrate_again_keeps_the_data_and_one_version_row(store: Store) -> None:
    add_outbox(store, outbox_row("k1"))
    store.run(lambda b: b.set_positions("g", {("payments", 0): 4}))
    store.migrate()
    store.migrate()
    with store.engine.connect() as conn:
        versions = conn.execute(sa.text("SELECT version_num FROM alembic_version")).all()
    assert versions == [("0008",)]
    assert [r["idempotency_key"] for r in store.outbox_rows()] == ["k1"]
    assert store.run(lambda b: b.positions("g", [("payments", 0)])) == {("payments", 0): 4}


@ONLY_POSTGRES  # SQLite: the next test covers a writer waiting on a new file
def test_two_stores_migrating_the_same_empty_database_at_once_both_succeed(
    database_url: str,
) -> None:
    stores = [Store(database_url), Store(database_url)]
    start = threading.Barrier(2)

    def migrate(store: Store) -> Callable[[], None]:
        def go() -> None:
            start.wait()
            store.migrate()

        return go

    try:
        run_concurrently(*(migrate(s) for s in stores))
        assert set(sa.inspect(stores[0].engine).get_table_names()) >= TABLES
        with stores[0].engine.connect() as conn:
            versions = conn.execute(sa.text("SELECT version_num FROM alembic_version")).all()
        assert versions == [("0008",)]
    finally:
        for made in stores:
            made.close()


def test_a_store_opening_a_new_sqlite_file_waits_for_another_writer_instead_of_failing(
    tmp_path: Path,
) -> None:
    path = tmp_path / "outreach.db"
    other_process = sqlite3.connect(path, isolation_level=None)
    other_process.execute("BEGIN IMMEDIATE")  # e.g. mid-migration
    store = Store(f"sqlite:///{path}")
    outcome: list[str] = []

    def migrate() -> None:
        try:
            store.migrate()
            outcome.append("migrated")
        except sa.exc.OperationalError as exc:
            outcome.append(str(exc.orig))

    thread = threading.Thread(target=migrate)
    thread.start()
    # Not synchronisation: how long the other process keeps its lock. A store that fails
    # instead of waiting has failed by then; one that waits migrates once the lock is gone.
    thread.join(0.3)
    other_process.rollback()
    other_process.close()
    thread.join(10)
    store.close()
    assert outcome == ["migrated"]


def test_an_unsupported_database_url_is_rejected_naming_the_supported_ones() -> None:
    with pytest.raises(ValueError, match="unsupported database URL") as info:
        Store("mysql://app:hunter2@db.example.com/outreach")
    message = str(info.value)
    assert "mysql://app:***@db.example.com/outreach" in message
    assert "hunter2" not in message  # the password is not echoed into logs
    assert "sqlite:///" in message and "postgresql+psycopg://" in message


def test_a_postgresql_url_without_a_driver_uses_psycopg() -> None:
    # psycopg (3) is the driver the package depends on; SQLAlchemy 2.0 would pick psycopg2
    made = Store("postgresql://outreach:outreach@127.0.0.1:5432/outreach")
    try:
        assert made.postgres and made.engine.dialect.driver == "psycopg"
    finally:
        made.close()


# -- one transaction per batch ---------------------------------------------------------------


def stored_states(batch: Batch, customer_ids: list[str]) -> dict[str, bytes]:
    """Lock the customers' rows; the stored states of those that have one."""
    rows = batch.lock_versions(customer_ids)
    return {c: row.state for c, row in rows.items() if row.state is not None}


def write_everything(batch: Batch) -> None:
    """One of each write a processed batch makes."""
    assert stored_states(batch, ["cus_1"]) == {}
    batch.save_states({"cus_1": b"state-1"})
    batch.add_outbox([outbox_row("eff:1")])
    batch.set_positions("g", {("payments", 0): 8})
    batch.add_records([("signals", b"cus_1", b"signal-1")])
    batch.schedule_timers([TimerRow("tmr_1", "cus_1", 500.0)])
    batch.ledger.add("credits:2026-03", 25.0)
    batch.ledger.flush()


def everything_written(store: Store) -> dict[str, object]:
    return {
        "state": store.load_state("cus_1"),
        "outbox": [r["idempotency_key"] for r in store.outbox_rows()],
        "positions": [(r["topic"], r["next_offset"]) for r in rows_of(store, applied_offsets)],
        "records": store.count("pending_records"),
        "timers": store.count("timers"),
        "ledger": [(r["key"], r["total"]) for r in rows_of(store, ledger)],
        "customer_rows": store.count("customer_state"),
    }


def test_a_batch_commits_state_outbox_positions_records_timers_and_ledger(store: Store) -> None:
    with store.batch(now=100.0) as batch:
        write_everything(batch)
    assert everything_written(store) == {
        "state": b"state-1",
        "outbox": ["eff:1"],
        "positions": [("payments", 8)],
        "records": 1,
        "timers": 1,
        "ledger": [("credits:2026-03", 25.0)],
        "customer_rows": 1,
    }


def test_a_batch_that_raises_leaves_nothing_behind(store: Store) -> None:
    with pytest.raises(RuntimeError, match="crash after every write"), store.batch() as batch:
        write_everything(batch)
        raise RuntimeError("crash after every write")
    assert everything_written(store) == {
        "state": None,
        "outbox": [],
        "positions": [],
        "records": 0,
        "timers": 0,
        "ledger": [],
        "customer_rows": 0,  # not even the row lock_versions reserved on PostgreSQL
    }


@ONLY_SQLITE
def test_run_rolls_back_work_that_raises_and_does_not_try_it_again(store: Store) -> None:
    calls: list[int] = []

    def work(batch: Batch) -> None:
        calls.append(1)
        write_everything(batch)
        raise KeyError("not a database error")

    with pytest.raises(KeyError):
        store.run(work)
    assert len(calls) == 1
    assert everything_written(store)["outbox"] == []
    assert everything_written(store)["positions"] == []


def test_run_flushes_the_ledger_when_the_work_returns(store: Store) -> None:
    def spend(batch: Batch) -> float:
        batch.ledger.add("credits", 10.0)
        batch.ledger.add("credits", 2.5)
        return batch.ledger.total("credits")

    assert store.run(spend) == 12.5
    assert store.run(spend) == 25.0  # the total persisted across transactions
    assert store.run(lambda b: b.ledger.total("credits")) == 25.0
    assert store.run(lambda b: b.ledger.total("other")) == 0.0


@ONLY_POSTGRES
def test_run_tries_again_after_a_lock_timeout(store: Store) -> None:
    store.run(lambda b: b.ledger.add("credits", 1.0))
    holder = store.engine.connect()
    holder.execute(sa.select(ledger).where(ledger.c.key == "credits").with_for_update())
    attempts: list[int] = []

    def work(batch: Batch) -> float:
        attempts.append(1)
        if len(attempts) == 2:
            holder.rollback()  # the other transaction ends between the two attempts
        batch.conn.execute(sa.text("SET LOCAL lock_timeout = '20ms'"))
        return batch.ledger.total("credits")

    try:
        assert store.run(work) == 1.0
    finally:
        holder.close()
    assert len(attempts) == 2


@ONLY_SQLITE
def test_run_raises_a_database_error_that_is_not_about_locks_at_once(store: Store) -> None:
    attempts: list[int] = []

    def work(batch: Batch) -> None:
        attempts.append(1)
        batch.conn.execute(sa.insert(ledger).values(key="k", total=None))

    with pytest.raises(sa.exc.IntegrityError):
        store.run(work)
    assert len(attempts) == 1


# -- states and positions --------------------------------------------------------------------


def test_saved_states_are_read_back_under_lock_and_versioned(store: Store) -> None:
    store.run(lambda b: b.save_states({"cus_1": b"v1", "cus_2": b"other"}))
    assert store.run(lambda b: stored_states(b, ["cus_1", "cus_3", "cus_1"])) == {"cus_1": b"v1"}
    store.run(lambda b: b.save_states({"cus_1": b"v2"}))
    assert store.load_state("cus_1") == b"v2"
    assert store.load_state("cus_3") is None
    versions = {r["customer_id"]: r["version"] for r in rows_of(store, customer_state)}
    assert versions["cus_1"] == 2 and versions["cus_2"] == 1


def test_a_rows_stamp_is_the_one_save_states_promises_and_a_current_copy_is_not_read(
    store: Store,
) -> None:
    """The worker's state cache relies on both: ``Stamp.after`` predicts the stamp a save
    gives, and ``lock_versions`` skips the bytes of a row whose stamp the caller holds."""
    with store.batch(now=100.0) as batch:
        before = batch.lock_versions(["cus_1"]).get("cus_1")
        batch.save_states({"cus_1": b"v1"})
    first = Stamp.after(None if before is None else before.stamp, 100.0)
    with store.batch(now=200.0) as batch:
        (row,) = batch.lock_versions(["cus_1"]).values()
        assert row == StoredState(first, b"v1")
        batch.save_states({"cus_1": b"v2"})
    second = Stamp.after(first, 200.0)
    assert second == Stamp(2, 200.0)
    with store.batch() as batch:
        assert batch.lock_versions(["cus_1"], {"cus_1": second}) == {
            "cus_1": StoredState(second, None)
        }
        assert batch.lock_versions(["cus_1"], {"cus_1": first}) == {
            "cus_1": StoredState(second, b"v2")
        }


def test_positions_are_kept_per_group_and_partition(store: Store) -> None:
    store.run(lambda b: b.set_positions("g1", {("payments", 0): 5, ("payments", 1): 9}))
    store.run(lambda b: b.set_positions("g2", {("payments", 0): 70}))
    store.run(lambda b: b.set_positions("g1", {("payments", 0): 6}))
    wanted = [("payments", 0), ("payments", 1), ("customers", 0)]
    g1 = store.run(lambda b: b.positions("g1", wanted))
    g2 = store.run(lambda b: b.positions("g2", wanted))
    assert (g1[("payments", 0)], g1[("payments", 1)], g1.get(("customers", 0), 0)) == (6, 9, 0)
    assert g2[("payments", 0)] == 70 and g2.get(("payments", 1), 0) == 0
    assert store.run(lambda b: b.positions("g1", [])) == {}


def test_forget_positions_drops_one_groups_positions_only(store: Store) -> None:
    store.run(lambda b: b.set_positions("g1", {("payments", 0): 5, ("payments", 1): 9}))
    store.run(lambda b: b.set_positions("g2", {("payments", 0): 70}))
    assert store.forget_positions("g1") == 2
    assert store.forget_positions("g1") == 0
    wanted = [("payments", 0), ("payments", 1)]
    assert store.run(lambda b: b.positions("g1", wanted)).get(("payments", 0), 0) == 0
    assert store.run(lambda b: b.positions("g2", wanted))[("payments", 0)] == 70


@ONLY_POSTGRES
@pytest.mark.parametrize("applied_before", [True, False], ids=["known", "new"])
def test_a_second_transaction_on_a_partition_waits_for_the_first_then_reads_its_position(
    store: Store, applied_before: bool
) -> None:
    tp = ("payments", 3)
    if applied_before:
        store.run(lambda b: b.set_positions("g", {tp: 10}))
    start = threading.Barrier(2)
    first_read, second_read = threading.Event(), threading.Event()
    seen: dict[str, dict[tuple[str, int], int]] = {}

    def first() -> None:
        start.wait()
        with store.batch() as batch:
            seen["first"] = batch.positions("g", [tp])
            first_read.set()
            wait_for_lock_waiter(store, second_read)
            batch.set_positions("g", {tp: 25})

    def second() -> None:
        start.wait()
        assert first_read.wait(10)
        with store.batch() as batch:
            seen["second"] = batch.positions("g", [tp])
            second_read.set()

    run_concurrently(first, second)
    assert seen["first"].get(tp, 0) == (10 if applied_before else 0)
    assert seen["second"] == {tp: 25}


@ONLY_POSTGRES
@pytest.mark.parametrize("known", [True, False], ids=["known", "new"])
def test_a_second_transaction_on_a_customer_waits_for_the_first_then_reads_its_state(
    store: Store, known: bool
) -> None:
    if known:
        store.run(lambda b: b.save_states({"cus_1": b"v0"}))
    first_read, second_read = threading.Event(), threading.Event()
    seen: dict[str, dict[str, bytes]] = {}

    def first() -> None:
        with store.batch() as batch:
            seen["first"] = stored_states(batch, ["cus_1"])
            first_read.set()
            wait_for_lock_waiter(store, second_read)
            batch.save_states({"cus_1": b"v1"})

    def second() -> None:
        assert first_read.wait(10)
        with store.batch() as batch:
            seen["second"] = stored_states(batch, ["cus_1"])
            second_read.set()

    run_concurrently(first, second)
    assert seen["first"] == ({"cus_1": b"v0"} if known else {})
    assert seen["second"] == {"cus_1": b"v1"}


@ONLY_POSTGRES
@pytest.mark.parametrize("existing", [True, False], ids=["existing-key", "first-spend"])
def test_two_concurrent_ledger_adders_do_not_lose_an_update(store: Store, existing: bool) -> None:
    if existing:
        store.run(lambda b: b.ledger.add("credits", 100.0))
    first_read, second_read = threading.Event(), threading.Event()

    def first() -> None:
        def work(batch: Batch) -> None:
            batch.ledger.total("credits")
            first_read.set()
            wait_for_lock_waiter(store, second_read)
            batch.ledger.add("credits", 10.0)

        store.run(work)

    def second() -> None:
        def work(batch: Batch) -> None:
            batch.ledger.total("credits")
            second_read.set()
            batch.ledger.add("credits", 5.0)

        assert first_read.wait(10)
        store.run(work)

    run_concurrently(first, second)
    assert store.run(lambda b: b.ledger.total("credits")) == (115.0 if existing else 15.0)


# -- the outbox ------------------------------------------------------------------------------


def test_an_outbox_key_is_queued_once_and_a_repeat_changes_nothing(store: Store) -> None:
    add_outbox(store, outbox_row("k1"), outbox_row("k2"), outbox_row("k1"))
    [first] = store.claim_due(100.0, 1, lease=30.0)
    store.finish(first.id, "done", b"ok", None)
    repeat = ("k1", "delivery", "cus_9", "ref_other", b"other payload", 0.0)
    add_outbox(store, repeat, outbox_row("k3"))
    rows = {r["idempotency_key"]: r for r in store.outbox_rows()}
    assert sorted(rows) == ["k1", "k2", "k3"]
    assert (rows["k1"]["kind"], rows["k1"]["customer_id"], rows["k1"]["status"]) == (
        "effect",
        "cus_1",
        "done",
    )
    assert bytes(rows["k1"]["payload"]) == b'{"key": "k1"}'


def test_add_outbox_answers_how_many_keys_were_new(store: Store) -> None:
    assert add_outbox(store, outbox_row("k1"), outbox_row("k2"), outbox_row("k1")) == 2
    assert add_outbox(store, outbox_row("k2"), outbox_row("k3")) == 1
    assert add_outbox(store, outbox_row("k3")) == 0


def test_prune_outbox_deletes_only_rows_finished_before_the_cutoff_in_chunks(
    store: Store,
) -> None:
    keys = ["done_old", "failed_old", "done_old2", "done_new", "pending", "in_flight", "held"]
    add_outbox(store, *(outbox_row(k, due=0.0) for k in keys))
    claimed = {r.idempotency_key: r for r in store.claim_due(1.0, 10, lease=0.5)}
    for key, status in [("done_old", "done"), ("failed_old", "failed"), ("done_old2", "done"),
                        ("done_new", "done")]:  # fmt: skip
        assert store.finish(claimed[key].id, status, None, None, claim=1)
    assert store.retry_later(claimed["pending"].id, 5.0, "transient", claim=1)
    assert store.retry_later(claimed["held"].id, 5.0, "kill switch", claim=1, hold=True)
    with store.engine.begin() as conn:  # finished long ago (the lease of "in_flight" ran out)
        for key, done_at in [("done_old", 100.0), ("failed_old", 150.0), ("done_old2", 199.0),
                             ("done_new", 200.0)]:  # fmt: skip
            conn.execute(
                sa.update(outbox).where(outbox.c.idempotency_key == key).values(done_at=done_at)
            )
    assert store.prune_outbox(200.0, chunk=2) == 3
    assert {r["idempotency_key"]: r["status"] for r in store.outbox_rows()} == {
        "done_new": "done", "pending": "pending", "in_flight": "in_flight", "held": "pending",
    }  # fmt: skip
    assert store.prune_outbox(200.0) == 0
    assert [r.idempotency_key for r in store.claim_due(10.0, 10, lease=30.0)] == [
        "in_flight", "pending", "held",
    ]  # fmt: skip


def test_claim_due_takes_due_rows_oldest_first_up_to_the_limit(store: Store) -> None:
    add_outbox(store, outbox_row("late", 300.0), outbox_row("b", 100.0), outbox_row("a", 50.0))
    add_outbox(store, outbox_row("c", 100.0))
    assert store.claim_due(49.0, 10, lease=30.0) == []
    claimed = store.claim_due(200.0, 2, lease=30.0)
    assert [r.idempotency_key for r in claimed] == ["a", "b"]
    assert [r.idempotency_key for r in store.claim_due(200.0, 10, lease=30.0)] == ["c"]
    row = claimed[0]
    assert (row.kind, row.customer_id, row.ref, row.payload, row.attempts) == (
        "effect",
        "cus_1",
        "ref_a",
        b'{"key": "a"}',
        1,
    )


def test_a_claimed_row_is_due_again_once_its_lease_has_expired(store: Store) -> None:
    add_outbox(store, outbox_row("k1", 100.0))
    [first] = store.claim_due(100.0, 10, lease=30.0)
    stored = store.outbox_rows()[0]
    assert (stored["status"], stored["lease_until"], stored["attempts"]) == ("in_flight", 130.0, 1)
    assert store.claim_due(129.9, 10, lease=30.0) == []
    assert store.due_count(129.9) == 0
    assert store.due_count(130.0) == 1
    assert store.due_count(130.0, rows=False) == 0  # a process that does not dispatch
    [again] = store.claim_due(130.0, 10, lease=30.0)
    assert (again.id, again.attempts) == (first.id, 2)
    assert store.outbox_rows()[0]["lease_until"] == 160.0


@ONLY_SQLITE
def test_a_finished_row_is_never_claimed_again(store: Store) -> None:
    add_outbox(store, outbox_row("ok"), outbox_row("bad"))
    ok, bad = store.claim_due(100.0, 10, lease=30.0)
    store.finish(ok.id, "done", b"result", None)
    store.finish(bad.id, "failed", None, "permanent: no such card")
    assert store.claim_due(10.0**12, 10, lease=30.0) == []
    rows = {r["idempotency_key"]: r for r in store.outbox_rows()}
    assert (rows["ok"]["status"], bytes(rows["ok"]["result"]), rows["ok"]["lease_until"]) == (
        "done",
        b"result",
        None,
    )
    assert rows["ok"]["done_at"] is not None
    assert (rows["bad"]["status"], rows["bad"]["last_error"]) == (
        "failed",
        "permanent: no such card",
    )
    assert store.outbox_counts() == {("effect", "done"): 1, ("effect", "failed"): 1}


@ONLY_SQLITE
def test_retry_later_puts_a_row_back_due_at_the_given_time(store: Store) -> None:
    add_outbox(store, outbox_row("k1"))
    [row] = store.claim_due(100.0, 10, lease=30.0)
    store.retry_later(row.id, 500.0, "timeout")
    stored = store.outbox_rows()[0]
    assert (stored["status"], stored["next_at"], stored["lease_until"]) == ("pending", 500.0, None)
    assert stored["last_error"] == "timeout"
    assert store.claim_due(499.0, 10, lease=30.0) == []
    assert [r.attempts for r in store.claim_due(500.0, 10, lease=30.0)] == [2]


def test_concurrent_claimers_never_get_the_same_row(store: Store) -> None:
    add_outbox(store, *(outbox_row(f"k{i:03}", 100.0) for i in range(60)))
    start = threading.Barrier(2)
    claimed: list[list[str]] = [[], []]

    def claimer(mine: list[str]) -> Callable[[], None]:
        def go() -> None:
            start.wait()
            while rows := store.claim_due(100.0, 3, lease=60.0):
                mine.extend(r.idempotency_key for r in rows)

        return go

    run_concurrently(claimer(claimed[0]), claimer(claimed[1]))
    everything = claimed[0] + claimed[1]
    assert sorted(everything) == [f"k{i:03}" for i in range(60)]  # each exactly once
    assert {r["attempts"] for r in store.outbox_rows()} == {1}


@ONLY_POSTGRES
def test_a_claimer_skips_rows_another_claimer_holds_instead_of_waiting(store: Store) -> None:
    add_outbox(store, outbox_row("held", 50.0), outbox_row("free1"), outbox_row("free2"))
    holder = store.engine.connect()
    holder.execute(sa.text("SELECT id FROM outbox WHERE idempotency_key = 'held' FOR UPDATE"))
    got: list[list[str]] = []
    claimer = threading.Thread(
        target=lambda: got.append([r.idempotency_key for r in store.claim_due(100.0, 10, 30.0)])
    )
    try:
        claimer.start()
        claimer.join(10)
        assert not claimer.is_alive(), "claim_due waited for a row another claimer holds"
    finally:
        holder.rollback()
        holder.close()
        claimer.join(10)
    assert got == [["free1", "free2"]]


# -- records for the relay --------------------------------------------------------


def test_take_records_hands_records_in_insertion_order_and_deletes_them(store: Store) -> None:
    store.run(lambda b: b.add_records([("signals", b"cus_1", b"1"), ("dlq", None, b"2")]))
    store.run(lambda b: b.add_records([("actions", b"cus_2", b"3")]))
    store.run(lambda b: b.add_records([]))
    batches: list[list[PendingRecord]] = []
    assert store.take_records(2, batches.append) == 2
    assert store.take_records(2, batches.append) == 1
    assert store.take_records(2, batches.append) == 0
    flat = [(r.topic, r.key, r.value) for batch in batches for r in batch]
    assert flat == [("signals", b"cus_1", b"1"), ("dlq", None, b"2"), ("actions", b"cus_2", b"3")]
    assert [len(b) for b in batches] == [2, 1]
    assert store.count("pending_records") == 0


@ONLY_SQLITE
def test_records_stay_in_order_when_publishing_them_raises(store: Store) -> None:
    store.run(lambda b: b.add_records([("signals", b"k", bytes([i])) for i in range(3)]))

    def broker_down(rows: list[PendingRecord]) -> None:
        raise ConnectionError("broker down")

    with pytest.raises(ConnectionError):
        store.take_records(2, broker_down)
    taken: list[PendingRecord] = []
    assert store.take_records(10, taken.extend) == 3
    assert [r.value for r in taken] == [b"\x00", b"\x01", b"\x02"]


@ONLY_SQLITE  # PostgreSQL: one relay at a time (the next test)
def test_a_relay_that_lost_the_race_deletes_only_the_rows_it_published(store: Store) -> None:
    """SQLite: two relays read the same rows; the faster one publishes and deletes them, a batch
    then queues new records. The slower one's delete must not take the new records with it
    (they would never reach Kafka): record numbers are never reused, even once the table has
    been emptied. Found by the two-workers SIGKILL test, which lost a signal now and then."""
    store.run(lambda b: b.add_records([("signals", b"k", b"old")]))
    published: list[bytes] = []

    def slow_publish(rows: list[PendingRecord]) -> None:
        assert store.take_records(10, lambda other: published.extend(r.value for r in other))
        store.run(lambda b: b.add_records([("signals", b"k", b"new")]))
        published.extend(r.value for r in rows)

    assert store.take_records(10, slow_publish) == 1
    left: list[PendingRecord] = []
    assert store.take_records(10, left.extend) == 1
    assert published == [b"old", b"old"] and [r.value for r in left] == [b"new"]


@ONLY_POSTGRES
def test_a_second_relay_waits_for_the_first_so_records_reach_kafka_in_order(
    store: Store,
) -> None:
    """Two relays side by side could publish a later status of an action before an earlier
    one; readers take the last record of an id as its state."""
    store.run(lambda b: b.add_records([("signals", None, bytes([i])) for i in range(4)]))
    first_holds, second_went_on = threading.Event(), threading.Event()
    published: list[tuple[str, list[bytes]]] = []

    def slow_publish(rows: list[PendingRecord]) -> None:
        first_holds.set()
        wait_for_lock_waiter(store, second_went_on)
        published.append(("first", [r.value for r in rows]))

    def fast_publish(rows: list[PendingRecord]) -> None:
        second_went_on.set()
        published.append(("second", [r.value for r in rows]))

    def second() -> None:
        assert first_holds.wait(10)
        store.take_records(2, fast_publish)

    run_concurrently(lambda: store.take_records(2, slow_publish), second)
    assert published == [("first", [b"\x00", b"\x01"]), ("second", [b"\x02", b"\x03"])]
    assert store.count("pending_records") == 0


def test_a_dispatcher_whose_lease_ran_out_cannot_overwrite_the_next_claim(store: Store) -> None:
    """D1 claims, its lease runs out, D2 claims and finishes: D1's late answer (done, or a
    retry that would put the row back to pending and perform it a third time) changes nothing."""
    add_outbox(store, outbox_row("k1", 0.0))
    (first,) = store.claim_due(10.0, 10, lease=5.0)
    (second,) = store.claim_due(20.0, 10, lease=5.0)  # the first lease ended at 15
    assert store.finish(second.id, "done", b"ok", None, claim=second.attempts)
    assert not store.retry_later(first.id, 30.0, "timeout", claim=first.attempts)
    assert not store.finish(first.id, "failed", None, "late", claim=first.attempts)
    (row,) = store.outbox_rows()
    assert (row["status"], row["result"]) == ("done", b"ok")


def test_an_exclusive_claim_is_refused_to_a_second_holder_until_released(
    database_url: str,
) -> None:
    """Two embedded workers (each with its own broker) must not share a store."""
    first, second = Store(database_url), Store(database_url)
    try:
        release = first.hold_exclusive("embedded worker outreach")
        assert release.alive()
        with pytest.raises(StoreBusyError, match="'embedded worker outreach' on the store.*: why"):
            second.hold_exclusive("embedded worker outreach", why="why")
        other = second.hold_exclusive("embedded worker another-group")  # another name: free
        other()
        release()
        second.hold_exclusive("embedded worker outreach")()
    finally:
        first.close()
        second.close()
