"""The websocket streaming server: where Exec, Attach and PortForward's URLs lead.

iSulad runs libwebsockets with one callback that switches on the event
(the seed's Websocket chart): FILTER_PROTOCOL_CONNECTION checks the URL and
its token, ESTABLISHED starts the StreamTask, RECEIVE writes stdin and
resizes, SERVER_WRITEABLE writes output, CLOSED collects the session. The
``websockets`` library gives us the same points as Python calls:
``process_request`` is the filter; the connection handler runs ESTABLISHED,
waits for the connection to close and runs CLOSED; the StreamTask
(WebsocketStream) is a task of its own; its ``send`` awaits the socket's
write buffer, which is SERVER_WRITEABLE's back-pressure. The wire format is
:mod:`.channel`'s, the pumps between a connection and a process :mod:`.session`'s.

A session holds one of ``max_sessions`` slots from the filter on, and only
CLOSED gives it back. The library calls our handler (and so CLOSED) only for
a handshake that succeeded; a connection that ends before (no
``Sec-WebSocket-Key``, a client reset right after its request) is seen by the
front door's ``connection_lost``, which runs CLOSED for it instead. A
handshake must be over within ``handshake_timeout`` (the library's
``open_timeout``; the front door reads the request head inside it too), and a
token is claimed at admission, so one URL opens at most one session.
"""

from __future__ import annotations

import asyncio
import contextlib
import http
import logging
import re
import signal
import ssl
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response
from websockets.protocol import State
from websockets.typing import Subprotocol

from ..errors import CRIError, FailedPrecondition, Internal, InvalidArgument, NotFound
from ..runtime.shim_client import ProcessStream
from ..store.container import RUNNING, state_name
from ..trace.tracer import Tracer, annotate, branch, decide, quiet, step
from .channel import (
    CLOSE,
    ERROR,
    PROTOCOLS,
    RESIZE,
    STDIN,
    ChannelError,
    Incoming,
    Protocol,
    lowest_writable,
    negotiate,
    parse_resize,
)
from .request_cache import CachedRequest, RequestCache
from .session import ClientGone, serve_process
from .spdy_server import SpdyFrontEnd, front_door

if TYPE_CHECKING:
    from ..manager.container import ContainerManager

log = logging.getLogger("teaching_cri.streaming")

MAX_SESSIONS = 128  # iSulad's MAX_SESSION_NUM
MAX_FRAME = 1 << 20  # the largest message a client may send (stdin arrives in pieces)
HANDSHAKE_TIMEOUT = 10.0  # seconds from the TCP accept to the 101 (websockets' open_timeout)
_PATH = re.compile(r"^/cri/(exec|attach|portforward)/([A-Za-z0-9_-]{1,64})$")


def shown(token: str) -> str:
    """A token in logs and traces: enough to follow, not enough to use."""
    return token[:4] + "…"


class Callbacks:
    """One span over the seed's Websocket chart per callback, as libwebsockets
    calls ``WebsocketServer::Callback`` once per event with its reason."""

    def __init__(self, tracer: Tracer) -> None:
        self.tracer = tracer

    @contextlib.contextmanager
    def callback(self, reason: str, **attributes: str) -> Iterator[None]:
        with self.tracer.span("Websocket", attributes={"callback": reason, **attributes}):
            branch("switch_reason", f"LWS_CALLBACK_{reason}")
            yield


