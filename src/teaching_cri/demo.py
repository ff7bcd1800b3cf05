"""``teaching-cri demo``: the main job. Connect to a server (or start one),
make each call that exists so far, and show the path it took through its chart.

Each call carries a W3C ``traceparent`` header with a trace id chosen here, so
the demo can ask the server for exactly that call's events afterwards
(``TraceService.Recent``): the same mechanism lets a notebook or a test follow
one request through a live server.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc

from .api import admin_pb2, api_pb2
from .client import Client, connect, wait_for_socket
from .config import default_socket
from .trace.charts import ChartSet
from .trace.render import render_svg, render_text


@contextmanager
def server_for_demo(socket: Path | None) -> Iterator[Path]:
    """The socket of the server asked for, or of a fresh server in a temporary
    directory. Never a server found on the default socket unasked: the demo
    changes settings (the pod CIDR) that a real node's server must keep."""
    if socket is not None:
        yield socket
        return
    with tempfile.TemporaryDirectory(prefix="teaching-cri-demo-") as tmp:
        sock = Path(tmp) / "cri.sock"
        print(f"starting a server for the demo on {sock}")
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "teaching_cri",
                "serve",
                "--socket",
                str(sock),
                "--root",
                f"{tmp}/root",
                "--state",
                f"{tmp}/state",
                "--log-level",
                "warning",
            ],
        )
        try:
            wait_for_socket(sock, timeout=20)
            yield sock
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()


class Walkthrough:
    def __init__(self, client: Client, charts: ChartSet, svg_dir: Path | None, color: bool) -> None:
        self.client = client
        self.charts = charts
        self.svg_dir = svg_dir
        self.color = color
        self.calls = 0
        self.last_events: list[Any] = []

    def call(self, chart: str, what: str, fn: Callable[..., Any], request: Any) -> Any:
        trace_id = secrets.token_hex(16)
        metadata = (("traceparent", f"00-{trace_id}-{secrets.token_hex(8)}-01"),)
        print(f"\n=== {what}")
        try:
            response = fn(request, metadata=metadata)
            print(str(response).strip() or "(empty response)")
        except grpc.RpcError as exc:
            response = None
            print(f"error: {exc.code().name}: {exc.details()}")
        events = self._events(trace_id)
        self.last_events = events
        print()
        print(render_text(self.charts[chart], events, color=self.color))
        if self.svg_dir is not None:
            self.svg_dir.mkdir(parents=True, exist_ok=True)
            self.calls += 1
            out = self.svg_dir / f"{self.calls:02d}-{chart}.svg"
            out.write_text(render_svg(self.charts[chart], events))
            print(f"(chart with the path drawn: {out})")
        return response

    def _events(self, trace_id: str) -> list[Any]:
        # The span's END is emitted before the response is sent, so it is there.
        for _ in range(50):
            events = self.client.recent(trace_id=trace_id)
            if events and events[-1].kind.value in ("end", "error"):
                return events
            time.sleep(0.02)
        return self.client.recent(trace_id=trace_id)


def main(socket: Path | None = None, svg_dir: Path | None = None, color: bool | None = None) -> int:
    charts = ChartSet.load()
    color = sys.stdout.isatty() and os.environ.get("NO_COLOR") is None if color is None else color
    with server_for_demo(socket) as sock, connect(sock) as client:
        print(f"teaching-cri demo: talking CRI v1 to unix://{sock}")
        walk = Walkthrough(client, charts, svg_dir, color)
        rt = client.runtime
        walk.call(
            "Version",
            "Version: the kubelet's first question",
            rt.Version,
            api_pb2.VersionRequest(version="v1"),
        )
        walk.call(
            "Status",
            "Status (verbose): are runtime and network ready?",
            rt.Status,
            api_pb2.StatusRequest(verbose=True),
        )
        walk.call(
            "RuntimeConfig",
            "RuntimeConfig: which cgroup driver?",
            rt.RuntimeConfig,
            api_pb2.RuntimeConfigRequest(),
        )
        for cidr, what in (
            ("10.88.0.0/16", "the node's pod CIDR"),
            ("10.88.0.0/99", "a bad CIDR: INVALID_ARGUMENT"),
        ):
            walk.call(
                "UpdateRuntimeConfig",
                f"UpdateRuntimeConfig with {what}",
                rt.UpdateRuntimeConfig,
                api_pb2.UpdateRuntimeConfigRequest(
                    runtime_config=api_pb2.RuntimeConfig(
                        network_config=api_pb2.NetworkConfig(pod_cidr=cidr)
                    )
                ),
            )
        images(walk, client)
        pods(walk, client)
        print("\n=== What you can do next")
        print("\n".join(next_steps(socket)))
    return 0


