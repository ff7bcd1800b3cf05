"""A server and a client for a notebook: ``start()``, ``connect()``, ``Lab``.

``start()`` gives each kernel a private server: its own socket, root and state
directory under one temporary directory, a streaming server on a free
loopback port, so a notebook never disturbs a real node's server (or another
notebook's). The server runs under a guardian process (``guardian.py`` says
why) that removes every container and pod and stops the server when the
kernel ends, however it ends.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import secrets
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from ..api import admin_pb2, api_pb2
from ..client import Client
from ..client import connect as client_connect
from .chart import ChartView
from .progress import PullProgress
from .terminal import Terminal
from .timeline import Timeline

LOCAL_IMAGE = "teaching-cri.local/busybox:latest"
PULL_IMAGE = "docker.io/library/busybox:1.36"


class ServerGone(RuntimeError):
    """The notebook's server is not there any more."""


class CallFailed(RuntimeError):
    """A CRI call answered with an error (its chart shows where)."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{code.name}: {details}")
        self.code = code
        self.details = details


@dataclass
class Backend:
    """What Status's verbose info says about the runtime tier."""

    name: str
    tier: str
    not_isolated: list[str]
    network_ready: bool

    @classmethod
    def of(cls, client: Client) -> Backend:
        status = client.runtime.Status(api_pb2.StatusRequest(verbose=True))
        backend = json.loads(status.info.get("backend", "{}"))
        network = json.loads(status.info.get("network", "{}"))
        return cls(
            name=str(backend.get("name", "?")),
            tier=str(backend.get("details", {}).get("tier", backend.get("name", "?"))),
            not_isolated=[str(c) for c in backend.get("not_isolated", [])],
            network_ready=bool(network.get("ready", False)),
        )


