"""SPDY/3.1 on the streaming URLs: Exec, Attach and PortForward as a stock kubelet dials them.

client-go's ``remotecommand`` and ``portforward`` upgrade the URL's HTTP
request with ``Upgrade: SPDY/3.1`` and offer their protocol versions in
``X-Stream-Protocol-Version``; the server answers 101 naming the one chosen,
403 listing its own in ``X-Accepted-Stream-Protocol-Versions`` when none is
common, 400 when the client offered none (apimachinery's
``httpstream.Handshake``, as the kubelet answers it). Then the client opens
SPDY streams, each named by its ``streamtype`` header:

* a remote command (exec, attach) opens one per thing it carries (error,
  stdin, stdout, stderr, resize); the server waits for all it expects, as the
  kubelet's ``pkg/kubelet/cri/streaming/remotecommand`` does, before joining
  them to the process (:mod:`.session`, the same joining as the websocket
  path's);
* a port-forward opens an error and a data stream per forwarded connection,
  paired by their ``requestid`` header (:mod:`.spdy_portforward`).

client-go's newer port-forward tunnels the same SPDY session through a
websocket (``tools/portforward/tunneling_connection.go``): the upgrade is a
websocket one offering the subprotocol ``SPDY/3.1+portforward.k8s.io``, and
after its 101 every binary message carries SPDY bytes, the messages read back
to back making one byte stream. That subprotocol is no RFC 7230 token (``/``),
so the websockets library cannot negotiate it; the front door takes that
upgrade too, answers its handshake here, and frames the messages with the
library's sans-I/O websocket protocol (:class:`Tunnel`).

The websockets library owns the listening socket and its connections, so the
front door is a websockets connection class (``serve(create_connection=)``)
that looks at the request head first: a websocket upgrade of the channel
protocols goes on as before; an SPDY upgrade, plain or tunnelled, is taken
away with its transport (:func:`front_door`) and served here over
:mod:`.spdy`'s sans-I/O core, with the windows learned from the peer (that
module's rule: spdystream does not count). The URL and token checks, the
session table and its limit, and the CLOSED clean-up are the websocket path's
(:meth:`.server.StreamingServer.admit`, ``closed``), traced under the same
Websocket chart; the session itself is one span of ``SpdyStream`` (and a
port-forward's, one of ``PortForward``).

Bad input ends only its own session, with a log line: a session error (bytes
that are no SPDY, a header block that does not inflate, a stream id going
backwards, data past the session's window of a peer that counts) with GOAWAY
PROTOCOL_ERROR from the core; a stream breaking a rule (a header block that
inflates to nonsense, an id in use, data past a counting peer's stream
window) with RST_STREAM from the core; a stream of no type we serve with
RST_STREAM PROTOCOL_ERROR here (a remote command then ends with GOAWAY
PROTOCOL_ERROR; a port-forward goes on with its other connections, as the
kubelet's does); streams that do not all come within the creation timeout
end a remote command with GOAWAY, and a port-forward pair with a message on
its error stream.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import http
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from websockets.asyncio.server import ServerConnection
from websockets.frames import Frame, Opcode
from websockets.protocol import Protocol as WebsocketProtocol
from websockets.protocol import Side, State

from ..errors import CRIError
from ..trace.tracer import annotate, branch, decide, step
from . import spdy
from .channel import RESIZE, STDIN, ChannelError, Incoming, parse_resize, status_document

if TYPE_CHECKING:
    from .server import Session, StreamingServer

log = logging.getLogger("teaching_cri.streaming")

# The kubelet's choices for remote commands, newest first (client order decides).
PROTOCOLS = ("v4.channel.k8s.io", "v3.channel.k8s.io", "v2.channel.k8s.io", "channel.k8s.io")
PORT_FORWARD_PROTOCOLS = ("portforward.k8s.io",)
TUNNEL_SUBPROTOCOL = "SPDY/3.1+portforward.k8s.io"
REMOTE_COMMAND_STREAMS = ("error", "stdin", "stdout", "stderr", "resize")
MAX_HEAD = 16 * 1024  # the longest request head the front door reads before deciding
STREAM_CREATION_TIMEOUT = 30.0  # the kubelet's default
MAX_UNREAD = 1 << 20  # client bytes held before the socket stops being read
MAX_DATA_FRAME = 64 * 1024  # what one of our data frames carries at most
SILENT_PEER_GRACE = 0.25  # after a probe's answer, how long a WINDOW_UPDATE may take
LINGER = 2.0  # after our GOAWAY, how long the client has to close its end
_WEBSOCKET_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455, section 1.3


@dataclass(frozen=True)
class RequestHead:
    method: str
    path: str
    headers: dict[str, list[str]] = field(default_factory=dict)  # lowercase names

    def get(self, name: str) -> str:
        values = self.headers.get(name.lower())
        return values[0] if values else ""

    def tokens(self, name: str) -> list[str]:
        """Every value of a header, repeated or comma-separated."""
        out = []
        for value in self.headers.get(name.lower(), []):
            out += [v.strip() for v in value.split(",") if v.strip()]
        return out


def parse_head(head: bytes) -> RequestHead | None:
    try:
        text = head.decode("latin-1")
        lines = text.split("\r\n")
        method, path, _version = lines[0].split(" ", 2)
    except ValueError:
        return None
    headers: dict[str, list[str]] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers.setdefault(name.strip().lower(), []).append(value.strip())
    return RequestHead(method, path, headers)


def upgrade_kind(head: RequestHead) -> str | None:
    """ "spdy" (``Upgrade: SPDY/3.1``), "tunnel" (a websocket upgrade offering
    the tunnelled SPDY subprotocol), or None: not ours, the websocket path's."""
    upgrade = head.get("upgrade").lower()
    if upgrade == "spdy/3.1":
        return "spdy"
    if upgrade == "websocket" and TUNNEL_SUBPROTOCOL in head.tokens("Sec-WebSocket-Protocol"):
        return "tunnel"
    return None


