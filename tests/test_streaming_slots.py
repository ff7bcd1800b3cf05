"""The streaming server's session slots (issue 17, item 1): a slot is freed
whatever way a connection ends, a handshake has a time limit, and a token
opens at most one session; and (item 4) a client's behaviour is one INFO
line in the log, never an ERROR.

Two servers: a :class:`StreamingServer` in this process, where the session
table is seen directly and every trace is checked against its chart; and a
live ``teaching-cri serve`` with one slot (``--stream-max-sessions 1``), where
an exec that still works after a thousand bad handshakes shows that none of
them kept its slot.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import socket
import struct
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import InvalidStatus

from teaching_cri.api import api_pb2
from teaching_cri.client import Client
from teaching_cri.errors import NotFound
from teaching_cri.streaming.request_cache import RequestCache
from teaching_cri.streaming.server import StreamingServer
from teaching_cri.trace.charts import ChartSet
from teaching_cri.trace.conformance import assert_conforms
from teaching_cri.trace.events import TraceEvent
from teaching_cri.trace.tracer import Tracer

from conftest import Server, start_server
from test_streaming import (
    V4,
    host_pod_with_a_sleeper,
    session,
    session_until_closed,
    status_of,
    stdout_of,
    ws_url,
)

IS_ROOT = os.geteuid() == 0
KEY = "dGhlIHNhbXBsZSBub25jZQ=="  # RFC 6455's example key: any 16 bytes in base64 will do


# --- the raw client: handshakes a library client would never send -------------------


def upgrade_head(path: str, *, websocket_key: bool = True, spdy_version: bool = True) -> bytes:
    lines = [f"GET {path} HTTP/1.1", "Host: stream", "Connection: Upgrade"]
    if path.startswith("spdy:"):
        lines[0] = f"GET {path.removeprefix('spdy:')} HTTP/1.1"
        lines.append("Upgrade: SPDY/3.1")
        if spdy_version:
            lines.append(f"X-Stream-Protocol-Version: {V4}")
    else:
        lines += ["Upgrade: websocket", "Sec-WebSocket-Version: 13"]
        lines.append(f"Sec-WebSocket-Protocol: {V4}")
        if websocket_key:
            lines.append(f"Sec-WebSocket-Key: {KEY}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def send_raw(
    port: int, data: bytes, *, reset: bool = False, read: bool = True, timeout: float = 10
) -> bytes:
    """Send ``data`` on a new connection; then reset it at once (RST, no
    goodbye), or read what the server answers until it closes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        if reset:
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()
            return b""
        if not read:
            return b""
        return await asyncio.wait_for(reader.read(), timeout)
    finally:
        writer.close()


def status_line(answer: bytes) -> str:
    return answer.split(b"\r\n", 1)[0].decode(errors="replace")


BAD_KINDS = ("no key", "reset at once", "garbage", "spdy without version", "spdy reset")


async def bad_handshakes(
    port: int, count: int, new_path: Callable[[], Awaitable[str]], seed: int = 17
) -> dict[str, int]:
    """``count`` handshakes that fail or are dropped, of every kind in turn
    (the order shuffled with ``seed``); each kind's count. A kind that reaches
    admission gets a fresh token (``new_path``), so each one takes a slot.
    With one slot, the last dropped connection may still be closing when the
    next comes: that one is refused 503 instead of 400, as rightly."""
    kinds = [BAD_KINDS[i % len(BAD_KINDS)] for i in range(count)]
    random.Random(seed).shuffle(kinds)
    rng = random.Random(seed)
    for kind in kinds:
        if kind == "no key":
            answer = await send_raw(port, upgrade_head(await new_path(), websocket_key=False))
            assert status_line(answer)[9:12] in ("400", "503"), answer[:200]
        elif kind == "reset at once":
            await send_raw(port, upgrade_head(await new_path()), reset=True)
        elif kind == "garbage":
            noise = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 300)))
            answer = await send_raw(port, noise + b"\r\n\r\n")
            assert answer == b"" or status_line(answer).startswith("HTTP/1.1 4"), answer[:200]
        elif kind == "spdy without version":
            head = upgrade_head("spdy:" + await new_path(), spdy_version=False)
            answer = await send_raw(port, head)
            assert status_line(answer)[9:12] in ("400", "503"), answer[:200]
            assert b"X-Stream-Protocol-Version is required" in answer or b"at most" in answer
        else:
            await send_raw(port, upgrade_head("spdy:" + await new_path()), reset=True)
    return {kind: kinds.count(kind) for kind in BAD_KINDS}


async def until(check: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.02)
    return True


# --- in this process: the session table itself -------------------------------------


class Recorded:
    """A trace sink that keeps every event."""

    def __init__(self) -> None:
        self.events: list[TraceEvent] = []

    def publish(self, event: TraceEvent) -> None:
        self.events.append(event)

    def close(self) -> None:
        pass


class NoSandboxes:
    def find(self, sandbox_id: str) -> None:
        return None


