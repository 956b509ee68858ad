"""Fixtures for tests against a Kafka-protocol broker.

One session broker for the whole run: ``OUTREACH_TEST_KAFKA_URL`` if set (an existing
cluster), else Apache Kafka in a testcontainer when a Docker engine is reachable, else the
embedded Tansu broker. Tests isolate themselves with a unique topic prefix and group id.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from livesupport import WorkerProcess

from outreach.streams.embedded import EmbeddedBroker
from outreach.streams.topics import Topics, ensure_topics

KAFKA_IMAGE = "confluentinc/cp-kafka:7.6.0"
PARTITIONS = 4


def docker_reachable() -> bool:
    """Whether a Docker engine answers; probed in a child so a failed probe leaks nothing."""
    if not os.environ.get("DOCKER_HOST") and not Path("/var/run/docker.sock").exists():
        return False
    probe = "import docker; docker.from_env(timeout=3).ping()"
    try:
        done = subprocess.run([sys.executable, "-c", probe], capture_output=True, timeout=10)
    except subprocess.TimeoutExpired:
        return False
    return done.returncode == 0


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    """Bootstrap servers of the session's broker (see the module docstring for which one)."""
    url = os.environ.get("OUTREACH_TEST_KAFKA_URL")
    if url:
        yield url
    elif docker_reachable():
        from testcontainers.community.kafka import KafkaContainer

        with KafkaContainer(KAFKA_IMAGE).with_kraft() as kafka:
            yield kafka.get_bootstrap_server()
    else:
        with EmbeddedBroker() as broker:
            yield broker.bootstrap


@pytest.fixture
async def topics(kafka_bootstrap: str) -> Topics:
    """This test's own topics (a unique prefix), created with 4 partitions each."""
    made = Topics(f"t{uuid.uuid4().hex}.")
    await ensure_topics(kafka_bootstrap, made, PARTITIONS)
    return made


@pytest.fixture(autouse=True)
def no_worker_left_behind() -> Iterator[None]:
    """Kill every ``outreach worker`` child a test started and left running (a failed test)."""
    yield
    WorkerProcess.kill_all()


@pytest.fixture
def group_id() -> str:
    """A consumer group id no other test uses."""
    return f"test-{uuid.uuid4().hex}"
