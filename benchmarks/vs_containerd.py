"""Are we as fast as containerd on the same machine? Prints figures; asserts nothing.

Issue 18's benchmark. A user choosing a runtime compares us with containerd, not
with bare runc, so both are run here side by side, each as a real server on a
private socket, root and state dir of its own (never the system's), and driven
through the same Python client (``teaching_cri.client.connect``: the generated
CRI v1 stubs) with the same requests:

* **containerd**: Debian's package (``apt-get install -y containerd`` when it is
  not installed; no package reachable, and the script says so and exits 2), with
  a ``config.toml`` written here: its socket, root and state under the work dir,
  the CRI plugin's ``sandbox_image``, its streaming server on 127.0.0.1 and a
  free port, the same CNI conf dir and plugin dir as ours, the same runc (its
  ``Root`` under the work dir too), cgroupfs, and a registry mirror for the
  made-up registry host ``bench.local`` pointing at the local registry. One
  setting is there for machines like containers: ``restrict_oom_score_adj``,
  since a sandbox's -998 is refused where lowering oom_score_adj is.
* **teaching-cri**: ``python -m teaching_cri serve`` on its own socket, root and
  state, ``--stream-address 127.0.0.1:0``, the same CNI conf dir, the same
  ``bench.local`` mirror (a ``[registry]`` table in a config file), tracing on as
  by default.
* **the registry**: Debian's ``docker-registry`` on a loopback port, as the
  tests run it (``tests/registry.py``), holding three images made here: busybox
  (the containers' image), a second busybox with a file more in each layer
  (the one pulled and removed: layers of its own, so that every pull fetches
  and unpacks them, unless a runtime still holds them from the run before, and
  removing the containers' own image would take it from under them) and the
  pods' infra image (catatonit, else a busybox shell: ``build_infra_image``),
  which both use as their pause image.
* **the floor**: a bare ``grpc.aio`` server answering ``Version`` on a unix
  socket (``_floor.py``), timed beside the unary status calls: what is left of
  such a call there is gRPC, protobuf and the socket. It is timed the two ways
  the status calls are (below), so that "ours − floor" subtracts a floor taken
  the same way as the call it is subtracted from.

The sequences, one of each per run, containerd and ours alternating (containerd
first on even runs, ours first on odd ones) so that drift in the machine's load
hits both alike; every call is timed on the client's clock:

1. the image lifecycle: PullImage (from the registry; the image is not there
   before), ImageStatus, ListImages, RemoveImage;
2. the pod lifecycle: RunPodSandbox, PodSandboxStatus, StopPodSandbox,
   RemovePodSandbox;
3. the container lifecycle, in a pod made once before the runs: CreateContainer,
   StartContainer (and the pair, which is what a kubelet waits for: containerd
   runs ``runc create`` in StartContainer, we in CreateContainer),
   ContainerStatus, StopContainer (timeout 0: SIGKILL), RemoveContainer;

   each status call (ImageStatus, PodSandboxStatus, ContainerStatus) is timed two
   ways, on both runtimes alike. Its row: ``VERSIONS`` (five) calls in a row per
   run, each a sample, the way the floor's Version is timed (warm: what the
   call costs when a kubelet polls). And the row "X, once after Y": the single
   call right after the heavy call Y (PullImage, RunPodSandbox, StartContainer),
   when the client and the server pay cold caches; it is timed on half the runs,
   and on the other half the floor's Version is the call timed right after Y
   (the row "the floor, once after Y", per runtime), so that its "ours − floor"
   subtracts a floor that paid the same cold caches;
4. a pod with a container from scratch: RunPodSandbox + CreateContainer +
   StartContainer, then StopPodSandbox + RemovePodSandbox (which removes the
   container);
5. ExecSync of ``true`` in a running container;
6. Exec of ``true`` through the streaming server: the Exec RPC, then the URL
   dialled over SPDY/3.1 (client-go's remotecommand v4, on the independent SPDY
   framing of ``tests/spdy_client.py``) and, separately, over a websocket
   (``v4.channel.k8s.io``), each to the exit status. A websocket session that
   fails is counted and shown under the table, not timed; a runtime whose
   streaming server fails three websocket sessions in a row before the runs
   has that row left out, with the reason;
7. Version, five calls in a row per run on each and on the floor.

Under the table: the floor over containerd's median for Version and each status
row, from the run: a Python gRPC server cannot go below the floor, so where the
floor alone is slower than containerd, a ratio ≤ 1.0 is out of any Python
server's reach and "ours − floor" is the figure that says what our handler
adds (issue 18 asks it within 0.2 ms).

Then **the relist** a kubelet makes every second: ListPodSandbox +
ListContainers + ListContainerStats, with ``--pods`` pods (10 and 100 by
default) of three running containers each, made on one runtime at a time (the
other has none meanwhile). ``--relists`` relists, one per ``--interval``
seconds, are timed, and the server's CPU (user + system, from
``/proc/<pid>/stat``) over the whole window is divided by their number: the
server's CPU per relist, including whatever it does in the background meanwhile
(as a kubelet's node would see it). Beside it the same for the server and its
shims together: containerd asks its shims for container statistics, and a
runtime could hide work there.

``--steps`` runs ours with ``--trace-file`` and prints, for each of our calls in
the lifecycles, the median time of each node of its chart (a node lasts until
the next event of its span, as ``trace show`` times it) beside the whole call,
and the nodes of the spans it opened (indented): where the time goes.

It needs root (runc, cgroups, network namespaces, CNI), runc, the CNI plugins,
/bin/busybox and ``docker-registry``, and exits with status 2, saying why,
without them. Whatever happens (a failure, which it names, with status 1;
Ctrl-C or SIGTERM, status 130) it stops everything it started: the pods of both,
both servers, the registry and the floor, then whatever shims, runc containers,
mounts and cgroups are still there, and the bridge; and says what, if anything,
was left. ``--smoke`` is one short run of everything, for CI.

    sudo python benchmarks/vs_containerd.py [--runs 20] [--pods 10,100] [--steps]
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from types import FrameType
from typing import Any, TypeVar

import grpc
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect as ws_connect
from websockets.typing import Subprotocol

from teaching_cri.api import api_pb2
from teaching_cri.client import Client, connect, wait_for_socket
from teaching_cri.image.hostimages import BUSYBOX_CONFIG, build_infra_image, busybox_layers
from teaching_cri.image.layer import LayerSpec, file_entry
from teaching_cri.image.layout import build_image
from teaching_cri.image.push import push_layout
from teaching_cri.trace.events import TraceEvent

from _bench import (
    BenchError,
    BenchServer,
    add_smoke_arg,
    bridge_taken,
    host_leftovers,
    ignore_signals,
    live_shims,
    machine,
    node_times,
    p95,
    plugin_dir,
    pod_bench_unavailable,
    print_leftovers,
    remove_cgroup,
    run_quiet,
    runc_leftovers,
    spans,
    unmount_under,
    write_conflist,
)

# The test registry helper and the SPDY client live in tests/, which is not a package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import httpx

from registry import REGISTRY_BINARY, Registry, run_registry
from spdy_client import connect as spdy_connect

HOST = "bench.local"  # a registry host that exists nowhere: only the mirror answers
BUSYBOX = f"{HOST}/library/busybox:latest"
PULLED = f"{HOST}/library/busybox-pulled:latest"
PAUSE = f"{HOST}/pause:bench"
NAMESPACE = "bench"
CONTAINERS_PER_POD = 3
VERSIONS = 5  # Version calls in a row per run
STATUS_ROWS = ("Version", "ImageStatus", "PodSandboxStatus", "ContainerStatus")
# Each status call, and the heavy call it follows in the sequences.
COLD = {
    "ImageStatus": "PullImage",
    "PodSandboxStatus": "RunPodSandbox",
    "ContainerStatus": "StartContainer",
}
WS_PROTOCOL = "v4.channel.k8s.io"
CALL_TIMEOUT = 120.0  # s: no call of these takes that long unless something is wrong

A = TypeVar("A")


# --- The servers -------------------------------------------------------------------------


def containerd_available() -> str:
    """containerd's path, installing Debian's package first if it is missing."""
    found = shutil.which("containerd")
    if found:
        return found
    print("containerd is not installed: apt-get install -y containerd", flush=True)
    proc = run_quiet("apt-get", "install", "-y", "containerd")
    found = shutil.which("containerd")
    if proc.returncode != 0 or not found:
        tail = (proc.stderr.strip() or proc.stdout.strip()).splitlines()[-3:]
        raise Unavailable("no containerd package could be installed: " + " / ".join(tail))
    return found


class Unavailable(RuntimeError):
    """The benchmark cannot run here (exit status 2)."""


def containerd_config(
    tmp: Path, registry: Registry, conf_dir: Path, bin_dir: Path, runc: str
) -> str:
    """containerd 1.6's config (version 2): everything of its own under ``tmp``."""
    base = tmp / "containerd"
    cri = 'plugins."io.containerd.grpc.v1.cri"'
    return f"""\
version = 2
root = "{base / "root"}"
state = "{base / "state"}"

[grpc]
  address = "{base / "containerd.sock"}"

[plugins."io.containerd.internal.v1.opt"]
  path = "{base / "opt"}"

[{cri}]
  sandbox_image = "{PAUSE}"
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  # Never below containerd's own: where lowering oom_score_adj is denied (a
  # sandbox's -998, in a container like this one), runc create would fail.
  restrict_oom_score_adj = true

[{cri}.containerd]
  snapshotter = "overlayfs"
  default_runtime_name = "runc"

[{cri}.containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"

[{cri}.containerd.runtimes.runc.options]
  BinaryName = "{runc}"
  Root = "{base / "runc"}"
  SystemdCgroup = false

[{cri}.cni]
  bin_dir = "{bin_dir}"
  conf_dir = "{conf_dir}"

[{cri}.registry.mirrors."{HOST}"]
  endpoint = ["{registry.url}"]
"""


