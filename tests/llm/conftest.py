"""Fixtures of the LLM tests: the scripted OpenAI-compatible server and gateways pointed at it."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from llm.doubles import FakeClock, OpenAIDouble
from pydantic import SecretStr

from outreach.agents.adapters.llm import LLMGateway, LLMSettings


@pytest.fixture
def api() -> Iterator[OpenAIDouble]:
    """The scripted server (key ``sk-test``)."""
    with OpenAIDouble("sk-test") as double:
        yield double


@pytest.fixture
def clock() -> FakeClock:
    """The gateway's clock (token budget day, per-minute cap)."""
    return FakeClock()


@pytest.fixture
def gateway(api: OpenAIDouble, clock: FakeClock) -> Callable[..., LLMGateway]:
    """``gateway(**settings)``: a gateway on the double; quick timeouts, no retries by default."""

    def make(**overrides: Any) -> LLMGateway:
        values: dict[str, Any] = {
            "api_key": SecretStr("sk-test"),
            "base_url": api.base_url,
            "model": "test-model",
            "timeout": 2.0,
            "max_retries": 0,
        }
        values.update(overrides)
        return LLMGateway(LLMSettings(**values), clock=clock)

    return make
