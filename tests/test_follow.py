"""TraceService.Follow: watching a live server's steps from another process."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import grpc
import pytest

from teaching_cri.api import api_pb2, trace_pb2, trace_pb2_grpc
from teaching_cri.client import Client
from teaching_cri.trace.charts import ChartSet
from teaching_cri.trace.conformance import assert_conforms
from teaching_cri.trace.events import EventKind, TraceEvent

from conftest import Server


def collect_until_end(stream: object, chart: str, out: list[TraceEvent]) -> None:
    for event, _dropped in stream:  # type: ignore[attr-defined]
        out.append(event)
        if event.chart == chart and event.kind is EventKind.END:
            return


def test_follow_sees_the_version_span_in_order_and_it_conforms(
    client: Client, charts: ChartSet
) -> None:
    since = time.time_ns()
    stream = client.follow(charts=["Version"], since_unix_nano=since)
    seen: list[TraceEvent] = []
    reader = threading.Thread(target=collect_until_end, args=(stream, "Version", seen))
    reader.start()
    client.runtime.Version(api_pb2.VersionRequest())
    reader.join(timeout=15)
    assert not reader.is_alive(), f"Follow did not deliver the Version span; got {seen}"
    assert [(e.kind.value, e.node) for e in seen] == [
        ("begin", "version"),
        ("step", "m_cb_container_version"),
        ("step", "version_response_to_grpc"),
        ("end", "version_response"),
    ]
    assert [e.sequence for e in seen] == sorted(e.sequence for e in seen)
    assert all(e.unix_nano >= since for e in seen)
    assert_conforms(seen, charts)


def test_follow_filters_by_chart_live(client: Client) -> None:
    calls = client.trace.Follow(
        trace_pb2.FollowRequest(filter=trace_pb2.TraceFilter(charts=["Status"]))
    )
    got: list[trace_pb2.TraceEvent] = []

    def read() -> None:
        for msg in calls:
            got.append(msg)
            if msg.kind == trace_pb2.EVENT_KIND_END:
                return

    reader = threading.Thread(target=read)
    reader.start()
    deadline = time.monotonic() + 15
    while reader.is_alive() and time.monotonic() < deadline:
        client.runtime.Version(api_pb2.VersionRequest())  # filtered out
        client.runtime.Status(api_pb2.StatusRequest())
        reader.join(0.1)
    calls.cancel()
    assert got and {m.chart for m in got} == {"Status"}


@pytest.mark.parametrize(
    ("flt", "message"),
    [
        (trace_pb2.TraceFilter(charts=["Version", "NoSuchChart"]), "NoSuchChart"),
        (trace_pb2.TraceFilter(since_unix_nano=-5), "since_unix_nano"),
    ],
)
def test_unknown_filters_are_invalid_argument(
    client: Client, flt: trace_pb2.TraceFilter, message: str
) -> None:
    with pytest.raises(grpc.RpcError) as err:
        next(iter(client.trace.Follow(trace_pb2.FollowRequest(filter=flt))))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in err.value.details()
    with pytest.raises(grpc.RpcError) as err:
        client.trace.Recent(trace_pb2.RecentRequest(filter=flt))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_the_cli_follows_from_another_process(server: Server, client: Client) -> None:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "teaching_cri",
            "trace",
            "follow",
            "--socket",
            str(server.socket),
            "--chart",
            "Version",
            "--since",
            "60",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        client.runtime.Version(api_pb2.VersionRequest())
        lines = []
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line.rstrip("\n"))
            if " end " in line:
                break
    finally:
        proc.terminate()
        proc.wait(10)
    assert len(lines) == 4
    fields = [line.split() for line in lines]
    assert [(f[1], f[2], f[3]) for f in fields] == [
        ("Version", "begin", "version"),
        ("Version", "step", "m_cb_container_version"),
        ("Version", "step", "version_response_to_grpc"),
        ("Version", "end", "version_response"),
    ]
    assert all(f[0].count(":") == 2 and f[4].startswith("trace=") for f in fields)


def test_a_follower_that_never_reads_does_not_block_rpcs(server: Server, client: Client) -> None:
    since = time.time_ns()
    client.runtime.Version(api_pb2.VersionRequest())
    # The stalled follower has a channel of its own whose HTTP/2 window stays at
    # 64 KiB (no BDP probing), so the server's queue for it fills up quickly.
    slow_channel = grpc.insecure_channel(
        f"unix://{server.socket}", options=[("grpc.http2.bdp_probe", 0)]
    )
    slow = trace_pb2_grpc.TraceServiceStub(slow_channel)
    # Opened, then never read. Its first (replayed) event proves it is subscribed.
    stalled = slow.Follow(
        trace_pb2.FollowRequest(filter=trace_pb2.TraceFilter(since_unix_nano=since))
    )
    try:
        next(stalled)
    except grpc.RpcError:
        pytest.fail("Follow did not start")
    started = time.monotonic()
    for _ in range(3000):  # 12,000 events: more than the queue and the HTTP/2 window hold
        client.runtime.Version(api_pb2.VersionRequest())
    elapsed = time.monotonic() - started
    stats = client.trace.Stats(trace_pb2.StatsRequest())
    follow = next(s for s in stats.sinks if s.name == "follow")
    assert follow.dropped > 0, "the stalled follower's queue should have overflowed"
    assert stats.subscribers == 1
    assert stats.emitted >= 12_000
    assert elapsed < 120  # generous: the point is that it finished at all
    # The follower learns how many it lost with the next event it gets after
    # reading again; keep the server emitting until that event arrives.
    learned: list[int] = []

    def read() -> None:
        for msg in stalled:
            if msg.dropped_before:
                learned.append(msg.dropped_before)
                return

    reader = threading.Thread(target=read)
    reader.start()
    deadline = time.monotonic() + 60
    while reader.is_alive() and time.monotonic() < deadline:
        client.runtime.Version(api_pb2.VersionRequest())
        reader.join(0.02)
    stalled.cancel()
    reader.join(5)
    slow_channel.close()
    assert learned and learned[0] > 0
