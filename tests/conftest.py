"""Fixtures shared by every test: the shipped rules, a writable copy, in-memory replay, and
the databases (SQLite, and the PostgreSQL that ``bash scripts/postgres.sh`` provides)."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, make_url, text
from sqlalchemy.exc import SQLAlchemyError
from support import RULES, Run, run_events

from outreach.events import Event
from outreach.rulebook import RuleBook, load_rulebook
from outreach.store import Store


@pytest.fixture(scope="session")
def book() -> RuleBook:
    """The shipped default rules folder, loaded once."""
    return load_rulebook(RULES)


@pytest.fixture
def rules_copy(tmp_path: Path) -> Path:
    """A writable copy of the shipped rules folder (edit files, then load_rulebook it)."""
    target = tmp_path / "rules"
    shutil.copytree(RULES, target)
    return target


@pytest.fixture
def run(book: RuleBook) -> Callable[..., Run]:
    """``run(events)`` replays events through the shipped rules."""

    def _run(events: Iterable[dict[str, Any] | Event], drain: bool = True) -> Run:
        return run_events(book, events, drain)

    return _run


POSTGRES_HINT = (
    "run `bash scripts/postgres.sh` (as root it installs and starts PostgreSQL; it prints the "
    "URL to export as OUTREACH_TEST_POSTGRES_URL), or run `make test`, which does both"
)


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """The test PostgreSQL (``OUTREACH_TEST_POSTGRES_URL``); fails, never skips, without it."""
    url = os.environ.get("OUTREACH_TEST_POSTGRES_URL")
    if not url:
        pytest.fail(f"OUTREACH_TEST_POSTGRES_URL is not set: {POSTGRES_HINT}", pytrace=False)
    engine = create_engine(url, connect_args={"connect_timeout": 5})
    try:
        with engine.connect():
            pass
    except SQLAlchemyError as exc:
        shown = make_url(url).render_as_string(hide_password=True)
        pytest.fail(f"cannot connect to {shown}: {exc}\n{POSTGRES_HINT}", pytrace=False)
    finally:
        engine.dispose()
    return url


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database of each kind: a SQLite file, or a PostgreSQL database of its own."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/outreach.db"
        return
    server = make_url(request.getfixturevalue("postgres_url"))
    name = f"outreach_t_{uuid.uuid4().hex}"
    admin = create_engine(server, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
        yield server.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:  # FORCE: connections a test left open
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture
def store(database_url: str) -> Iterator[Store]:
    """A migrated store on the test's database (SQLite or PostgreSQL, see ``database_url``)."""
    made = Store(database_url)
    made.migrate()
    yield made
    made.close()
