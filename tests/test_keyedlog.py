"""KeyedLog: each key at most once in a JSONL file shared by instances and processes, and a
torn last line (a crash mid-write) ignored and replaced so the file stays valid JSONL."""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import orjson

from outreach.keyedlog import KeyedLog


def parsed_lines(path: Path) -> list[dict[str, Any]]:
    """Every line of the file as JSON: fails on a torn or invalid line."""
    data = path.read_bytes()
    assert data == b"" or data.endswith(b"\n"), "the last line is not terminated"
    return [orjson.loads(line) for line in data.splitlines()]


def test_a_key_is_written_once_and_a_repeat_answers_the_first_record(tmp_path: Path) -> None:
    log = KeyedLog(tmp_path / "out" / "sent.jsonl")  # the folder is created
    first, written = log.append_once({"key": "msg:1", "body": "hello"})
    again, written_again = log.append_once({"key": "msg:1", "body": "something else"})
    assert (written, written_again) == (True, False)
    assert again == first == {"key": "msg:1", "body": "hello"}
    assert log.path.read_bytes() == b'{"body":"hello","key":"msg:1"}\n'  # sorted keys, one line


def test_records_and_get_read_what_the_file_holds_in_file_order(tmp_path: Path) -> None:
    log = KeyedLog(tmp_path / "sent.jsonl")
    assert log.records() == [] and log.get("k1") is None
    for key in ("k2", "k1", "k3"):
        log.append_once({"key": key, "n": len(key)})
    reopened = KeyedLog(tmp_path / "sent.jsonl")  # a restarted process
    assert [r["key"] for r in reopened.records()] == ["k2", "k1", "k3"]
    assert reopened.get("k1") == {"key": "k1", "n": 2}
    assert reopened.get("k4") is None
    assert reopened.append_once({"key": "k1", "n": 0}) == ({"key": "k1", "n": 2}, False)


def test_an_instance_sees_what_another_instance_wrote_since_it_last_read(tmp_path: Path) -> None:
    path = tmp_path / "sent.jsonl"
    mine, theirs = KeyedLog(path), KeyedLog(path)
    assert mine.records() == []  # mine has read the file: empty
    theirs.append_once({"key": "msg:1", "by": "theirs"})
    kept, written = mine.append_once({"key": "msg:1", "by": "mine"})
    assert (kept, written) == ({"key": "msg:1", "by": "theirs"}, False)
    mine.append_once({"key": "msg:2", "by": "mine"})
    assert theirs.get("msg:2") == {"key": "msg:2", "by": "mine"}
    assert [r["key"] for r in parsed_lines(path)] == ["msg:1", "msg:2"]


def test_a_torn_last_line_is_ignored_and_replaced_by_the_next_append(tmp_path: Path) -> None:
    path = tmp_path / "sent.jsonl"
    KeyedLog(path).append_once({"key": "msg:1"})
    with path.open("ab") as handle:  # a process died half way through writing msg:2
        handle.write(b'{"body":"half a mess')
    log = KeyedLog(path)
    assert [r["key"] for r in log.records()] == ["msg:1"]
    assert log.get("msg:2") is None
    assert log.append_once({"key": "msg:2", "body": "whole"})[1] is True
    assert parsed_lines(path) == [{"key": "msg:1"}, {"body": "whole", "key": "msg:2"}]


def test_a_torn_line_left_after_an_instance_read_is_replaced_too(tmp_path: Path) -> None:
    path = tmp_path / "sent.jsonl"
    log = KeyedLog(path)
    log.append_once({"key": "a"})
    with path.open("ab") as handle:
        handle.write(b'{"key":"b","bo')
    assert log.append_once({"key": "a"})[1] is False
    assert log.append_once({"key": "c"})[1] is True
    assert [r["key"] for r in parsed_lines(path)] == ["a", "c"]
    assert [r["key"] for r in KeyedLog(path).records()] == ["a", "c"]


CHILD = """
import sys
from pathlib import Path
from outreach.keyedlog import KeyedLog

log = KeyedLog(Path(sys.argv[1]))
keys = [f"k{i:03}" for i in range(int(sys.argv[2]))]
if sys.argv[3] == "reversed":
    keys.reverse()
print("ready", flush=True)
sys.stdin.readline()  # the parent's "go", once both children are ready
print(sum(log.append_once({"key": k, "by": sys.argv[3]})[1] for k in keys))
"""


def test_two_processes_appending_the_same_keys_write_each_key_once(tmp_path: Path) -> None:
    path, count = tmp_path / "sent.jsonl", 200
    with contextlib.ExitStack() as stack:
        children = [
            stack.enter_context(  # each appends every key, one from each end
                subprocess.Popen(
                    [sys.executable, "-c", CHILD, str(path), str(count), order],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    text=True,
                )
            )
            for order in ("forward", "reversed")
        ]
        pipes = [(child.stdin, child.stdout) for child in children]
        for _, out in pipes:
            assert out is not None and out.readline() == "ready\n"
        for into, _ in pipes:  # both are ready: start them together
            assert into is not None
            into.write("go\n")
            into.close()
        written = [int(out.read()) for _, out in pipes if out is not None]
        assert [child.wait(30) for child in children] == [0, 0]
    assert sum(written) == count  # each key written by exactly one of them
    keys = Counter(r["key"] for r in parsed_lines(path))
    assert set(keys.values()) == {1} and len(keys) == count
