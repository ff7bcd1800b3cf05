"""What does our server add to a container's life? Prints figures; asserts nothing.

Issue 6's benchmark. A container in a pod is, underneath, a runc container whose
bundle joins the pod's namespaces; so each figure of ours is printed beside the
bare runc floor for the same work, done in the same pod:

* **Ours**: a real server (``python -m teaching_cri serve``, a subprocess, as a
  user runs it) on a socket of its own, with a CNI conf dir holding one conflist
  of this benchmark's own (a private bridge, ``--bridge``, deleted at the end),
  driven over gRPC as the kubelet does. The image is built by the server itself
  (``BuildLocalImage`` of ``teaching-cri.local/busybox:latest``, from the host's
  static busybox); one pod is run (with a ``log_directory``), and every container
  is made in it with the config the kubelet sends: a name unique per cycle,
  ``sleep 1000``, a log path, a pid namespace of its own (``pid=CONTAINER``), the
  kubelet's four labels and five annotations. Timed: ``CreateContainer`` +
  ``StartContainer`` together; ``StopContainer(timeout=0)`` + ``RemoveContainer``
  together; ``ExecSync(["true"])`` in a running container.
* **Bare**: runc by itself, each step a synchronous subprocess, on a bundle whose
  ``config.json`` comes from our own ``generate_spec`` with the same container
  config and the same pod context ours gives it: the pod's network namespace
  (its pinned file), the infra's ipc and uts namespaces, the pod's hostname,
  hosts, resolv.conf and shm; ``cgroupsPath`` in the same pod cgroup as ours.
  Create + start is writing ``config.json``, ``runc create`` (stdio on /dev/null
  and a file) and ``runc start``; stop + remove is ``runc kill <id> KILL``,
  ``runc state`` polled every 2 ms until "stopped", and ``runc delete``; exec is
  ``runc exec <id> true``. The bare rootfs is one copy of a busybox image made
  by ``build_busybox_image``, made before the runs and shared by every bare
  container; ours mounts an overlay view per container (and unmounts it on
  remove), which is part of what ours costs.

The targets (issue 6): ours' create + start at most 40 ms over bare at the
median. Stop + remove and exec have no target of their own; their difference
is printed all the same. The tables by phase say where the difference is: our
phases come from the server's own trace of each call (``TraceService.Recent``:
a step lasts until the next event of its span) and "the rest" is the calls'
time on the client's clock minus those phases (gRPC, the manager's checks and
records, the other steps of the charts).

**ListContainers**, which the kubelet calls every second: real records, no
fakes. Containers are created in the pod (not started: a created container has
its shim, its ``runc init`` and its record, as a real one) until there are 10,
100 and 1000 of them (``--max-list`` lowers the last), and at each size
``--list-calls`` calls are timed after three unmeasured ones: with no filter
(what the kubelet's relist sends), and with a label selector that matches one
container (every record's labels are looked at). "server" is the median span
of the call in the server's trace (first event to last: the handler, not
gRPC's serialization). The target: under 20 ms at the median with 1000
containers. Creating 1000 takes minutes, not one (progress is printed): each
create gets slower as containers accumulate, runc's own as much as ours (the
host's mount table, with an overlay per container, and its processes grow with
them), so with the largest number in the pod five more create + start pairs of
bare and ours are timed and printed, for information (no warm-up there).
Removing them one by one afterwards is timed too.

Every other measurement follows one unmeasured warm-up; bare and ours alternate, run
by run, so that drift in the machine's load hits both alike. Figures are the
median, 95th percentile and minimum. It needs root, runc, /bin/busybox
(Debian's busybox-static), iproute2's ip and the CNI plugins bridge, host-local
and loopback (Debian's containernetworking-plugins), and exits with status 2,
saying why, without them. Ctrl-C or SIGTERM stops after the step in progress
and cleans up (a second one stops at once, and cleans up too; signals during
the cleanup are ignored). ``--steps`` adds the median of every step of our
charts. At the end it removes every container (timed, for information), stops
and removes the pod, and says what is left behind (mounts under its directory,
veths on the bridge, runc containers, live shims, the pod's cgroup).

    sudo python benchmarks/containers.py [--runs 20] [--max-list 1000]
        [--list-calls 50] [--runc runc] [--dir /tmp] [--bridge tcri-bench1]
        [--subnet 10.237.0.0/16] [--trace on|off] [--steps]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import grpc

from teaching_cri.api import admin_pb2, api_pb2
from teaching_cri.client import Client, connect, wait_for_socket
from teaching_cri.image.build import BusyboxUnavailable, build_busybox_image
from teaching_cri.image.manager import ImageManager
from teaching_cri.manager.cni import default_conflist
from teaching_cri.manager.network import DEFAULT_CNI_BIN_DIRS
from teaching_cri.manager.sandbox import BUILT_IN_INFRA
from teaching_cri.runtime import cgroups
from teaching_cri.runtime.spec import ImageRunConfig, SandboxContext, generate_spec
from teaching_cri.trace.events import TraceEvent

START_BUDGET = 0.040  # s over bare create + start, at the median
LIST_BUDGET = 0.020  # s for ListContainers with 1000 containers, at the median
LIST_TARGET_SIZE = 1000
LIST_SIZES = (10, 100, 1000)
LIST_WARMUP = 3  # unmeasured calls before each size's measured ones
LOADED_RUNS = 5  # create + start pairs with the largest list's containers in the pod
POLL = 0.002  # s between two ``runc state`` while waiting for "stopped"
STOP_WAIT = 10.0  # s a SIGKILLed container may take to be reported stopped
RPC_TIMEOUT = 120.0  # s for one RPC (RunPodSandbox builds the infra image)
EXEC_TIMEOUT = 10  # s, ExecSync's own timeout
PLUGINS = ("bridge", "host-local", "loopback")
IMAGE = "teaching-cri.local/busybox:latest"
COMMAND = ["sleep", "1000"]
POD_NAME = "bench-containers"
NAMESPACE = "bench"

CYCLE_PHASES = ("create", "start", "the rest")
TEARDOWN_PHASES = ("stop", "delete", "the rest")
EXEC_PHASES = ("exec", "the rest")
# Our trace's nodes (diagrams/*.toml) → the phases above; any other node is "the rest".
CYCLE_NODES = {"m_cb_container_create": "create", "m_cb_container_start": "start"}
TEARDOWN_NODES = {"send_sigkill": "stop", "cb_container_remove": "delete"}
EXEC_NODES = {"m_cb_container_exec": "exec"}
CHARTS = (
    "CreateContainer",
    "StartContainer",
    "StopContainer",
    "RemoveContainer",
    "ExecSync",
    "ListContainers",
)


# --- Figures ---------------------------------------------------------------------


def p95(samples: Sequence[float]) -> float:
    if len(samples) < 2:
        return samples[0]
    return statistics.quantiles(samples, n=20, method="inclusive")[-1]


def ms_row(label: str, samples: Sequence[float]) -> str:
    return (
        f"{label:<32} {statistics.median(samples) * 1000:8.1f} {p95(samples) * 1000:8.1f} "
        f"{min(samples) * 1000:8.1f}"
    )


def verdict(met: bool) -> str:
    return "met" if met else "NOT met"


@dataclass
class Phases:
    """Seconds per phase of each run, in ``names``' order; the run is their sum."""

    names: tuple[str, ...]
    samples: list[list[float]] = field(default_factory=list)

    def add(self, times: Sequence[float]) -> None:
        self.samples.append(list(times))

    def totals(self) -> list[float]:
        return [sum(s) for s in self.samples]

    def median(self, i: int) -> float:
        return statistics.median(s[i] for s in self.samples)


