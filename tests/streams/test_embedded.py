"""The embedded Tansu broker: starts, serves, stops, and never outlives its parent."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from outreach.streams.embedded import BrokerStartError, EmbeddedBroker

pytestmark = pytest.mark.timeout(30)


def process_gone(pid: int) -> bool:
    """No such process, or only a zombie left for init to reap (it can run nothing)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


def wait_until_gone(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while not process_gone(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def test_the_broker_accepts_connections_then_stops_and_leaves_no_process() -> None:
    with EmbeddedBroker() as broker:
        pid = broker.pid
        assert pid is not None and broker.running
        host, port = broker.bootstrap.split(":")
        assert host == "127.0.0.1"
        with socket.create_connection((host, int(port)), timeout=2):
            pass
    assert not broker.running
    with pytest.raises(ProcessLookupError):  # stopped and reaped, not a zombie
        os.kill(pid, 0)
    with pytest.raises(RuntimeError, match="not running"):
        _ = broker.bootstrap
    broker.stop()  # idempotent


def test_two_brokers_get_different_ports() -> None:
    with EmbeddedBroker() as first, EmbeddedBroker() as second:
        assert first.bootstrap != second.bootstrap


def test_the_broker_dies_with_its_parent_process(tmp_path: Path) -> None:
    script = (
        "import os\n"
        "from outreach.streams.embedded import EmbeddedBroker\n"
        "broker = EmbeddedBroker().start()\n"
        "print(broker.pid, flush=True)\n"
        "os._exit(0)  # no stop(), no atexit, no finally: only the kernel can clean up\n"
    )
    parent = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=20, check=True
    )
    pid = int(parent.stdout)
    try:
        assert wait_until_gone(pid, seconds=5), f"the broker (pid {pid}) outlived its parent"
    finally:
        if not process_gone(pid):
            os.kill(pid, 9)


def test_a_failed_start_quotes_the_broker_output_without_the_password() -> None:
    broker = EmbeddedBroker(storage="bogus://user:hunter2@nowhere/")
    with pytest.raises(BrokerStartError) as caught:
        broker.start()
    message = str(caught.value)
    assert "exited with code" in message
    assert "UnsupportedStorageUrl" in message  # the tail of Tansu's own output
    assert "user:***@nowhere" in message and "hunter2" not in message
    assert not broker.running


def test_a_missing_binary_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(BrokerStartError, match="cannot run the Tansu broker"):
        EmbeddedBroker(binary=str(tmp_path / "no-tansu")).start()


def test_the_broker_output_goes_to_the_given_file(tmp_path: Path) -> None:
    log = tmp_path / "tansu.log"
    with EmbeddedBroker(log_path=log) as broker:
        bootstrap = broker.bootstrap
    text = log.read_text()
    assert f"listening on: tcp://{bootstrap}" in text
    assert "\x1b[" not in text  # NO_COLOR: plain text in log files


async def test_a_broker_on_s3_storage_keeps_records_and_offsets_across_a_restart() -> None:
    """The restart the live and reliability tests rely on: same port, every record still
    there, the group's committed offset too, and new records go after the old ones."""
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
    from livesupport import persistent_broker

    from outreach.streams.topics import Topics, ensure_topics

    topics = Topics("restart.")
    tp = TopicPartition(topics.usage, 0)

    async def produce(bootstrap: str, values: range) -> None:
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=False)
        await producer.start()
        try:
            for i in values:
                await producer.send_and_wait(topics.usage, b"%d" % i, key=b"k", partition=0)
        finally:
            await producer.stop()

    async def consume(bootstrap: str, count: int) -> list[bytes]:
        """``count`` records from the group's committed offset on; commits after them."""
        consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap, group_id="g", enable_auto_commit=False,
            auto_offset_reset="earliest",
        )  # fmt: skip
        await consumer.start()
        try:
            consumer.assign([tp])
            got: list[bytes] = []
            deadline = time.monotonic() + 30  # getmany's own timeout: never cancel a getmany
            while len(got) < count and time.monotonic() < deadline:
                batch = await consumer.getmany(tp, timeout_ms=500)
                got += [m.value or b"" for m in batch.get(tp, [])]
            assert len(got) >= count, f"{len(got)} of {count} records in 30 s"
            got = got[:count]
            committed = await consumer.committed(tp) or 0
            await consumer.commit({tp: committed + count})
            return got
        finally:
            await consumer.stop()

    with persistent_broker() as broker:
        bootstrap = broker.bootstrap
        await ensure_topics(bootstrap, topics, 2)
        await produce(bootstrap, range(10))
        assert await consume(bootstrap, 6) == [b"%d" % i for i in range(6)]
        pid = broker.pid
        broker.restart(down=0.5)
        assert broker.pid != pid and broker.bootstrap == bootstrap
        await produce(bootstrap, range(10, 15))
        assert await consume(bootstrap, 9) == [b"%d" % i for i in range(6, 15)]


def test_a_memory_broker_refuses_a_restart_that_would_lose_everything() -> None:
    with EmbeddedBroker() as broker:
        with pytest.raises(RuntimeError, match="loses every record"):
            broker.restart()
        assert broker.running