class NoContainers:
    """What a session asks for a container or a pod: none exists (the
    streams' own tests run real ones; these are about the slots)."""

    sandboxes = NoSandboxes()

    def get(self, container_id: str) -> Any:
        raise NotFound(f"no container {container_id!r}")


def in_process(
    charts: ChartSet, main: Callable[[StreamingServer, RequestCache], Awaitable[None]], **kw: Any
) -> list[TraceEvent]:
    sink = Recorded()

    async def run() -> None:
        cache = RequestCache()
        server = StreamingServer(cache, NoContainers, Tracer(charts, [sink]), "127.0.0.1", 0, **kw)
        await server.start()
        try:
            await main(server, cache)
        finally:
            await server.stop()

    asyncio.run(run())
    return sink.events


def exec_path(cache: RequestCache) -> str:
    request = api_pb2.ExecRequest(container_id="nosuch", cmd=["true"], stdout=True)
    return f"/cri/exec/{cache.insert('exec', request)}"


def test_a_thousand_bad_handshakes_leave_every_slot_free(
    charts: ChartSet, caplog: pytest.LogCaptureFixture
) -> None:
    """One slot; a thousand handshakes that fail or are dropped, of five
    kinds; then the table is empty and a good upgrade is admitted (its
    StreamTask finds no container: a NotFound status and a 1011 close)."""
    caplog.set_level(logging.INFO, logger="teaching_cri.streaming")
    counts: dict[str, int] = {}

    async def main(server: StreamingServer, cache: RequestCache) -> None:
        async def new_path() -> str:
            return exec_path(cache)

        counts.update(await bad_handshakes(server.port, 1000, new_path))
        assert await until(lambda: not server.sessions, 5), f"{len(server.sessions)} slots held"
        url = f"http://127.0.0.1:{server.port}{exec_path(cache)}"
        messages, code, _reason = await session_until_closed(url, V4)
        assert status_of(messages)["reason"] == "NotFound" and code == 1011
        assert await until(lambda: not server.sessions, 5)
        assert len(cache) <= counts["reset at once"] + counts["spdy reset"], (
            "a token whose session ended unredeemed is used up, not left to fill the cache"
        )

    events = in_process(charts, main, max_sessions=1)
    assert sum(counts.values()) == 1000 and min(counts.values()) == 200
    assert_conforms(events, charts)
    assert "missing Sec-WebSocket-Key header" in caplog.text, "the client's fault, said once"
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text[-3000:]


def test_a_slow_handshake_is_cut_off_at_the_time_limit(charts: ChartSet) -> None:
    """A client that sends half a request head, and one that sends none:
    the server closes both once the handshake's time is up."""

    async def main(server: StreamingServer, cache: RequestCache) -> None:
        started = time.monotonic()
        half = upgrade_head(exec_path(cache))[:40]
        answers = await asyncio.gather(
            send_raw(server.port, half, timeout=5), send_raw(server.port, b"", timeout=5)
        )
        took = time.monotonic() - started
        assert answers == [b"", b""], "closed without an answer"
        assert 0.4 < took < 3, f"closed after {took:.1f} s, the limit is 0.5 s"
        assert not server.sessions

    assert_conforms(in_process(charts, main, handshake_timeout=0.5), charts)


def test_a_token_opens_one_session_on_either_wire(charts: ChartSet) -> None:
    """While a session holds its URL, a second upgrade there, websocket or
    SPDY, is refused 404 saying the token is used; so is one after it."""

    async def main(server: StreamingServer, cache: RequestCache) -> None:
        path = exec_path(cache)
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(upgrade_head("spdy:" + path))  # admitted; it opens no stream yet
        assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 101")
        assert len(server.sessions) == 1
        for second in (path, "spdy:" + path):
            answer = await send_raw(server.port, upgrade_head(second))
            assert status_line(answer) == "HTTP/1.1 404 Not Found", answer[:200]
            assert b"used streaming token: a URL opens one session" in answer
        writer.close()
        assert await until(lambda: not server.sessions, 5)
        with pytest.raises(InvalidStatus) as refused:
            async with ws_connect(f"ws://127.0.0.1:{server.port}{path}", subprotocols=[V4]):  # type: ignore[list-item]
                pass
        assert refused.value.response.status_code == 404

    assert_conforms(in_process(charts, main), charts)


# --- a live server with one slot ------------------------------------------------------


def _unavailable() -> str:
    if not Path("/bin/busybox").exists():
        return "busybox-static is needed for the local image"
    return ""