def negotiate(offered: list[str], ours: tuple[str, ...] = PROTOCOLS) -> str | None:
    """The first version the client offers that we speak (httpstream.Handshake)."""
    return next((p for p in offered if p in ours), None)


def http_response(status: http.HTTPStatus, headers: list[tuple[str, str]], body: str = "") -> bytes:
    raw = body.encode()
    lines = [f"HTTP/1.1 {status.value} {status.phrase}"]
    lines += [f"{name}: {value}" for name, value in headers]
    if status is not http.HTTPStatus.SWITCHING_PROTOCOLS:
        lines += ["Content-Type: text/plain; charset=utf-8", f"Content-Length: {len(raw)}"]
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + raw


def logged(path: str) -> str:
    """A request's path in the log: a streaming URL's token cut as ``shown`` cuts it."""
    method, sep, token = path[:80].rpartition("/")
    return f"{method}{sep}{token[:4]}…" if sep else path[:40]


def websocket_accept(key: str) -> str:
    """Sec-WebSocket-Accept: the client's key and RFC 6455's GUID, SHA-1, base64."""
    return base64.b64encode(hashlib.sha1((key + _WEBSOCKET_GUID).encode()).digest()).decode()


class _Detached(asyncio.Transport):
    """What a websockets connection keeps once its socket went to SPDY: its
    later close or abort must not reach the socket."""

    def write(self, data: bytes | bytearray | memoryview[Any]) -> None:
        pass

    def close(self) -> None:
        pass

    def abort(self) -> None:
        pass

    def is_closing(self) -> bool:
        return True


Handoff = Callable[[asyncio.Transport, RequestHead, bytes], None]
Lost = Callable[[ServerConnection], None]


