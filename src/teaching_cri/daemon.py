"""The daemon: the gRPC server on the unix socket, and everything it owns.

iSulad's ``main`` loads its config, restores state, starts the gRPC and
websocket servers and waits for a signal; so does :func:`run`. The CRI server
is a ``grpc.aio`` server: one asyncio loop serves every RPC, which is what
makes the tracer's contextvars follow each call.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import logging
import os
import signal
import socket
import ssl
import stat
from collections.abc import Iterator
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from . import __version__
from .api import admin_pb2, admin_pb2_grpc, api_pb2, api_pb2_grpc, trace_pb2, trace_pb2_grpc
from .config import MAX_MESSAGE_BYTES, Config
from .cri.admin import AdminService
from .cri.image_service import ImageService
from .cri.runtime_service import RuntimeService
from .image.manager import ImageManager
from .manager.cni import CNI
from .manager.container import ContainerManager
from .manager.runtime_manager import RuntimeManager
from .manager.sandbox import SandboxManager
from .runtime.backend import Backend
from .runtime.backends import BackendProbe, open_backend, probe
from .store.container import ContainerStore
from .store.sandbox import SandboxStore
from .streaming.server import StreamingServer
from .trace.charts import ChartSet
from .trace.service import TraceService
from .trace.sinks import FanOutSink, JsonlFileSink, RingBufferSink
from .trace.tracer import Sink, Tracer

log = logging.getLogger("teaching_cri.daemon")

SOCKET_MODE = 0o660
SHUTDOWN_GRACE_SECONDS = 5.0


class StartupError(RuntimeError):
    """The server cannot start; the message says why, in one line."""


def check_socket_path(path: Path) -> None:
    """Refuse a live socket, remove a stale one, refuse anything else in the way."""
    try:
        st = path.lstat()
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise StartupError(f"socket {path}: a file that is not a socket is in the way")
    probe_sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe_sock.settimeout(1.0)
        probe_sock.connect(str(path))
    except OSError as exc:
        if exc.errno not in (errno.ECONNREFUSED, errno.ENOENT):
            raise StartupError(f"socket {path}: cannot tell whether it is in use: {exc}") from None
        log.info("removing stale socket %s", path)
        path.unlink(missing_ok=True)
    else:
        raise StartupError(f"socket {path}: another server is already listening on it")
    finally:
        probe_sock.close()


@contextlib.contextmanager
def _umask(mask: int) -> Iterator[None]:
    # grpc's C core creates the socket file in add_insecure_port; a umask for
    # that moment means it is never, even briefly, more open than SOCKET_MODE.
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


class SocketLock:
    """An exclusive ``flock`` on ``<socket>.lock``, held while the server runs.

    Probing the socket is not enough: two servers started at the same moment
    both find it free, and grpc replaces a socket file even while another
    server listens on it. Whoever holds the lock owns the socket path.
    """

    def __init__(self, socket_path: Path) -> None:
        self.path = socket_path.with_name(socket_path.name + ".lock")
        self._fd: int | None = None

    def acquire(self) -> None:
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                sock = self.path.with_name(self.path.name.removesuffix(".lock"))
                raise StartupError(
                    f"socket {sock}: another server is already listening on it"
                ) from None
            # A server that stopped may have unlinked the file we opened just
            # before it did: then our lock guards nothing, so start again.
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                self._fd = fd
                return
            os.close(fd)

    def release(self) -> None:
        if self._fd is not None:
            self.path.unlink(missing_ok=True)  # while still holding it: see acquire
            os.close(self._fd)
            self._fd = None


class Daemon:
    def __init__(self, config: Config, charts: ChartSet | None = None) -> None:
        self.config = config
        self.charts = charts or ChartSet.load()
        self.server: grpc.aio.Server | None = None
        self.stopped = asyncio.Event()
        self._health = health.aio.HealthServicer()
        self._lock = SocketLock(config.socket)
        self._socket_inode = 0
        self.tracer: Tracer | None = None
        self.backend: Backend | None = None
        self.streaming: StreamingServer | None = None
        self.images: ImageManager | None = None
        self.containers: ContainerManager | None = None  # what _cleanup stops of it

    async def start(self) -> None:
        """Everything that can fail on bad input or a busy socket is checked
        before anything is created; what start creates, a failed start removes."""
        cfg = self.config
        if cfg.socket_is_default:
            cfg.socket.parent.mkdir(parents=True, exist_ok=True, mode=0o711)
        self._lock.acquire()
        try:
            await self._start()
        except BaseException:
            await self._cleanup()
            raise

    async def _start(self) -> None:
        cfg = self.config
        check_socket_path(cfg.socket)
        backend = probe(cfg.runtime, cfg.runc)
        self.runtime = RuntimeManager(cfg)  # reads persisted state: fails before any mkdir
        for directory in (cfg.root, cfg.state):
            directory.mkdir(parents=True, exist_ok=True, mode=0o711)
        self.images = images = ImageManager(cfg.root / "images", cfg.registry)
        await self._open_backend(backend, images)

        self.ring = RingBufferSink()
        self.fanout = FanOutSink()
        self.fanout.bind(asyncio.get_running_loop())
        sinks: list[Sink] = [self.ring, self.fanout]
        self.tracer = Tracer(self.charts, sinks, enabled=cfg.trace)
        if cfg.trace_file is not None:
            self.tracer.add_sink(JsonlFileSink(cfg.trace_file))
        self.trace_service = TraceService(self.tracer, self.ring, self.fanout)

        server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ]
        )
        runtime_service = RuntimeService(self.runtime, self.tracer, self.trace_service.stats)
        api_pb2_grpc.add_RuntimeServiceServicer_to_server(runtime_service, server)
        api_pb2_grpc.add_ImageServiceServicer_to_server(
            ImageService(self.images, self.tracer), server
        )
        trace_pb2_grpc.add_TraceServiceServicer_to_server(self.trace_service, server)
        admin_pb2_grpc.add_AdminServiceServicer_to_server(
            AdminService(self.images, self.tracer), server
        )
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        names = [
            api_pb2.DESCRIPTOR.services_by_name["RuntimeService"].full_name,
            api_pb2.DESCRIPTOR.services_by_name["ImageService"].full_name,
            trace_pb2.DESCRIPTOR.services_by_name["TraceService"].full_name,
            admin_pb2.DESCRIPTOR.services_by_name["AdminService"].full_name,
        ]
        reflection.enable_server_reflection(
            [
                *names,
                health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                reflection.SERVICE_NAME,
            ],
            server,
        )
        self.server = server
        with _umask(0o117):
            try:
                server.add_insecure_port(f"unix://{cfg.socket}")
            except RuntimeError as exc:
                raise StartupError(f"socket {cfg.socket}: cannot listen: {exc}") from None
            await server.start()
        os.chmod(cfg.socket, SOCKET_MODE)
        self._socket_inode = cfg.socket.stat().st_ino
        for name in ["", *names]:
            await self._health.set(name, health_pb2.HealthCheckResponse.SERVING)
        await self._start_streaming(runtime_service)

        log.info("teaching-cri %s serving CRI v1 on unix://%s", __version__, cfg.socket)
        log.info(
            "runtime backend %s (asked for %s): %s",
            backend.name,
            backend.requested,
            "available" if backend.available else f"NOT available: {backend.message}",
        )
        for caveat in backend.not_isolated:
            log.warning("not isolated: %s", caveat)
        if cfg.trace:
            where = f", {cfg.trace_file}" if cfg.trace_file else ""
            log.info("traces: ring buffer, TraceService.Follow%s", where)
        else:
            log.warning("tracing is off (--trace off): no events, charts stay empty")

    async def _start_streaming(self, runtime_service: RuntimeService) -> None:
        """The websocket server behind Exec, Attach and PortForward's URLs; it
        shares the RPCs' request cache. Loopback unless asked otherwise."""
        host, port = self.config.stream_host_port
        if self.runtime.containers is None:
            return
        if host not in ("127.0.0.1", "::1", "localhost"):
            log.warning("streaming server on %s: reachable from other machines", host)
        tls = None
        if self.config.stream_tls_cert and self.config.stream_tls_key:
            tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            try:
                tls.load_cert_chain(self.config.stream_tls_cert, self.config.stream_tls_key)
            except (OSError, ssl.SSLError) as exc:
                raise StartupError(f"stream-tls-cert/key: {exc}") from None
        self.streaming = StreamingServer(
            runtime_service.request_cache,
            runtime_service.containers,
            self.tracer or Tracer(self.charts, enabled=False),
            host,
            port,
            tls=tls,
            max_sessions=self.config.stream_max_sessions,
        )
        try:
            await self.streaming.start()
        except OSError as exc:
            # The listener's own task failed with this error: stop awaits it, or
            # asyncio would print its traceback at exit as never retrieved.
            await self.streaming.stop()
            self.streaming = None
            why = os.strerror(exc.errno) if exc.errno else str(exc)
            raise StartupError(f"stream-address {host}:{port}: {why}") from None
        scheme = "https" if tls else "http"
        shown = f"[{host}]" if ":" in host else host
        runtime_service.stream_base = f"{scheme}://{shown}:{self.streaming.port}"
        log.info("streaming server on %s", runtime_service.stream_base)

    async def _open_backend(self, found: BackendProbe, images: ImageManager) -> None:
        """Open the backend and rebuild the view of the containers that ran
        under an earlier server (their shims kept them running)."""
        if not found.available:
            return  # Status says why (RuntimeReady false); images still work
        self.backend = open_backend(found, self.config.state, self.config.runc)
        recovered = await self.backend.recover()
        self.runtime.backend = self.backend
        images.in_use = self.backend.uses_image
        self.runtime.sandboxes = SandboxManager(
            SandboxStore(self.config.root / "sandboxes"),
            self.config.state,
            self.backend,
            images,
            CNI(self.config.cni_conf_dir),
            self.config.pause_image,
            privileged_network=found.name == "runc",
            seccomp_profile_root=self.config.profile_root,
        )
        await self.runtime.sandboxes.load()
        self.runtime.containers = ContainerManager(
            ContainerStore(self.config.root / "containers"),
            self.backend,
            images,
            self.runtime.sandboxes,
            seccomp_profile_root=self.config.profile_root,
        )
        await self.runtime.containers.load()
        self.containers = self.runtime.containers
        if recovered:
            running = sum(1 for s in recovered if s.status == "running")
            log.info("recovered %d containers (%d running)", len(recovered), running)

    async def stop(self, grace: float = SHUTDOWN_GRACE_SECONDS) -> None:
        """Drain in-flight RPCs, close the listener, flush the traces."""
        if self.server is None:
            return
        log.info("shutting down")
        await self._health.enter_graceful_shutdown()
        self.fanout.close()  # end Follow streams, or the drain would wait for them
        if self.runtime.containers is not None:
            self.runtime.containers.mailbox.close()  # and GetContainerEvents streams
        await self._cleanup(grace)
        self.stopped.set()
        log.info("stopped")

    async def _cleanup(self, grace: float = 0) -> None:
        if self.streaming is not None:
            await self.streaming.stop()
            self.streaming = None
        if self.server is not None:
            await self.server.stop(grace)
            self.server = None
        if self.containers is not None:
            await self.containers.writable_layers.close()  # a walk under way
            self.containers = None
        if self.backend is not None:
            await self.backend.close()  # stop watching; the containers run on
            self.backend = None
        if self.images is not None:
            await asyncio.to_thread(self.images.close)  # the snapshot trees RemoveImage retired
            self.images = None
        if self.tracer is not None:
            await asyncio.to_thread(self.tracer.close)
            self.tracer = None
        # Only our own socket: after a forced takeover the path may be another's.
        with contextlib.suppress(FileNotFoundError):
            if self._socket_inode and self.config.socket.stat().st_ino == self._socket_inode:
                self.config.socket.unlink()
        self._lock.release()


async def run(config: Config) -> None:
    """Serve until SIGINT or SIGTERM."""
    daemon = Daemon(config)
    await daemon.start()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await daemon.stop()
