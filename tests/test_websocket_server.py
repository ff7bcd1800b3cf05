"""The streaming server's life (the WebsocketServer chart) against the real
daemon: it starts with ``teaching-cri serve``, and on SIGTERM it stops
accepting, closes each open session with 1001 (going away), whose CLOSED
collection kills an exec still running, and ends at lws_context_destroy.
The traces are read from the server's JSONL file, written to the end."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed

from teaching_cri.api import api_pb2
from teaching_cri.trace.charts import ChartSet
from teaching_cri.trace.conformance import assert_conforms, spans
from teaching_cri.trace.events import TraceEvent
from teaching_cri.trace.sinks import read_jsonl

from conftest import IS_ROOT, Server, serve_command, start_server
from test_streaming import host_pod_with_a_sleeper, ws_url

V4 = "v4.channel.k8s.io"


def walks(events: list[TraceEvent], chart: str, callback: str = "") -> list[list[str]]:
    """Each span of ``chart`` (of one Websocket callback, if given) as its
    nodes after the start, a taken branch as node[label]."""
    return [
        [e.node + (f"[{e.label}]" if e.label else "") for e in span[1:]]
        for span in spans(events).values()
        if span[0].chart == chart
        and (not callback or span[0].attributes.get("callback") == callback)
    ]


def trace_of(srv: Server) -> list[TraceEvent]:
    assert srv.trace_file is not None, "the test servers write a JSONL trace"
    return read_jsonl(srv.trace_file).events


def test_a_server_with_no_session_starts_and_stops_along_its_chart(
    short_tmp: Path, charts: ChartSet
) -> None:
    """Any user: the life of the server alone, start to a clean SIGTERM."""
    srv = start_server(short_tmp / "idle")
    assert srv.stop() == 0
    events = trace_of(srv)
    assert_conforms([e for e in events if e.chart == "WebsocketServer"], charts)
    assert walks(events, "WebsocketServer") == [
        [
            "conf_get_websocket_server_listening_port",
            "websocket_server_create_context",
            "websocket_server",
            "set_m_force_exit",
            "for_each_session_data_in_m_wsis[done]",
            "lws_context_destroy",
        ]
    ]


def test_a_taken_port_ends_the_servers_span_at_its_error_exit(
    short_tmp: Path, charts: ChartSet
) -> None:
    """CreateContext cannot listen: the span ends with the error at
    websocket_server_create_context, by the chart's error exit, and the
    daemon does not start."""
    trace = short_tmp / "trace.jsonl"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = subprocess.run(
            serve_command(
                "--socket",
                str(short_tmp / "cri.sock"),
                "--root",
                str(short_tmp / "root"),
                "--state",
                str(short_tmp / "state"),
                "--stream-address",
                f"127.0.0.1:{port}",
                "--trace-file",
                str(trace),
            ),
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert proc.returncode != 0 and "already in use" in proc.stderr
    events = [e for e in read_jsonl(trace).events if e.chart == "WebsocketServer"]
    assert_conforms(events, charts)
    assert [(e.kind.value, e.node) for e in events][-2:] == [
        ("step", "websocket_server_create_context"),
        ("error", "websocket_server_create_context"),
    ]
    assert "already in use" in events[-1].attributes["error"]


def _runc_missing() -> str:
    if not IS_ROOT:
        return "an exec in a runc container needs root"
    if shutil.which("runc") is None or not Path("/bin/busybox").exists():
        return "runc and busybox-static are needed"
    return ""


def processes_running(marker: str) -> list[int]:
    """The host's processes whose command line is exactly ``marker``'s words."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if cmdline.rstrip(b"\0").split(b"\0") == marker.encode().split():
            found.append(int(entry.name))
    return found


@pytest.mark.root
@pytest.mark.skipif(bool(_runc_missing()), reason=_runc_missing())
def test_sigterm_with_a_session_open_closes_it_and_kills_its_exec(
    short_tmp: Path, charts: ChartSet
) -> None:
    """A client is in the middle of an exec when the daemon gets SIGTERM: it
    sees its connection closed with 1001, the exec is killed (CLOSED: exec
    process still running ? Y), and every span of the stop follows its chart,
    the server's ending at lws_context_destroy."""
    base = short_tmp / "srv"
    srv = start_server(base)
    sandbox_id = ""
    marker = f"sleep {4000 + os.getpid() % 1000}"
    try:
        client = srv.client()
        sandbox_id, cid = host_pod_with_a_sleeper(client, short_tmp, "life")
        url = client.runtime.Exec(
            api_pb2.ExecRequest(
                container_id=cid, cmd=["sh", "-c", f"echo go; exec {marker}"], stdout=True
            )
        ).url

        async def stopped_midway() -> tuple[list[bytes | str], int | None]:
            got: list[bytes | str] = []
            async with ws_connect(ws_url(url), subprotocols=[V4]) as ws:  # type: ignore[list-item]
                while b"go" not in b"".join(m for m in got if isinstance(m, bytes)):
                    got.append(await ws.recv())
                assert processes_running(marker), "the exec runs while its client is there"
                stopping = asyncio.ensure_future(asyncio.to_thread(srv.stop))
                try:
                    async for message in ws:
                        got.append(message)
                except ConnectionClosed:
                    pass
                await stopping
                return got, ws.close_code

        _messages, code = asyncio.run(stopped_midway())
        assert code == 1001, "going away: the server is shutting down"
        assert srv.process.returncode == 0
        for _ in range(50):
            if not processes_running(marker):
                break
            time.sleep(0.1)
        assert not processes_running(marker), "the exec whose session was closed is killed"

        events = trace_of(srv)
        mine = {"WebsocketServer", "Websocket", "WebsocketStream"}
        assert_conforms([e for e in events if e.chart in mine], charts)
        [life] = walks(events, "WebsocketServer")
        assert life[-4:] == [
            "for_each_session_data_in_m_wsis[next]",
            "delete_session_data",
            "for_each_session_data_in_m_wsis[done]",
            "lws_context_destroy",
        ], life
        [closed] = walks(events, "Websocket", "CLOSED")
        assert closed == [
            "switch_reason[LWS_CALLBACK_CLOSED]",
            "get_session_data_by_socket_fd_closed[Y]",
            "delete_session_in_map",
            "exec_process_still_running[Y]",
            "kill_exec_process",
            "close_pipe_1",
            "sem_wait_session_sync_close_sem",
            "return_0",
        ]
        [stream] = walks(events, "WebsocketStream")
        assert stream[-3:] == [
            "exec_return_0[connection closed]",
            "close_session",
            "sem_post_lws_ctx_sync_close_sem",
        ], stream
    finally:
        srv.stop()
        if sandbox_id:  # the pod outlives its daemon: a new one cleans it up
            again = start_server(base)
            try:
                c = again.client()
                c.runtime.StopPodSandbox(api_pb2.StopPodSandboxRequest(pod_sandbox_id=sandbox_id))
                c.runtime.RemovePodSandbox(
                    api_pb2.RemovePodSandboxRequest(pod_sandbox_id=sandbox_id)
                )
            finally:
                again.stop()
