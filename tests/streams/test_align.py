"""The aligner: records of several partitions released in event-time order up to the horizon,
caught-up and silent partitions, the max_wait and max_buffered escapes, revoked partitions,
the release limit, and a property over arbitrary fetch interleavings."""

from __future__ import annotations

import functools
from datetime import UTC, datetime, timedelta

import orjson
from hypothesis import example, given, settings
from hypothesis import strategies as st
from support import profile

from outreach.events import Event, parse_event
from outreach.streams.align import Aligner
from outreach.streams.codec import DeadLetter, Record
from outreach.streams.processor import Decoded

PAY = ("payments", 0)
CUS = ("customers", 1)
BASE = datetime(2026, 3, 2, 10, tzinfo=UTC)


@functools.cache
def event_at(seconds: int) -> Event:
    """A real ``customer.updated`` event that occurred ``seconds`` after BASE."""
    return parse_event(orjson.dumps(profile(BASE + timedelta(seconds=seconds), "cus_1")))


def fetched(tp: tuple[str, int], *stamps: int | None, start: int = 0) -> list[Decoded]:
    """Records of one partition from offset ``start``: an int is an event that many seconds
    after BASE, None a dead letter."""
    out: list[Decoded] = []
    for offset, stamp in enumerate(stamps, start):
        record = Record(tp[0], tp[1], offset, b"cus_1", b"{}")
        if stamp is None:
            out.append((record, DeadLetter("invalid event: not JSON")))
        else:
            out.append((record, event_at(stamp)))
    return out


def seconds(items: list[Decoded]) -> list[int | None]:
    """Each released record's event time (seconds after BASE), None for a dead letter."""
    return [
        None if isinstance(e, DeadLetter) else int((e.occurred_at - BASE).total_seconds())
        for _, e in items
    ]


def where(items: list[Decoded]) -> list[tuple[str, int, int]]:
    return [(r.topic, r.partition, r.offset) for r, _ in items]


def test_records_are_released_up_to_the_earliest_latest_time_in_event_time_order() -> None:
    aligner = Aligner()
    aligner.assign([PAY, CUS])
    aligner.add(PAY, fetched(PAY, 1, 3, 5, 7))
    aligner.add(CUS, fetched(CUS, 2, 4))
    first = aligner.release(set(), now=0.0)
    assert seconds(first) == [1, 2, 3, 4]  # customers has shown nothing after 4 yet
    assert where(first) == [
        ("payments", 0, 0), ("customers", 1, 0), ("payments", 0, 1), ("customers", 1, 1),
    ]  # fmt: skip
    assert aligner.buffered == 2 and aligner.first_unreleased() == {PAY: 2}
    aligner.add(CUS, fetched(CUS, 6, 9, start=2))
    assert seconds(aligner.release(set(), now=0.0)) == [5, 6, 7]  # payments now holds at 7
    assert aligner.first_unreleased() == {CUS: 3}


def test_each_partition_releases_a_prefix_of_its_offsets() -> None:
    aligner = Aligner()
    aligner.add(PAY, fetched(PAY, 1, 9, 2))  # out of order within the partition
    aligner.add(CUS, fetched(CUS, 5, 6))
    released = aligner.release(set(), now=0.0)  # horizon min(9, 6) = 6
    assert where(released) == [("payments", 0, 0), ("customers", 1, 0), ("customers", 1, 1)]
    assert aligner.first_unreleased() == {PAY: 1}  # offset 2 (time 2) waits behind offset 1


def test_a_caught_up_partition_does_not_hold_anything_back() -> None:
    held, free = Aligner(), Aligner()
    for aligner in (held, free):
        aligner.add(PAY, fetched(PAY, 1, 2, 3, 4, 5))
        aligner.add(CUS, fetched(CUS, 2))
    assert seconds(held.release(set(), now=0.0)) == [1, 2, 2]
    assert seconds(free.release({CUS}, now=0.0)) == [1, 2, 2, 3, 4, 5]
    assert free.buffered == 0 and free.first_unreleased() == {}


def test_everything_is_released_when_every_partition_is_caught_up() -> None:
    aligner = Aligner()
    aligner.add(PAY, fetched(PAY, 10, 30))
    aligner.add(CUS, fetched(CUS, 20))
    assert seconds(aligner.release({PAY, CUS}, now=0.0)) == [10, 20, 30]