def front_door(handoff: Handoff, lost: Lost) -> type[ServerConnection]:
    """A websockets connection that reads the request head before the
    library does; an SPDY upgrade (plain or tunnelled) is handed off with the
    transport, paused, and whatever the client sent after the head, and the
    websockets side ends as if the client had left before asking anything.
    Every connection's end is reported to ``lost``: the library calls the
    server's handler only after a handshake that succeeded, so this is the
    one place that sees a websocket connection end in its handshake.
    The head is read inside the library's handshake, so its ``open_timeout``
    bounds a client that sends its head slowly, or never."""

    class FrontDoor(ServerConnection):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._head: bytearray | None = bytearray()

        def connection_lost(self, exc: Exception | None) -> None:
            super().connection_lost(exc)
            lost(self)

        def data_received(self, data: bytes) -> None:
            if self._head is None:
                super().data_received(data)
                return
            self._head += data
            end = self._head.find(b"\r\n\r\n")
            if end < 0 and len(self._head) < MAX_HEAD:
                return
            buffered, self._head = bytes(self._head), None
            head = parse_head(buffered[:end]) if end >= 0 else None
            if head is None or upgrade_kind(head) is None:
                super().data_received(buffered)
                return
            transport = self.transport
            transport.pause_reading()  # until the session is the transport's protocol
            self.transport = _Detached()
            self.connection_lost(None)
            handoff(transport, head, buffered[end + 4 :])

    return FrontDoor


class Tunnel:
    """The websocket around a tunnelled SPDY session: binary messages in,
    their bytes out to SPDY; SPDY's bytes out, one binary message per write.
    The websockets library's sans-I/O protocol does the framing (masks,
    fragments, PING and CLOSE answered)."""

    def __init__(self, max_message: int = 1 << 20) -> None:
        self.ws = WebsocketProtocol(Side.SERVER, state=State.OPEN, max_size=max_message)

    def unwrap(self, data: bytes) -> tuple[bytes, bool]:
        """The SPDY bytes in what the socket read, and whether the websocket is
        over (a close, or a frame the RFC forbids)."""
        self.ws.receive_data(data)
        payload = bytearray()
        for frame in self.ws.events_received():
            if not isinstance(frame, Frame):
                continue
            if frame.opcode in (Opcode.BINARY, Opcode.CONT):
                payload += frame.data
            elif frame.opcode is Opcode.TEXT:
                log.info("spdy: a text message in a SPDY tunnel; closing it")
                self.ws.send_close(1003, "binary messages only")
        return bytes(payload), self.ws.state is not State.OPEN

    def wrap(self, data: bytes) -> bytes:
        if data and self.ws.state is State.OPEN:
            self.ws.send_binary(data)
        return self.replies()

    def replies(self) -> bytes:
        """What the websocket itself has to say (pongs, its close frame)."""
        return b"".join(self.ws.data_to_send())

    def close(self) -> bytes:
        if self.ws.state is State.OPEN:
            self.ws.send_close(1000)
        return self.replies()


