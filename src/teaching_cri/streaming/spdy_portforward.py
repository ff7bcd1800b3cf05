"""Port forwarding over SPDY/3.1 (plain or tunnelled in a websocket): the SPDY walk of PortForward.

client-go's ``tools/portforward`` opens, for each connection it forwards, two
streams on the session: first an error stream, then a data stream, both
carrying the headers ``streamtype`` (``error`` or ``data``), ``port`` and
``requestid`` (one number per connection, the same on both). The kubelet's
``pkg/kubelet/cri/streaming/portforward/httpstream.go`` checks each stream's
headers as it arrives (a bad one is reset, the session goes on), pairs the
two by request id (an old client without ids: by consecutive stream ids),
gives a pair the stream creation timeout to complete, and then forwards:
data stream to the pod's port and back, a failure written as text on the
error stream, both streams closed at the end. The session ends when the
client closes it.

Forwarding is containerd's (``internal/cri/server/sandbox_portforward_linux.go``):
a TCP connection to localhost:<port> made inside the pod's network namespace
(:mod:`.nsconnect`'s ways, as the websocket port-forward's), then a copy each
way. We half-close instead of waiting: the pod's end of output closes the
data stream (FIN) at once, the client's FIN shuts the socket's write side;
when one direction has ended the other gets containerd's second to finish.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import FailedPrecondition, NotFound
from ..trace.tracer import annotate, branch, current_span, decide, step
from . import nsconnect, spdy
from .portforward import connect_in_namespace, pod_network_namespace, wire_of

if TYPE_CHECKING:
    from ..manager.container import ContainerManager
    from .spdy_server import SpdySession

log = logging.getLogger("teaching_cri.streaming")

COPY_GRACE = 1.0  # containerd's: once one direction ends, the other's time to finish
READ_SIZE = 64 * 1024


@dataclass(eq=False)
class StreamPair:
    """One forwarded connection's two streams, as they arrive."""

    request_id: str
    port: int
    deadline: float
    error: int | None = None
    data: int | None = None

    @property
    def complete(self) -> bool:
        return self.error is not None and self.data is not None


def stream_headers(opened: spdy.StreamOpened) -> tuple[str, int, str]:
    """The stream's type, port and request id, or ValueError saying what is
    wrong with them (the kubelet's ``httpStreamReceived`` checks, in order)."""
    port_text = opened.headers.get("port", "")
    if not port_text:
        raise ValueError('"port" header is required')
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"unable to parse {port_text!r} as a port")
    kind = opened.headers.get("streamtype", "")
    if not kind:
        raise ValueError('"streamType" header is required')
    if kind not in ("error", "data"):
        raise ValueError(f"invalid stream type {kind!r}")
    request_id = opened.headers.get("requestid", "")
    if not request_id:  # an old client: its pair's ids are consecutive odd numbers
        request_id = str(opened.stream_id if kind == "error" else opened.stream_id - 2)
    return kind, int(port_text), request_id


class Pairs:
    """The session's incomplete pairs, each with its deadline."""

    def __init__(self, creation_timeout: float) -> None:
        self.creation_timeout = creation_timeout
        self.waiting: dict[str, StreamPair] = {}

    def add(self, opened: spdy.StreamOpened) -> StreamPair:
        """The stream in its pair (ValueError: it does not fit one)."""
        kind, port, request_id = stream_headers(opened)
        now = asyncio.get_running_loop().time()
        pair = self.waiting.setdefault(
            request_id, StreamPair(request_id, port, now + self.creation_timeout)
        )
        if getattr(pair, kind) is not None:
            raise ValueError(f"{kind} stream already assigned for request {request_id}")
        if port != pair.port:
            raise ValueError(f"port {port} is not the port {pair.port} of request {request_id}")
        setattr(pair, kind, opened.stream_id)
        if pair.complete:
            del self.waiting[request_id]
        return pair

    def next_deadline(self) -> float | None:
        return min((p.deadline for p in self.waiting.values()), default=None)

    def expired(self) -> list[StreamPair]:
        now = asyncio.get_running_loop().time()
        late = [p for p in self.waiting.values() if p.deadline <= now]
        for pair in late:
            del self.waiting[pair.request_id]
        return late