# --- Small helpers -----------------------------------------------------------------


class BenchError(RuntimeError):
    pass


def run_quiet(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, check=False)


def must(*argv: str) -> str:
    """A command that has to work; its stdout."""
    proc = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True)
    if proc.returncode != 0:
        why = proc.stderr.strip() or proc.stdout.strip() or f"exit {proc.returncode}"
        raise BenchError(f"{' '.join(argv)[:200]}: {why}")
    return proc.stdout


def cgroup_dirs(cgroups_path: str) -> list[Path]:
    """Every directory of a cgroup in every cgroup hierarchy mounted here (on v1
    runc also makes it in the named ``systemd`` one and, on a hybrid host, the
    unified one)."""
    relative = cgroups_path.lstrip("/")
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        left, _, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if len(fields) > 4 and tail and tail[0] in ("cgroup", "cgroup2"):
            found.append(Path(fields[4]) / relative)
    return [d for d in dict.fromkeys(found) if d.is_dir()]


def remove_cgroup(cgroups_path: str) -> None:
    """rmdir the cgroup and what is below it, deepest first, in every hierarchy."""
    for top in cgroup_dirs(cgroups_path):
        for dirpath, _dirs, _files in sorted(
            os.walk(top), key=lambda entry: entry[0].count("/"), reverse=True
        ):
            with contextlib.suppress(OSError):
                os.rmdir(dirpath)


def mounts_under(top: Path) -> list[str]:
    """Mount points at or below ``top``, deepest first (from /proc/self/mountinfo)."""
    prefix = str(top).rstrip("/") + "/"
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        if len(fields) > 4:
            point = fields[4].replace("\\040", " ")
            if point.startswith(prefix):
                found.append(point)
    return sorted(set(found), key=lambda p: p.count("/"), reverse=True)


def veths_on(bridge: str) -> list[str]:
    out = run_quiet("ip", "-o", "link", "show", "master", bridge).stdout
    return [line.split(":")[1].strip().split("@")[0] for line in out.splitlines()]


def runc_leftovers(runc: str, root: Path) -> list[str]:
    """Force-delete whatever container runc still has under ``root``; their ids."""
    if not root.is_dir():
        return []
    ids = run_quiet(runc, "--root", str(root), "list", "-q").stdout.split()
    for container_id in ids:
        run_quiet(runc, "--root", str(root), "delete", "--force", container_id)
    return ids


def live_shims(state: Path) -> list[int]:
    """The pids of our shims still running (their cmdline names their state dir)."""
    found = []
    for pid_file in state.glob("containers/*/shim.pid"):
        with contextlib.suppress(OSError, ValueError):
            pid = int(pid_file.read_text().strip())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            if str(pid_file.parent).encode() in cmdline:
                found.append(pid)
    return found


def kill_shims(state: Path) -> None:
    """Last resort after the server died: SIGKILL the shims that are still ours."""
    for pid in live_shims(state):
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)


def node_times(events: Sequence[TraceEvent]) -> dict[str, float]:
    """Seconds per node over the spans of ``events``: from one event to the next
    of its span, as ``trace show`` times a step."""
    times: dict[str, float] = {}
    for span in spans(events):
        for a, b in itertools.pairwise(span):
            times[a.node] = times.get(a.node, 0.0) + (b.monotonic_ns - a.monotonic_ns) / 1e9
    return times


def spans(events: Sequence[TraceEvent]) -> list[list[TraceEvent]]:
    """The events grouped by span, each in its order."""
    by_span: dict[str, list[TraceEvent]] = {}
    for event in events:
        by_span.setdefault(event.span_id, []).append(event)
    return [sorted(s, key=lambda e: e.sequence) for s in by_span.values()]


def split(
    times: dict[str, float], nodes: dict[str, str], names: Sequence[str], wall: float
) -> list[float]:
    """Our calls' time by phase (``names``); the last, "the rest", is what the
    named nodes do not account for, on the client's clock."""
    out = dict.fromkeys(names, 0.0)
    for node, seconds in times.items():
        if node in nodes:
            out[nodes[node]] += seconds
    out[names[-1]] = wall - sum(out[n] for n in names[:-1])
    return [out[n] for n in names]