def cpu_seconds(pids: Sequence[int]) -> float:
    """CPU time of ``pids`` so far (the ones still there), summed over their
    threads' ``schedstat`` (nanoseconds; ``stat``'s clock ticks, 10 ms, are too
    coarse for a few relists). A thread that has ended takes its time with it:
    both servers keep their threads, so a window loses little."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            for task in Path(f"/proc/{pid}/task").iterdir():
                with contextlib.suppress(OSError, ValueError, IndexError):
                    total += int((task / "schedstat").read_text().split()[0])
    return total / 1e9


def processes_naming(needle: str) -> list[int]:
    """The pids whose command line holds ``needle``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if needle.encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
    return found


class Runtime:
    """One CRI server under test: its process, its client, and how to undo it."""

    name: str
    socket: Path
    process: subprocess.Popen[bytes]
    log: Path
    client: Client

    @property
    def runtime(self) -> Any:
        return self.client.runtime

    @property
    def image(self) -> Any:
        return self.client.image

    def shims(self) -> list[int]:
        raise NotImplementedError

    def tail(self, lines: int = 10) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def remove_pods(self) -> None:
        """Stop and remove every pod (their containers with them) through CRI."""
        pods = self.runtime.ListPodSandbox(api_pb2.ListPodSandboxRequest(), timeout=CALL_TIMEOUT)
        for pod in pods.items:
            with contextlib.suppress(grpc.RpcError):
                self.runtime.StopPodSandbox(
                    api_pb2.StopPodSandboxRequest(pod_sandbox_id=pod.id), timeout=CALL_TIMEOUT
                )
                self.runtime.RemovePodSandbox(
                    api_pb2.RemovePodSandboxRequest(pod_sandbox_id=pod.id), timeout=CALL_TIMEOUT
                )

    def stop(self) -> None:
        raise NotImplementedError


@contextlib.contextmanager
def blamed(rt: Runtime) -> Iterator[None]:
    """A call of ``rt``'s that fails: a BenchError that names it, with its log's end."""
    try:
        yield
    except grpc.RpcError as e:
        raise BenchError(f"{rt.name}: {e.code().name}: {e.details()}\n{rt.tail()}") from None
    except (OSError, ConnectionClosed, ValueError) as e:  # a streaming session
        raise BenchError(f"{rt.name}: {type(e).__name__}: {e}\n{rt.tail()}") from None