class WebsocketTransport:
    """A websocket as :class:`~.session.Transport`: the stdout and stderr
    writers (each send a SERVER_WRITEABLE) and the RECEIVE callback, which
    does each client message's work itself: the stdin write, the resize, the
    v5 stdin close, as the seed's callback does."""

    def __init__(
        self,
        ws: ServerConnection,
        protocol: Protocol,
        callbacks: Callbacks,
        *,
        command: list[str],
        stdin: bool,
    ) -> None:
        self.ws = ws
        self.protocol = protocol
        self.callbacks = callbacks
        self.command = command
        self.stdin = stdin
        self.process: ProcessStream | None = None  # set once cb->container.exec/attach started it
        self.gone = False  # the connection has closed (the client left, or the server closed it)

    # -- SERVER_WRITEABLE ---------------------------------------------------------

    async def send(self, channel: int, data: bytes) -> None:
        await self.writeable(self.protocol.encode(channel, data))

    async def send_exit(self, exit_code: int) -> None:
        message = self.protocol.exit_status(exit_code, self.command)
        if message is not None:
            await self.writeable(message)

    async def writeable(self, message: bytes | str) -> None:
        """SERVER_WRITEABLE, once per message: our queue is the socket's write
        buffer, and ``send`` returns when it has room, so a slow client holds
        the producer back. A closed connection stops the producer (ClientGone)."""
        with self.callbacks.callback("SERVER_WRITEABLE"):
            sent = await self.lws_write_message(message)
            closed = decide("session_closed", not sent)
        if closed:
            self.gone = True
            raise ClientGone("the client closed the connection")

    @step("lws_write_message")
    async def lws_write_message(self, message: bytes | str) -> bool:
        """False when the connection is closed already (the write is refused)."""
        try:
            await self.ws.send(message)
        except ConnectionClosed:
            return False
        return True

    # -- RECEIVE --------------------------------------------------------------------

    async def receive(self) -> Incoming | None:
        """Each client message is one RECEIVE callback that does its work right
        there, so this returns only once the client has gone (None). A failed
        write or resize ends that callback's span at its node with the error;
        the session goes on (iSulad's Receive logs it and returns 0)."""
        while True:
            try:
                message = await self.ws.recv()
            except ConnectionClosed:
                self.gone = True
                return None
            try:
                with self.callbacks.callback("RECEIVE"):
                    await self.switch_char_in(message)
            except ChannelError as exc:  # the client's mistake: one line
                log.info("streaming: a client message was refused: %s", exc)
            except (ConnectionError, OSError) as exc:  # the process's stdin or terminal is gone
                log.info("streaming: a client message could not be applied: %s", exc)

    async def switch_char_in(self, message: bytes | str) -> None:
        """The seed's ``switch *(char *)in``: the message's channel picks the work."""
        try:
            channel, payload = self.protocol.split(message)
        except ChannelError as exc:
            branch("switch_char_in", "others")
            self.debug_invalid_data(str(exc))
            return
        process = self.process
        assert process is not None, "RECEIVE runs once the process is started"
        if channel == STDIN and self.stdin and payload:
            branch("switch_char_in", "WebsocketChannel::STDINCHANNEL")
            await self.write_char_in_1(process, payload)
        elif channel == RESIZE:
            branch("switch_char_in", "WebsocketChannel::RESIZECHANNEL")
            width, height = self.parse_terminal_size(payload)
            await self.cb_container_resize(process, width, height)
        elif channel == CLOSE and payload == bytes((STDIN,)) and self.stdin:
            branch("switch_char_in", "v5 CLOSE")
            await self.close_stdin(process)
        else:
            branch("switch_char_in", "others")
            self.debug_invalid_data(self.ignored(channel, payload))

    def ignored(self, channel: int, payload: bytes) -> str:
        if channel == STDIN:
            return "stdin was not asked for" if not self.stdin else "an empty stdin message"
        if channel == CLOSE:
            return f"a close of channel {payload.hex()}: only stdin (0) is closed, when asked for"
        return f"a client may not write channel {channel}"

    @step("write_char_in_1")
    async def write_char_in_1(self, process: ProcessStream, data: bytes) -> None:
        """``write((char *)in + 1)``: the payload to the process's stdin,
        awaited, so a process that does not read slows the client."""
        await process.write_stdin(data)

    @step("parse_terminal_size")
    def parse_terminal_size(self, payload: bytes) -> tuple[int, int]:
        return parse_resize(payload)

    @step("cb_container_resize")
    async def cb_container_resize(self, process: ProcessStream, width: int, height: int) -> None:
        annotate(size=f"{width}x{height}")
        await process.resize(width, height)

    @step("close_stdin")
    async def close_stdin(self, process: ProcessStream) -> None:
        """v5's ``[255, 0]``: the process reads EOF; its output still flows."""
        await process.close_stdin()

    @step("debug_invalid_data")
    def debug_invalid_data(self, why: str) -> None:
        annotate(ignored=why)
        log.debug("streaming: ignored a client message: %s", why)

    async def close(self) -> None:
        """Nothing: the StreamTask's CloseSession closes the connection."""


