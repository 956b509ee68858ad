"""Fixtures of the connector tests: the operator's system, connectors closed after the test,
and an address where nothing listens."""

from __future__ import annotations

import os
import socket
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from connectors.cases import MakeConnector
from connectors.doubles import SECRET, OperatorSystem

from outreach.connectors.config import HttpTool
from outreach.connectors.http import HttpConnector


@pytest.fixture(autouse=True)
def _no_outreach_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings come from the test, not from the shell that runs it."""
    for name in list(os.environ):
        if name.startswith("OUTREACH_"):
            monkeypatch.delenv(name)


@pytest.fixture
def system() -> Iterator[OperatorSystem]:
    """The operator's system, signing secret ``SECRET``."""
    with OperatorSystem() as made:
        yield made


@pytest.fixture
async def connect() -> AsyncIterator[MakeConnector]:
    """``connect(config, tool=..., **options)``: an ``HttpConnector`` signing with ``SECRET``
    unless told otherwise; its HTTP client is closed after the test."""
    made: list[HttpConnector] = []

    def make(config: HttpTool, tool: str = "rebook_shipment", **options: Any) -> HttpConnector:
        options.setdefault("secret", SECRET)
        connector = HttpConnector(tool, config, **options)
        made.append(connector)
        return connector

    yield make
    for connector in made:
        await connector.aclose()


@pytest.fixture
def refused_url() -> str:
    """``http://127.0.0.1:<port>`` where nothing listens (the port was just released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}"