def _terminate(process: subprocess.Popen[bytes], grace: float = 20) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


class Containerd(Runtime):
    name = "containerd"

    def __init__(self, binary: str, tmp: Path, config: str, runc: str) -> None:
        self.base = tmp / "containerd"
        self.base.mkdir()
        self.socket = self.base / "containerd.sock"
        self.runc = runc
        self.log = self.base / "containerd.log"
        config_path = self.base / "config.toml"
        config_path.write_text(config)
        with self.log.open("wb") as out:
            # Its own session: a Ctrl-C on the terminal is ours to handle, not its.
            self.process = subprocess.Popen(
                [binary, "--config", str(config_path), "--log-level", "warn"],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self._started(wait_for=self.socket)

    def _started(self, wait_for: Path) -> None:
        try:
            wait_for_socket(wait_for, timeout=30)
        except TimeoutError:
            _terminate(self.process)
            raise BenchError(f"{self.name} did not start:\n{self.tail()}") from None
        self.client = connect(self.socket)
        try:  # containerd answers gRPC before its CRI plugin is loaded
            self.runtime.Version(api_pb2.VersionRequest(), timeout=30)
        except grpc.RpcError as e:
            self.stop()
            raise BenchError(
                f"{self.name}'s CRI does not answer: {e.details()}\n{self.tail()}"
            ) from None

    def shims(self) -> list[int]:
        return [p for p in processes_naming(str(self.socket)) if p != self.process.pid]

    def stop(self) -> None:
        """The pods, then containerd, then its shims (they outlive it by design)."""
        if self.process.poll() is None:
            with contextlib.suppress(grpc.RpcError):
                self.remove_pods()
        self.client.close()
        _terminate(self.process)
        for pid in self.shims():
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        runc_leftovers(self.runc, self.base / "runc" / "k8s.io")


class Ours(Runtime):
    name = "teaching-cri"

    def __init__(self, tmp: Path, conf_dir: Path, registry: Registry, runc: str, steps: bool):
        base = tmp / "ours"
        base.mkdir()
        self.config = base / "config.toml"
        self.config.write_text(f'[registry.mirrors."{HOST}"]\nendpoints = ["{registry.url}"]\n')
        self.trace_file = base / "trace.jsonl" if steps else None
        extra = ["--config", str(self.config), "--runc", runc]
        if self.trace_file is not None:
            extra += ["--trace-file", str(self.trace_file)]
        self.server = BenchServer(base, conf_dir, "on", extra, pause_image=PAUSE)
        self.runc = runc
        self.socket = self.server.socket
        self.process = self.server.process
        self.log = self.server.log
        assert self.server.client is not None
        self.client = self.server.client

    def shims(self) -> list[int]:
        return live_shims(self.server.state)

    def stop(self) -> None:
        if self.process.poll() is None:
            with contextlib.suppress(grpc.RpcError):
                self.remove_pods()
        self.server.stop()
        self.server.reap(self.runc)


class Floor:
    """``_floor.py`` as a subprocess."""

    def __init__(self, tmp: Path) -> None:
        self.socket = tmp / "floor.sock"
        script = Path(__file__).with_name("_floor.py")
        self.process = subprocess.Popen(
            [sys.executable, str(script), str(self.socket)],
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            wait_for_socket(self.socket, timeout=30)
        except TimeoutError:
            _terminate(self.process)
            raise BenchError("the bare grpc.aio server (_floor.py) did not start") from None
        self.client = connect(self.socket)

    def stop(self) -> None:
        self.client.close()
        _terminate(self.process)


# --- The requests --------------------------------------------------------------------


@dataclass
class Names:
    """Pod and container names unique to the run: ``pod-<n>``, ``ctr-<n>``."""

    counter: Iterator[int] = field(default_factory=itertools.count)

    def next(self, kind: str) -> str:
        return f"{kind}-{next(self.counter)}"


def pod_config(name: str, logs: Path) -> api_pb2.PodSandboxConfig:
    """What a kubelet sends for a plain pod: metadata, hostname, a log dir."""
    log_dir = logs / name
    log_dir.mkdir(parents=True, exist_ok=True)
    return api_pb2.PodSandboxConfig(
        metadata=api_pb2.PodSandboxMetadata(name=name, uid=f"uid-{name}", namespace=NAMESPACE),
        hostname=name,
        log_directory=str(log_dir),
        labels={"bench": "vs-containerd"},
    )


def container_config(name: str) -> api_pb2.ContainerConfig:
    return api_pb2.ContainerConfig(
        metadata=api_pb2.ContainerMetadata(name=name),
        image=api_pb2.ImageSpec(image=BUSYBOX),
        command=["sleep", "1000"],
        log_path=f"{name}.log",
        labels={"bench": "vs-containerd"},
    )


def timed(call: Callable[[], object]) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


class Timer:
    """The seconds of each named call of one run of a sequence."""

    def __init__(self) -> None:
        self.times: dict[str, float] = {}
        self.bursts: dict[str, list[float]] = {}  # row → each call of a burst
        self.failures: dict[str, str] = {}  # row → why its call failed

    def __call__(self, label: str, call: Callable[[], A]) -> A:
        start = time.perf_counter()
        result = call()
        self.times[label] = self.times.get(label, 0.0) + time.perf_counter() - start
        return result

    def add(self, label: str, *parts: str) -> None:
        """A row that is the sum of others (a pair a kubelet waits for together,
        a whole lifecycle); a status call's part is the median of its burst."""
        self.times[label] = sum(
            statistics.median(self.bursts[p]) if p in self.bursts else self.times[p] for p in parts
        )

    def burst(self, label: str, call: Callable[[], object]) -> None:
        """``VERSIONS`` calls in a row, each a sample, as the floor's Version is timed."""
        self.bursts.setdefault(label, []).extend(timed(call) for _ in range(VERSIONS))


def status_after(
    t: Timer, row: str, call: Callable[[], object], floor: Floor, floor_first: bool
) -> None:
    """A status call right after the heavy call ``COLD[row]`` (client and server
    both cold), once, and then warm, ``VERSIONS`` in a row (the row itself).

    The single cold call is compared with the floor taken the same way: on half
    the runs (``floor_first``) the bare server's Version is the call timed right
    after the heavy one, and the status call follows untimed; on the others the
    status call is timed and the floor not called. Either way the burst comes
    after one status call."""
    if floor_first:
        t(floor_row(row), partial(floor.client.runtime.Version, api_pb2.VersionRequest()))
        call()
    else:
        t(cold_row(row), call)
    t.burst(row, call)


def cold_row(row: str) -> str:
    return f"{row}, once after {COLD[row]}"


def floor_row(row: str) -> str:
    return f"the floor, once after {COLD[row]}"


@dataclass
class Home:
    """A runtime's pod made before the runs, and a container running in it."""

    pod: str
    config: api_pb2.PodSandboxConfig
    running: str


def create_and_start(rt: Runtime, pod: str, config: api_pb2.PodSandboxConfig, name: str) -> str:
    created = rt.runtime.CreateContainer(
        api_pb2.CreateContainerRequest(
            pod_sandbox_id=pod, config=container_config(name), sandbox_config=config
        ),
        timeout=CALL_TIMEOUT,
    )
    rt.runtime.StartContainer(
        api_pb2.StartContainerRequest(container_id=created.container_id), timeout=CALL_TIMEOUT
    )
    return str(created.container_id)


def run_pod(rt: Runtime, config: api_pb2.PodSandboxConfig) -> str:
    answer = rt.runtime.RunPodSandbox(
        api_pb2.RunPodSandboxRequest(config=config), timeout=CALL_TIMEOUT
    )
    return str(answer.pod_sandbox_id)


def set_up(rt: Runtime, names: Names, logs: Path) -> Home:
    """The containers' image pulled, a pod, a container running ``sleep`` in it."""
    rt.image.PullImage(
        api_pb2.PullImageRequest(image=api_pb2.ImageSpec(image=BUSYBOX)), timeout=CALL_TIMEOUT
    )
    config = pod_config(names.next("pod"), logs)
    pod = run_pod(rt, config)
    return Home(pod, config, create_and_start(rt, pod, config, names.next("ctr")))


def exec_url(rt: Runtime, container: str) -> str:
    answer = rt.runtime.Exec(
        api_pb2.ExecRequest(container_id=container, cmd=["true"], stdout=True, stderr=True),
        timeout=CALL_TIMEOUT,
    )
    return str(answer.url)


def exec_spdy(rt: Runtime, container: str) -> None:
    """``true`` through the streaming server over SPDY/3.1, as client-go's
    remotecommand v4 does it, to the status on the error stream. The error stream
    is half-closed at once (nothing is written to it): containerd resets a
    stream the client left open when the session ends, and a reset that comes
    after the status loses nothing."""
    session = spdy_connect(exec_url(rt, container), [WS_PROTOCOL])
    try:
        error = session.open_stream({"streamType": "error"})
        error.close_write()
        outputs = [session.open_stream({"streamType": kind}) for kind in ("stdout", "stderr")]
        for stream in [*outputs, error]:
            received = b""
            while chunk := stream.read(CALL_TIMEOUT):
                received += chunk
        status = json.loads(received or b"{}")
    finally:
        session.close()
    if status.get("status") != "Success":
        raise BenchError(f"{rt.name}: exec over SPDY: {status}")


def exec_websocket(rt: Runtime, container: str) -> None:
    """The same over a websocket: messages until the server closes; the last one
    on channel 3 is the status."""
    url = "ws" + exec_url(rt, container).removeprefix("http")
    status, seen = b"", []
    with ws_connect(
        url, subprotocols=[Subprotocol(WS_PROTOCOL)], compression=None, max_size=None
    ) as ws:
        try:
            while True:
                message = ws.recv(timeout=CALL_TIMEOUT)
                seen.append(message[:1])
                if isinstance(message, bytes) and message[:1] == b"\x03":
                    status += message[1:]
        except ConnectionClosed as closed:
            ending = f"closed: {closed}"
    if json.loads(status or b"{}").get("status") != "Success":
        raise BenchError(f"{rt.name}: exec over a websocket: {status!r} ({seen}, {ending})")


def sequences(
    rt: Runtime, home: Home, names: Names, logs: Path, websocket: bool, floor: Floor, index: int
) -> Timer:
    """One run of every sequence on ``rt``, timed call by call; run ``index`` (its
    parity, shifted per status call, says which of a status call and the floor is
    timed right after the heavy call: :func:`status_after`)."""
    t = Timer()
    run, img = rt.runtime, rt.image
    spec = api_pb2.ImageSpec(image=PULLED)
    t(
        "PullImage",
        lambda: img.PullImage(api_pb2.PullImageRequest(image=spec), timeout=CALL_TIMEOUT),
    )
    status_after(
        t,
        "ImageStatus",
        lambda: img.ImageStatus(api_pb2.ImageStatusRequest(image=spec)),
        floor,
        index % 2 == 0,
    )
    t("ListImages", lambda: img.ListImages(api_pb2.ListImagesRequest()))
    t("RemoveImage", lambda: img.RemoveImage(api_pb2.RemoveImageRequest(image=spec)))

    config = pod_config(names.next("pod"), logs)
    pod = t("RunPodSandbox", lambda: run_pod(rt, config))
    status_after(
        t,
        "PodSandboxStatus",
        lambda: run.PodSandboxStatus(api_pb2.PodSandboxStatusRequest(pod_sandbox_id=pod)),
        floor,
        index % 2 == 1,
    )
    t(
        "StopPodSandbox",
        lambda: run.StopPodSandbox(
            api_pb2.StopPodSandboxRequest(pod_sandbox_id=pod), timeout=CALL_TIMEOUT
        ),
    )
    t(
        "RemovePodSandbox",
        lambda: run.RemovePodSandbox(
            api_pb2.RemovePodSandboxRequest(pod_sandbox_id=pod), timeout=CALL_TIMEOUT
        ),
    )

    request = api_pb2.CreateContainerRequest(
        pod_sandbox_id=home.pod,
        config=container_config(names.next("ctr")),
        sandbox_config=home.config,
    )
    cid = t(
        "CreateContainer", lambda: run.CreateContainer(request, timeout=CALL_TIMEOUT)
    ).container_id
    t(
        "StartContainer",
        lambda: run.StartContainer(
            api_pb2.StartContainerRequest(container_id=cid), timeout=CALL_TIMEOUT
        ),
    )
    t.add("CreateContainer + StartContainer", "CreateContainer", "StartContainer")
    status_after(
        t,
        "ContainerStatus",
        lambda: run.ContainerStatus(api_pb2.ContainerStatusRequest(container_id=cid)),
        floor,
        index % 2 == 0,
    )
    t(
        "StopContainer",
        lambda: run.StopContainer(
            api_pb2.StopContainerRequest(container_id=cid, timeout=0), timeout=CALL_TIMEOUT
        ),
    )
    t(
        "RemoveContainer",
        lambda: run.RemoveContainer(
            api_pb2.RemoveContainerRequest(container_id=cid), timeout=CALL_TIMEOUT
        ),
    )
    t.add("StopContainer + RemoveContainer", "StopContainer", "RemoveContainer")
    t.add("whole pod lifecycle", *POD_LIFECYCLE)
    t.add("whole container lifecycle", *CONTAINER_LIFECYCLE)

    config = pod_config(names.next("pod"), logs)
    name = names.next("ctr")

    def from_scratch() -> str:
        pod = run_pod(rt, config)
        create_and_start(rt, pod, config, name)
        return pod

    pod = t("pod + container: run, create, start", from_scratch)
    t(
        "pod + container: stop, remove pod",
        lambda: (
            run.StopPodSandbox(
                api_pb2.StopPodSandboxRequest(pod_sandbox_id=pod), timeout=CALL_TIMEOUT
            ),
            run.RemovePodSandbox(
                api_pb2.RemovePodSandboxRequest(pod_sandbox_id=pod), timeout=CALL_TIMEOUT
            ),
        ),
    )
    t.add(
        "pod + container: the whole",
        "pod + container: run, create, start",
        "pod + container: stop, remove pod",
    )

    exec_sync = api_pb2.ExecSyncRequest(container_id=home.running, cmd=["true"], timeout=30)
    answer = t("ExecSync true", lambda: run.ExecSync(exec_sync, timeout=CALL_TIMEOUT))
    if answer.exit_code != 0:
        raise BenchError(f"{rt.name}: ExecSync true: exit {answer.exit_code}")
    t("Exec true, SPDY", lambda: exec_spdy(rt, home.running))
    if websocket:
        try:
            t("Exec true, websocket", lambda: exec_websocket(rt, home.running))
        except BenchError as e:  # counted and shown, not the end of the benchmark
            t.failures["Exec true, websocket"] = str(e)
    return t


ROWS = (
    "PullImage",
    "ImageStatus",
    "ImageStatus, once after PullImage",
    "ListImages",
    "RemoveImage",
    "RunPodSandbox",
    "PodSandboxStatus",
    "PodSandboxStatus, once after RunPodSandbox",
    "StopPodSandbox",
    "RemovePodSandbox",
    "CreateContainer",
    "StartContainer",
    "CreateContainer + StartContainer",
    "ContainerStatus",
    "ContainerStatus, once after StartContainer",
    "StopContainer",
    "RemoveContainer",
    "StopContainer + RemoveContainer",
    "whole pod lifecycle",
    "whole container lifecycle",
    "pod + container: run, create, start",
    "pod + container: stop, remove pod",
    "pod + container: the whole",
    "ExecSync true",
    "Exec true, SPDY",
    "Exec true, websocket",
    "Version",
)
# The whole lifecycles (the issue's ≤ 0.8 rows): their calls, a status call once.
POD_LIFECYCLE = ("RunPodSandbox", "PodSandboxStatus", "StopPodSandbox", "RemovePodSandbox")
CONTAINER_LIFECYCLE = (
    "CreateContainer",
    "StartContainer",
    "ContainerStatus",
    "StopContainer",
    "RemoveContainer",
)

# The charts whose spans make our rows (for --steps): each RPC's own, and the
# streaming server's sessions the two Exec rows go on to.
STEP_CHARTS = (
    *(row for row in ROWS if " " not in row),
    "ExecSync",
    "Exec",
    "SpdyStream",
    "WebsocketStream",
)


Samples = dict[str, dict[str, list[float]]]  # runtime → row → seconds per run
FAILURES: dict[tuple[str, str], list[str]] = {}  # (runtime, row) → why, per failed call


def websocket_works(rt: Runtime, home: Home) -> str:
    """Why ``rt``'s streaming server cannot be dialled over a websocket, or "":
    it can if one of three sessions succeeds."""
    why = ""
    for _ in range(3):
        try:
            exec_websocket(rt, home.running)
            return ""
        except Exception as e:  # BenchError, OSError, the library's handshake errors
            why = f"{type(e).__name__}: {e}"
    return why


def measure(
    runtimes: Sequence[Runtime],
    homes: dict[str, Home],
    floor: Floor,
    runs: int,
    names: Names,
    logs: Path,
    websocket: dict[str, bool],
) -> tuple[Samples, list[float], int]:
    """``runs`` runs after one unmeasured warm-up, the runtimes alternating;
    and when the warm-up ended (unix ns). Version, and each status call, is called
    ``VERSIONS`` times in a row per run (Version on the floor too), each call a
    sample: one call after a pause or a heavy call times the channel's wake-up and
    cold caches as much as the server. The single status call right after its
    heavy call is timed too, beside the floor timed the same way
    (:func:`status_after`)."""
    samples: Samples = {rt.name: {} for rt in runtimes}
    floor_samples: list[float] = []
    version = api_pb2.VersionRequest()
    since = 0
    failures = FAILURES
    for i in range(runs + 1):
        order = runtimes if i % 2 == 0 else list(reversed(runtimes))
        for rt in order:
            with blamed(rt):
                timer = sequences(
                    rt, homes[rt.name], names, logs / rt.name, websocket[rt.name], floor, i
                )
                versions = [timed(partial(rt.runtime.Version, version)) for _ in range(VERSIONS)]
            if i:
                for row, seconds in timer.times.items():
                    samples[rt.name].setdefault(row, []).append(seconds)
                for row, each in timer.bursts.items():
                    samples[rt.name].setdefault(row, []).extend(each)
                for row, why in timer.failures.items():
                    failures.setdefault((rt.name, row), []).append(why)
                samples[rt.name].setdefault("Version", []).extend(versions)
        versions = [timed(lambda: floor.client.runtime.Version(version)) for _ in range(VERSIONS)]
        if i:
            floor_samples.extend(versions)
        else:
            since = time.time_ns()
    return samples, floor_samples, since


def ms(seconds: float) -> str:
    return f"{seconds * 1000:8.2f}"


def report(samples: Samples, floor: list[float], runs: int, names: tuple[str, str]) -> None:
    theirs, ours = names
    print(f"\n== The same CRI calls, {theirs} and {ours} alternating ({runs} runs; ms) ==")
    print(f"{'':<44} {theirs:>17} {ours:>17} {'ratio':>7} {'ours −':>8}")
    print(
        f"{'operation':<44} {'median':>8} {'p95':>8} {'median':>8} {'p95':>8}"
        f" {'ours/cd':>7} {'floor':>8}"
    )
    floor_median = statistics.median(floor)
    for row in ROWS:
        a, b = samples[theirs].get(row), samples[ours].get(row)
        if not a and not b:
            continue
        left = f"{ms(statistics.median(a))} {ms(p95(a))}" if a else f"{'—':>8} {'—':>8}"
        right = f"{ms(statistics.median(b))} {ms(p95(b))}" if b else f"{'—':>8} {'—':>8}"
        ratio = f"{statistics.median(b) / statistics.median(a):6.2f}×" if a and b else f"{'—':>7}"
        extra = ""
        if b and row in STATUS_ROWS:
            extra = ms(statistics.median(b) - floor_median)
        elif b and row.partition(",")[0] in COLD:
            cold_floor = samples[ours].get(floor_row(row.partition(",")[0]))
            extra = ms(statistics.median(b) - statistics.median(cold_floor)) if cold_floor else ""
        print(f"{row:<44} {left} {right} {ratio} {extra}")
    print(
        f"{'Version, bare grpc.aio (the floor)':<44} {ms(floor_median)} {ms(p95(floor))}"
        "   (one server, no work: gRPC, protobuf, the unix socket)"
    )
    for row in COLD:
        a, b = samples[theirs].get(floor_row(row)), samples[ours].get(floor_row(row))
        left = f"{ms(statistics.median(a))} {ms(p95(a))}" if a else f"{'—':>8} {'—':>8}"
        right = f"{ms(statistics.median(b))} {ms(p95(b))}" if b else f"{'—':>8} {'—':>8}"
        print(f"{floor_row(row):<44} {left} {right}")
    print(
        f"\nThe status rows and Version: {VERSIONS} calls in a row per run, each a sample, "
        "as the floor is timed;\n'ours − floor' subtracts that floor. A row 'once after X': "
        "the one call right after the heavy call X,\non half the runs (on the others the "
        "floor's Version is the call timed there: 'the floor, once after X',\nunder each "
        "runtime's heavy call); its 'ours − floor' subtracts that floor, taken after our X."
        "\nThe whole lifecycles: per run, the sum of "
        f"{', '.join(POD_LIFECYCLE)} and of\n{', '.join(CONTAINER_LIFECYCLE)} "
        "(a status call's part: the median of its run's burst)."
    )
    reach(samples, floor, names)
    for (name, row), whys in FAILURES.items():
        print(
            f"{name}: {row}: {len(whys)} of {runs} calls failed (not timed); the last: {whys[-1]}"
        )


def reach(samples: Samples, floor: list[float], names: tuple[str, str]) -> None:
    """What ratio a Python gRPC server can reach at best on the status rows: the
    bare grpc.aio floor over containerd's median, from this run's figures."""
    theirs, _ = names
    floor_median = statistics.median(floor)
    parts = []
    for row in STATUS_ROWS:
        theirs_row = samples[theirs].get(row)
        if theirs_row:
            parts.append(f"{row} {floor_median / statistics.median(theirs_row):.2f}×")
    if parts:
        print(
            f"The floor over {theirs}: a bare grpc.aio server's Version over {theirs}'s "
            f"median for the row:\n  {', '.join(parts)}.\nNo Python gRPC server on this "
            "machine can have a ratio below these (its calls carry at\nleast the floor's "
            "gRPC, protobuf and socket): where they exceed 1.00×, a ratio ≤ 1.00× is out of\n"
            "its reach, and 'ours − floor' is the figure that says what our handler adds."
        )


# --- The relist ----------------------------------------------------------------------------


@dataclass
class Relist:
    seconds: list[float]
    server_cpu: float  # s of CPU over the window, per relist
    with_shims_cpu: float


def fill(rt: Runtime, pods: int, names: Names, logs: Path) -> None:
    for _ in range(pods):
        config = pod_config(names.next("pod"), logs)
        pod = run_pod(rt, config)
        for _ in range(CONTAINERS_PER_POD):
            create_and_start(rt, pod, config, names.next("ctr"))


def relist(rt: Runtime, pods: int, count: int, interval: float) -> Relist:
    """``count`` relists, one per ``interval`` s, and the CPU the server and its
    shims spent meanwhile."""
    shims = rt.shims()
    server = [rt.process.pid]
    cpu0, shims0 = cpu_seconds(server), cpu_seconds(shims)
    times = []
    for _ in range(count):
        start = time.perf_counter()
        sandboxes = rt.runtime.ListPodSandbox(api_pb2.ListPodSandboxRequest(), timeout=30)
        containers = rt.runtime.ListContainers(api_pb2.ListContainersRequest(), timeout=30)
        rt.runtime.ListContainerStats(api_pb2.ListContainerStatsRequest(), timeout=30)
        times.append(time.perf_counter() - start)
        if len(sandboxes.items) < pods or len(containers.containers) < pods * CONTAINERS_PER_POD:
            raise BenchError(
                f"{rt.name} lists {len(sandboxes.items)} pods, {len(containers.containers)} "
                f"containers; {pods} and {pods * CONTAINERS_PER_POD} were made"
            )
        time.sleep(max(0.0, interval - times[-1]))
    server_cpu = cpu_seconds(server) - cpu0
    shims_cpu = cpu_seconds(shims) - shims0
    return Relist(times, server_cpu / count, (server_cpu + shims_cpu) / count)


def relists(
    runtimes: Sequence[Runtime],
    sizes: Sequence[int],
    count: int,
    interval: float,
    names: Names,
    logs: Path,
) -> dict[int, dict[str, Relist]]:
    """Per size, per runtime (one at a time, the order alternating by size): the
    pods made, ``count`` relists, the pods removed."""
    found: dict[int, dict[str, Relist]] = {}
    for i, size in enumerate(sizes):
        found[size] = {}
        for rt in runtimes if i % 2 == 0 else list(reversed(runtimes)):
            print(
                f"relist: {size} pods × {CONTAINERS_PER_POD} containers on {rt.name} ...",
                flush=True,
            )
            with blamed(rt):
                fill(rt, size, names, logs / rt.name)
                found[size][rt.name] = relist(rt, size, count, interval)
                rt.remove_pods()
    return found


def report_relists(
    found: dict[int, dict[str, Relist]], count: int, names: tuple[str, str], interval: float
) -> None:
    theirs, ours = names
    print(
        f"\n== Relist (ListPodSandbox + ListContainers + ListContainerStats), {count} relists "
        f"{interval:g} s apart =="
    )
    print(
        f"{'pods × 3':<9} {'runtime':<13} {'median ms':>9} {'p95 ms':>8} "
        f"{'server CPU ms':>13} {'+ shims':>8}  (CPU per relist)"
    )
    for size, by_runtime in found.items():
        for name in (theirs, ours):
            r = by_runtime[name]
            print(
                f"{size:<9} {name:<13} {ms(statistics.median(r.seconds)):>9} "
                f"{ms(p95(r.seconds)):>8} {ms(r.server_cpu):>13} {ms(r.with_shims_cpu):>8}"
            )
        a, b = by_runtime[theirs], by_runtime[ours]
        cpu = f"{b.server_cpu / a.server_cpu:.2f}×" if a.server_cpu else "—"
        print(
            f"{'':<9} ratio ours/cd: latency "
            f"{statistics.median(b.seconds) / statistics.median(a.seconds):.2f}×, server CPU {cpu}"
        )


# --- Our own trace: where the time goes ---------------------------------------------------------


def read_trace(path: Path) -> list[TraceEvent]:
    """Every event of the JSONL file and of its rotated predecessors."""
    events = []
    for file in sorted(path.parent.glob(path.name + "*")):
        for line in file.read_text(errors="replace").splitlines():
            with contextlib.suppress(ValueError, KeyError):
                events.append(TraceEvent.from_dict(json.loads(line)))
    return events


def descendants(
    span_id: str, children: dict[str, list[list[TraceEvent]]]
) -> Iterator[list[TraceEvent]]:
    for child in children.get(span_id, []):
        yield child
        yield from descendants(child[0].span_id, children)


def print_steps(events: Sequence[TraceEvent], since_ns: int) -> None:
    """For each of our rows: the median of each node of the call's chart (and of
    the spans it opened, indented) beside the median of the whole call."""
    all_spans = spans(events)
    chart_of = {s[0].span_id: s[0].chart for s in all_spans}
    children: dict[str, list[list[TraceEvent]]] = {}
    for s in all_spans:
        children.setdefault(s[0].parent_span_id, []).append(s)
    print("\n== Where our time goes: the median per node of each call's trace (ms) ==")
    for chart in STEP_CHARTS:
        roots = [  # a session's stream is a span of a callback's: a root of its own chart
            s
            for s in all_spans
            if s[0].chart == chart
            and chart_of.get(s[0].parent_span_id) != chart
            and s[0].unix_nano >= since_ns
        ]
        if not roots:
            continue
        wholes = [(s[-1].monotonic_ns - s[0].monotonic_ns) / 1e6 for s in roots]
        per_call: list[dict[str, float]] = []
        for root in roots:
            times = {node: t * 1000 for node, t in node_times(root).items()}
            for child in descendants(root[0].span_id, children):
                for node, t in node_times(child).items():
                    key = f"  ↳ {child[0].chart}.{node}"
                    times[key] = times.get(key, 0.0) + t * 1000
            per_call.append(times)
        nodes = dict.fromkeys(n for times in per_call for n in times)
        medians = {n: statistics.median(times.get(n, 0.0) for times in per_call) for n in nodes}
        whole = statistics.median(wholes)
        print(f"\n{chart}: {len(roots)} calls, the whole span {whole:.2f} ms at the median")
        shown = [n for n in nodes if medians[n] >= 0.01]
        for node in sorted(shown, key=lambda n: (n.startswith("  ↳"), -medians[n])):
            share = 100 * medians[node] / whole if whole else 0.0
            print(f"  {node:<58} {medians[node]:8.2f} {share:5.0f} %")


# --- The run ---------------------------------------------------------------------------


def pulled_layers() -> list[LayerSpec]:
    """busybox's two layers with one more file in each: layers of their own, so
    that a pull fetches and unpacks them and does not find the containers'."""
    marker = file_entry("etc/teaching-cri-bench", b"pulled\n")
    return [replace(layer, entries=[*layer.entries, marker]) for layer in busybox_layers()]


def push_images(registry: Registry) -> None:
    """busybox, the pulled busybox (its own layers) and the infra."""
    layouts = registry.root / "layouts"
    images = {
        "library/busybox": lambda d: build_image(
            d, busybox_layers(), config=BUSYBOX_CONFIG, ref_name="latest"
        ),
        "library/busybox-pulled": lambda d: build_image(
            d, pulled_layers(), config=BUSYBOX_CONFIG, ref_name="latest"
        ),
        "pause": lambda d: build_infra_image(d, ref_name="bench"),
    }
    with httpx.Client(trust_env=False, timeout=60) as client:
        for repository, build in images.items():
            layout = layouts / repository.replace("/", "_")
            info = build(layout)
            assert info.ref_name is not None
            push_layout(
                layout, registry.url, repository, info.ref_name, source=info.ref_name, client=client
            )


def tear_down_host(tmp: Path, bridge: str) -> None:
    """What the runtimes may leave on the host once they are gone."""
    unmount_under(tmp)
    for parent in ("/k8s.io", "/teaching-cri"):
        remove_cgroup(parent)
    run_quiet("ip", "link", "del", bridge)


def leftovers(tmp: Path, bridge: str, runc: str) -> list[str]:
    roots = [tmp / "ours" / "state" / "runc", tmp / "containerd" / "runc" / "k8s.io"]
    found = host_leftovers(tmp, bridge, runc, roots)
    found += [f"process {pid}" for pid in processes_naming(str(tmp)) if pid != os.getpid()]
    if run_quiet("ip", "link", "show", bridge).returncode == 0:
        found.append(f"the bridge {bridge}")
    return found


def interrupted(signum: int, frame: FrameType | None) -> None:
    """Ctrl-C and SIGTERM alike: out through the cleanup."""
    raise KeyboardInterrupt


def run(args: argparse.Namespace, runc: str, containerd: str, tmp: Path) -> None:
    names = Names()
    logs = tmp / "logs"
    with contextlib.ExitStack() as stack:
        stack.callback(tear_down_host, tmp, args.bridge)
        stack.callback(ignore_signals)  # the cleanup is not to be cut short
        conf_dir, _network = write_conflist(tmp, args.subnet, args.bridge)
        try:
            registry = stack.enter_context(run_registry(tmp / "registry"))
        except (RuntimeError, OSError) as e:
            raise BenchError(f"the registry did not start: {e}") from None
        push_images(registry)
        floor = Floor(tmp)
        stack.callback(floor.stop)
        theirs = Containerd(
            containerd,
            tmp,
            containerd_config(tmp, registry, conf_dir, plugin_dir(), runc),
            runc,
        )
        stack.callback(theirs.stop)
        ours = Ours(tmp, conf_dir, registry, runc, args.steps)
        stack.callback(ours.stop)
        runtimes: list[Runtime] = [theirs, ours]
        homes = {}
        for rt in runtimes:
            with blamed(rt):
                homes[rt.name] = set_up(rt, names, logs / rt.name)
        websocket = {}
        for rt in runtimes:
            why = websocket_works(rt, homes[rt.name])
            websocket[rt.name] = not why
            if why:
                print(f"{rt.name}: exec over a websocket not measured: {why}")
        samples, floor_samples, since = measure(
            runtimes, homes, floor, args.runs, names, logs, websocket
        )
        pair = (theirs.name, ours.name)
        report(samples, floor_samples, args.runs, pair)
        if args.steps and ours.trace_file is not None:
            time.sleep(0.5)  # the JSONL sink writes from a thread of its own
            print_steps(read_trace(ours.trace_file), since)
        for rt in runtimes:
            rt.remove_pods()
        found = relists(runtimes, args.pods, args.relists, args.interval, names, logs)
        report_relists(found, args.relists, pair, args.interval)
    print_leftovers(
        leftovers(tmp, args.bridge, runc), "mounts, veths, runc containers, processes, the bridge"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20, help="measured runs of each (default 20)")
    parser.add_argument(
        "--pods",
        default="10,100",
        help="pod counts (3 containers each) for the relist, comma-separated (default 10,100)",
    )
    parser.add_argument("--relists", type=int, default=10, help="relists per count (default 10)")
    parser.add_argument("--interval", type=float, default=1.0, help="s between relists (default 1)")
    parser.add_argument("--runc", default="runc", help="the runc binary (default: runc on PATH)")
    parser.add_argument(
        "--dir", type=Path, default=None, help="where to work (default: the system's temp dir)"
    )
    parser.add_argument("--bridge", default="tcri-bench3", help="the CNI bridge to make")
    parser.add_argument("--subnet", default="10.239.0.0/16", help="its addresses")
    parser.add_argument(
        "--steps", action="store_true", help="also print the median of each of our trace's nodes"
    )
    add_smoke_arg(parser)
    args = parser.parse_args()
    try:
        args.pods = [int(n) for n in args.pods.split(",")]
    except ValueError:
        parser.error(f"--pods: not a comma-separated list of numbers: {args.pods!r}")
    if args.smoke:
        args.runs, args.pods, args.relists, args.interval = 1, [1], 1, 0.1
    if args.runs < 1 or args.relists < 1 or min(args.pods) < 1:
        parser.error("--runs, --relists and every --pods count must be at least 1")
    runc = shutil.which(args.runc)
    why = pod_bench_unavailable("vs_containerd.py", runc, args.runc) or bridge_taken(args.bridge)
    if not why and not REGISTRY_BINARY.is_file():
        why = f"{REGISTRY_BINARY} not found (apt-get install docker-registry)"
    if why:
        print(why, file=sys.stderr)
        sys.exit(2)
    assert runc is not None
    try:
        containerd = containerd_available()
    except Unavailable as e:
        print(e, file=sys.stderr)
        sys.exit(2)
    version = run_quiet(containerd, "--version").stdout.split()
    print(machine(runc, f"containerd {version[2] if len(version) > 2 else '?'}"))
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, interrupted)
    with tempfile.TemporaryDirectory(prefix="tcri-bench-", dir=args.dir) as d:
        try:
            run(args, runc, containerd, Path(d))
        except KeyboardInterrupt:
            print("interrupted; everything it started is stopped", file=sys.stderr)
            sys.exit(130)
        except BenchError as e:
            print(f"failed: {e}", file=sys.stderr)
            sys.exit(1)


if __name__ == "__main__":
    main()