class SpdySession(asyncio.Protocol):
    """An upgraded connection: the SPDY core on one side, asyncio on the
    other. The client's streams arrive on :attr:`opened` for the session to
    :meth:`accept` or :meth:`refuse`; their data waits in a queue per stream,
    and reading stops while more than ``MAX_UNREAD`` bytes wait; sending
    awaits the peer's window (while it counts) and the socket's write buffer."""

    def __init__(self, transport: asyncio.Transport, tunnel: Tunnel | None = None) -> None:
        self.conn = spdy.Connection(client=False, flow_control=None, max_data_frame=MAX_DATA_FRAME)
        self.transport = transport
        self.tunnel = tunnel
        self.opened: asyncio.Queue[spdy.StreamOpened] = asyncio.Queue()
        self.inbox: dict[int, asyncio.Queue[bytes | None]] = {}
        self.gone = asyncio.Event()  # the session is over: the client left, or we ended it
        self.client_done = asyncio.Event()  # the client sends no more: EOF, or the socket closed
        self._writable = asyncio.Event()
        self._writable.set()
        self._credit: list[asyncio.Future[None]] = []
        self._ignored: set[int] = set()
        self._unread = 0
        self._paused = False
        self._closing = False

    # -- asyncio's side ---------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self._closing:
            return  # after our GOAWAY: nothing more is read
        if self.tunnel is not None:
            data, over = self.tunnel.unwrap(data)
            self._write_raw(self.tunnel.replies())
            if over:
                self._end()
        self.conn.receive_data(data)
        for event in self.conn.events():
            self._on_event(event)
        self.flush()

    def _on_event(self, event: spdy.Event) -> None:
        if isinstance(event, spdy.StreamOpened):
            self.inbox[event.stream_id] = asyncio.Queue()
            self.opened.put_nowait(event)
        elif isinstance(event, spdy.DataReceived):
            if event.stream_id in self._ignored or event.stream_id not in self.inbox:
                self.conn.consumed(event.stream_id, len(event.data))
                return
            self.inbox[event.stream_id].put_nowait(event.data)
            self._unread += len(event.data)
            if self._unread > MAX_UNREAD and not self._paused:
                self._paused = True
                self.transport.pause_reading()
        elif isinstance(event, spdy.StreamEnded | spdy.StreamReset):
            if isinstance(event, spdy.StreamReset) and event.local:
                log.info("spdy: reset stream %d (status %d): %s", *_reset_words(event))
            if event.stream_id in self.inbox:
                self.inbox[event.stream_id].put_nowait(None)
        elif isinstance(event, spdy.ConnectionTerminated):
            if event.local:  # the client broke the protocol: its behaviour, one line
                log.info("spdy: session ended with GOAWAY %d: %s", event.status, event.reason)
            self._end()
        elif isinstance(event, spdy.WindowUpdated):
            self._notify()
        elif isinstance(event, spdy.WindowProbeAnswered):
            asyncio.get_running_loop().call_later(SILENT_PEER_GRACE, self._peer_is_silent)

    def _peer_is_silent(self) -> None:
        """The probe's grace is over (spdy.py's rule): no WINDOW_UPDATE means spdystream."""
        if self.conn.peer_counts is None and not self.gone.is_set():
            log.debug("spdy: the client sends no WINDOW_UPDATE; its windows are not held to")
            self.conn.ignore_peer_windows()
            self.flush()
            self._notify()

    def eof_received(self) -> bool:
        self.client_done.set()
        self._end()
        return True  # the transport stays open for our last words; close() closes it

    def connection_lost(self, exc: Exception | None) -> None:
        self.client_done.set()
        self._end()

    def pause_writing(self) -> None:
        self._writable.clear()

    def resume_writing(self) -> None:
        self._writable.set()

    def _end(self) -> None:
        if not self.gone.is_set():
            self.gone.set()
            self._writable.set()
            for queue in self.inbox.values():
                queue.put_nowait(None)
            self._notify()

    def _notify(self) -> None:
        waiters, self._credit = self._credit, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    def _write_raw(self, data: bytes) -> None:
        if data and not self.transport.is_closing():
            self.transport.write(data)

    def flush(self) -> None:
        out = self.conn.data_to_send()
        if out:
            self._write_raw(self.tunnel.wrap(out) if self.tunnel else out)

    # -- the application's side ------------------------------------------------------

    def accept(self, stream_id: int) -> None:
        """SYN_REPLY: the stream is taken (spdystream's ``SendReply``)."""
        if self.conn.can_send(stream_id):
            self.conn.reply(stream_id)
            self.flush()

    def refuse(self, stream_id: int, why: str) -> None:
        """RST_STREAM PROTOCOL_ERROR for a stream we will not serve, and a log line."""
        log.info("spdy: reset stream %d: %s", stream_id, why)
        self.inbox.pop(stream_id, None)
        if self.conn.is_open(stream_id):
            self.conn.reset_stream(stream_id, spdy.RstStatus.PROTOCOL_ERROR)
            self.flush()

    def ignore(self, stream_id: int) -> None:
        """A stream whose data nobody reads (a port-forward's error stream):
        its bytes are credited as they come instead of piling up."""
        self._ignored.add(stream_id)
        queue = self.inbox.pop(stream_id, None)
        while queue is not None and not queue.empty():
            data = queue.get_nowait()
            if data:
                self._unread -= len(data)
                self.conn.consumed(stream_id, len(data))

    async def read(self, stream_id: int) -> bytes | None:
        """The stream's next bytes; None once the client ended it or left."""
        queue = self.inbox.get(stream_id)
        if queue is None:
            return None
        data = await queue.get()
        if data is None:
            queue.put_nowait(None)
            return None
        self._unread -= len(data)
        self.conn.consumed(stream_id, len(data))
        if self._paused and self._unread <= MAX_UNREAD // 2:
            self._paused = False
            self.transport.resume_reading()
        self.flush()
        return data

    async def write(self, stream_id: int, data: bytes, *, fin: bool = False) -> None:
        """Send, then wait until the peer's window has taken it all (while the
        peer counts) and the socket's write buffer has room."""
        if self.gone.is_set() or not self.conn.can_send(stream_id):
            return
        self.conn.send_data(stream_id, data, fin=fin)
        self.flush()
        while self.conn.pending(stream_id) and not self.gone.is_set():
            waiter = asyncio.get_running_loop().create_future()
            self._credit.append(waiter)
            await waiter
        await self._writable.wait()

    def can_send(self, stream_id: int) -> bool:
        return not self.gone.is_set() and self.conn.can_send(stream_id)

    async def end(self, status: spdy.GoAwayStatus = spdy.GoAwayStatus.OK) -> None:
        """GOAWAY, then a lingering close: our write side is shut and the
        client's last frames (WINDOW_UPDATEs in flight) are read and dropped
        until it closes, for at most ``LINGER`` seconds. Closing a socket with
        unread bytes would send the client a TCP reset, which can destroy our
        last frames before it reads them."""
        if self._closing:
            return
        self._closing = True
        self.conn.go_away(status)
        self.flush()
        if self.tunnel is not None:
            self._write_raw(self.tunnel.close())
        self._end()
        if not self.transport.is_closing():
            if self.transport.can_write_eof():
                try:
                    self.transport.write_eof()
                except OSError:  # the client reset the connection: nothing to linger for
                    self.transport.abort()
                    return
            if self._paused:
                self.transport.resume_reading()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(LINGER):
                    await self.client_done.wait()
            self.transport.close()

    def go_away(self, status: spdy.GoAwayStatus = spdy.GoAwayStatus.OK) -> None:
        """GOAWAY now, the socket later (:meth:`end`, once the span is over)."""
        self.conn.go_away(status)
        self.flush()
        self._end()

    async def close(self, *_: object) -> None:
        """GOAWAY OK and the socket (also what the server's shutdown calls)."""
        await self.end()


