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
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import grpc

from teaching_cri.api import admin_pb2, api_pb2
from teaching_cri.image.hostimages import BusyboxUnavailable, build_busybox_image
from teaching_cri.runtime import cgroups
from teaching_cri.runtime.spec import SandboxContext, generate_spec
from teaching_cri.trace.events import TraceEvent

from _bench import (
    BareRunc,
    BenchError,
    BenchServer,
    Interrupt,
    Phases,
    Table,
    add_runc_args,
    add_server_args,
    alternate,
    bare_image,
    bridge_taken,
    cgroup_dirs,
    compare,
    exit_if,
    exits,
    host_leftovers,
    ignore_signals,
    live_shims,
    machine,
    must,
    new_parser,
    node_times,
    p95,
    pod_bench_unavailable,
    print_leftovers,
    run_quiet,
    runc_leftovers,
    spans,
    split,
    tear_down_pod_host,
    verdict,
    write_conflist,
)

START_BUDGET = 0.040  # s over bare create + start, at the median
LIST_BUDGET = 0.020  # s for ListContainers with 1000 containers, at the median
LIST_TARGET_SIZE = 1000
LIST_SIZES = (10, 100, 1000)
LIST_WARMUP = 3  # unmeasured calls before each size's measured ones
LOADED_RUNS = 5  # create + start pairs with the largest list's containers in the pod
RPC_TIMEOUT = 120.0  # s for one RPC (RunPodSandbox builds the infra image)
EXEC_TIMEOUT = 10  # s, ExecSync's own timeout
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


TABLE = Table(32)


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


class Bare(BareRunc):
    """A container in the pod, made as a shell script would make it."""

    def __init__(self, runc: str, tmp: Path, template: dict[str, Any], pod_id: str) -> None:
        # runc create's stderr (and the container's) in bare-create.err
        super().__init__(runc, tmp / "bare-runc", tmp / "bare-create.err")
        self.bundles = tmp / "bare-bundles"
        self.template = template  # config.json, its cgroupsPath to fill in
        self.pod_id = pod_id  # the pod's cgroup level, shared with ours
        self.bundles.mkdir()
        self.live: set[str] = set()

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
        self.live.add(container_id)
        super().create(bundle, container_id)

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
    rootfs, image = await bare_image(layout, tmp / "bare-images")
    config = container_config("bare", api_pb2.PodSandboxMetadata())
    spec, _notes = generate_spec(config, image, rootfs, sandbox=context)
    return spec


# --- Ours: a server over gRPC -----------------------------------------------------------


class Server(BenchServer):
    """Our server, with the image, the pod and the containers in it."""

    def __init__(self, base: Path, conf_dir: Path, trace: str, extra: Sequence[str] = ()) -> None:
        self.pod_id = ""
        self.pod_config = api_pb2.PodSandboxConfig()
        self.containers: set[str] = set()  # made and not yet removed
        super().__init__(base, conf_dir, trace, extra)

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

    def clear(self) -> None:
        """Remove what is still there (the pod's removal takes its containers)."""
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


# --- The benchmark -----------------------------------------------------------------------


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
        bare_times, our_times = alternate(
            i, partial(bare_cycle, bare, bare_id), partial(our_cycle, server, name, results, i > 0)
        )
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
        bare_times, our_times = alternate(
            i, partial(bare_cycle, bare, bare_id), partial(our_cycle, server, name, results, False)
        )
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
        bare_times, our_times = alternate(
            i, partial(bare.exec_true, bare_id), partial(our_exec, server, ours, i, results)
        )
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
        labels = (bare_label, our_label)
        compare(title, TABLE, runs, labels, bare, ours, budget, "no target in issue 6")
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
    found = host_leftovers(tmp, bridge, runc, (bare.root, server.state / "runc"))
    found += [f"shim {pid}" for pid in live_shims(server.state)]
    with contextlib.suppress(grpc.RpcError):
        found += [f"container {c.id[:12]} in the server" for c in server.list().containers]
    if pod:
        found += [f"the pod's cgroup {d}" for d in cgroup_dirs(cgroups.pod_parent(pod))]
    return found


def list_sizes(max_list: int) -> list[int]:
    return [s for s in LIST_SIZES if s < max_list] + [max_list]


def run(args: argparse.Namespace, runc: str, tmp: Path, interrupt: Interrupt) -> None:
    start = time.perf_counter()
    conf_dir, _network = write_conflist(tmp, args.subnet, args.bridge)
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
            raise server.failure(e) from None
        report_pairs(results, args.runs)
        report_lists(results, args.list_calls)
        if args.steps:
            report_steps(results)
        left = leftovers(tmp, args.bridge, runc, server, bare, pod)
        print_leftovers(left, "mounts, veths, runc containers, shims, containers, the pod's cgroup")
        server.print_log_end()
    finally:
        ignore_signals()
        if bare is not None:  # first: its containers are in the pod's namespaces and cgroup
            bare.cleanup()
        if server is not None:
            server.stop()
            server.reap(runc)
        tear_down_pod_host(tmp, pod, args.bridge)


def unavailable(runc: str | None, runc_name: str) -> str:
    return pod_bench_unavailable("containers.py", runc, runc_name)


def main() -> None:
    parser = new_parser(__doc__)
    parser.add_argument(
        "--max-list",
        type=int,
        default=LIST_TARGET_SIZE,
        help=f"containers for the largest ListContainers (default {LIST_TARGET_SIZE})",
    )
    parser.add_argument(
        "--list-calls", type=int, default=50, help="ListContainers calls per size (default 50)"
    )
    add_runc_args(parser)
    add_server_args(parser, "tcri-bench1", "10.237.0.0/16")
    args = parser.parse_args()
    if args.smoke:
        args.runs, args.max_list, args.list_calls = 1, 2, 1
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    if args.max_list < 1 or args.list_calls < 1:
        parser.error("--max-list and --list-calls must be at least 1")
    runc = shutil.which(args.runc)
    exit_if(unavailable(runc, args.runc) or bridge_taken(args.bridge))
    assert runc is not None
    print(machine(runc))
    interrupt = Interrupt()
    interrupt.handle_signals()
    removed = "containers, the pod, its namespace and the bridge"
    with tempfile.TemporaryDirectory(prefix="tcri-bench-", dir=args.dir) as d, exits(removed):
        try:
            run(args, runc, Path(d), interrupt)
        except BusyboxUnavailable as e:
            print(f"no busybox image: {e}", file=sys.stderr)
            sys.exit(2)


if __name__ == "__main__":
    main()