def next_steps(socket: Path | None) -> list[str]:
    """The walk's last words: how to go on by hand. Only commands that work
    today, with the exact socket: the demo's own server (no ``--socket``) is
    gone when the demo ends, so then the learner starts one of their own."""
    lines = []
    if socket is None:
        socket = default_socket()
        lines += [
            "This demo's server stops with it. Start one of your own (it keeps running):",
            "  teaching-cri serve",
            f"  (its socket: {socket})",
        ]
        follow = "teaching-cri trace follow"
        show = "teaching-cri trace show Version --format svg -o version.svg"
    else:
        lines.append(f"The server on {socket} is still running.")
        follow = f"teaching-cri trace follow --socket {socket}"
        show = f"teaching-cri trace show Version --socket {socket} --format svg -o version.svg"
    endpoint = f"unix://{socket}"
    lines += [
        "Talk CRI to it with crictl, Kubernetes' command-line client for CRI runtimes:",
        f"  crictl --runtime-endpoint {endpoint} version",
        f"  crictl --runtime-endpoint {endpoint} pods",
        f"  crictl --runtime-endpoint {endpoint} ps -a",
    ]
    if shutil.which("crictl") is None:
        lines.append("  (crictl comes with Kubernetes' cri-tools; it is not on this PATH)")
    lines += [
        "Watch every step of every call, live, in another terminal:",
        f"  {follow}",
        "Draw the latest Version call (crictl version makes one), with the path it took:",
        f"  {show}",
        "See the charts themselves: teaching-cri charts (teaching-cri charts Version draws one)",
    ]
    return lines


LOCAL_IMAGE = "teaching-cri.local/busybox:latest"
ECHO_STDIN = "while read line; do echo you said: $line; done; echo stdin closed, bye"


def containers(
    walk: Walkthrough, client: Client, sandbox_id: str, sandbox: api_pb2.PodSandboxConfig
) -> None:
    """create → start → exec → attach → stop → remove, in the demo pod."""
    rt = client.runtime
    if not client.image.ImageStatus(
        api_pb2.ImageStatusRequest(image=api_pb2.ImageSpec(image=LOCAL_IMAGE))
    ).HasField("image"):
        print("\n(no local busybox image: the container walk needs busybox-static)")
        return
    config = api_pb2.ContainerConfig(
        metadata=api_pb2.ContainerMetadata(name="echo"),
        image=api_pb2.ImageSpec(image=LOCAL_IMAGE),
        command=["sh", "-c", ECHO_STDIN],
        stdin=True,
        stdin_once=True,
        linux=api_pb2.LinuxContainerConfig(
            security_context=api_pb2.LinuxContainerSecurityContext(
                namespace_options=api_pb2.NamespaceOption(pid=api_pb2.CONTAINER)
            )
        ),
    )
    created = walk.call(
        "CreateContainer",
        "CreateContainer: a busybox shell that echoes its stdin",
        rt.CreateContainer,
        api_pb2.CreateContainerRequest(
            pod_sandbox_id=sandbox_id, config=config, sandbox_config=sandbox
        ),
    )
    if created is None:
        return
    cid = created.container_id
    walk.call(
        "StartContainer",
        "StartContainer: runc starts it under its shim",
        rt.StartContainer,
        api_pb2.StartContainerRequest(container_id=cid),
    )
    walk.call(
        "ExecSync",
        "ExecSync: a command in the running container, output returned",
        rt.ExecSync,
        api_pb2.ExecSyncRequest(container_id=cid, cmd=["sh", "-c", "echo hello from $(hostname)"]),
    )
    response = walk.call(
        "Exec",
        "Exec: a URL for the streaming server",
        rt.Exec,
        api_pb2.ExecRequest(container_id=cid, cmd=["ls", "/"], stdout=True, stderr=True),
    )
    if response is not None:
        print("\n--- over the websocket (v4.channel.k8s.io):")
        print(stream(response.url, []).decode(errors="replace").strip())
    response = walk.call(
        "Attach",
        "Attach: the container's own stdio, a URL again",
        rt.Attach,
        api_pb2.AttachRequest(container_id=cid, stdin=True, stdout=True),
    )
    if response is not None:
        print("\n--- attached (v5.channel.k8s.io), writing two lines, then closing stdin:")
        said = stream(response.url, [b"\x00hello\n", b"\x00from the demo\n", bytes([255, 0])], V5)
        print(said.decode(errors="replace").strip())
    walk.call(
        "ContainerStatus",
        "ContainerStatus: it ended when its stdin closed",
        rt.ContainerStatus,
        api_pb2.ContainerStatusRequest(container_id=cid),
    )
    walk.call(
        "RemoveContainer",
        "RemoveContainer: its runtime state, rootfs and log go",
        rt.RemoveContainer,
        api_pb2.RemoveContainerRequest(container_id=cid),
    )


V4, V5 = "v4.channel.k8s.io", "v5.channel.k8s.io"


