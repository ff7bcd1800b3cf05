"""The websocket streaming server: where Exec, Attach and PortForward's URLs lead.

iSulad runs libwebsockets with one callback that switches on the event
(the seed's Websocket chart): FILTER_PROTOCOL_CONNECTION checks the URL and
its token, ESTABLISHED starts the stream task, RECEIVE feeds stdin and
resizes, SERVER_WRITEABLE drains queued output, CLOSED cleans the session
up. The ``websockets`` library gives us the same points as Python calls:
``process_request`` is the filter, the connection handler is everything from
ESTABLISHED to CLOSED, and its ``send`` awaits the socket's write buffer,
which is SERVER_WRITEABLE's back-pressure. The wire format is
:mod:`.channel`'s, the joining of a connection to a process :mod:`.session`'s.
"""

from __future__ import annotations

import asyncio
import contextlib
import http
import logging
import re
import ssl
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response
from websockets.typing import Subprotocol

from ..errors import CRIError, FailedPrecondition
from ..trace.tracer import Tracer, annotate, branch, decide, quiet, step
from .channel import PROTOCOLS, ChannelError, Incoming, Protocol, lowest_writable, negotiate
from .request_cache import RequestCache
from .session import serve_process
from .spdy_server import SpdyFrontEnd, front_door

if TYPE_CHECKING:
    from ..manager.container import ContainerManager

log = logging.getLogger("teaching_cri.streaming")