def _reset_words(event: spdy.StreamReset) -> tuple[int, int, str]:
    return event.stream_id, event.status, event.reason or "a stream rule broken"


class SpdyTransport:
    """The SPDY streams as :class:`~.session.Transport`: stdout and stderr
    go out on their streams, the exit status on the error stream; stdin,
    its FIN, and the resize stream's JSON sizes come in."""

    def __init__(self, session: SpdySession, streams: dict[str, int], version: str) -> None:
        self.session = session
        self.streams = streams
        self.version = version
        self._incoming: asyncio.Queue[Incoming | None] = asyncio.Queue(maxsize=16)
        self._readers = [
            asyncio.ensure_future(self._read_stdin()) if "stdin" in streams else None,
            asyncio.ensure_future(self._read_resize()) if "resize" in streams else None,
            asyncio.ensure_future(self._watch()),
        ]

    async def _read_stdin(self) -> None:
        sid = self.streams["stdin"]
        while (data := await self.session.read(sid)) is not None:
            await self._incoming.put(Incoming("stdin", STDIN, data))
        if not self.session.gone.is_set():
            await self._incoming.put(Incoming("close", STDIN))

    async def _read_resize(self) -> None:
        """Go's json.Encoder writes one object after another; a partial one waits."""
        sid, buffer, decoder = self.streams["resize"], "", json.JSONDecoder()
        while (data := await self.session.read(sid)) is not None:
            buffer += data.decode("utf-8", "replace")
            while buffer.strip():
                try:
                    _value, end = decoder.raw_decode(buffer.lstrip())
                except ValueError:
                    break
                text = buffer.lstrip()
                buffer = text[end:]
                try:
                    width, height = parse_resize(text[:end].encode())
                except ChannelError as exc:
                    log.debug("spdy: ignored a bad resize: %s", exc)
                    continue
                await self._incoming.put(Incoming("resize", RESIZE, width=width, height=height))

    async def _watch(self) -> None:
        await self.session.gone.wait()
        with contextlib.suppress(asyncio.QueueFull):
            self._incoming.put_nowait(None)

    async def send(self, channel: int, data: bytes) -> None:
        name = {1: "stdout", 2: "stderr"}.get(channel)
        if name in self.streams:
            await self.session.write(self.streams[name], data)

    async def send_exit(self, exit_code: int) -> None:
        await self.write_error(status_message(self.version, exit_code))

    async def write_error(self, message: bytes | None) -> None:
        sid = self.streams.get("error")
        if sid is None:
            return
        await self.session.write(sid, message or b"", fin=True)

    async def receive(self) -> Incoming | None:
        if self.session.gone.is_set() and self._incoming.empty():
            return None
        return await self._incoming.get()

    async def close(self) -> None:
        for reader in self._readers:
            if reader is not None:
                reader.cancel()
        for name in ("stdout", "stderr", "error"):
            sid = self.streams.get(name)
            if sid is not None and self.session.can_send(sid):
                await self.session.write(sid, b"", fin=True)
        self.session.go_away()