async def serve_spdy_port_forward(
    session: SpdySession, request: Any, manager: ContainerManager, creation_timeout: float
) -> None:
    """The SPDY walk of diagrams/PortForward.toml (from its start by the edge
    "SPDY session": the SPDY front end opened this span)."""
    try:
        netns = pod_network_namespace(manager, request.pod_sandbox_id)
    except (NotFound, FailedPrecondition) as exc:
        decide("get_pod_network_namespace", False)
        close_with_error(session, str(exc))
        return
    else:
        decide("get_pod_network_namespace", True)
    way = nsconnect.way_into(netns)
    branch("way_into_the_pod_netns", way, netns=netns)
    branch("which_wire", wire_of(session))
    pairs = Pairs(creation_timeout)
    copies: set[asyncio.Task[None]] = set()
    target = f"pod {request.pod_sandbox_id[:12]}"
    while True:
        what, item = await wait_for_a_stream_pair(session, pairs)
        branch("wait_for_a_stream_pair", what)
        if what == "closed":
            break
        if what == "bad stream":
            opened, why = item
            with step("reset_the_stream"):
                session.refuse(opened.stream_id, f"port-forward: {why}")
            continue
        pair: StreamPair = item
        annotate(request_id=pair.request_id, port=str(pair.port))
        if what == "timed out":
            with step("write_error_on_error_channel"):
                await give_up_on(session, pair)
            continue
        try:
            sock = await asyncio.to_thread(connect_in_namespace, netns, pair.port, way)
        except FailedPrecondition as exc:
            decide("connect_in_pod_netns", False)
            with step("write_error_on_error_channel"):
                message = f"error forwarding port {pair.port} to {target}: {exc}"
                log.info("spdy: %s", message)
                await close_pair(session, pair, message.encode())
            continue
        decide("connect_in_pod_netns", True)
        with step("copy_data_both_ways"):
            task = asyncio.ensure_future(forward(session, pair, sock))
            copies.add(task)
            task.add_done_callback(copies.discard)
    with step("wait_for_the_copies"):
        for task in list(copies):
            task.cancel()
        for task in list(copies):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
    with step("close_session"):
        session.go_away()


def close_with_error(session: SpdySession, message: str) -> None:
    """The chart's error end close with error: no stream exists to carry the
    reason (the client opens them), so it goes to the log and the session
    ends with GOAWAY; the span ends here with the error, at the decision whose
    N branch led here (not by a step: an end is where the span stops)."""
    log.info("spdy: port-forward: %s", message)
    session.go_away()
    span = current_span()
    if span is not None:
        span.error(message)


async def wait_for_a_stream_pair(session: SpdySession, pairs: Pairs) -> tuple[str, Any]:
    """The next thing the session brings: a complete pair ("pair"), a stream
    that fits no pair ("bad stream", with why), a pair whose second stream did
    not come in time ("timed out"), or the client's end ("closed"). Each
    stream that fits is accepted (SYN_REPLY) at once: client-go waits for the
    error stream's reply before it opens the data stream."""
    from .spdy_server import next_stream

    while True:
        late = pairs.expired()
        if late:
            return "timed out", late[0]
        deadline = pairs.next_deadline()
        timeout = None if deadline is None else deadline - asyncio.get_running_loop().time()
        try:
            async with asyncio.timeout(timeout):
                opened = await next_stream(session)
        except TimeoutError:
            continue
        if opened is None:
            return "closed", None
        try:
            pair = pairs.add(opened)
        except ValueError as exc:
            return "bad stream", (opened, str(exc))
        session.accept(opened.stream_id)
        if pair.error is not None and pair.error == opened.stream_id:
            session.ignore(opened.stream_id)  # the client writes nothing there (and FINs it)
        if pair.complete:
            return "pair", pair


async def give_up_on(session: SpdySession, pair: StreamPair) -> None:
    """The kubelet's message for a pair left half-made; its data stream is reset."""
    message = f"timed out waiting for the streams of request {pair.request_id}"
    log.info("spdy: port-forward: %s", message)
    if pair.data is not None:
        session.refuse(pair.data, message)
    if pair.error is not None:
        await session.write(pair.error, message.encode(), fin=True)


async def close_pair(session: SpdySession, pair: StreamPair, message: bytes = b"") -> None:
    """The end of a forwarded connection: a message (if any) and FIN on the
    error stream, FIN on the data stream (the kubelet's deferred Closes)."""
    assert pair.error is not None and pair.data is not None
    if session.can_send(pair.error):
        await session.write(pair.error, message, fin=True)
    if session.can_send(pair.data):
        await session.write(pair.data, b"", fin=True)


async def forward(session: SpdySession, pair: StreamPair, sock: socket.socket) -> None:
    """One connection's copies, client to pod and pod to client, until both
    have ended (or one has, and the other had COPY_GRACE more)."""
    assert pair.data is not None
    reader, writer = await asyncio.open_connection(sock=sock)
    inward = asyncio.ensure_future(client_to_pod(session, pair.data, writer))
    outward = asyncio.ensure_future(pod_to_client(session, pair.data, reader))
    try:
        _done, pending = await asyncio.wait({inward, outward}, return_when=asyncio.FIRST_COMPLETED)
        if pending:
            await asyncio.wait(pending, timeout=COPY_GRACE)
    finally:
        for task in (inward, outward):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()
        await close_pair(session, pair)


async def client_to_pod(session: SpdySession, stream_id: int, writer: asyncio.StreamWriter) -> None:
    """The data stream's bytes to the pod; its FIN shuts the socket's write side."""
    with contextlib.suppress(ConnectionError):
        while (data := await session.read(stream_id)) is not None:
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()


async def pod_to_client(session: SpdySession, stream_id: int, reader: asyncio.StreamReader) -> None:
    """The pod's bytes to the data stream, each write awaited (the peer's window,
    the socket's buffer); the pod's end of output is the stream's FIN."""
    with contextlib.suppress(ConnectionError):
        while data := await reader.read(READ_SIZE):
            await session.write(stream_id, data)
    if session.can_send(stream_id):
        await session.write(stream_id, b"", fin=True)