def test_a_silent_partition_holds_all_but_dead_letters_until_max_wait_passes() -> None:
    aligner = Aligner(max_wait=2.0)
    aligner.assign([PAY, CUS])
    aligner.add(PAY, fetched(PAY, None, 1, 2))
    assert seconds(aligner.release(set(), now=100.0)) == [None]  # nothing to wait for
    aligner.add(PAY, fetched(PAY, 3, start=3))  # payments keeps coming; customers says nothing
    assert aligner.release(set(), now=101.9) == []
    assert aligner.first_unreleased() == {PAY: 1}
    assert seconds(aligner.release(set(), now=102.0)) == [1, 2, 3]
    assert aligner.buffered == 0


def test_the_wait_starts_again_whenever_the_horizon_moves() -> None:
    aligner = Aligner(max_wait=2.0)
    aligner.assign([PAY, CUS])
    aligner.add(PAY, fetched(PAY, 1, 5, 8))
    assert aligner.release(set(), now=100.0) == []
    aligner.add(CUS, fetched(CUS, 3))
    assert seconds(aligner.release(set(), now=101.0)) == [1, 3]  # the horizon moved to 3
    aligner.add(PAY, fetched(PAY, 9, start=3))
    assert aligner.release(set(), now=102.5) == []  # 1.5 s since it moved
    assert seconds(aligner.release(set(), now=103.0)) == [5, 8, 9]


def test_when_nothing_arrives_from_anywhere_order_is_kept_until_max_stall() -> None:
    """A hung broker: what was buffered before it stopped answering is not released out of
    order with what the other partitions will bring when it is back (bounded by max_stall)."""
    aligner = Aligner(max_wait=2.0, max_stall=60.0)
    aligner.assign([PAY, CUS])
    aligner.add(PAY, fetched(PAY, 1, 5))
    aligner.add(CUS, fetched(CUS, 2))
    assert seconds(aligner.release(set(), now=100.0)) == [1, 2]
    assert aligner.release(set(), now=102.0) == []  # max_wait passed, but nothing moves at all
    assert aligner.release(set(), now=159.9) == []
    aligner.add(CUS, fetched(CUS, 3, start=1))  # the broker is back: the order is kept
    assert seconds(aligner.release(set(), now=160.5)) == [3]
    assert seconds(aligner.release(set(), now=220.5)) == [5]  # bounded: max_stall again


def test_what_trickles_in_as_a_broker_hangs_does_not_end_the_wait() -> None:
    """The client's prefetched records still arrive for a moment after the broker stops
    answering; that is not a partition lagging behind live ones."""
    aligner = Aligner(max_wait=2.0, max_stall=60.0)
    aligner.assign([PAY, CUS])
    aligner.add(PAY, fetched(PAY, 1, 5))
    aligner.add(CUS, fetched(CUS, 2))
    assert seconds(aligner.release(set(), now=100.0)) == [1, 2]
    aligner.add(PAY, fetched(PAY, 7, start=2))  # prefetched, delivered as the broker hangs
    assert aligner.release(set(), now=100.1) == []
    assert aligner.release(set(), now=102.1) == []  # stuck 2 s, but nothing arrives now
    assert aligner.release(set(), now=130.0) == []
    assert seconds(aligner.release(set(), now=160.0)) == [5, 7]


def test_after_a_stall_the_holder_gets_max_wait_again() -> None:
    """A hung broker comes back: the first records to arrive are not a sign that the partition
    holding the horizon lags. Only the time spent while others deliver counts (the time of
    the stall does not), so the holder's own fetch, on its way, still gets ``max_wait``."""
    aligner = Aligner(max_wait=2.0, max_stall=60.0)
    aligner.assign([PAY, CUS])
    aligner.add(PAY, fetched(PAY, 1))
    aligner.add(CUS, fetched(CUS, 2, 5))
    assert seconds(aligner.release(set(), now=100.0)) == [1]
    assert aligner.release(set(), now=115.0) == []  # 15 s of nothing from anywhere
    aligner.add(CUS, fetched(CUS, 8, start=2))  # the broker is back: CUS first
    assert aligner.release(set(), now=115.1) == []
    assert aligner.unaligned is None
    aligner.add(CUS, fetched(CUS, 9, start=3))
    assert aligner.release(set(), now=116.5) == []
    aligner.add(PAY, fetched(PAY, 6, start=1))  # the holder answers in time: order kept
    assert seconds(aligner.release(set(), now=116.6)) == [2, 5, 6]
    aligner.add(CUS, fetched(CUS, 10, start=4))
    for now in (117.0, 118.0):  # PAY lags now, CUS keeps delivering
        aligner.add(CUS, fetched(CUS, int(now) - 100, start=int(now)))
        assert aligner.release(set(), now=now) == []
    aligner.add(CUS, fetched(CUS, 20, start=20))
    assert seconds(aligner.release(set(), now=119.0)) == [8, 9, 10, 17, 18, 20]
    assert aligner.unaligned is not None and "no progress for 2.4 s" in aligner.unaligned
    assert aligner.unaligned_by == "max_wait"


