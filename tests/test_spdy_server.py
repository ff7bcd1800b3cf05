"""Exec over SPDY/3.1 on the streaming URL, with a small client built on our
own core (streaming/spdy.py): the upgrade, its refusals, the streams by
streamType, stdout and the v4 status, stdin's FIN, the websocket path beside it."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from teaching_cri.api import api_pb2
from teaching_cri.client import Client
from teaching_cri.streaming import spdy
from teaching_cri.streaming.request_cache import RequestCache
from teaching_cri.streaming.server import StreamingServer
from teaching_cri.trace.charts import ChartSet
from teaching_cri.trace.conformance import assert_conforms
from teaching_cri.trace.events import TraceEvent
from teaching_cri.trace.tracer import Tracer

import spdy_client
from conftest import Server
from test_containers import node  # noqa: F401 - a fixture
from test_streaming import running, session, status_of, stdout_of


async def upgrade(
    url: str, versions: list[str]
) -> tuple[int, dict[str, str], asyncio.StreamReader, asyncio.StreamWriter]:
    parts = urlsplit(url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    head = [f"GET {parts.path} HTTP/1.1", f"Host: {parts.netloc}"]
    head += ["Connection: Upgrade", "Upgrade: SPDY/3.1"]
    head += [f"X-Stream-Protocol-Version: {v}" for v in versions]
    writer.write(("\r\n".join(head) + "\r\n\r\n").encode())
    raw = await reader.readuntil(b"\r\n\r\n")
    lines = raw.decode().split("\r\n")
    status = int(lines[0].split()[1])
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if ":" in line:
            name, value = line.split(":", 1)
            headers[name.lower()] = ", ".join(
                filter(None, [headers.get(name.lower()), value.strip()])
            )
    return status, headers, reader, writer


async def spdy_exec(
    url: str, kinds: list[str], stdin: bytes = b"", version: str = "v4.channel.k8s.io"
) -> dict[str, bytes]:
    """Open a stream per kind (as client-go does, error first), send stdin
    then FIN, collect every stream's bytes until the server closes."""
    status, headers, reader, writer = await upgrade(url, [version])
    assert status == 101, (status, headers)
    assert headers["upgrade"] == "SPDY/3.1" and headers["x-stream-protocol-version"] == version
    conn = spdy.Connection(client=True, flow_control=False)  # as spdystream: no windows
    ids = {kind: conn.open_stream({"streamtype": kind}) for kind in kinds}
    if "stdin" in ids:
        conn.send_data(ids["stdin"], stdin, fin=True)
    names = {sid: kind for kind, sid in ids.items()}
    got = {kind: b"" for kind in kinds}
    writer.write(conn.data_to_send())
    while data := await asyncio.wait_for(reader.read(65536), 20):
        conn.receive_data(data)
        for event in conn.events():
            if isinstance(event, spdy.DataReceived):
                got[names[event.stream_id]] += event.data
                conn.consumed(event.stream_id, len(event.data))
        writer.write(conn.data_to_send())
    writer.close()
    return got


def test_exec_over_spdy_gives_stdout_and_the_v4_status(
    node: tuple[Server, Client, Path],  # noqa: F811
    charts: ChartSet,
) -> None:
    _srv, client, logs = node
    since = time.time_ns()
    cid = running(client, logs, "spdyecho", "sleep", "1000")
    request = api_pb2.ExecRequest(
        container_id=cid,
        cmd=["sh", "-c", "cat; echo -n err >&2; exit 3"],
        stdin=True,
        stdout=True,
        stderr=True,
    )
    url = client.runtime.Exec(request).url
    got = asyncio.run(spdy_exec(url, ["error", "stdin", "stdout", "stderr"], b"x" * 200_000))
    assert got["stdout"] == b"x" * 200_000, "stdin's FIN closed the process's stdin"
    assert got["stderr"] == b"err"
    status = json.loads(got["error"])
    assert status["reason"] == "NonZeroExitCode"
    assert status["details"] == {"causes": [{"reason": "ExitCode", "message": "3"}]}
    time.sleep(0.2)
    assert_conforms(client.recent(since_unix_nano=since), charts)


def test_a_v2_client_gets_no_status_on_success(
    node: tuple[Server, Client, Path],  # noqa: F811
) -> None:
    _srv, client, logs = node
    cid = running(client, logs, "spdyv2", "sleep", "1000")
    request = api_pb2.ExecRequest(container_id=cid, cmd=["echo", "hi"], stdout=True)
    url = client.runtime.Exec(request).url
    got = asyncio.run(spdy_exec(url, ["error", "stdout"], version="v2.channel.k8s.io"))
    assert got == {"error": b"", "stdout": b"hi\n"}