def status_message(version: str, exit_code: int, command: list[str] | None = None) -> bytes | None:
    """The error stream's last word: v4 a JSON ``metav1.Status``; older
    versions a message when the command failed, nothing when it succeeded."""
    if version.startswith("v4."):
        return json.dumps(status_document(exit_code, command)).encode()
    if exit_code == 0:
        return None
    return f"command terminated with non-zero exit code: {exit_code}".encode()


def failure_message(version: str, text: str) -> bytes:
    if version.startswith("v4."):
        doc = {"metadata": {}, "status": "Failure", "message": text, "reason": "InternalError"}
        return json.dumps(doc).encode()
    return text.encode()


def expected_streams(request: Any, version: str) -> set[str]:
    """What the client will open: always the error stream, then what the
    request asked for; resize with a TTY from v3 on (the kubelet's count)."""
    wanted = {"error"}
    for name in ("stdin", "stdout", "stderr"):
        if getattr(request, name, False):
            wanted.add(name)
    if getattr(request, "tty", False):
        wanted.discard("stderr")
        if version in ("v4.channel.k8s.io", "v3.channel.k8s.io"):
            wanted.add("resize")
    return wanted


def handshake_refusal(offered: list[str], ours: tuple[str, ...]) -> tuple[http.HTTPStatus, str]:
    """httpstream.Handshake's answers when no version is agreed: none offered
    is a bad request (the kubelet writes 400), none in common is forbidden."""
    if not offered:
        return (
            http.HTTPStatus.BAD_REQUEST,
            "unable to upgrade: X-Stream-Protocol-Version is required\n",
        )
    return (
        http.HTTPStatus.FORBIDDEN,
        f"unable to upgrade: unable to negotiate protocol: client supports {offered}, "
        f"server accepts {list(ours)}\n",
    )


