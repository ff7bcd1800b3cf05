"""Sinks: ring buffer, rotating JSONL file, live subscribers that never block."""

from __future__ import annotations

import asyncio
import json
import threading
from pathlib import Path

import pytest

from teaching_cri.trace.events import EventKind, TraceEvent, TraceFilter
from teaching_cri.trace.sinks import (
    FanOutSink,
    JsonlFileSink,
    RingBufferSink,
    read_jsonl,
    rotated_files,
)


def ev(seq: int, chart: str = "Version", **attrs: str) -> TraceEvent:
    return TraceEvent(
        "a" * 32, "b" * 16, "", seq, 1_000 + seq, chart, "version", EventKind.STEP, "", attrs, seq
    )


def test_ring_buffer_keeps_the_newest_and_filters() -> None:
    ring = RingBufferSink(capacity=5)
    for i in range(1, 13):
        ring.publish(ev(i, chart="Status" if i % 2 else "Version"))
    assert [e.sequence for e in ring.snapshot()] == [8, 9, 10, 11, 12]
    assert [e.sequence for e in ring.snapshot(TraceFilter(charts=frozenset({"Status"})))] == [9, 11]
    assert ring.counts() == (12, 0)


def test_filters_and_since() -> None:
    flt = TraceFilter(container_id="c1", since_unix_nano=1_005)
    assert flt.matches(ev(5, container_id="c1"))
    assert not flt.matches(ev(4, container_id="c1"))
    assert not flt.matches(ev(6, container_id="c2"))
    assert TraceFilter(sandbox_id="p").matches(ev(1, sandbox_id="p"))
    assert not TraceFilter(trace_id="x").matches(ev(1))


def test_jsonl_file_rotates_and_every_line_is_an_event(tmp_path: Path) -> None:
    path = tmp_path / "trace" / "trace.jsonl"
    sink = JsonlFileSink(path, max_bytes=2_000, backups=2)
    for i in range(1, 101):
        sink.publish(ev(i, container_id="c"))
    sink.close()
    files = sorted(tmp_path.glob("trace/trace.jsonl*"))
    assert [f.name for f in files] == ["trace.jsonl", "trace.jsonl.1", "trace.jsonl.2"]
    assert all(f.stat().st_size <= 2_000 for f in files)
    events = [
        TraceEvent.from_dict(json.loads(line)) for f in files for line in f.read_text().splitlines()
    ]
    assert events and all(e.attributes == {"container_id": "c"} for e in events)
    newest = [TraceEvent.from_dict(json.loads(x)) for x in path.read_text().splitlines()]
    assert newest[-1].sequence == 100  # close() wrote everything queued before it
    assert sink.counts() == (100, 0)


def test_jsonl_file_drops_and_counts_when_its_queue_is_full(tmp_path: Path) -> None:
    sink = JsonlFileSink(tmp_path / "t.jsonl", queue_size=4)
    # Hold the handler's lock so the writer thread is stuck on its first event.
    sink._handler.acquire()
    try:
        for i in range(1, 21):
            sink.publish(ev(i))
    finally:
        sink._handler.release()
    sink.close()
    delivered, dropped = sink.counts()
    assert dropped > 0 and delivered + dropped == 20


async def test_a_slow_subscriber_drops_and_learns_how_many() -> None:
    fan = FanOutSink(queue_size=3)
    fan.bind(asyncio.get_running_loop())
    slow = fan.subscribe(TraceFilter())
    picky = fan.subscribe(TraceFilter(charts=frozenset({"Status"})))
    for i in range(1, 11):
        fan.publish(ev(i))  # never blocks, whoever is not reading
    got = [await slow.get() for _ in range(3)]
    assert [(e.sequence, d) for e, d in got if e] == [(1, 0), (2, 0), (3, 0)]
    fan.publish(ev(11))
    item = await slow.get()
    assert item is not None and item[0].sequence == 11 and item[1] == 7
    assert picky.queue.empty()
    assert fan.counts() == (4, 7)
    fan.close()
    assert await slow.get() is None and await picky.get() is None


async def test_events_from_other_threads_reach_subscribers_in_order() -> None:
    fan = FanOutSink()
    fan.bind(asyncio.get_running_loop())
    sub = fan.subscribe(TraceFilter())
    thread = threading.Thread(target=lambda: [fan.publish(ev(i)) for i in range(1, 51)])
    thread.start()
    thread.join()
    got = [await asyncio.wait_for(sub.get(), 5) for _ in range(50)]
    assert [item[0].sequence for item in got if item] == list(range(1, 51))


async def test_replay_comes_before_live_events() -> None:
    fan = FanOutSink()
    fan.bind(asyncio.get_running_loop())
    sub = fan.subscribe(TraceFilter(), replay=[ev(1), ev(2)])
    fan.publish(ev(3))
    got = [await sub.get() for _ in range(3)]
    assert [item[0].sequence for item in got if item] == [1, 2, 3]


def test_filters_cross_the_wire_intact() -> None:
    from teaching_cri.api import trace_pb2
    from teaching_cri.trace.wire import event_from_pb, event_to_pb, filter_from_pb

    msg = trace_pb2.TraceFilter(
        charts=["Status", "Version"],
        container_id="c",
        sandbox_id="p",
        trace_id="t",
        since_unix_nano=9,
    )
    assert filter_from_pb(msg) == TraceFilter(frozenset({"Status", "Version"}), "c", "p", "t", 9)
    event = ev(3, container_id="c")
    assert event_from_pb(event_to_pb(event, dropped_before=2)) == event


async def test_a_follow_arriving_during_shutdown_ends_at_once() -> None:
    fan = FanOutSink()
    fan.bind(asyncio.get_running_loop())
    fan.close()
    late = fan.subscribe(TraceFilter())
    assert await asyncio.wait_for(late.get(), 1) is None


def test_a_rotated_trace_is_read_back_whole_and_in_order(tmp_path: Path) -> None:
    path = tmp_path / "trace.jsonl"
    sink = JsonlFileSink(path, max_bytes=3_000, backups=5)
    for i in range(1, 61):
        sink.publish(ev(i))
    sink.close()
    files = rotated_files(path)
    assert files[-1] == path and len(files) > 2
    assert files[:-1] == sorted(files[:-1], key=lambda p: -int(p.suffix[1:])), "oldest first"
    trace = read_jsonl(path, backups=5)
    assert [e.sequence for e in trace.events] == list(range(1, 61))
    assert not trace.may_have_lost_oldest and trace.torn_lines == 0


def test_a_full_set_of_backups_may_have_lost_the_oldest(tmp_path: Path) -> None:
    path = tmp_path / "trace.jsonl"
    sink = JsonlFileSink(path, max_bytes=1_000, backups=2)
    for i in range(1, 101):
        sink.publish(ev(i))
    sink.close()
    trace = read_jsonl(path, backups=2)
    assert trace.may_have_lost_oldest
    assert trace.events[0].sequence > 1 and trace.events[-1].sequence == 100


def test_a_torn_last_line_is_skipped_and_counted(tmp_path: Path) -> None:
    """A server killed in the middle of a write: the events before it stand."""
    path = tmp_path / "t.jsonl"
    whole = [ev(1).to_json(), ev(2).to_json()]
    path.write_text("\n".join(whole) + "\n" + ev(3).to_json()[:40])
    trace = read_jsonl(path)
    assert [e.sequence for e in trace.events] == [1, 2] and trace.torn_lines == 1
    path.write_text(whole[0][:40] + "\n" + whole[1] + "\n")
    with pytest.raises(ValueError, match=r"t\.jsonl:1: not a trace event"):
        read_jsonl(path)