MAX_SESSIONS = 128  # iSulad's MAX_SESSION_NUM
MAX_FRAME = 1 << 20  # the largest message a client may send (stdin arrives in pieces)
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
    """A websocket as :class:`~.session.Transport`: the channel protocol's
    messages in and out, each send a SERVER_WRITEABLE, each message a RECEIVE."""

    def __init__(
        self, ws: ServerConnection, protocol: Protocol, command: list[str], callbacks: Callbacks
    ) -> None:
        self.ws = ws
        self.protocol = protocol
        self.command = command
        self.callbacks = callbacks

    async def send(self, channel: int, data: bytes) -> None:
        await self.writeable(self.protocol.encode(channel, data))

    async def send_exit(self, exit_code: int) -> None:
        message = self.protocol.exit_status(exit_code, self.command)
        if message is not None:
            await self.writeable(message)

    async def writeable(self, message: bytes | str) -> None:
        """SERVER_WRITEABLE: our queue is the socket's write buffer; ``send``
        returns when it has room, so a slow client holds the producer back."""
        with self.callbacks.callback("SERVER_WRITEABLE"):
            decide("get_session_data_by_socket_fd_writeable", True)
            with step("session_closed_is_closed"):
                closed = self.ws.close_code is not None
            decide("buffer_empty", False)
            with step("lws_write_message"):
                await self.ws.send(message)
            decide("buffer_empty", True)
            decide("session_closed", closed)

    async def receive(self) -> Incoming | None:
        while True:
            try:
                message = await self.ws.recv()
            except ConnectionClosed:
                return None
            with self.callbacks.callback("RECEIVE"):
                decide("get_session_data_by_socket_fd_receive", True)
                decide("is_last_stdin_complete", True)  # the library reassembles fragments
                incoming: Incoming | None = None
                try:
                    incoming = self.protocol.decode(message)
                except ChannelError as exc:
                    branch("switch_char_in", "others")
                    with step("debug_invalid_data"):
                        log.debug("streaming: ignored a bad message: %s", exc)
                else:
                    self.dispatch(incoming)
                with step("set_stdin_complete"):
                    pass
            if incoming is not None:
                return incoming

    @staticmethod
    def dispatch(incoming: Incoming) -> None:
        if incoming.kind == "stdin":
            branch("switch_char_in", "WebsocketChannel::STDINCHANNEL")
            with step("write_char_in_1"):
                pass
        elif incoming.kind == "resize":
            branch("switch_char_in", "WebsocketChannel::RESIZECHANNEL")
            with step("parse_terminal_size"):
                pass
            with step("cb_container_resize"):
                pass
        else:
            branch("switch_char_in", "v5 CLOSE")
            with step("close_stdin"):
                pass

    async def close(self) -> None:
        await self.ws.close()


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
    ) -> None:
        self.cache = cache
        self.containers = containers
        self.tracer = tracer
        self.callbacks = Callbacks(tracer)
        self.host = host
        self.port = port
        self.max_sessions = max_sessions
        self.tls = tls
        self.server: Server | None = None
        self.sessions: dict[object, Session] = {}
        self.spdy = SpdyFrontEnd(self)
        self._life: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()

    # -- the seed's Websocket_Server chart: one span for the server's life ---------

    async def start(self) -> None:
        started: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._life = asyncio.ensure_future(self.life(started))
        await started

    async def life(self, started: asyncio.Future[None]) -> None:
        """Its own task, so its span is current only here."""
        try:
            with self.tracer.span("WebsocketServer"):
                self.conf_get_websocket_server_listening_port()
                await self.websocket_server_create_context()
                with step("websocket_server"):
                    started.set_result(None)
                await self._stopping.wait()
                with step("websocket_server_shutdown"):
                    pass
                with step("set_m_force_exit"):
                    pass
                with step("websocket_server_wait"):
                    pass
                for ws in list(self.sessions):
                    branch("for_each_session_data_in_m_wsis", "next")
                    await self.delete_session_data(ws)
                branch("for_each_session_data_in_m_wsis", "done")
                await self.lws_context_destroy()
        except BaseException as exc:
            if not started.done():
                started.set_exception(exc)
            raise

    @step("conf_get_websocket_server_listening_port")
    def conf_get_websocket_server_listening_port(self) -> None:
        annotate(address=f"{self.host}:{self.port}", tls="on" if self.tls else "off")

    @step("websocket_server_create_context")
    async def websocket_server_create_context(self) -> None:
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
            create_connection=front_door(self.spdy.handoff),  # SPDY/3.1 upgrades go there
        )
        if self.port == 0:
            self.port = self.server.sockets[0].getsockname()[1]

    @step("delete_session_data")
    async def delete_session_data(self, ws: Any) -> None:
        """Closing a session runs its CLOSED clean-up (an exec'd process is killed)."""
        with contextlib.suppress(Exception):
            await ws.close(1001, "the server is shutting down")

    @step("lws_context_destroy")
    async def lws_context_destroy(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
            self.server = None

    async def stop(self) -> None:
        """SIGINT/SIGTERM: every session closed, then the listener."""
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
        """The URL, the token (checked, not used: the stream task consumes it),
        the session count, a protocol both sides speak. A refusal is an HTTP
        answer; a request that is not an upgrade at all is LWS_CALLBACK_HTTP."""
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
        if verdict != "valid":
            branch("validate_url", verdict if verdict == "bad method" else f"{verdict} token")
            return http.HTTPStatus.NOT_FOUND, f"{verdict} streaming token\n"
        branch("validate_url", "Y")
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
        return session

    # -- ESTABLISHED, the stream task, CLOSED ----------------------------------------

    async def established(self, ws: ServerConnection) -> None:
        session = self.sessions.get(ws)
        if session is None:
            return
        protocol = Protocol(ws.subprotocol or "channel.k8s.io")
        try:
            with self.callbacks.callback("ESTABLISHED", method=session.method):
                with step("debug_message"):
                    annotate(protocol=protocol.name, token=shown(session.token))
                if session.method != "portforward":
                    with step("empty_frame_on_the_lowest_writable_channel"):
                        await ws.send(protocol.encode(self.ready_channel(session), b""))
                with step("start_stream_task"):
                    pass
            with self.tracer.span("WebsocketStream", attributes={"method": session.method}):
                await self.stream_task_run(ws, session, protocol)
        finally:
            with self.callbacks.callback("CLOSED"):
                await self.closed(ws)

    def ready_channel(self, session: Session) -> int:
        entry = self.cache.peek(session.token)
        if entry is None:
            return 3
        return lowest_writable(entry.request.stdout, entry.request.stderr)

    async def stream_task_run(
        self, ws: ServerConnection, session: Session, protocol: Protocol
    ) -> None:
        with step("consume_request"):
            entry = self.cache.consume(session.method, session.token)
        if not decide("get_request_by_token", entry is not None):
            await self.write_error_message(ws, protocol, "the streaming token was used meanwhile")
            await self.close_session(ws)
            return
        assert entry is not None
        with step("earse"):
            session.request = entry.request
        decide("expired_request", False)  # consume refuses an expired one
        branch("method", session.method)
        if session.method == "portforward":  # its own chart; this one ends at port_forward_session
            from .portforward import serve_port_forward

            with self.tracer.span("PortForward", attributes={"part": "stream"}):
                branch("rpc_or_stream", "stream")
                await serve_port_forward(ws, protocol, entry.request, self.containers())
            return
        verb = "exec" if session.method == "exec" else "attach"
        with step(f"{verb}_serve"):
            pass
        request = entry.request
        transport = WebsocketTransport(
            ws, protocol, list(request.cmd) if verb == "exec" else [], self.callbacks
        )
        try:
            with step(f"{verb}_serve_set_container_stream_request"):
                process = await self.set_container_stream_request(session, request)
        except CRIError as exc:
            decide(f"{verb}_return_0", False)
            await self.write_error_message(ws, protocol, str(exc))
            await self.close_session(ws)
            return
        session.process = process
        with step(f"{verb}_serve_execute_stream_command"):
            pass
        with step(f"cb_container_{verb}"):
            code = await serve_process(
                process,
                transport,
                stdin=request.stdin,
                stdout=request.stdout,
                stderr=request.stderr,
                report_exit=verb == "exec",
            )
        session.finished = True
        decide(f"{verb}_return_0", True)
        with step("write_exit_code" if verb == "exec" else "sem_wait_attach_sem"):
            annotate(exit_code="" if code is None else str(code))
        await self.close_session(ws)

    async def set_container_stream_request(self, session: Session, request: Any) -> Any:
        """The process to stream: a new exec, or the container's own stdio."""
        manager = self.containers()
        with quiet():
            container = manager.get(request.container_id)
            await manager.refresh(container)
            if container.state != "CONTAINER_RUNNING":
                raise FailedPrecondition(f"container {container.id[:12]} is not running")
            if session.method == "exec":
                return await manager.backend.exec(
                    container.id, list(request.cmd), tty=request.tty, stdin=request.stdin
                )
            return await manager.backend.attach(
                container.id, stdin=request.stdin, stdout=request.stdout, stderr=request.stderr
            )

    @step("write_error_message")
    async def write_error_message(
        self, ws: ServerConnection, protocol: Protocol, text: str
    ) -> None:
        with contextlib.suppress(ConnectionClosed):
            await ws.send(protocol.error(text))

    @step("close_session")
    async def close_session(self, ws: ServerConnection) -> None:
        await ws.close()

    async def closed(self, ws: object) -> None:
        """CLOSED: the session's clean-up. An exec that lost its client before it
        finished is killed (its shim does it when the stream closes)."""
        session = self.sessions.get(ws)
        if not decide("get_session_data_by_socket_fd_closed", session is not None):
            return
        assert session is not None
        with step("delete_session_in_map"):
            del self.sessions[ws]
        with step("ws_session_gc"):
            pass
        with step("close_session"):
            pass
        with step("erase_all_message"):
            pass
        process = session.process
        if decide("exec_process_still_running", process is not None and not session.finished):
            with step("kill_exec_process"):
                await process.close()  # the shim SIGKILLs an exec whose client is gone
        with step("close_pipe_1"):
            pass
        with step("sem_wait_session_sync_close_sem"):
            pass


@dataclass(eq=False)
class Session:
    """What a connection carries: its method and token; later its process."""

    method: str
    token: str
    request: Any = None
    process: Any = None
    finished: bool = False