# --- What both sides run --------------------------------------------------------------


def container_config(name: str, pod: api_pb2.PodSandboxMetadata) -> api_pb2.ContainerConfig:
    """What the kubelet sends for a one-container pod's ``sleep`` (its labels and
    annotations too, so that ListContainers answers what it would on a node)."""
    return api_pb2.ContainerConfig(
        metadata=api_pb2.ContainerMetadata(name=name),
        image=api_pb2.ImageSpec(image=IMAGE),
        command=COMMAND,
        log_path=f"{name}.log",
        labels={
            "io.kubernetes.container.name": name,
            "io.kubernetes.pod.name": pod.name,
            "io.kubernetes.pod.namespace": pod.namespace,
            "io.kubernetes.pod.uid": pod.uid,
        },
        annotations={
            "io.kubernetes.container.hash": "5d6f7e8a",
            "io.kubernetes.container.restartCount": "0",
            "io.kubernetes.container.terminationMessagePath": "/dev/termination-log",
            "io.kubernetes.container.terminationMessagePolicy": "File",
            "io.kubernetes.pod.terminationGracePeriod": "30",
        },
        linux=api_pb2.LinuxContainerConfig(  # the kubelet's default: a pid namespace of its own
            security_context=api_pb2.LinuxContainerSecurityContext(
                namespace_options=api_pb2.NamespaceOption(pid=api_pb2.CONTAINER)
            )
        ),
    )


# --- Bare: runc by itself, in the pod's namespaces -------------------------------------


class Bare:
    """A container in the pod, made as a shell script would make it."""

    def __init__(self, runc: str, tmp: Path, template: dict[str, Any], pod_id: str) -> None:
        self.runc = runc
        self.root = tmp / "bare-runc"
        self.bundles = tmp / "bare-bundles"
        self.errors = tmp / "bare-create.err"  # runc create's stderr (and the container's)
        self.template = template  # config.json, its cgroupsPath to fill in
        self.pod_id = pod_id  # the pod's cgroup level, shared with ours
        self.bundles.mkdir()
        self.live: set[str] = set()

    def _runc(self, *args: str) -> str:
        return must(self.runc, "--root", str(self.root), *args)

    def write_bundle(self, container_id: str) -> Path:
        spec = dict(self.template)
        spec["linux"] = {
            **spec["linux"],
            "cgroupsPath": cgroups.container_path(self.pod_id, container_id),
        }
        bundle = self.bundles / container_id
        bundle.mkdir()
        (bundle / "config.json").write_text(json.dumps(spec))
        return bundle

    def create(self, bundle: Path, container_id: str) -> None:
        # Not captured: the container inherits runc's stdio, and a pipe would stay
        # open as long as it runs.
        argv = [self.runc, "--root", str(self.root), "create", "--bundle", str(bundle)]
        self.live.add(container_id)
        with open(self.errors, "ab") as err:
            code = subprocess.call(
                [*argv, container_id],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=err,
            )
        if code != 0:
            tail = self.errors.read_text(errors="replace").strip().splitlines()
            raise BenchError(f"runc create: {tail[-1] if tail else f'exit {code}'}")

    def wait_stopped(self, container_id: str) -> None:
        deadline = time.monotonic() + STOP_WAIT
        while json.loads(self._runc("state", container_id))["status"] != "stopped":
            if time.monotonic() > deadline:
                raise BenchError(f"{container_id} not stopped {STOP_WAIT:.0f} s after SIGKILL")
            time.sleep(POLL)

    # -- the measured work, by phase (CYCLE_PHASES, TEARDOWN_PHASES, EXEC_PHASES) --

    def create_start(self, container_id: str) -> list[float]:
        t0 = time.perf_counter()
        bundle = self.write_bundle(container_id)
        t1 = time.perf_counter()
        self.create(bundle, container_id)
        t2 = time.perf_counter()
        self._runc("start", container_id)
        t3 = time.perf_counter()
        return [t2 - t1, t3 - t2, t1 - t0]

    def stop_remove(self, container_id: str) -> list[float]:
        t0 = time.perf_counter()
        self._runc("kill", container_id, "KILL")
        self.wait_stopped(container_id)
        t1 = time.perf_counter()
        self._runc("delete", container_id)
        t2 = time.perf_counter()
        self.live.discard(container_id)
        shutil.rmtree(self.bundles / container_id, ignore_errors=True)
        return [t1 - t0, t2 - t1, 0.0]

    def exec_true(self, container_id: str) -> list[float]:
        t0 = time.perf_counter()
        self._runc("exec", container_id, "true")
        return [time.perf_counter() - t0, 0.0]

    def cleanup(self) -> None:
        """Whatever an error or an interruption left."""
        for container_id in list(self.live):
            run_quiet(self.runc, "--root", str(self.root), "delete", "--force", container_id)
            self.live.discard(container_id)
        runc_leftovers(self.runc, self.root)


async def bare_template(tmp: Path, context: SandboxContext) -> dict[str, Any]:
    """The bare container's config.json: a busybox image built from the host's
    static busybox, copied once into a rootfs that every bare container shares,
    the spec from our own generator with our config and the pod's context."""
    layout = tmp / "bare-layout"
    build_busybox_image(layout, ref_name=None)
    manager = ImageManager(tmp / "bare-images", snapshot_mode="copy")
    record = await manager.import_layout(layout, None)
    rootfs = manager.snapshots.mount_view([layer.chain_id for layer in record.layers], "bare")
    config = container_config("bare", api_pb2.PodSandboxMetadata())
    spec, _notes = generate_spec(
        config, ImageRunConfig.from_config(record.config), rootfs, sandbox=context
    )
    return spec


# --- Ours: a server over gRPC -----------------------------------------------------------


