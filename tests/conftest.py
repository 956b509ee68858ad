"""Fixtures shared by every test: the shipped rules, a writable copy, in-memory replay."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pytest
from support import RULES, Run, run_events

from outreach.events import Event
from outreach.rulebook import RuleBook, load_rulebook


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