@pytest.fixture
def one_slot(short_tmp: Path) -> Iterator[tuple[Server, Client, str]]:
    """A server with a single streaming slot and a running container in a
    host-network pod (as root runc; as a user the processes tier)."""
    if _unavailable():
        pytest.skip(_unavailable())
    tier = () if IS_ROOT else ("--runtime", "processes")
    srv = start_server(short_tmp / "slots", "--stream-max-sessions", "1", *tier)
    try:
        client = srv.client()
        sandbox_id, cid = host_pod_with_a_sleeper(client, short_tmp, "slots")
        yield srv, client, cid
        client.runtime.StopPodSandbox(api_pb2.StopPodSandboxRequest(pod_sandbox_id=sandbox_id))
        client.runtime.RemovePodSandbox(api_pb2.RemovePodSandboxRequest(pod_sandbox_id=sandbox_id))
    finally:
        srv.stop()


async def exec_when_free(client: Client, cid: str, *cmd: str) -> list[bytes | str]:
    """An exec's messages, once the one slot is free: the last connection's
    CLOSED may still be running (a 503 then), for a moment, not for long."""
    deadline = time.monotonic() + 5
    while True:
        request = api_pb2.ExecRequest(container_id=cid, cmd=list(cmd), stdout=True)
        try:
            return await session(client.runtime.Exec(request).url, V4)
        except InvalidStatus as exc:
            if exc.response.status_code != 503 or time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.05)


def test_after_a_thousand_bad_handshakes_an_exec_still_works(
    one_slot: tuple[Server, Client, str],
) -> None:
    srv, client, cid = one_slot

    def exec_url(*cmd: str) -> str:
        request = api_pb2.ExecRequest(container_id=cid, cmd=list(cmd), stdout=True)
        return client.runtime.Exec(request).url

    port = urlsplit(exec_url("true")).port
    assert port is not None

    async def new_path() -> str:
        return urlsplit(exec_url("true")).path

    async def then_an_exec() -> list[bytes | str]:
        await bad_handshakes(port, 1000, new_path)
        return await exec_when_free(client, cid, "echo", "-n", "still here")

    messages = asyncio.run(then_an_exec())
    assert stdout_of(messages) == b"still here"
    assert status_of(messages) == {"metadata": {}, "status": "Success"}
    log = srv.output()
    assert "ended in its handshake: missing Sec-WebSocket-Key header" in log
    assert " ERROR " not in log and "Traceback" not in log, log[-3000:]


def test_a_live_token_opens_one_session(one_slot: tuple[Server, Client, str]) -> None:
    _srv, client, cid = one_slot
    command = ["sh", "-c", "sleep 1; echo -n ok"]
    request = api_pb2.ExecRequest(container_id=cid, cmd=command, stdout=True)
    url = client.runtime.Exec(request).url
    port, path = urlsplit(url).port, urlsplit(url).path
    assert port is not None

    async def two_at_once() -> tuple[list[bytes | str], list[bytes]]:
        first = asyncio.ensure_future(session(url, V4))
        await asyncio.sleep(0.3)
        seconds = [await send_raw(port, upgrade_head(p)) for p in (path, "spdy:" + path)]
        return await first, seconds

    messages, seconds = asyncio.run(two_at_once())
    assert stdout_of(messages) == b"ok"
    for answer in seconds:
        assert status_line(answer) == "HTTP/1.1 404 Not Found", answer[:200]
        assert b"a URL opens one session" in answer
    assert ws_url(url).startswith("ws://")


def test_a_dropped_client_is_one_info_line_not_an_error(
    one_slot: tuple[Server, Client, str],
) -> None:
    """Clients that leave mid-stream, websocket and SPDY, reset or closed:
    each is the client's doing, logged at INFO; no ERROR, no traceback."""
    srv, client, cid = one_slot
    flood = ["sh", "-c", "while :; do echo yyyyyyyyyyyyyyyyyyyyyyyy; done"]

    def url() -> str:
        request = api_pb2.ExecRequest(container_id=cid, cmd=flood, stdout=True, stdin=True)
        return client.runtime.Exec(request).url

    async def leave(reset: bool) -> None:
        async with ws_connect(ws_url(url()), subprotocols=[V4]) as ws:  # type: ignore[list-item]
            for _ in range(20):
                await ws.recv()
            if reset:
                sock = ws.transport.get_extra_info("socket")
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                ws.transport.abort()

    async def leave_spdy() -> None:
        parts = urlsplit(url())
        assert parts.port is not None
        reader, writer = await asyncio.open_connection("127.0.0.1", parts.port)
        writer.write(upgrade_head("spdy:" + parts.path))
        assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 101")
        writer.transport.abort()

    for way in (lambda: leave(False), lambda: leave(True), leave_spdy):
        asyncio.run(way())
        deadline = time.monotonic() + 5  # one slot: the next waits for this one's CLOSED
        while "killing the process" not in srv.output() and way is not leave_spdy:
            assert time.monotonic() < deadline, srv.output()[-3000:]
            time.sleep(0.05)
    messages = asyncio.run(exec_when_free(client, cid, "echo", "-n", "ok"))
    assert stdout_of(messages) == b"ok", "the slot is free again"
    log = srv.output()
    assert " INFO " in log and "killing the process" in log
    assert " ERROR " not in log and "Traceback" not in log, log[-3000:]
