"""Migration 0008 (``outbox.first_tried_at``) on a store with rows in the outbox: a row that
was already retrying reads as "not tried yet", so its retry window starts at its next call
(it may retry longer than before the upgrade, never shorter)."""

from __future__ import annotations

import random
import time
from importlib import resources
from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext

from outreach.agents.connectors import FakeConnector
from outreach.decisions import Delivery
from outreach.errors import TransientDeliveryError
from outreach.outbound.channels import FileChannel
from outreach.store import Store
from outreach.store.schema import metadata
from outreach.streams.dispatcher import Dispatcher, DispatcherOptions


def migrate_to(store: Store, revision: str, *, down: bool = False) -> None:
    """Upgrade (or downgrade) ``store`` to ``revision``, as ``Store.migrate`` does to head."""
    config = Config()
    config.set_main_option("script_location", str(resources.files("outreach.store") / "migrations"))
    with store.engine.begin() as conn:
        config.attributes["connection"] = conn
        (command.downgrade if down else command.upgrade)(config, revision)


async def test_a_row_retrying_at_the_upgrade_starts_its_window_at_its_next_call(
    database_url: str, tmp_path: Path
) -> None:
    store = Store(database_url)
    try:
        migrate_to(store, "0007")
        decided = time.time() - 86400  # a day ago, and tried 7 times since
        message = Delivery(
            message_id="msg_1", customer_id="cus_1", channel="sms", to="+14155550100",
            purpose="transactional", subject=None, body="Acme: your refund is on its way.",
        )  # fmt: skip
        with store.engine.begin() as conn:
            conn.execute(
                sa.text(
                    "INSERT INTO outbox (idempotency_key, kind, customer_id, ref, payload, "
                    "status, attempts, next_at, created_at) VALUES ('msg:msg_1', 'delivery', "
                    "'cus_1', 'msg_1', :payload, 'pending', 7, :due, :decided)"
                ),
                {"payload": message.model_dump_json().encode(), "due": decided, "decided": decided},
            )
        store.migrate()
        [row] = store.outbox_rows()
        assert (row["attempts"], row["first_tried_at"]) == (7, None)

        channel = FileChannel(tmp_path / "messages.jsonl")
        options = DispatcherOptions(max_attempts=3, retry_for=600.0, backoff_max=1.0)
        dispatcher = Dispatcher(store, FakeConnector(), channel, options, random.Random(1))
        channel.fail_next(TransientDeliveryError("503 #8"), TransientDeliveryError("503 #9"))
        now = time.time()
        assert await dispatcher.run_once(now) == 1  # 8 attempts, a day since it was decided
        [row] = store.outbox_rows()
        assert (row["status"], row["attempts"], row["first_tried_at"]) == ("pending", 8, now)
        assert await dispatcher.run_once(now + 600) == 1  # 600 s since that call
        [row] = store.outbox_rows()
        assert (row["status"], row["last_error"]) == ("failed", "gave up after 9 attempts: 503 #9")
    finally:
        store.close()


def test_the_migration_goes_down_and_up_again(database_url: str) -> None:
    store = Store(database_url)
    try:
        store.migrate()
        migrate_to(store, "0007", down=True)
        columns = {c["name"] for c in sa.inspect(store.engine).get_columns("outbox")}
        assert "first_tried_at" not in columns
        store.migrate()
        with store.engine.connect() as conn:
            assert compare_metadata(MigrationContext.configure(conn), metadata) == []
    finally:
        store.close()