class Server:
    """``python -m teaching_cri serve`` on a socket of its own, as a user runs it."""

    def __init__(self, base: Path, conf_dir: Path, trace: str) -> None:
        self.base = base
        self.socket = base / "cri.sock"
        self.state = base / "state"
        self.log = base / "server.log"
        argv = [
            sys.executable,
            "-m",
            "teaching_cri",
            "serve",
            "--socket",
            str(self.socket),
            "--root",
            str(base / "root"),
            "--state",
            str(self.state),
            "--cni-conf-dir",
            str(conf_dir),
            "--pause-image",
            BUILT_IN_INFRA,
            "--trace",
            trace,
            "--log-level",
            "warning",
        ]
        with self.log.open("wb") as out:
            # Its own session: a Ctrl-C on the terminal is ours to handle, not its.
            self.process = subprocess.Popen(
                argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        self.client: Client | None = None
        self.pod_id = ""
        self.pod_config = api_pb2.PodSandboxConfig()
        self.containers: set[str] = set()  # made and not yet removed
        try:
            wait_for_socket(self.socket, timeout=30)
        except TimeoutError:
            self.stop()
            raise BenchError(f"the server did not start:\n{self.tail()}") from None
        self.client = connect(self.socket)

    def tail(self, lines: int = 15) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        return ""

    @property
    def runtime(self) -> Any:
        assert self.client is not None
        return self.client.runtime

    def recent(self, charts: Sequence[str], since: int) -> list[TraceEvent]:
        assert self.client is not None
        return self.client.recent(charts=list(charts), since_unix_nano=since)

    def build_image(self) -> None:
        assert self.client is not None
        self.client.admin.BuildLocalImage(
            admin_pb2.BuildLocalImageRequest(name=IMAGE), timeout=RPC_TIMEOUT
        )

    def run_pod(self, logs: Path) -> str:
        self.pod_config = api_pb2.PodSandboxConfig(
            metadata=api_pb2.PodSandboxMetadata(
                name=POD_NAME, namespace=NAMESPACE, uid=f"bench-{os.getpid()}"
            ),
            hostname=POD_NAME,
            log_directory=str(logs),
        )
        request = api_pb2.RunPodSandboxRequest(config=self.pod_config)
        self.pod_id = str(self.runtime.RunPodSandbox(request, timeout=RPC_TIMEOUT).pod_sandbox_id)
        return self.pod_id

    def pod_context(self, runc: str) -> SandboxContext:
        """What ours gives a container of the pod (``SandboxManager.context_for``):
        the pinned network namespace (from the pod's verbose status), the infra's ipc
        and uts (its pid from ``runc state``), the pod's files in the state dir."""
        status = self.runtime.PodSandboxStatus(
            api_pb2.PodSandboxStatusRequest(pod_sandbox_id=self.pod_id, verbose=True),
            timeout=RPC_TIMEOUT,
        )
        netns = json.loads(status.info["info"]).get("netns", "")
        state = json.loads(must(runc, "--root", str(self.state / "runc"), "state", self.pod_id))
        pid = int(state["pid"])
        namespaces = {
            "network": netns or f"/proc/{pid}/ns/net",
            "ipc": f"/proc/{pid}/ns/ipc",
            "uts": f"/proc/{pid}/ns/uts",
        }
        files = self.state / "sandboxes" / self.pod_id

        def file(name: str) -> str:
            return str(files / name) if (files / name).exists() else ""

        hostname = files / "hostname"
        return SandboxContext(
            hostname=hostname.read_text().strip() if hostname.exists() else POD_NAME,
            namespaces=namespaces,
            hosts=file("hosts"),
            resolv_conf=file("resolv.conf"),
            shm=file("shm"),
        )

    def create(self, name: str) -> str:
        request = api_pb2.CreateContainerRequest(
            pod_sandbox_id=self.pod_id,
            config=container_config(name, self.pod_config.metadata),
            sandbox_config=self.pod_config,
        )
        container_id = str(self.runtime.CreateContainer(request, timeout=RPC_TIMEOUT).container_id)
        self.containers.add(container_id)
        return container_id

    def start(self, container_id: str) -> None:
        self.runtime.StartContainer(
            api_pb2.StartContainerRequest(container_id=container_id), timeout=RPC_TIMEOUT
        )

    def stop_remove(self, container_id: str) -> None:
        self.runtime.StopContainer(
            api_pb2.StopContainerRequest(container_id=container_id, timeout=0),
            timeout=RPC_TIMEOUT,
        )
        self.remove(container_id)

    def remove(self, container_id: str) -> None:
        self.runtime.RemoveContainer(
            api_pb2.RemoveContainerRequest(container_id=container_id), timeout=RPC_TIMEOUT
        )
        self.containers.discard(container_id)

    def exec_true(self, container_id: str) -> api_pb2.ExecSyncResponse:
        request = api_pb2.ExecSyncRequest(
            container_id=container_id, cmd=["true"], timeout=EXEC_TIMEOUT
        )
        response: api_pb2.ExecSyncResponse = self.runtime.ExecSync(request, timeout=RPC_TIMEOUT)
        return response

    def list(self, label_selector: dict[str, str] | None = None) -> api_pb2.ListContainersResponse:
        request = api_pb2.ListContainersRequest()
        if label_selector:
            request.filter.label_selector.update(label_selector)
        response: api_pb2.ListContainersResponse = self.runtime.ListContainers(
            request, timeout=RPC_TIMEOUT
        )
        return response

    def remove_pod(self) -> None:
        if not self.pod_id:
            return
        self.runtime.StopPodSandbox(
            api_pb2.StopPodSandboxRequest(pod_sandbox_id=self.pod_id), timeout=RPC_TIMEOUT
        )
        self.runtime.RemovePodSandbox(
            api_pb2.RemovePodSandboxRequest(pod_sandbox_id=self.pod_id), timeout=RPC_TIMEOUT
        )
        self.pod_id = ""

    def stop(self) -> None:
        """Remove what is still there (the pod's removal takes its containers),
        then SIGTERM (SIGKILL after 20 s)."""
        if self.client is not None and self.process.poll() is None:
            with contextlib.suppress(grpc.RpcError):
                listed = self.runtime.ListPodSandbox(api_pb2.ListPodSandboxRequest(), timeout=10)
                for item in listed.items:
                    self.pod_id = item.id
                    with contextlib.suppress(grpc.RpcError):
                        self.remove_pod()
            with contextlib.suppress(grpc.RpcError):
                for c in self.list().containers:
                    with contextlib.suppress(grpc.RpcError):
                        self.remove(c.id)
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.client is not None:
            self.client.close()
            self.client = None


# --- The benchmark -----------------------------------------------------------------------


class Interrupted(Exception):
    pass


class Interrupt:
    """Ctrl-C or SIGTERM: stop after the step in progress, so that no container
    is left half made; a second one stops at once (and the cleanup still runs)."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        self.count += 1
        if self.count > 1:
            raise KeyboardInterrupt

    def check(self) -> None:
        if self.count:
            raise Interrupted


@dataclass
class ListFigures:
    """ListContainers at one size."""

    size: int
    every: list[float] = field(default_factory=list)  # no filter
    one: list[float] = field(default_factory=list)  # a label selector matching one
    server_every: list[float] = field(default_factory=list)  # the spans, from the trace
    server_one: list[float] = field(default_factory=list)
    response_bytes: int = 0


@dataclass
class Results:
    bare_cycle: Phases = field(default_factory=lambda: Phases(CYCLE_PHASES))
    bare_teardown: Phases = field(default_factory=lambda: Phases(TEARDOWN_PHASES))
    bare_exec: Phases = field(default_factory=lambda: Phases(EXEC_PHASES))
    our_cycle: Phases = field(default_factory=lambda: Phases(CYCLE_PHASES))
    our_teardown: Phases = field(default_factory=lambda: Phases(TEARDOWN_PHASES))
    our_exec: Phases = field(default_factory=lambda: Phases(EXEC_PHASES))
    exec_failures: list[str] = field(default_factory=list)
    loaded_bare: Phases = field(default_factory=lambda: Phases(CYCLE_PHASES))
    loaded_ours: Phases = field(default_factory=lambda: Phases(CYCLE_PHASES))
    loaded_size: int = 0  # containers in the pod while those ran
    lists: list[ListFigures] = field(default_factory=list)
    create_seconds: list[float] = field(default_factory=list)  # the list's containers
    remove_seconds: float = 0.0  # RemoveContainer of every one of them
    removed: int = 0
    traced: bool = True  # False: our phases are all "the rest"
    steps: dict[tuple[str, str], list[float]] = field(default_factory=dict)  # (chart, node)

    def add_steps(self, chart: str, times: dict[str, float]) -> None:
        for node, seconds in times.items():
            self.steps.setdefault((chart, node), []).append(seconds)


def traced_times(
    server: Server, results: Results, charts: Sequence[str], since: int, keep: bool
) -> dict[str, float]:
    """Seconds per node of ``charts``' spans since ``since``, summed over the charts;
    each chart's steps kept for ``--steps`` unless this was a warm-up."""
    total: dict[str, float] = {}
    if not results.traced:
        return total
    for chart in charts:
        times = node_times(server.recent([chart], since))
        if keep:
            results.add_steps(chart, times)
        for node, seconds in times.items():
            total[node] = total.get(node, 0.0) + seconds
    return total


def our_cycle(
    server: Server, name: str, results: Results, keep: bool
) -> tuple[list[float], list[float]]:
    """CreateContainer + StartContainer, then StopContainer(0) + RemoveContainer:
    seconds by phase of each (CYCLE_PHASES, TEARDOWN_PHASES); the steps of the
    traces kept for ``--steps`` if ``keep``."""
    since = time.time_ns()
    t0 = time.perf_counter()
    container_id = server.create(name)
    server.start(container_id)
    t1 = time.perf_counter()
    middle = time.time_ns()
    t2 = time.perf_counter()
    server.stop_remove(container_id)
    t3 = time.perf_counter()
    cycle = traced_times(server, results, ("CreateContainer", "StartContainer"), since, keep)
    teardown = traced_times(server, results, ("StopContainer", "RemoveContainer"), middle, keep)
    return (
        split(cycle, CYCLE_NODES, CYCLE_PHASES, t1 - t0),
        split(teardown, TEARDOWN_NODES, TEARDOWN_PHASES, t3 - t2),
    )


def bare_cycle(bare: Bare, container_id: str) -> tuple[list[float], list[float]]:
    return bare.create_start(container_id), bare.stop_remove(container_id)


def our_exec(server: Server, container_id: str, i: int, results: Results) -> list[float]:
    since = time.time_ns()
    t0 = time.perf_counter()
    response = server.exec_true(container_id)
    wall = time.perf_counter() - t0
    if response.exit_code != 0:
        why = response.stderr.decode(errors="replace").strip()
        results.exec_failures.append(f"exit {response.exit_code}: {why}")
    return split(
        traced_times(server, results, ("ExecSync",), since, i > 0), EXEC_NODES, EXEC_PHASES, wall
    )


def measure_cycles(
    bare: Bare, server: Server, runs: int, interrupt: Interrupt, results: Results
) -> None:
    for i in range(runs + 1):  # the first is the warm-up
        interrupt.check()
        bare_id, name = f"bare-{os.getpid()}-{i}", f"cycle-{i}"
        if i % 2 == 0:
            bare_times = bare_cycle(bare, bare_id)
            our_times = our_cycle(server, name, results, i > 0)
        else:
            our_times = our_cycle(server, name, results, i > 0)
            bare_times = bare_cycle(bare, bare_id)
        if i:
            results.bare_cycle.add(bare_times[0])
            results.bare_teardown.add(bare_times[1])
            results.our_cycle.add(our_times[0])
            results.our_teardown.add(our_times[1])


def measure_loaded(bare: Bare, server: Server, interrupt: Interrupt, results: Results) -> None:
    """Create + start again, with the list's containers in the pod: both sides
    slow down as containers (mounts, processes) accumulate on the machine."""
    results.loaded_size = len(server.containers)
    for i in range(LOADED_RUNS):
        interrupt.check()
        bare_id, name = f"bare-{os.getpid()}-loaded-{i}", f"loaded-{i}"
        if i % 2 == 0:
            bare_times = bare_cycle(bare, bare_id)
            our_times = our_cycle(server, name, results, False)
        else:
            our_times = our_cycle(server, name, results, False)
            bare_times = bare_cycle(bare, bare_id)
        results.loaded_bare.add(bare_times[0])
        results.loaded_ours.add(our_times[0])


def measure_exec(
    bare: Bare, server: Server, runs: int, interrupt: Interrupt, results: Results
) -> None:
    """``true`` in one running container of each; both removed afterwards."""
    bare_id = f"bare-{os.getpid()}-exec"
    bare.create_start(bare_id)
    ours = server.create("exec")
    server.start(ours)
    for i in range(runs + 1):  # the first is the warm-up
        interrupt.check()
        if i % 2 == 0:
            bare_times = bare.exec_true(bare_id)
            our_times = our_exec(server, ours, i, results)
        else:
            our_times = our_exec(server, ours, i, results)
            bare_times = bare.exec_true(bare_id)
        if i:
            results.bare_exec.add(bare_times)
            results.our_exec.add(our_times)
    bare.stop_remove(bare_id)
    server.stop_remove(ours)


def span_seconds(events: Sequence[TraceEvent]) -> list[float]:
    """Each span's length, first event to last."""
    return [(s[-1].monotonic_ns - s[0].monotonic_ns) / 1e9 for s in spans(events) if s]


def measure_lists(
    server: Server, sizes: Sequence[int], calls: int, interrupt: Interrupt, results: Results
) -> None:
    """Containers created (not started) up to each size, then ListContainers."""
    made = 0
    began = time.perf_counter()
    for size in sizes:
        while made < size:
            interrupt.check()
            t0 = time.perf_counter()
            server.create(f"list-{made}")
            results.create_seconds.append(time.perf_counter() - t0)
            made += 1
            if made % 100 == 0 or made == size:
                recent = results.create_seconds[-100:]
                print(
                    f"  {made:5d} containers created ({time.perf_counter() - began:6.1f} s;"
                    f" the last {len(recent)}: {statistics.median(recent) * 1000:.1f} ms each"
                    " at the median)",
                    flush=True,
                )
        figures = ListFigures(size)
        selector = {"io.kubernetes.container.name": "list-0"}
        for _ in range(LIST_WARMUP):
            figures.response_bytes = server.list().ByteSize()
            server.list(selector)
        listed = len(server.list().containers)
        if listed != size:
            raise BenchError(f"ListContainers answered {listed} containers, {size} expected")
        for samples, server_samples, filt in (
            (figures.every, figures.server_every, None),
            (figures.one, figures.server_one, selector),
        ):
            since = time.time_ns()
            for _ in range(calls):
                interrupt.check()
                t0 = time.perf_counter()
                server.list(filt)
                samples.append(time.perf_counter() - t0)
            if results.traced:
                events = server.recent(["ListContainers"], since)
                server_samples.extend(span_seconds(events))
                if size == sizes[-1] and filt is None:
                    for times in (node_times(s) for s in spans(events)):
                        results.add_steps(f"ListContainers ({size})", times)
        results.lists.append(figures)


def remove_all(server: Server, interrupt: Interrupt, results: Results) -> None:
    """Every container removed one by one (timed, for information), then the pod."""
    t0 = time.perf_counter()
    for container_id in sorted(server.containers):
        interrupt.check()
        server.remove(container_id)
        results.removed += 1
    results.remove_seconds = time.perf_counter() - t0
    server.remove_pod()


def report_pairs(results: Results, runs: int) -> None:
    head = f"{'':<32} {'median':>8} {'p95':>8} {'min':>8}   (ms, {runs} runs)"
    sections = (
        (
            "CreateContainer + StartContainer",
            "bare: runc create + start",
            "ours: Create + StartContainer",
            results.bare_cycle,
            results.our_cycle,
            START_BUDGET,
        ),
        (
            "StopContainer(0) + RemoveContainer",
            "bare: runc kill, state, delete",
            "ours: Stop + RemoveContainer",
            results.bare_teardown,
            results.our_teardown,
            None,
        ),
        (
            "ExecSync true",
            "bare: runc exec",
            "ours: ExecSync",
            results.bare_exec,
            results.our_exec,
            None,
        ),
    )
    for title, bare_label, our_label, bare, ours, budget in sections:
        print(f"\n== {title} ==")
        print(head)
        print(ms_row(bare_label, bare.totals()))
        print(ms_row(our_label, ours.totals()))
        extra = statistics.median(ours.totals()) - statistics.median(bare.totals())
        if budget is None:
            print(f"ours − bare, at the median: {extra * 1000:+.1f} ms (no target in issue 6)")
        else:
            print(
                f"ours − bare, at the median: {extra * 1000:+.1f} ms "
                f"(target: ≤ +{budget * 1000:.0f} ms): {verdict(extra <= budget)}"
            )
        print("by phase, median (ms):")
        print(f"  {'':<14} {'bare':>8} {'ours':>8} {'ours − bare':>12}")
        for i, name in enumerate(bare.names):
            mb, mo = bare.median(i) * 1000, ours.median(i) * 1000
            print(f"  {name:<14} {mb:8.1f} {mo:8.1f} {mo - mb:+12.1f}")
    if results.exec_failures:
        failures = results.exec_failures
        print(f"warning: {len(failures)} of our ExecSync of true failed, e.g. {failures[0]}")
    print(
        "\nbare's phases: create = runc create; start = runc start; the rest = writing"
        " config.json.\n  stop = runc kill + runc state polls; delete = runc delete."
        " exec = runc exec."
    )
    if results.traced:
        print(
            "ours' phases, from its trace: create = m_cb_container_create (rootfs view, spec,"
            "\n  shim, runc create, record); start = m_cb_container_start (runc start, record);"
            "\n  stop = send_sigkill (runc kill, the shim's exit report); delete ="
            " cb_container_remove\n  (runc delete, cgroup, state dir, rootfs view); exec ="
            " m_cb_container_exec (the shim's\n  runc exec); the rest = the calls' time on the"
            " client's clock minus those (gRPC, checks,\n  records, the other steps)."
        )
    else:
        print("ours' phases: none (--trace off): the whole call is under 'the rest'.")


def report_lists(results: Results, calls: int) -> None:
    if not results.lists:
        return
    print(f"\n== ListContainers (ms, {calls} calls each; containers created, not started) ==")
    server_head = f" {'server':>8}" if results.traced else ""
    print(
        f"{'containers':>10}  {'filter':<22} {'median':>8} {'p95':>8} {'min':>8}"
        f"{server_head} {'response':>10}"
    )
    for f in results.lists:
        for label, samples, server_samples, size in (
            ("none (relist)", f.every, f.server_every, f"{f.response_bytes / 1000:7.1f} kB"),
            ("label selector: 1", f.one, f.server_one, ""),
        ):
            server = ""
            if results.traced:
                server = (
                    f" {statistics.median(server_samples) * 1000:8.2f}"
                    if server_samples
                    else f" {'?':>8}"
                )
            print(
                f"{f.size:>10}  {label:<22} {statistics.median(samples) * 1000:8.2f}"
                f" {p95(samples) * 1000:8.2f} {min(samples) * 1000:8.2f}{server} {size:>10}"
            )
    target = [f for f in results.lists if f.size == LIST_TARGET_SIZE]
    if target:
        median = statistics.median(target[0].every)
        print(
            f"ListContainers with {LIST_TARGET_SIZE} containers, at the median:"
            f" {median * 1000:.1f} ms (target: < {LIST_BUDGET * 1000:.0f} ms):"
            f" {verdict(median < LIST_BUDGET)}"
        )
    else:
        print(
            f"ListContainers with {LIST_TARGET_SIZE} containers: not measured"
            f" (--max-list {results.lists[-1].size}): the target is not judged"
        )
    if results.create_seconds:
        c = results.create_seconds
        print(
            f"creating them: {len(c)} CreateContainer, median {statistics.median(c) * 1000:.1f}"
            f" ms, p95 {p95(c) * 1000:.1f} ms, {sum(c):.1f} s in all"
        )
    if results.loaded_size:
        bare, ours = results.loaded_bare, results.loaded_ours
        extra = statistics.median(ours.totals()) - statistics.median(bare.totals())
        print(
            f"create + start with {results.loaded_size} containers in the pod"
            f" ({len(bare.samples)} runs, median): bare"
            f" {statistics.median(bare.totals()) * 1000:.1f} ms (runc create"
            f" {bare.median(0) * 1000:.1f}), ours {statistics.median(ours.totals()) * 1000:.1f}"
            f" ms; ours − bare {extra * 1000:+.1f} ms (for information: the floor grows too)"
        )
    if results.removed:
        each = results.remove_seconds / results.removed
        print(
            f"removing them (and the others left): {results.removed} RemoveContainer in"
            f" {results.remove_seconds:.1f} s, {each * 1000:.1f} ms each on average"
        )


def report_steps(results: Results) -> None:
    """Every step of our charts, median ms, slowest first within each chart (a
    step lasts from its event to the next one of its span)."""
    if not results.steps:
        print("\nno steps: the server's tracing is off")
        return
    print("\n== Our steps, from the server's traces: median (ms), slowest first ==")
    charts = list(dict.fromkeys(chart for chart, _node in results.steps))
    for chart in charts:
        rows = [
            (statistics.median(v), node) for (c, node), v in results.steps.items() if c == chart
        ]
        print(f"{chart}: {sum(m for m, _ in rows) * 1000:.2f} ms in its steps")
        for median, node in sorted(rows, reverse=True):
            if median >= 0.00001:
                print(f"  {node:<52} {median * 1000:8.3f}")


def leftovers(tmp: Path, bridge: str, runc: str, server: Server, bare: Bare, pod: str) -> list[str]:
    """What is still there after every container and the pod were removed."""
    found = [f"mount {m}" for m in mounts_under(tmp)]
    found += [f"veth {v} on {bridge}" for v in veths_on(bridge)]
    for root in (bare.root, server.state / "runc"):
        if root.is_dir():
            ids = run_quiet(runc, "--root", str(root), "list", "-q").stdout.split()
            found += [f"runc container {c} under {root}" for c in ids]
    found += [f"shim {pid}" for pid in live_shims(server.state)]
    with contextlib.suppress(grpc.RpcError):
        found += [f"container {c.id[:12]} in the server" for c in server.list().containers]
    if pod:
        found += [f"the pod's cgroup {d}" for d in cgroup_dirs(cgroups.pod_parent(pod))]
    return found


def runc_version(runc: str) -> str:
    proc = run_quiet(runc, "--version")
    return (proc.stdout.splitlines() or ["runc (unknown version)"])[0]


def list_sizes(max_list: int) -> list[int]:
    return [s for s in LIST_SIZES if s < max_list] + [max_list]


def run(args: argparse.Namespace, runc: str, tmp: Path, interrupt: Interrupt) -> None:
    start = time.perf_counter()
    conf_dir = tmp / "net.d"
    conf_dir.mkdir()
    network = default_conflist(args.subnet, args.bridge, str(tmp / "ipam"))
    (conf_dir / "10-bench.conflist").write_text(json.dumps(network))
    (tmp / "srv").mkdir()
    server: Server | None = None
    bare: Bare | None = None
    pod = ""
    try:
        server = Server(tmp / "srv", conf_dir, args.trace)
        server.build_image()
        pod = server.run_pod(tmp / "logs")
        template = asyncio.run(bare_template(tmp, server.pod_context(runc)))
        bare = Bare(runc, tmp, template, pod)
        print(
            f"server, its busybox image, the pod and the bare image ready in"
            f" {time.perf_counter() - start:.1f} s; in {tmp}"
        )
        results = Results(traced=args.trace == "on")
        try:
            measure_cycles(bare, server, args.runs, interrupt, results)
            measure_exec(bare, server, args.runs, interrupt, results)
            sizes = list_sizes(args.max_list)
            print(f"ListContainers at {', '.join(map(str, sizes))} containers:", flush=True)
            measure_lists(server, sizes, args.list_calls, interrupt, results)
            measure_loaded(bare, server, interrupt, results)
            remove_all(server, interrupt, results)
        except grpc.RpcError as e:
            what = f"{e.code().name}: {e.details()}"
            raise BenchError(f"{what}\nthe server's log ends with:\n{server.tail()}") from None
        report_pairs(results, args.runs)
        report_lists(results, args.list_calls)
        if args.steps:
            report_steps(results)
        left = leftovers(tmp, args.bridge, runc, server, bare, pod)
        if left:
            print(f"\nleft behind after the runs ({len(left)}): " + "; ".join(left[:10]))
        else:
            print(
                "\nleft behind after the runs: nothing (mounts, veths, runc containers, shims,"
                " containers, the pod's cgroup)"
            )
        logged = server.tail(5)
        if logged:
            print(f"\nthe server's log (warnings and errors) ends with:\n{logged}")
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):  # the cleanup is not to be cut short
            signal.signal(signum, signal.SIG_IGN)
        if bare is not None:  # first: its containers are in the pod's namespaces and cgroup
            bare.cleanup()
        if server is not None:
            server.stop()
            runc_leftovers(runc, server.state / "runc")
            kill_shims(server.state)
        for point in mounts_under(tmp):
            if run_quiet("umount", point).returncode != 0:
                run_quiet("umount", "-l", point)
        if pod:
            remove_cgroup(cgroups.pod_parent(pod))
        run_quiet("ip", "link", "del", args.bridge)
        if run_quiet("ip", "link", "show", args.bridge).returncode == 0:
            print(f"warning: the bridge {args.bridge} could not be deleted", file=sys.stderr)