class StreamingServer:
    def __init__(
        self,
        cache: RequestCache,
        containers: Callable[[], ContainerManager],
        tracer: Tracer,
        host: str,
        port: int,
        *,
        max_sessions: int = MAX_SESSIONS,
        tls: ssl.SSLContext | None = None,
        handshake_timeout: float = HANDSHAKE_TIMEOUT,
    ) -> None:
        self.cache = cache
        self.containers = containers
        self.tracer = tracer
        self.callbacks = Callbacks(tracer)
        self.host = host
        self.port = port
        self.max_sessions = max_sessions
        self.tls = tls
        self.handshake_timeout = handshake_timeout
        self.server: Server | None = None
        self.sessions: dict[object, Session] = {}
        self._orphans: set[asyncio.Task[None]] = set()  # CLOSED for handshakes that failed
        self.spdy = SpdyFrontEnd(self)
        self._life: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()

    # -- the seed's Websocket_Server chart: one span for the server's life ---------

    async def start(self) -> None:
        started: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._life = asyncio.ensure_future(self.life(started))
        await started

    async def life(self, started: asyncio.Future[None]) -> None:
        """Its own task, so its span is current only here. The span waits for
        the stop between serving and closing: the seed's columns meet there."""
        try:
            with self.tracer.span("WebsocketServer"):
                self.conf_get_websocket_server_listening_port()
                await self.websocket_server_create_context()
                await self.websocket_server()
                started.set_result(None)
                await self._stopping.wait()
                self.set_m_force_exit()
                for ws in list(self.sessions):
                    branch("for_each_session_data_in_m_wsis", "next")
                    await self.delete_session_data(ws)
                else:  # the sessions ran out (the loop has no break)
                    branch("for_each_session_data_in_m_wsis", "done")
                await self.lws_context_destroy()
                if self._orphans:
                    await asyncio.wait(self._orphans)
        except BaseException as exc:
            if not started.done():
                started.set_exception(exc)
            raise

    @step("conf_get_websocket_server_listening_port")
    def conf_get_websocket_server_listening_port(self) -> None:
        annotate(address=f"{self.host}:{self.port}", tls="on" if self.tls else "off")

    @step("websocket_server_create_context")
    async def websocket_server_create_context(self) -> None:
        """The listening socket and its settings; it accepts nobody yet."""
        self.server = await serve(
            self.established,
            self.host,
            self.port,
            subprotocols=[Subprotocol(p) for p in PROTOCOLS],
            select_subprotocol=self.select_subprotocol,
            process_request=self.filter_protocol_connection,
            compression=None,  # container output is mostly incompressible, and CPU is not free
            max_size=MAX_FRAME,
            ssl=self.tls,
            open_timeout=self.handshake_timeout,
            # SPDY/3.1 upgrades go to the SPDY front end; every connection's end is reported.
            create_connection=front_door(self.spdy.handoff, self.connection_lost),
            start_serving=False,
        )
        if self.port == 0:
            self.port = self.server.sockets[0].getsockname()[1]

    @step("websocket_server")
    async def websocket_server(self) -> None:
        """The seed's service thread: ours starts accepting on the daemon's loop."""
        assert self.server is not None
        await self.server.start_serving()

    @step("set_m_force_exit")
    def set_m_force_exit(self) -> None:
        """No new connections; the open ones are closed next, one by one."""
        assert self.server is not None
        self.server.server.close()

    @step("delete_session_data")
    async def delete_session_data(self, ws: Any) -> None:
        """Closing a session runs its CLOSED clean-up (an exec'd process is killed)."""
        with contextlib.suppress(Exception):
            await ws.close(1001, "the server is shutting down")

    async def lws_context_destroy(self) -> None:
        """The chart's end node: the span ends there once the listener is
        closed and every connection's handler has returned."""
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
            self.server = None

    async def stop(self) -> None:
        """SIGINT/SIGTERM (WebsocketServer::Shutdown): wakes the server's span,
        which closes every session, then the listener."""
        if self._life is None:
            return
        self._stopping.set()
        with contextlib.suppress(Exception):
            await self._life
        self._life = None

    # -- LWS_CALLBACK_HTTP and FILTER_PROTOCOL_CONNECTION ----------------------------

    def select_subprotocol(
        self, ws: ServerConnection, offered: Sequence[Subprotocol]
    ) -> Subprotocol | None:
        chosen = negotiate(list(offered))
        return Subprotocol(chosen.name) if chosen else None

    def filter_protocol_connection(self, ws: ServerConnection, request: Request) -> Response | None:
        """The URL, the token (claimed, not redeemed: the stream task consumes
        it), the session count, a protocol both sides speak. A refusal is an
        HTTP answer; a request that is not an upgrade at all is LWS_CALLBACK_HTTP."""
        if request.headers.get("Upgrade", "").lower() != "websocket":
            with self.callbacks.callback("HTTP"):
                return ws.respond(
                    http.HTTPStatus.UPGRADE_REQUIRED, "a websocket upgrade is needed\n"
                )
        with self.callbacks.callback("FILTER_PROTOCOL_CONNECTION"):
            header = request.headers.get("Sec-WebSocket-Protocol", "")
            offered = [p.strip() for p in header.split(",") if p.strip()]
            verdict = self.admit(
                request.path,
                ws,
                None if not offered else negotiate(offered) is not None,
                (
                    http.HTTPStatus.BAD_REQUEST,
                    f"no supported subprotocol; offer one of {', '.join(PROTOCOLS)}\n",
                ),
            )
            if isinstance(verdict, Session):
                return None
            return ws.respond(*verdict)

    def admit(
        self,
        path: str,
        key: object,
        agreed: bool | None,
        no_match: tuple[http.HTTPStatus, str],
    ) -> Session | tuple[http.HTTPStatus, str]:
        """FILTER_PROTOCOL_CONNECTION's checks, whatever the wire (websocket or
        SPDY): the URL, the token, the session count, the protocol both sides
        speak (``agreed``: None when the client offered none). A new session,
        saved under ``key``, or the refusal's status and text."""
        with step("get_token_url"):
            match = _PATH.match(path)
        if match is None:
            branch("validate_url", "bad URL")
            return http.HTTPStatus.NOT_FOUND, "no such streaming URL\n"
        method, token = match.group(1), match.group(2)
        annotate(method=method, token=shown(token))
        verdict = self.cache.check(method, token)
        if verdict == "valid":
            branch("validate_url", "Y")
        else:
            branch("validate_url", verdict if verdict == "bad method" else f"{verdict} token")
            if verdict == "used":
                return http.HTTPStatus.NOT_FOUND, "used streaming token: a URL opens one session\n"
            return http.HTTPStatus.NOT_FOUND, f"{verdict} streaming token\n"
        if decide("socket_id_already_exist", key in self.sessions):
            return http.HTTPStatus.CONFLICT, "this connection has a session\n"
        if decide("too_many_connection_sessions", len(self.sessions) >= self.max_sessions):
            return (
                http.HTTPStatus.SERVICE_UNAVAILABLE,
                f"at most {self.max_sessions} streaming sessions at a time\n",
            )
        if agreed is False:
            branch("negotiate_subprotocol", "no match")
            return no_match
        branch("negotiate_subprotocol", "agreed" if agreed else "none offered")
        with step("generate_session_data"):
            session = Session(method, token)
        with step("save_session"):
            self.sessions[key] = session
            self.cache.claim(token)
        return session

    def connection_lost(self, ws: ServerConnection) -> None:
        """The front door's word that a websocket connection has ended. One
        whose handshake never finished had its slot taken by the filter but
        will never reach the handler, so CLOSED runs for it here; the
        handler's own CLOSED collects every other."""
        session = self.sessions.get(ws)
        if session is None or session.established:
            return
        why = ws.protocol.handshake_exc
        log.info(
            "streaming: a connection for %s token %s ended in its handshake: %s",
            session.method,
            shown(session.token),
            why or "the client left",
        )
        task = asyncio.ensure_future(self.closed_before_established(ws, session))
        self._orphans.add(task)
        task.add_done_callback(self._orphans.discard)

    async def closed_before_established(self, ws: ServerConnection, session: Session) -> None:
        if session.established:
            return  # the handler took it after all: its CLOSED collects it
        with self.callbacks.callback("CLOSED"):
            await self.closed(ws)

    # -- ESTABLISHED, CLOSED ---------------------------------------------------------

    async def established(self, ws: ServerConnection) -> None:
        """The connection's handler: ESTABLISHED starts the StreamTask, then the
        handler waits for the connection to close (the StreamTask closed it,
        the client left, or the server is shutting down) and runs CLOSED."""
        session = self.sessions.get(ws)
        if session is None:
            return  # the handshake's end collected it already (connection_lost)
        session.established = True
        protocol = Protocol(ws.subprotocol or "channel.k8s.io")
        try:
            with self.callbacks.callback("ESTABLISHED", method=session.method):
                self.debug_message(session, protocol)
                if session.method != "portforward":
                    await self.empty_frame_on_the_lowest_writable_channel(ws, session, protocol)
                self.start_stream_task(ws, session, protocol)
            await ws.wait_closed()
        except ConnectionClosed:
            pass  # gone before its first frame: the ESTABLISHED span says where
        finally:
            with self.callbacks.callback("CLOSED"):
                await self.closed(ws)

    @step("debug_message")
    def debug_message(self, session: Session, protocol: Protocol) -> None:
        annotate(protocol=protocol.name, token=shown(session.token))
        log.debug(
            "streaming: %s session %s over %s", session.method, shown(session.token), protocol.name
        )

    @step("empty_frame_on_the_lowest_writable_channel")
    async def empty_frame_on_the_lowest_writable_channel(
        self, ws: ServerConnection, session: Session, protocol: Protocol
    ) -> None:
        """The kubelet's "ready" frame: the streams are open before any output."""
        entry = self.cache.peek(session.token)
        channel = (
            ERROR if entry is None else lowest_writable(entry.request.stdout, entry.request.stderr)
        )
        await ws.send(protocol.encode(channel, b""))

    @step("start_stream_task")
    def start_stream_task(self, ws: ServerConnection, session: Session, protocol: Protocol) -> None:
        """The seed's std::thread StreamTask: ours is an asyncio task, whose
        span (WebsocketStream) is a child of this ESTABLISHED span."""
        session.task = asyncio.ensure_future(self.stream_task(ws, session, protocol))

    async def closed(self, key: object) -> None:
        """CLOSED: the session's collection, for the websocket and SPDY alike.
        An exec that lost its client is killed here; the StreamTask is awaited."""
        session = self.sessions.get(key)
        if not decide("get_session_data_by_socket_fd_closed", session is not None):
            return
        assert session is not None
        with step("delete_session_in_map"):
            del self.sessions[key]
            self.cache.erase(session.token)  # a token its session never redeemed is used up too
        process = session.process
        still_running = process is not None and session.method == "exec" and process.exit is None
        if decide("exec_process_still_running", still_running):
            assert process is not None
            log.info(
                "streaming: exec session %s ended while its process ran (its client left, "
                "or the server is stopping): killing the process",
                shown(session.token),
            )
            await self.kill_exec_process(process)
        await self.close_pipe_1(process)
        await self.sem_wait_session_sync_close_sem(session)

    @step("kill_exec_process")
    async def kill_exec_process(self, process: ProcessStream) -> None:
        """SIGKILL to the exec's process group. A stream already broken needs
        no kill: the shim kills an exec whose client connection is gone."""
        with contextlib.suppress(ConnectionError, OSError):
            await process.signal(signal.SIGKILL)

    @step("close_pipe_1")
    async def close_pipe_1(self, process: ProcessStream | None) -> None:
        """Our end of the process's stdio stream (stdin's EOF); a session that
        never started a process (port-forward, a refused start) has none."""
        if process is not None:
            await process.close()

    @step("sem_wait_session_sync_close_sem")
    async def sem_wait_session_sync_close_sem(self, session: Session) -> None:
        """The StreamTask's end (its sem_post); SPDY's runs in the connection's
        own task and has ended already, so there is none to wait for."""
        if session.task is not None:
            with contextlib.suppress(Exception):
                await session.task

    # -- the seed's Websocket_Stream chart: the StreamTask ----------------------------

    async def stream_task(self, ws: ServerConnection, session: Session, protocol: Protocol) -> None:
        """One span for the StreamTask. Whatever happens in it, the connection
        is closed at its end, so the handler goes on to CLOSED."""
        try:
            with self.tracer.span("WebsocketStream", attributes={"method": session.method}):
                await self.stream_task_run(ws, session, protocol)
        finally:
            if ws.state is not State.CLOSED:
                await ws.close(1011, "the stream ended unexpectedly")

    async def stream_task_run(
        self, ws: ServerConnection, session: Session, protocol: Protocol
    ) -> None:
        entry = self.consume_request(session)
        if not decide("get_request_by_token", entry is not None):
            used = NotFound("the streaming token was used meanwhile")
            await self.write_error_message(ws, protocol, used)
            await self.close_session(ws, str(used))
            return
        assert entry is not None
        self.earse(session)
        if decide("expired_request", self.cache.expired(entry)):
            expired = NotFound("the streaming token expired")
            await self.write_error_message(ws, protocol, expired)
            await self.close_session(ws, str(expired))
            return
        session.request = entry.request
        branch("method", session.method)
        if session.method == "portforward":  # its own chart; this one ends at port_forward_session
            from .portforward import serve_port_forward

            # The span enters PortForward by its edge "websocket session": this
            # code is the websocket's, so no code asks which wire it is.
            with self.tracer.span(
                "PortForward", attributes={"part": "stream", "wire": "websocket"}
            ):
                await serve_port_forward(ws, protocol, entry.request, self.containers())
            return
        if session.method == "exec":
            await self.exec_serve(ws, session, protocol)
        else:
            await self.attach_serve(ws, session, protocol)

    @step("consume_request")
    def consume_request(self, session: Session) -> CachedRequest | None:
        """RequestCache::ConsumeRequest's lookup: the request the token holds."""
        return self.cache.peek(session.token)

    @step("earse")
    def earse(self, session: Session) -> None:
        """Out of the cache before the expiry check, so even an expired token is used up."""
        self.cache.erase(session.token)

    async def exec_serve(self, ws: ServerConnection, session: Session, protocol: Protocol) -> None:
        """ExecServe (its start box is absent: the method branch enters here)."""
        request = session.request
        self.exec_serve_set_container_stream_request(request)
        transport = self.exec_serve_execute_stream_command(ws, protocol, request)
        outcome = await self.cb_container_exec(session, transport)
        if isinstance(outcome, int):
            branch("exec_return_0", "Y")
            await self.write_exit_code(transport, outcome)
        elif outcome is CONNECTION_CLOSED:
            branch("exec_return_0", "connection closed")
        else:
            branch("exec_return_0", "N")
            await self.write_error_message(ws, protocol, outcome)
        await self.close_session(ws, reason(outcome))

    async def attach_serve(
        self, ws: ServerConnection, session: Session, protocol: Protocol
    ) -> None:
        """AttachServe (its start box is absent: the method branch enters here)."""
        request = session.request
        self.attach_serve_set_container_stream_request(request)
        transport = self.attach_serve_execute_stream_command(ws, protocol, request)
        outcome = await self.cb_container_attach(session, transport)
        if isinstance(outcome, int):
            branch("attach_return_0", "Y")  # sem_wait(&attachSem) is the attach's own end
        elif outcome is CONNECTION_CLOSED:
            branch("attach_return_0", "connection closed")
        else:
            branch("attach_return_0", "N")
            await self.write_error_message(ws, protocol, outcome)
        await self.close_session(ws, reason(outcome))

    @step("exec_serve_set_container_stream_request")
    def exec_serve_set_container_stream_request(self, request: Any) -> None:
        """The runtime's request from the cached CRI one: container, command, streams."""
        annotate(
            container_id=request.container_id,
            cmd=" ".join(request.cmd),
            streams=streams_of(request),
        )

    @step("attach_serve_set_container_stream_request")
    def attach_serve_set_container_stream_request(self, request: Any) -> None:
        """The runtime's request from the cached CRI one: container, streams."""
        annotate(container_id=request.container_id, streams=streams_of(request))

    @step("exec_serve_execute_stream_command")
    def exec_serve_execute_stream_command(
        self, ws: ServerConnection, protocol: Protocol, request: Any
    ) -> WebsocketTransport:
        """The seed's stdoutstringWriter and stderrstringWriter: the transport
        that frames the process's output for SERVER_WRITEABLE."""
        return WebsocketTransport(
            ws, protocol, self.callbacks, command=list(request.cmd), stdin=request.stdin
        )

    @step("attach_serve_execute_stream_command")
    def attach_serve_execute_stream_command(
        self, ws: ServerConnection, protocol: Protocol, request: Any
    ) -> WebsocketTransport:
        """The seed's stdoutstringWriter and stderrstringWriter (see ExecServe's)."""
        return WebsocketTransport(ws, protocol, self.callbacks, command=[], stdin=request.stdin)

    @step("cb_container_exec")
    async def cb_container_exec(self, session: Session, transport: WebsocketTransport) -> Outcome:
        """The command started in the container and streamed until it ends."""
        return await self.run_process(session, transport)

    @step("cb_container_attach")
    async def cb_container_attach(self, session: Session, transport: WebsocketTransport) -> Outcome:
        """The container's stdio joined until the attach's streams end."""
        return await self.run_process(session, transport)

    async def run_process(self, session: Session, transport: WebsocketTransport) -> Outcome:
        """Start (or join) the process and stream it: its exit code, CONNECTION_CLOSED,
        or what failed (the container stopped since the URL was issued, say)."""
        request = session.request
        try:
            process = await self.start_process(session, request)
        except (CRIError, OSError) as exc:
            annotate(error=str(exc))
            return exc
        session.process = transport.process = process
        try:
            code = await serve_process(
                process,
                transport,
                stdin=request.stdin,
                stdout=request.stdout,
                stderr=request.stderr,
                report_exit=False,
            )
        except Exception as exc:  # the runtime's stream broke: the client is told
            log.exception("streaming: the %s session's stream failed", session.method)
            return Internal(f"the runtime's stream failed: {exc}")
        if code is not None:
            annotate(exit_code=str(code))
            return code
        if transport.gone:
            return CONNECTION_CLOSED
        return Internal(process.error or "the runtime ended the stream without an exit status")

    async def start_process(self, session: Session, request: Any) -> ProcessStream:
        """The process to stream: a new exec, or the container's own stdio.
        The runtime's own steps are folded into the caller's node
        (cb->container.exec or attach, SpdyStream's start process)."""
        manager = self.containers()
        with quiet():
            container = manager.get(request.container_id)
            await manager.refresh(container)
            if container.state != RUNNING:
                raise FailedPrecondition(
                    f"container {container.id[:12]} is not running ({state_name(container.state)})"
                )
            if session.method == "exec":
                return await manager.exec_stream(
                    container, list(request.cmd), tty=request.tty, stdin=request.stdin
                )
            return await manager.attach_stream(
                container, stdin=request.stdin, stdout=request.stdout, stderr=request.stderr
            )

    set_container_stream_request = start_process  # the name spdy_server.py calls it by

    @step("write_exit_code")
    async def write_exit_code(self, transport: WebsocketTransport, code: int) -> None:
        """The v4/v5 Status on the error channel (older protocols: a message
        only for a non-zero exit); a client gone meanwhile gets nothing."""
        with contextlib.suppress(ClientGone):
            await transport.send_exit(code)

    @step("write_error_message")
    async def write_error_message(
        self, ws: ServerConnection, protocol: Protocol, error: Exception
    ) -> None:
        reason_, code = status_reason(error)
        with contextlib.suppress(ConnectionClosed):
            await ws.send(protocol.error(str(error), reason=reason_, code=code))

    @step("close_session")
    async def close_session(self, ws: ServerConnection, why: str = "") -> None:
        """1000 after a stream that ran; 1011 with the reason after one that
        could not (the reason is for clients that read no error channel)."""
        if why:
            await ws.close(1011, clip_reason(why))
        else:
            await ws.close()