def test_a_stall_the_aligner_was_not_asked_about_is_no_lag_either() -> None:
    """The driver may not call ``release`` during the stall (its fetch blocked): the first
    records after a silence start the holder's ``max_wait``, they do not end it."""
    aligner = Aligner(max_wait=2.0, max_stall=60.0)
    aligner.assign([PAY, CUS])
    aligner.add(PAY, fetched(PAY, 1))
    aligner.add(CUS, fetched(CUS, 2, 5))
    assert seconds(aligner.release(set(), now=100.0)) == [1]
    aligner.add(CUS, fetched(CUS, 8, start=2))  # 15 s later, no release in between
    assert aligner.release(set(), now=115.0) == []
    aligner.add(CUS, fetched(CUS, 9, start=3))
    assert aligner.release(set(), now=116.9) == []
    aligner.add(CUS, fetched(CUS, 10, start=4))
    assert seconds(aligner.release(set(), now=117.0)) == [2, 5, 8, 9, 10]


def test_a_stall_of_max_stall_releases_everything() -> None:
    aligner = Aligner(max_wait=2.0, max_stall=60.0)
    aligner.assign([PAY, CUS])
    aligner.add(PAY, fetched(PAY, 1, 5))
    assert aligner.release(set(), now=100.0) == []
    assert aligner.release(set(), now=159.9) == []
    assert aligner.unaligned_by is None
    assert seconds(aligner.release(set(), now=160.0)) == [1, 5]
    assert aligner.unaligned_by == "max_stall"
    assert aligner.unaligned is not None and "nothing from any partition" in aligner.unaligned


def test_a_full_buffer_is_released_without_waiting() -> None:
    aligner = Aligner(max_wait=60.0, max_buffered=3)
    aligner.assign([PAY, CUS])
    aligner.add(PAY, fetched(PAY, 1, 2))
    assert aligner.release(set(), now=0.0) == []
    aligner.add(PAY, fetched(PAY, 3, start=2))
    assert seconds(aligner.release(set(), now=0.0)) == [1, 2, 3]
    assert aligner.unaligned_by == "max_buffered"
    aligner.add(CUS, fetched(CUS, 4))
    assert seconds(aligner.release({PAY}, now=0.0)) == [4]  # PAY caught up: nothing waits
    assert aligner.unaligned_by is None


def test_assign_drops_every_buffer_because_the_consumer_fetches_again() -> None:
    """After a rebalance the consumer fetches kept partitions again from the committed or
    stored position: anything still buffered would come twice."""
    aligner = Aligner()
    aligner.assign([PAY, CUS])
    aligner.add(PAY, fetched(PAY, 1, 2))
    aligner.add(CUS, fetched(CUS, 3, 4))
    aligner.assign([PAY])
    assert aligner.buffered == 0 and aligner.first_unreleased() == {}
    aligner.add(PAY, fetched(PAY, 1, 2))  # read again
    assert where(aligner.release(set(), now=0.0)) == [("payments", 0, 0), ("payments", 0, 1)]
    aligner.assign([PAY, CUS])  # given back: what it had shown (up to 4) is forgotten too
    aligner.add(PAY, fetched(PAY, 3, start=2))
    assert aligner.release(set(), now=0.0) == []
    aligner.add(CUS, fetched(CUS, 3, 4))  # read again from the committed offset
    assert where(aligner.release(set(), now=0.0)) == [("payments", 0, 2), ("customers", 1, 0)]
    assert aligner.first_unreleased() == {CUS: 1}