def unavailable(runc: str | None, runc_name: str) -> str:
    """Why the benchmark cannot run here, or ""."""
    if os.geteuid() != 0:
        return "containers.py needs root (runc, cgroups, network namespaces, CNI); use sudo"
    if runc is None:
        return f"{runc_name!r} not found (apt-get install runc)"
    if not Path("/bin/busybox").is_file():
        return "/bin/busybox not found (apt-get install busybox-static)"
    for tool, package in (("umount", "mount"), ("ip", "iproute2")):
        if shutil.which(tool) is None:
            return f"{tool} not found (apt-get install {package})"
    if not any(all((d / p).is_file() for p in PLUGINS) for d in DEFAULT_CNI_BIN_DIRS):
        dirs = " or ".join(str(d) for d in DEFAULT_CNI_BIN_DIRS)
        return (
            f"the CNI plugins {', '.join(PLUGINS)} are not all in {dirs} "
            "(apt-get install containernetworking-plugins)"
        )
    return ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20, help="measured runs of each (default 20)")
    parser.add_argument(
        "--max-list",
        type=int,
        default=LIST_TARGET_SIZE,
        help=f"containers for the largest ListContainers (default {LIST_TARGET_SIZE})",
    )
    parser.add_argument(
        "--list-calls", type=int, default=50, help="ListContainers calls per size (default 50)"
    )
    parser.add_argument("--runc", default="runc", help="the runc binary (default: runc on PATH)")
    parser.add_argument(
        "--dir", type=Path, default=None, help="where to work (default: the system's temp dir)"
    )
    parser.add_argument(
        "--bridge", default="tcri-bench1", help="the CNI bridge to make (default tcri-bench1)"
    )
    parser.add_argument(
        "--subnet", default="10.237.0.0/16", help="its addresses (default 10.237.0.0/16)"
    )
    parser.add_argument(
        "--trace", choices=("on", "off"), default="on", help="the server's tracing (default on)"
    )
    parser.add_argument(
        "--steps", action="store_true", help="also print the median of each of our trace's steps"
    )
    args = parser.parse_args()
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    if args.max_list < 1 or args.list_calls < 1:
        parser.error("--max-list and --list-calls must be at least 1")
    runc = shutil.which(args.runc)
    why = unavailable(runc, args.runc)
    if why:
        print(why, file=sys.stderr)
        sys.exit(2)
    assert runc is not None
    if run_quiet("ip", "link", "show", args.bridge).returncode == 0:
        print(
            f"a link {args.bridge} exists already (another run? `ip link del {args.bridge}`, "
            "or pick another with --bridge)",
            file=sys.stderr,
        )
        sys.exit(2)
    print(
        f"Python {platform.python_version()}, {runc_version(runc)}, {os.cpu_count()} CPUs, "
        f"cgroup v{cgroups.version()}, Linux {platform.release()}"
    )
    interrupt = Interrupt()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, interrupt)
    with tempfile.TemporaryDirectory(prefix="tcri-bench-", dir=args.dir) as d:
        try:
            run(args, runc, Path(d), interrupt)
        except BusyboxUnavailable as e:
            print(f"no busybox image: {e}", file=sys.stderr)
            sys.exit(2)
        except (Interrupted, KeyboardInterrupt):
            print(
                "interrupted; containers, the pod, its namespace and the bridge removed",
                file=sys.stderr,
            )
            sys.exit(130)
        except BenchError as e:
            print(f"failed: {e}", file=sys.stderr)
            sys.exit(1)


if __name__ == "__main__":
    main()