def stream(url: str, send: list[bytes], protocol: str = V4) -> bytes:
    """A session with the streaming server: its stdout, what the client sees."""
    from websockets.sync.client import connect as ws_connect
    from websockets.typing import Subprotocol

    out = b""
    address = "ws://" + url.removeprefix("http://")  # kubectl dials it the same way
    with ws_connect(address, subprotocols=[Subprotocol(protocol)]) as ws:
        for message in send:
            ws.send(message)
        for received in ws:
            if isinstance(received, bytes) and received[:1] == b"\x01":
                out += received[1:]
    return out


def pods(walk: Walkthrough, client: Client) -> None:
    """A pod's life: on the CNI network if one is configured, else on the host's."""
    rt = client.runtime
    status = rt.Status(api_pb2.StatusRequest())
    network_ready = any(c.type == "NetworkReady" and c.status for c in status.status.conditions)
    linux = api_pb2.LinuxPodSandboxConfig()
    if not network_ready and os.geteuid() == 0:  # unprivileged pods are loopback-only anyway
        print("\n(no CNI network configured: the demo pod uses the host's network;")
        print(" `sudo teaching-cri cni install` gives pods a bridge of their own)")
        linux.security_context.namespace_options.network = api_pb2.NODE
    config = api_pb2.PodSandboxConfig(
        metadata=api_pb2.PodSandboxMetadata(
            name="demo", namespace="default", uid=f"demo-{os.getpid()}"
        ),
        hostname="demo",
        labels={"app": "demo"},
        linux=linux,
    )
    response = walk.call(
        "RunPodSandbox",
        "RunPodSandbox: the pod's infra, namespaces and network",
        rt.RunPodSandbox,
        api_pb2.RunPodSandboxRequest(config=config),
    )
    if response is None:
        return
    sandbox_id = response.pod_sandbox_id
    walk.call(
        "PodSandboxStatus",
        "PodSandboxStatus: READY, and its IP",
        rt.PodSandboxStatus,
        api_pb2.PodSandboxStatusRequest(pod_sandbox_id=sandbox_id),
    )
    walk.call(
        "ListPodSandbox",
        "ListPodSandbox with a label selector",
        rt.ListPodSandbox,
        api_pb2.ListPodSandboxRequest(
            filter=api_pb2.PodSandboxFilter(label_selector={"app": "demo"})
        ),
    )
    walk.call(
        "PodSandboxStats",
        "PodSandboxStats: the pod's cgroup and interfaces",
        rt.PodSandboxStats,
        api_pb2.PodSandboxStatsRequest(pod_sandbox_id=sandbox_id),
    )
    containers(walk, client, sandbox_id, config)
    walk.call(
        "StopPodSandbox",
        "StopPodSandbox: network down, infra stopped",
        rt.StopPodSandbox,
        api_pb2.StopPodSandboxRequest(pod_sandbox_id=sandbox_id),
    )
    walk.call(
        "RemovePodSandbox",
        "RemovePodSandbox: nothing left behind",
        rt.RemovePodSandbox,
        api_pb2.RemovePodSandboxRequest(pod_sandbox_id=sandbox_id),
    )


def images(walk: Walkthrough, client: Client) -> None:
    """An image with no network: built from the host's busybox (as a pull, it
    walks fetch layer step by step; the bars are drawn from those events)."""
    built = walk.call(
        "BuildLocalImage",
        f"BuildLocalImage {LOCAL_IMAGE}: an image offline",
        client.admin.BuildLocalImage,
        admin_pb2.BuildLocalImageRequest(name=LOCAL_IMAGE),
    )
    if built is None:
        return
    for event in walk.last_events:
        if event.node == "fetch_layer" and event.attributes.get("size"):
            print(progress_bar(event.attributes))
    spec = api_pb2.ImageSpec(image=LOCAL_IMAGE)
    walk.call(
        "ImageStatus",
        "ImageStatus: is it there? (the kubelet asks before pulling)",
        client.image.ImageStatus,
        api_pb2.ImageStatusRequest(image=spec),
    )
    walk.call("ListImages", "ListImages", client.image.ListImages, api_pb2.ListImagesRequest())
    walk.call(
        "ImageFsInfo",
        "ImageFsInfo: disk used by images and containers",
        client.image.ImageFsInfo,
        api_pb2.ImageFsInfoRequest(),
    )


def progress_bar(attrs: Mapping[str, str], width: int = 30) -> str:
    size, done = int(attrs["size"]), int(attrs.get("bytes", "0"))
    filled = width * done // size if size else width
    note = " (cached)" if attrs.get("cached") == "True" else ""
    return (
        f"  layer {attrs.get('index', '?'):>5} [{'#' * filled}{'.' * (width - filled)}] "
        f"{done:>9,} / {size:,} bytes{note}"
    )
