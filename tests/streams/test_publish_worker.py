"""``outreach worker --publish``: the lines it could not send are listed as ``outreach publish``
lists them, and the exit code says so, while the events it sent are applied."""

from __future__ import annotations

import asyncio
from pathlib import Path

import orjson
import pytest
from livesupport import WorkerProcess, applied
from support import make_event, profile

from outreach.streams.topics import Topics

pytestmark = pytest.mark.timeout(120)

AT = "2026-03-02T10:00:00Z"


async def test_worker_publish_lists_the_lines_not_sent_and_exits_1_after_applying_the_rest(
    kafka_bootstrap: str, topics: Topics, group_id: str, tmp_path: Path
) -> None:
    """It read only the count of events sent: the lines not sent went unmentioned and the
    worker exited 0."""
    usage = make_event(
        "usage.reported", AT, "cus_1", metric="api_calls", value=12.5,
        period_start="2026-03-01T00:00:00Z", period_end="2026-03-02T00:00:00Z",
    )  # fmt: skip
    lines = [orjson.dumps(profile(AT, "cus_1")), b"oops", orjson.dumps(usage), b"[]"]
    events = tmp_path / "events.jsonl"
    events.write_bytes(b"".join(line + b"\n" for line in lines))
    url, data = f"sqlite:///{tmp_path}/store.db", tmp_path / "data"
    worker = WorkerProcess(
        kafka_bootstrap, topics, group_id, url, data, "--publish", str(events), "--until-idle"
    ).start()

    code = await asyncio.to_thread(worker.wait, 100)

    log = worker.log()
    assert code == 1, log
    assert "2 line(s) not sent" in log
    assert f"{events}:2: not JSON" in log
    assert f"{events}:4: not a JSON object but list" in log
    assert f"2 events acknowledged by {kafka_bootstrap}" in log
    assert applied(url, group_id, topics.inputs) == 2  # what was sent was applied all the same
