"""Exec and Attach over SPDY/3.1: the streaming URLs as a stock kubelet dials them.

client-go's ``remotecommand`` upgrades the URL's HTTP request with
``Upgrade: SPDY/3.1`` and offers its protocol versions in
``X-Stream-Protocol-Version``; the server answers 101 naming the one chosen
(or 403 listing its own in ``X-Accepted-Stream-Protocol-Versions``). Then the
client opens one SPDY stream per thing it carries, named by its
``streamtype`` header (error, stdin, stdout, stderr, resize), and the server
waits for all it expects, as the kubelet's
``pkg/kubelet/cri/streaming/remotecommand`` does, before joining them to the
process (:mod:`.session`, the same joining as the websocket path's).

The websockets library owns the listening socket and its connections, so the
front door is a websockets connection class (``serve(create_connection=)``)
that looks at the request head first: a websocket upgrade goes on as before,
an SPDY upgrade is taken away with its transport (:func:`front_door`) and
served here, over :mod:`.spdy`'s sans-I/O core. The URL and token checks,
the session table and its limit, and the CLOSED clean-up are the websocket
path's (:meth:`.server.StreamingServer.admit`, ``closed``), traced under the
same Websocket chart; the session itself is one span of ``SpdyStream``.
"""

from __future__ import annotations

import asyncio
import contextlib
import http
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from websockets.asyncio.server import ServerConnection

from ..errors import CRIError
from ..trace.tracer import annotate, decide, step
from . import spdy
from .channel import RESIZE, STDIN, ChannelError, Incoming, parse_resize, status_document

if TYPE_CHECKING:
    from .server import Session, StreamingServer

log = logging.getLogger("teaching_cri.streaming")

# The kubelet's choices for remote commands, newest first (client order decides).
PROTOCOLS = ("v4.channel.k8s.io", "v3.channel.k8s.io", "v2.channel.k8s.io", "channel.k8s.io")
MAX_HEAD = 16 * 1024  # the longest request head the front door reads before deciding
STREAM_CREATION_TIMEOUT = 30.0  # the kubelet's default
MAX_UNREAD = 1 << 20  # client bytes held before the socket stops being read


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


def is_spdy_upgrade(head: RequestHead) -> bool:
    return head.get("upgrade").lower() == "spdy/3.1"


def negotiate(offered: list[str]) -> str | None:
    """The first version the client offers that we speak (httpstream.Handshake)."""
    return next((p for p in offered if p in PROTOCOLS), None)


def http_response(status: http.HTTPStatus, headers: list[tuple[str, str]], body: str = "") -> bytes:
    raw = body.encode()
    lines = [f"HTTP/1.1 {status.value} {status.phrase}"]
    lines += [f"{name}: {value}" for name, value in headers]
    if status is not http.HTTPStatus.SWITCHING_PROTOCOLS:
        lines += ["Content-Type: text/plain; charset=utf-8", f"Content-Length: {len(raw)}"]
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + raw


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


Handoff = Callable[[asyncio.Transport, RequestHead], None]


def front_door(handoff: Handoff) -> type[ServerConnection]:
    """A websockets connection that reads the request head before the
    library does; an SPDY upgrade is handed off with the transport, the
    websockets side ends as if the client had left before asking anything."""

    class FrontDoor(ServerConnection):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._head: bytearray | None = bytearray()

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
            if head is None or not is_spdy_upgrade(head):
                super().data_received(buffered)
                return
            transport = self.transport
            self.transport = _Detached()
            self.connection_lost(None)
            handoff(transport, head)

    return FrontDoor


class SpdySession(asyncio.Protocol):
    """An upgraded connection: the SPDY core on one side, asyncio on the
    other. The client's streams arrive on :attr:`opened`, each accepted at
    once (as the kubelet's ``spdy.connection`` does); their data waits in a
    queue per stream, and reading stops while more than ``MAX_UNREAD`` bytes
    wait; sending awaits the socket's write buffer."""

    def __init__(self, transport: asyncio.Transport) -> None:
        # spdystream, client-go's SPDY, does no flow control (see spdy.py)
        self.conn = spdy.Connection(client=False, flow_control=False)
        self.transport = transport
        self.opened: asyncio.Queue[spdy.StreamOpened] = asyncio.Queue()
        self.inbox: dict[int, asyncio.Queue[bytes | None]] = {}
        self.gone = asyncio.Event()
        self._writable = asyncio.Event()
        self._writable.set()
        self._unread = 0
        self._paused = False

    def data_received(self, data: bytes) -> None:
        self.conn.receive_data(data)
        for event in self.conn.events():
            if isinstance(event, spdy.StreamOpened):
                self.conn.reply(event.stream_id)
                self.inbox[event.stream_id] = asyncio.Queue()
                self.opened.put_nowait(event)
            elif isinstance(event, spdy.DataReceived):
                self.inbox[event.stream_id].put_nowait(event.data)
                self._unread += len(event.data)
                if self._unread > MAX_UNREAD and not self._paused:
                    self._paused = True
                    self.transport.pause_reading()
            elif isinstance(event, spdy.StreamEnded | spdy.StreamReset):
                if event.stream_id in self.inbox:
                    self.inbox[event.stream_id].put_nowait(None)
            elif isinstance(event, spdy.ConnectionTerminated):
                self._end()
        self.flush()

    def connection_lost(self, exc: Exception | None) -> None:
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

    def flush(self) -> None:
        out = self.conn.data_to_send()
        if out and not self.transport.is_closing():
            self.transport.write(out)

    async def read(self, stream_id: int) -> bytes | None:
        """The stream's next bytes; None once the client ended it or left."""
        data = await self.inbox[stream_id].get()
        if data is None:
            self.inbox[stream_id].put_nowait(None)
            return None
        self._unread -= len(data)
        self.conn.consumed(stream_id, len(data))
        if self._paused and self._unread <= MAX_UNREAD // 2:
            self._paused = False
            self.transport.resume_reading()
        self.flush()
        return data

    async def write(self, stream_id: int, data: bytes, *, fin: bool = False) -> None:
        if self.gone.is_set() or not self.conn.can_send(stream_id):
            return
        self.conn.send_data(stream_id, data, fin=fin)
        self.flush()
        await self._writable.wait()

    async def close(self, *_: object) -> None:
        """GOAWAY, then the socket (also what the server's shutdown calls)."""
        self.conn.go_away()
        self.flush()
        self.transport.close()
        self._end()


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
            if sid is not None and self.session.conn.can_send(sid):
                await self.session.write(sid, b"", fin=True)
        await self.session.close()


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