class SpdyFrontEnd:
    """The SPDY half of the streaming server: what an SPDY upgrade is handed to."""

    def __init__(self, server: StreamingServer, creation_timeout: float = STREAM_CREATION_TIMEOUT):
        self.server = server
        self.creation_timeout = creation_timeout
        self.tasks: set[asyncio.Task[None]] = set()

    def handoff(self, transport: asyncio.Transport, head: RequestHead, rest: bytes) -> None:
        task = asyncio.ensure_future(self.serve(transport, head, rest))
        self.tasks.add(task)
        task.add_done_callback(self.served)

    def served(self, task: asyncio.Task[None]) -> None:
        """A session's task has ended. What a client does ends its session
        normally; an exception here is a fault of ours: ERROR, with its
        traceback (the session's slot was freed by its CLOSED already)."""
        self.tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("spdy: a session failed", exc_info=task.exception())

    async def serve(self, transport: asyncio.Transport, head: RequestHead, rest: bytes) -> None:
        wire = upgrade_kind(head) or "spdy"
        session = SpdySession(transport, Tunnel() if wire == "tunnel" else None)
        transport.set_protocol(session)  # a client lost from here on ends the session
        port_forward = head.path.startswith("/cri/portforward/")
        ours = PORT_FORWARD_PROTOCOLS if port_forward else PROTOCOLS
        if wire == "tunnel":
            offered = [TUNNEL_SUBPROTOCOL] if port_forward else []
            version = "portforward.k8s.io" if port_forward else None
            refusal = (
                http.HTTPStatus.BAD_REQUEST,
                f"{TUNNEL_SUBPROTOCOL} is for /cri/portforward/ URLs, with Sec-WebSocket-Key\n",
            )
            if not head.get("Sec-WebSocket-Key"):
                version = None
        else:
            offered = head.tokens("X-Stream-Protocol-Version")
            version = negotiate(offered, ours)
            refusal = handshake_refusal(offered, ours)
        callbacks = self.server.callbacks
        with callbacks.callback("FILTER_PROTOCOL_CONNECTION", wire=wire):
            verdict = self.server.admit(head.path, session, version is not None, refusal)
        from .server import Session

        if not isinstance(verdict, Session):
            status, text = verdict
            extra = []
            if status is http.HTTPStatus.FORBIDDEN:
                extra = [("X-Accepted-Stream-Protocol-Versions", p) for p in ours]
            log.info("spdy: refused %s %s: %d %s", wire, logged(head.path), status, text.strip())
            transport.write(http_response(status, extra, text))
            transport.close()
            return
        try:  # from admission on, whatever happens, CLOSED frees the slot
            assert version is not None, "admitted, so a version was agreed"
            with self.server.tracer.span(
                "SpdyStream",
                attributes={"method": verdict.method, "protocol": version, "wire": wire},
            ):
                await self.run(session, head, verdict, version, rest)
        finally:
            with callbacks.callback("CLOSED"):
                await self.server.closed(session)
            await session.end()

    async def run(
        self, session: SpdySession, head: RequestHead, record: Session, version: str, rest: bytes
    ) -> None:
        self.write_101_switching_protocols(session, head, version, rest)
        if record.method == "portforward":
            await self.port_forward(session, record)
            return
        entry = self.server.cache.peek(record.token)
        wanted = expected_streams(entry.request if entry else None, version)
        streams = await self.wait_for_streams(session, wanted)
        if not decide("wait_for_streams", streams is not None):
            return
        assert streams is not None
        annotate(streams=",".join(sorted(streams)))
        transport_ = SpdyTransport(session, streams, version)
        entry = self.consume_request(record)
        if not decide("get_request_by_token", entry is not None):
            with step("write_error_status"):
                await transport_.write_error(failure_message(version, "the token was used"))
            return
        assert entry is not None
        request = entry.request
        record.request = request
        verb = record.method
        branch("method", verb)
        try:
            with step("start_process"):
                process = await self.server.set_container_stream_request(record, request)
        except CRIError as exc:
            decide("process_started", False)
            with step("write_error_status"):
                await transport_.write_error(failure_message(version, str(exc)))
            return
        else:
            decide("process_started", True)
        record.process = process
        command = list(request.cmd) if verb == "exec" else []
        with step("serve_process"):
            from .session import serve_process

            quiet_exit = _NoExit(transport_)
            code = await serve_process(
                process,
                quiet_exit,
                stdin=request.stdin,
                stdout=request.stdout,
                stderr=request.stderr and not request.tty,
                report_exit=False,
            )
        record.finished = True
        with step("write_status_on_the_error_stream"):
            annotate(exit_code="" if code is None else str(code))
            if code is not None and verb == "exec":
                await transport_.write_error(status_message(version, code, command))
        await transport_.close()

    @step("write_101_switching_protocols")
    def write_101_switching_protocols(
        self, session: SpdySession, head: RequestHead, version: str, rest: bytes
    ) -> None:
        """The upgrade's answer; then the session reads, starting with what
        the client sent right after its request head."""
        if session.tunnel is None:
            headers = [("Connection", "Upgrade"), ("Upgrade", "SPDY/3.1")]
            headers.append(("X-Stream-Protocol-Version", version))
        else:
            headers = [("Connection", "Upgrade"), ("Upgrade", "websocket")]
            accept = websocket_accept(head.get("Sec-WebSocket-Key"))
            headers.append(("Sec-WebSocket-Accept", accept))
            headers.append(("Sec-WebSocket-Protocol", TUNNEL_SUBPROTOCOL))
        session.transport.write(http_response(http.HTTPStatus.SWITCHING_PROTOCOLS, headers))
        if rest:
            session.data_received(rest)
        session.transport.resume_reading()

    def consume_request(self, record: Session) -> Any:
        """The token redeemed, once (a second session for it finds nothing)."""
        with step("consume_request"):
            return self.server.cache.consume(record.method, record.token)

    async def port_forward(self, session: SpdySession, record: Session) -> None:
        """The token, then the session's own span of PortForward (edge SPDY session)."""
        entry = self.consume_request(record)
        if not decide("get_request_by_token", entry is not None):
            with step("write_error_status"):
                log.info("spdy: port-forward token %s… was used meanwhile", record.token[:4])
            return
        assert entry is not None
        record.request = entry.request
        branch("method", record.method)  # what run() branched on to come here
        with step("port_forward_session"):
            from .spdy_portforward import serve_spdy_port_forward

            # The span enters PortForward by its edge "SPDY session": this code
            # is SPDY's (plain or tunnelled), so no code asks which wire it is.
            wire = "spdy" if session.tunnel is None else "tunnel"
            with self.server.tracer.span(
                "PortForward", attributes={"part": "stream", "wire": wire}
            ):
                await serve_spdy_port_forward(
                    session, entry.request, self.server.containers(), self.creation_timeout
                )

    async def wait_for_streams(
        self, session: SpdySession, wanted: set[str]
    ) -> dict[str, int] | None:
        """The client's streams by type, each accepted as it comes, once all
        expected have come; None after the creation timeout, when the client
        leaves, or when it opens a stream of a type we do not serve (reset;
        the session then ends with GOAWAY PROTOCOL_ERROR)."""
        streams: dict[str, int] = {}
        try:
            async with asyncio.timeout(self.creation_timeout):
                while not wanted <= set(streams):
                    opened = await next_stream(session)
                    if opened is None:
                        return None
                    kind = opened.headers.get("streamtype", "")
                    if kind not in REMOTE_COMMAND_STREAMS or kind in streams:
                        why = "a second" if kind in streams else "an unknown"
                        session.refuse(opened.stream_id, f"{why} streamtype {kind!r}")
                        session.go_away(spdy.GoAwayStatus.PROTOCOL_ERROR)
                        return None
                    session.accept(opened.stream_id)
                    streams[kind] = opened.stream_id
        except TimeoutError:
            log.info(
                "spdy: the client opened %s of %s streams in %gs; closing",
                sorted(streams),
                sorted(wanted),
                self.creation_timeout,
            )
            return None
        return streams


async def next_stream(session: SpdySession) -> spdy.StreamOpened | None:
    """The client's next new stream; None once the session is over."""
    if not session.opened.empty():
        return session.opened.get_nowait()
    getter = asyncio.ensure_future(session.opened.get())
    gone = asyncio.ensure_future(session.gone.wait())
    try:
        done, _ = await asyncio.wait({getter, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
        if not getter.done():
            getter.cancel()
    return getter.result() if getter in done else None


class _NoExit:
    """serve_process's transport, except that the exit is written after the
    pumps by the caller (so the status step is its own node), and closing
    waits for the caller too."""

    def __init__(self, inner: SpdyTransport) -> None:
        self.inner = inner

    async def send(self, channel: int, data: bytes) -> None:
        await self.inner.send(channel, data)

    async def send_exit(self, exit_code: int) -> None:
        pass

    async def receive(self) -> Incoming | None:
        return await self.inner.receive()

    async def close(self) -> None:
        pass