def test_spdy_refusals_and_the_websocket_beside_it(
    node: tuple[Server, Client, Path],  # noqa: F811
) -> None:
    _srv, client, logs = node
    cid = running(client, logs, "spdyno", "sleep", "1000")

    def url() -> str:
        request = api_pb2.ExecRequest(container_id=cid, cmd=["echo", "-n", "ws"], stdout=True)
        return client.runtime.Exec(request).url

    async def refused(target: str, versions: list[str]) -> tuple[int, dict[str, str]]:
        status, headers, _reader, writer = await upgrade(target, versions)
        writer.close()
        return status, headers

    status, headers = asyncio.run(refused(url(), ["v9.channel.k8s.io"]))
    assert status == 403
    assert "v4.channel.k8s.io" in headers["x-accepted-stream-protocol-versions"]
    assert asyncio.run(refused(url().rsplit("/", 1)[0] + "/nosuchtoken", []))[0] == 404
    messages = asyncio.run(session(url(), "v4.channel.k8s.io"))
    assert stdout_of(messages) == b"ws"
    assert status_of(messages) == {"metadata": {}, "status": "Success"}


def test_a_client_that_never_opens_its_streams_is_dropped(
    node: tuple[Server, Client, Path],  # noqa: F811
) -> None:
    _srv, client, logs = node
    cid = running(client, logs, "spdyslow", "sleep", "1000")
    request = api_pb2.ExecRequest(container_id=cid, cmd=["echo", "hi"], stdout=True)
    url = client.runtime.Exec(request).url

    async def only_the_error_stream() -> bytes:
        status, _headers, reader, writer = await upgrade(url, ["v4.channel.k8s.io"])
        assert status == 101
        conn = spdy.Connection(client=True)
        conn.open_stream({"streamtype": "error"})
        writer.write(conn.data_to_send())
        writer.close()  # and leave: the server gives up on the streams it waits for
        return await asyncio.wait_for(reader.read(), 10)

    asyncio.run(only_the_error_stream())


class Recorded:
    """A trace sink that keeps every event (the server in this process)."""

    def __init__(self) -> None:
        self.events: list[TraceEvent] = []

    def publish(self, event: TraceEvent) -> None:
        self.events.append(event)

    def close(self) -> None:
        pass


def test_a_client_that_never_opens_the_error_stream_gets_goaway(
    charts: ChartSet, caplog: pytest.LogCaptureFixture
) -> None:
    """A real StreamingServer in this process (no container is reached): the
    streams not all there within the creation timeout end the session with
    GOAWAY and a log line, free its slot, and the trace follows SpdyStream."""
    caplog.set_level(logging.INFO, logger="teaching_cri.streaming")
    sink = Recorded()

    async def main() -> list[spdy.Event]:
        cache = RequestCache()
        server = StreamingServer(cache, _no_containers, Tracer(charts, [sink]), "127.0.0.1", 0)
        server.spdy.creation_timeout = 0.5
        await server.start()
        try:
            request = api_pb2.ExecRequest(container_id="c", cmd=["true"], stdout=True)
            url = f"http://127.0.0.1:{server.port}/cri/exec/{cache.insert('exec', request)}"
            status, _headers, reader, writer = await upgrade(url, ["v4.channel.k8s.io"])
            assert status == 101
            conn = spdy.Connection(client=True)
            conn.open_stream({"streamtype": "stdout"})  # and never the error stream
            writer.write(conn.data_to_send())
            events: list[spdy.Event] = []
            while data := await asyncio.wait_for(reader.read(65536), 10):
                conn.receive_data(data)
                events += conn.events()
            writer.close()
            assert server.sessions == {}, "the slot is free"
            return events
        finally:
            await server.stop()

    events = asyncio.run(main())
    assert [type(e) for e in events] == [spdy.StreamReplied, spdy.ConnectionTerminated]
    assert "opened ['stdout'] of ['error', 'stdout'] streams in 0.5s" in caplog.text
    assert_conforms(sink.events, charts)


def test_the_tunnelled_subprotocol_is_for_port_forward_only(
    node: tuple[Server, Client, Path],  # noqa: F811
) -> None:
    _srv, client, logs = node
    cid = running(client, logs, "spdytun", "sleep", "1000")
    url = client.runtime.Exec(api_pb2.ExecRequest(container_id=cid, cmd=["true"], stdout=True)).url
    with pytest.raises(spdy_client.UpgradeRefused) as refused:
        spdy_client.connect_tunnelled(url)
    assert refused.value.status == 400
    assert b"/cri/portforward/" in refused.value.body


def _no_containers() -> Any:
    raise AssertionError("no container is reached in this test")