@dataclass
class Lab:
    """A connected server: the CRI stubs, and calls drawn as their charts."""

    client: Client
    base: Path | None = None  # the private directory of a server start() made
    guardian: subprocess.Popen[bytes] | None = None
    server_pid: int = 0
    backend: Backend = field(init=False)
    views: list[ChartView | Timeline] = field(default_factory=list, repr=False)
    terminals: list[Terminal] = field(default_factory=list, repr=False)
    cleaned: str = ""  # what the guardian said when it had cleaned up

    def __post_init__(self) -> None:
        self.backend = Backend.of(self.client)

    # -- the stubs, as the kubelet has them -----------------------------------

    @property
    def socket(self) -> Path:
        return self.client.socket

    @property
    def runtime(self) -> Any:
        return self.client.runtime

    @property
    def image(self) -> Any:
        return self.client.image

    @property
    def admin(self) -> Any:
        return self.client.admin

    @property
    def is_root(self) -> bool:
        return os.geteuid() == 0

    # -- where it is -------------------------------------------------------------

    def describe(self) -> str:
        owner = "started by this notebook" if self.base else "already running"
        lines = [
            f"teaching-cri server ({owner}) on unix://{self.socket}",
            f"  runtime tier: {self.backend.tier}"
            + ("" if self.is_root else " (you are not root: the unprivileged tier)"),
        ]
        if self.base:
            lines.append(f"  its root, state and log: {self.base}")
        for caveat in self.backend.not_isolated:
            lines.append(f"  not isolated here: {caveat}")
        if not self.is_root:
            lines.append("  pods: a network namespace of their own with loopback only")
        elif not self.backend.network_ready:
            lines.append(
                "  no CNI network (`teaching-cri cni install` makes one): pods share the host's"
            )
        return "\n".join(lines)

    def __repr__(self) -> str:
        return self.describe()

    def check(self) -> None:
        """Raise ServerGone, with what the server last said, if it has exited."""
        if self.base is None:
            return
        exit_file = self.base / "server.exit"
        if exit_file.exists() or (self.guardian is not None and self.guardian.poll() is not None):
            code = exit_file.read_text().strip() if exit_file.exists() else "?"
            log = self.base / "server.log"
            tail = log.read_text(errors="replace").splitlines()[-8:] if log.exists() else []
            raise ServerGone(
                f"the teaching-cri server (pid {self.server_pid}) has exited (status {code}).\n"
                + "Its last log lines:\n  "
                + "\n  ".join(tail)
                + "\nRun start() again: it cleans up after this one and starts a new server."
            )

    # -- calls, drawn ------------------------------------------------------------------

    def call(
        self,
        method: Callable[..., Any],
        request: Any,
        *,
        check: bool = True,
        show: bool = True,
        timeout: float | None = 120,
        trace_id: str = "",
    ) -> Any:
        """Make one CRI call and show its chart lighting up as its steps arrive.

        The call carries a W3C ``traceparent`` with a trace id chosen here; the
        chart view follows exactly that trace from before the call is sent,
        so it misses no step. An error answer paints the failing node red and
        raises CallFailed (``check=False``: prints it and returns None)."""
        self.check()
        trace_id = trace_id or secrets.token_hex(16)
        view = ChartView(self.client, trace_id=trace_id, since_unix_nano=time.time_ns() - 10**9)
        handle = _display(view) if show else None
        metadata = (("traceparent", f"00-{trace_id}-{secrets.token_hex(8)}-01"),)
        try:
            response = method(request, metadata=metadata, timeout=timeout)
        except grpc.RpcError as exc:
            if exc.code() is grpc.StatusCode.UNAVAILABLE:
                view.stop()
                self.check()
            view.wait_done(5)
            view.stop()
            if handle is not None:
                handle.update(view)
            failure = CallFailed(exc.code(), exc.details() or "")
            if check:
                raise failure from None
            print(f"error: {failure}")
            return None
        view.wait_done(5)
        view.stop()
        if handle is not None:
            handle.update(view)
        return response

    def timeline(self, *charts: str, trace_id: str = "", container_id: str = "") -> Timeline:
        """A timeline of one trace, or of the calls of these charts from now on."""
        self.check()
        since = time.time_ns() - (10**10 if trace_id else 0)
        view = Timeline(
            self.client,
            trace_id=trace_id,
            charts=charts,
            container_id=container_id,
            since_unix_nano=since,
        )
        self.views.append(view)
        return view

    def pull(self, image: str = PULL_IMAGE, *, timeout: float = 60) -> str | None:
        """PullImage with a bar per layer and the chart; the image id, or None
        (with the error shown) if it failed."""
        request = api_pb2.PullImageRequest(image=api_pb2.ImageSpec(image=image))
        response = self._with_progress(self.image.PullImage, request, timeout)
        return None if response is None else str(response.image_ref)

    def build_local(self, name: str = LOCAL_IMAGE) -> str | None:
        """BuildLocalImage (no network: the host's busybox-static as one layer),
        with its progress bar and chart; the image id, or None if it failed."""
        request = admin_pb2.BuildLocalImageRequest(name=name)
        response = self._with_progress(self.admin.BuildLocalImage, request, 60)
        return None if response is None else str(response.image_ref)

    def _with_progress(self, method: Callable[..., Any], request: Any, timeout: float) -> Any:
        trace_id = secrets.token_hex(16)
        bars = PullProgress(self.client, trace_id=trace_id, since_unix_nano=time.time_ns())
        handle = _display(bars)
        try:
            return self.call(method, request, check=False, timeout=timeout, trace_id=trace_id)
        finally:
            bars.stop()
            if handle is not None:
                handle.update(bars)

    def busybox(self) -> str:
        """A busybox image: pulled when a registry answers, built locally otherwise."""
        ref = self.pull(PULL_IMAGE, timeout=30)
        if ref is not None:
            return PULL_IMAGE
        print(f"(no registry reachable for {PULL_IMAGE}: using {LOCAL_IMAGE}, built offline)")
        return self.local_image()

    def terminal(
        self,
        container_id: str,
        cmd: Sequence[str] = ("sh",),
        *,
        attach: bool = False,
        show_chart: bool = True,
    ) -> Terminal:
        """A tty in the container: Exec of ``cmd`` (or Attach to its own tty),
        then the terminal widget on the URL it answers, displayed."""
        if attach:
            request: Any = api_pb2.AttachRequest(
                container_id=container_id, tty=True, stdin=True, stdout=True
            )
            response = self.call(self.runtime.Attach, request, show=show_chart)
        else:
            request = api_pb2.ExecRequest(
                container_id=container_id, cmd=list(cmd), tty=True, stdin=True, stdout=True
            )
            response = self.call(self.runtime.Exec, request, show=show_chart)
        what = "attach" if attach else " ".join(cmd)
        term = Terminal(response.url, title=f"{container_id[:12]}: {what}")
        self.terminals.append(term)
        _display(term)
        return term

    def watch(self, *charts: str, container_id: str = "", sandbox_id: str = "") -> ChartView:
        """A chart view of a running filter: the latest call of these charts
        (or of this container's or pod's), counting every node's visits."""
        self.check()
        view = ChartView(
            self.client,
            charts=charts,
            container_id=container_id,
            sandbox_id=sandbox_id,
            since_unix_nano=time.time_ns(),
        )
        self.views.append(view)
        return view

    # -- images and pods that work on this machine -----------------------------------

    def local_image(self, name: str = LOCAL_IMAGE, *, show: bool = False) -> str:
        """A busybox image with no network: built from the host's busybox-static."""
        if not self.has_image(name):
            self.call(
                self.admin.BuildLocalImage, admin_pb2.BuildLocalImageRequest(name=name), show=show
            )
        return name

    def has_image(self, name: str) -> bool:
        spec = api_pb2.ImageSpec(image=name)
        found: bool = self.image.ImageStatus(api_pb2.ImageStatusRequest(image=spec)).HasField(
            "image"
        )
        return found

    def pod_config(self, name: str, **labels: str) -> api_pb2.PodSandboxConfig:
        """A pod config this machine can run: on the CNI network when there is
        one; as root without one, on the host's network; without root the pod
        has a loopback-only network of its own (all rootless runc can make)."""
        linux = api_pb2.LinuxPodSandboxConfig()
        if not self.backend.network_ready and self.is_root:
            linux.security_context.namespace_options.network = api_pb2.NODE
        return api_pb2.PodSandboxConfig(
            metadata=api_pb2.PodSandboxMetadata(
                name=name, namespace="notebook", uid=f"{name}-{secrets.token_hex(4)}"
            ),
            hostname=name,
            labels={"app": name, **labels},
            log_directory=str(self.log_dir(name)),
            linux=linux,
        )

    def log_dir(self, pod: str) -> Path:
        """Where the kubelet would keep a pod's container logs (ours: in the lab's
        directory, made here as the kubelet makes it)."""
        base = self.base or Path(tempfile.gettempdir()) / f"teaching-cri-logs-{os.getuid()}"
        path = base / "pod-logs" / pod
        path.mkdir(parents=True, exist_ok=True)
        return path

    # -- the end --------------------------------------------------------------------

    def stop(self) -> None:
        """Remove every container and pod, stop the server, delete its directories
        (what happens anyway when the kernel ends). A server this notebook only
        connected to is left running; its connection is closed."""
        global _running
        for view in self.views:
            view.stop()
        self.views.clear()
        for term in self.terminals:
            term.disconnect()
        self.terminals.clear()
        self.client.close()
        if self.guardian is not None:
            guardian, self.guardian = self.guardian, None
            atexit.unregister(self.stop)
            self.cleaned = _finish(guardian)
        if _running is self:
            _running = None