class SpdyFrontEnd:
    """The SPDY half of the streaming server: what an SPDY upgrade is handed to."""

    def __init__(self, server: StreamingServer, creation_timeout: float = STREAM_CREATION_TIMEOUT):
        self.server = server
        self.creation_timeout = creation_timeout
        self.tasks: set[asyncio.Task[None]] = set()

    def handoff(self, transport: asyncio.Transport, head: RequestHead) -> None:
        task = asyncio.ensure_future(self.serve(transport, head))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def serve(self, transport: asyncio.Transport, head: RequestHead) -> None:
        if head.path.startswith("/cri/portforward/"):
            body = "port-forward over SPDY is not built yet; use the websocket protocol\n"
            transport.write(http_response(http.HTTPStatus.NOT_IMPLEMENTED, [], body))
            transport.close()
            return
        session = SpdySession(transport)
        callbacks = self.server.callbacks
        version = negotiate(head.tokens("X-Stream-Protocol-Version"))
        with callbacks.callback("FILTER_PROTOCOL_CONNECTION", wire="spdy"):
            verdict = self.server.admit(
                head.path,
                session,
                version is not None,
                (http.HTTPStatus.FORBIDDEN, "unable to negotiate a stream protocol version\n"),
            )
        from .server import Session

        if not isinstance(verdict, Session):
            status, text = verdict
            extra = []
            if status is http.HTTPStatus.FORBIDDEN:
                extra = [("X-Accepted-Stream-Protocol-Versions", p) for p in PROTOCOLS]
            transport.write(http_response(status, extra, text))
            transport.close()
            return
        assert version is not None
        try:
            with self.server.tracer.span(
                "SpdyStream", attributes={"method": verdict.method, "protocol": version}
            ):
                await self.run(transport, session, verdict, version)
        finally:
            with callbacks.callback("CLOSED"):
                await self.server.closed(session)
            await session.close()

    async def run(
        self, transport: asyncio.Transport, session: SpdySession, record: Session, version: str
    ) -> None:
        with step("write_101_switching_protocols"):
            transport.write(
                http_response(
                    http.HTTPStatus.SWITCHING_PROTOCOLS,
                    [
                        ("Connection", "Upgrade"),
                        ("Upgrade", "SPDY/3.1"),
                        ("X-Stream-Protocol-Version", version),
                    ],
                )
            )
            transport.set_protocol(session)
        entry = self.server.cache.peek(record.token)
        wanted = expected_streams(entry.request if entry else None, version)
        streams = await self.wait_for_streams(session, wanted)
        if not decide("wait_for_streams", streams is not None):
            return
        assert streams is not None
        annotate(streams=",".join(sorted(streams)))
        transport_ = SpdyTransport(session, streams, version)
        with step("consume_request"):
            entry = self.server.cache.consume(record.method, record.token)
        if not decide("get_request_by_token", entry is not None):
            with step("write_error_status"):
                await transport_.write_error(failure_message(version, "the token was used"))
            return
        assert entry is not None
        request = entry.request
        record.request = request
        verb = record.method
        try:
            with step("start_process"):
                process = await self.server.set_container_stream_request(record, request)
        except CRIError as exc:
            decide("process_started", False)
            with step("write_error_status"):
                await transport_.write_error(failure_message(version, str(exc)))
            return
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

    async def wait_for_streams(
        self, session: SpdySession, wanted: set[str]
    ) -> dict[str, int] | None:
        """The client's streams by type, once all expected have come; None
        after the creation timeout, or when the client leaves or sends an
        unknown type."""
        streams: dict[str, int] = {}
        try:
            async with asyncio.timeout(self.creation_timeout):
                while not wanted <= set(streams):
                    getter = asyncio.ensure_future(session.opened.get())
                    gone = asyncio.ensure_future(session.gone.wait())
                    done, _ = await asyncio.wait(
                        {getter, gone}, return_when=asyncio.FIRST_COMPLETED
                    )
                    gone.cancel()
                    if getter not in done:
                        getter.cancel()
                        return None
                    opened = getter.result()
                    kind = opened.headers.get("streamtype", "")
                    if kind not in ("error", "stdin", "stdout", "stderr", "resize"):
                        log.debug("spdy: a stream of unknown type %r", kind)
                        return None
                    streams[kind] = opened.stream_id
        except TimeoutError:
            log.debug("spdy: the client opened %s of %s in time", sorted(streams), sorted(wanted))
            return None
        return streams


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