def test_first_unreleased_names_the_first_buffered_offset_of_each_partition() -> None:
    aligner = Aligner()
    assert aligner.first_unreleased() == {}
    aligner.add(PAY, fetched(PAY, 1, 5, start=40))
    aligner.add(CUS, fetched(CUS, 2, 3, start=7))
    assert aligner.first_unreleased() == {PAY: 40, CUS: 7}
    aligner.release(set(), now=0.0)  # horizon 3: everything but payments@41
    assert aligner.first_unreleased() == {PAY: 41}


def test_releasing_from_several_partitions_takes_exactly_the_released_records() -> None:
    aligner = Aligner()
    aligner.add(PAY, fetched(PAY, 1, 5))
    aligner.add(CUS, fetched(CUS, 2, 6))
    first = aligner.release(set(), now=0.0)  # horizon 5
    rest = aligner.release({PAY, CUS}, now=0.0)
    assert where(first) == [("payments", 0, 0), ("customers", 1, 0), ("payments", 0, 1)]
    assert where(rest) == [("customers", 1, 1)]


def test_release_takes_at_most_limit_records_earliest_first() -> None:
    aligner = Aligner()
    aligner.add(PAY, fetched(PAY, 1, 3, 5))
    aligner.add(CUS, fetched(CUS, 2, 4, 6))
    assert aligner.release({PAY, CUS}, now=0.0, limit=0) == []
    assert seconds(aligner.release({PAY, CUS}, now=0.0, limit=4)) == [1, 2, 3, 4]
    assert aligner.buffered == 2 and aligner.first_unreleased() == {PAY: 2, CUS: 2}
    assert seconds(aligner.release({PAY, CUS}, now=0.0)) == [5, 6]


def test_backlog_counts_what_one_partition_has_buffered() -> None:
    aligner = Aligner()
    aligner.add(PAY, fetched(PAY, 1, 3, 5))
    aligner.add(CUS, fetched(CUS, 2))
    assert (aligner.backlog(PAY), aligner.backlog(CUS), aligner.backlog(("usage", 0))) == (3, 1, 0)
    aligner.release({CUS}, now=0.0, limit=2)
    assert (aligner.backlog(PAY), aligner.backlog(CUS)) == (2, 0)


@st.composite
def interleavings(
    draw: st.DrawFn,
) -> tuple[list[list[int]], list[tuple[int, int, int | None]]]:
    """Per-partition time-sorted streams, and fetch steps (partition, chunk size, limit)."""
    count = draw(st.integers(1, 4))
    streams = [sorted(draw(st.lists(st.integers(0, 30), max_size=12))) for _ in range(count)]
    steps = draw(
        st.lists(
            st.tuples(st.integers(0, count - 1), st.integers(1, 4), st.none() | st.integers(0, 5)),
            max_size=40,
        )
    )
    return streams, steps


@settings(max_examples=200, deadline=None, database=None)
@given(interleavings())
@example(([[1, 5], [2, 6]], [(0, 2, None), (1, 2, None)]))  # the simplest two-partition case
def test_any_fetch_interleaving_releases_every_record_once_in_event_time_order(
    plan: tuple[list[list[int]], list[tuple[int, int, int | None]]],
) -> None:
    streams, steps = plan
    tps = [("t", i) for i in range(len(streams))]
    aligner = Aligner()  # `now` never moves: the max_wait escape stays shut
    aligner.assign(tps)
    taken = [0] * len(streams)
    released: list[Decoded] = []

    def fetch(index: int, size: int) -> None:
        chunk = streams[index][taken[index] : taken[index] + size]
        aligner.add(tps[index], fetched(tps[index], *chunk, start=taken[index]))
        taken[index] += len(chunk)

    def caught_up() -> set[tuple[str, int]]:
        return {tp for tp, n, s in zip(tps, taken, streams, strict=True) if n == len(s)}

    for index, size, limit in steps:
        fetch(index, size)
        released += aligner.release(caught_up(), now=0.0, limit=limit)
    for index, stream in enumerate(streams):
        fetch(index, len(stream))
    released += aligner.release(caught_up(), now=0.0)

    times = [e.occurred_at for _, e in released]
    assert times == sorted(times)
    expected = sorted(
        (tp[0], tp[1], o) for tp, s in zip(tps, streams, strict=True) for o in range(len(s))
    )
    assert sorted(where(released)) == expected  # every record, each exactly once
    for tp in tps:
        offsets = [r.offset for r, _ in released if (r.topic, r.partition) == tp]
        assert offsets == list(range(len(offsets)))  # each partition in offset order
    assert aligner.buffered == 0 and aligner.first_unreleased() == {}
