"""Fixtures of the telemetry tests: the root logger and the secret registry put back after
each test (``configure_logging`` changes both for the whole process)."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from outreach.telemetry import redact

NAMED = ("uvicorn", "uvicorn.error", "uvicorn.access", "faust", "mode", "aiokafka")


@pytest.fixture(autouse=True)
def _logging_restored() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    named = {n: (list(logging.getLogger(n).handlers), logging.getLogger(n).propagate)
             for n in NAMED}  # fmt: skip
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    for name, (kept, propagate) in named.items():
        logger = logging.getLogger(name)
        logger.handlers[:] = kept
        logger.propagate = propagate
    redact.SECRETS.clear()