CONNECTION_CLOSED = ClientGone("the connection closed before the process ended")
Outcome = int | Exception  # an exit code, CONNECTION_CLOSED, or what went wrong


def reason(outcome: Outcome) -> str:
    """The close reason after a stream: none when it ran to its end or the
    connection closed first."""
    if isinstance(outcome, int) or outcome is CONNECTION_CLOSED:
        return ""
    return str(outcome)


def status_reason(error: Exception) -> tuple[str, int]:
    """A ``metav1.Status`` reason and code for a stream that could not run:
    as the API server answers an exec into a stopped or missing container."""
    if isinstance(error, NotFound):
        return "NotFound", 404
    if isinstance(error, (FailedPrecondition, InvalidArgument)):
        return "BadRequest", 400
    return "InternalError", 500


def clip_reason(text: str) -> str:
    """A close frame's reason is at most 123 bytes of UTF-8."""
    data = text.encode()
    return text if len(data) <= 123 else data[:120].decode(errors="ignore") + "…"


def streams_of(request: Any) -> str:
    names = [n for n in ("stdin", "stdout", "stderr", "tty") if getattr(request, n)]
    return ",".join(names) or "none"


@dataclass(eq=False)
class Session:
    """What a connection carries: its method and token; later its request,
    its process and (websocket) its StreamTask."""

    method: str
    token: str
    request: Any = None
    process: Any = None
    finished: bool = False  # set by spdy_server.py; CLOSED asks the process itself
    task: asyncio.Task[None] | None = None
    established: bool = False  # its handler runs (websocket): CLOSED is the handler's