_running: Lab | None = None
_lock = threading.Lock()


def _display(view: Any) -> Any:
    """Display in a notebook (a handle to update it), or nothing outside one."""
    try:
        from IPython import get_ipython
        from IPython.display import display
    except ImportError:
        return None
    if get_ipython() is None:
        return None
    return display(view, display_id=True)  # type: ignore[no-untyped-call]


def _finish(guardian: subprocess.Popen[bytes]) -> str:
    """Close the guardian's pipe (it cleans up) and wait for it to be done."""
    if guardian.stdin is not None:
        with contextlib.suppress(OSError):
            guardian.stdin.close()
    try:
        guardian.wait(timeout=120)
    except subprocess.TimeoutExpired:
        return "the guardian took over two minutes to clean up; it goes on on its own"
    out = guardian.stdout.read() if guardian.stdout is not None else b""
    return out.decode(errors="replace").strip()


def start(*extra: str, quiet: bool = False) -> Lab:
    """A private server for this kernel (the one already started, if any).

    ``extra`` are more ``teaching-cri serve`` options (``--log-level debug``).
    The server stops, and everything it started goes, when the kernel ends."""
    global _running
    with _lock:
        if _running is not None and _running.base is not None:
            try:
                _running.check()
                print(
                    "start(): this kernel already has a server; here it is again "
                    "(lab.stop() first for a fresh one)."
                )
                print(_running.describe())
                return _running
            except ServerGone as gone:
                print(f"start(): the previous server is gone:\n{gone}\nCleaning up after it…")
                _running.stop()
        base = Path(tempfile.mkdtemp(prefix="tcri-nb-"))
        base.chmod(0o755)
        guardian = subprocess.Popen(
            [sys.executable, "-m", "teaching_cri.notebook.guardian", str(base), *extra],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            start_new_session=True,  # a kernel interrupt (SIGINT to its group) is not for it
        )
        assert guardian.stdout is not None
        first = guardian.stdout.readline().decode(errors="replace")
        try:
            ready = json.loads(first)
        except ValueError:
            ready = {}
        if not ready.get("ready"):
            said = str(ready.get("log", first))
            _finish(guardian)
            raise ServerGone(f"teaching-cri serve did not start:\n{said}")
        lab = Lab(client_connect(base / "cri.sock"), base, guardian, int(ready["pid"]))
        atexit.register(lab.stop)
        _running = lab
    if not quiet:
        print(lab.describe())
    return lab


def connect(socket: str | Path | None = None) -> Lab:
    """A server that is already running (the default socket if None); it is
    not stopped when the kernel ends."""
    return Lab(client_connect(socket))
