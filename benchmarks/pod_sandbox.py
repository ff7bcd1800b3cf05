"""What does our server add to a pod sandbox? Prints figures; asserts nothing.

A pod sandbox, underneath, is three things any shell script can do by itself:
a pinned network namespace, CNI ADD into it, and an infra (pause) container
that joins it. Both sides below do those three things, on the same bridge,
with the same plugins and the same infra program, and undo them again:

* **Ours**: a real server (``python -m teaching_cri serve``, a subprocess, as
  a user runs it) on a socket of its own, driven over gRPC as the kubelet does:
  ``RunPodSandbox`` with a fresh ``PodSandboxConfig`` (name and uid unique per
  run, namespace ``bench``), then ``StopPodSandbox`` + ``RemovePodSandbox``,
  timed together. The server's CNI conf dir holds one conflist of this
  benchmark's own (``default_conflist``: a private bridge, ``--bridge``, with
  host-local addresses from ``--subnet``, no masquerade); the bridge is
  deleted at the end. Tracing is on (as by default; ``--trace off`` to compare).
* **Bare**: the same steps without our server, each a synchronous subprocess:
  (1) ``unshare --net=<file> true`` on a file touched first (a new namespace,
  bind-mounted there); (2) CNI ADD: the ``loopback`` plugin on ``lo``, then the
  conflist's ``bridge`` plugin on ``eth0``, with ``CNI_COMMAND``,
  ``CNI_CONTAINERID``, ``CNI_NETNS``, ``CNI_IFNAME``, ``CNI_PATH`` in the
  environment and the network config (the plugin with the conflist's ``name``
  and ``cniVersion``) on stdin, as ``manager/cni.py`` sends them; (3) ``runc
  create`` (stdio on /dev/null) and ``runc start`` of a bundle whose
  ``config.json`` joins that namespace and runs the built-in infra image's
  program (catatonit, else a busybox shell), the spec made by our own
  ``generate_spec`` with a ``cgroupsPath`` of the same form as ours. The
  teardown: ``runc kill <id> KILL``, ``runc state`` polled every 2 ms until
  "stopped", ``runc delete``, CNI DEL (bridge, with the ADD result as
  ``prevResult``, then loopback), ``umount`` and unlink of the namespace file.
  The bare rootfs is one copy of the image, made before the runs and shared
  (read-only) by every run; ours makes a rootfs per pod, which is part of
  what it costs.

"Run" is (1) + (2) + (3 create + start) against ``RunPodSandbox``;
"Stop + Remove" is the teardown against ``StopPodSandbox`` + ``RemovePodSandbox``.
The target: ours at most 30 ms over bare at the median, for each. The tables
by phase say where the difference is; our phases come from the server's own
trace of each call (``TraceService.Recent``: a step lasts until the next
event), and "the rest" is the call's time on the client's clock minus those
phases (the gRPC round trip, the checkpoint and record writes, the sandbox's
files, the other steps of the chart).

Two differences are the server's design, not the benchmark's, and worth knowing
when reading the phases: ours stops the infra with its stop signal (SIGTERM,
with a 10 s grace that catatonit does not need) where bare sends SIGKILL, and
ours runs CNI DEL for the pod's network only, not for the loopback network it
ADDed (bare DELs both, one plugin run more).

The infra image: the server is started with ``--pause-image
teaching-cri.local/pause:builtin``. With the default (``registry.k8s.io/pause``)
every RunPodSandbox on an offline machine would try the registry first and
fall back to the built-in infra after the DNS failure; naming the built-in
image makes the warm-up run build it (that run fails its pull of
``teaching-cri.local`` and builds the image) and every later run find it at
once, so the figures are those of a node that has its pause image.

Every measurement follows one unmeasured warm-up; bare and ours alternate, run
by run, so that drift in the machine's load hits both alike. Figures are the
median, 95th percentile and minimum of ``--runs`` runs. It needs root, runc,
util-linux's unshare, iproute2's ip and the CNI plugins bridge, host-local and
loopback (Debian's containernetworking-plugins), and exits with status 2,
saying why, without them. Ctrl-C or SIGTERM stops after the run in progress
and cleans up (a second one stops at once, and cleans up too; signals during
the cleanup are ignored).

``--steps`` adds the median of every step of our three charts. After the runs
it says what is left behind (mounts under its directory, veths on the bridge,
runc containers, the pods' cgroups in every mounted hierarchy), then removes it.

    sudo python benchmarks/pod_sandbox.py [--runs 20] [--runc runc] [--dir /tmp]
        [--bridge tcri-bench0] [--subnet 10.234.0.0/16] [--trace on|off] [--steps]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import grpc

from teaching_cri.api import api_pb2
from teaching_cri.image.hostimages import build_infra_image
from teaching_cri.manager.network import DEFAULT_CNI_BIN_DIRS
from teaching_cri.runtime import cgroups
from teaching_cri.runtime.spec import SandboxContext, generate_spec

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
    machine,
    missing_plugins,
    must,
    new_parser,
    node_times,
    plugin_dir,
    print_leftovers,
    remove_cgroup,
    run_quiet,
    runc_leftovers,
    split,
    unmount_under,
    write_conflist,
)

BUDGET = 0.030  # s over bare, at the median, for Run and for Stop + Remove
RPC_TIMEOUT = 120.0  # s for one RPC (the warm-up builds the infra image)
LOOPBACK_CONF = {"cniVersion": "1.0.0", "name": "cni-loopback", "type": "loopback"}
NAMESPACE = "bench"

RUN_PHASES = ("netns", "CNI ADD", "infra create", "infra start", "the rest")
TEARDOWN_PHASES = ("infra stop", "infra delete", "CNI DEL", "netns", "the rest")
# Our trace's nodes (diagrams/*.toml) → the phases above; any other node is "the rest".
RUN_NODES = {
    "prepare_network_namespace": "netns",
    "cni_add": "CNI ADD",
    "sandbox_create": "infra create",
    "sandbox_start": "infra start",
}
TEARDOWN_NODES = {
    "sandbox_stop": "infra stop",
    "sandbox_remove": "infra delete",
    "cni_del": "CNI DEL",
    "remove_network_namespace": "netns",
    "remove_network_namespace_file": "netns",
}


TABLE = Table(30)


# --- Bare: unshare, the plugins and runc by themselves --------------------------------


@dataclass
class BareSandbox:
    id: str
    netns: Path
    result: dict[str, Any] = field(default_factory=dict)  # the bridge's ADD result
    networked: bool = False
    created: bool = False


class Bare(BareRunc):
    """A pod sandbox made as a shell script would make it."""

    def __init__(
        self, runc: str, tmp: Path, template: dict[str, Any], network: dict[str, Any], pod: str
    ) -> None:
        # runc create's stderr (and the infra's) in bare-create.err
        super().__init__(runc, tmp / "bare-runc", tmp / "bare-create.err")
        self.netns_dir = tmp / "bare-netns"
        self.bundles = tmp / "bare-bundles"
        self.template = template  # config.json, its netns path and cgroupsPath to fill in
        self.network = network  # the conflist: name, cniVersion, plugins
        self.pod = pod  # the cgroup level of the bare infras
        self.plugins = plugin_dir()
        self.cni_path = os.pathsep.join(str(d) for d in DEFAULT_CNI_BIN_DIRS)
        self.netns_dir.mkdir(mode=0o711)
        self.bundles.mkdir()
        self.live: dict[str, BareSandbox] = {}

    # -- the pieces --

    def cni(self, command: str, sandbox: BareSandbox, ifname: str, conf: dict[str, Any]) -> Any:
        env = {
            "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
            "CNI_COMMAND": command,
            "CNI_CONTAINERID": sandbox.id,
            "CNI_NETNS": str(sandbox.netns),
            "CNI_IFNAME": ifname,
            "CNI_ARGS": "IgnoreUnknown=1",
            "CNI_PATH": self.cni_path,
        }
        proc = subprocess.run(
            [str(self.plugins / conf["type"])],
            input=json.dumps(conf).encode(),
            capture_output=True,
            env=env,
            check=False,
        )
        if proc.returncode != 0:
            why = (proc.stdout or proc.stderr).decode(errors="replace").strip()
            raise BenchError(f"CNI {conf['type']} {command}: {why}")
        return json.loads(proc.stdout) if proc.stdout.strip() else {}

    def bridge_conf(self, prev_result: dict[str, Any] | None = None) -> dict[str, Any]:
        conf = {
            **self.network["plugins"][0],
            "name": self.network["name"],
            "cniVersion": self.network["cniVersion"],
        }
        if prev_result is not None:
            conf["prevResult"] = prev_result
        return conf

    def write_bundle(self, sandbox: BareSandbox) -> Path:
        spec = json.loads(json.dumps(self.template))
        for ns in spec["linux"]["namespaces"]:
            if ns["type"] == "network":
                ns["path"] = str(sandbox.netns)
        spec["linux"]["cgroupsPath"] = cgroups.container_path(self.pod, sandbox.id)
        bundle = self.bundles / sandbox.id
        bundle.mkdir()
        (bundle / "config.json").write_text(json.dumps(spec))
        return bundle

    # -- the two halves, timed by phase (RUN_PHASES, TEARDOWN_PHASES) --

    def run(self, sandbox_id: str) -> list[float]:
        sandbox = BareSandbox(sandbox_id, self.netns_dir / sandbox_id)
        self.live[sandbox_id] = sandbox
        t0 = time.perf_counter()
        sandbox.netns.touch(mode=0o444)
        must("unshare", f"--net={sandbox.netns}", "true")
        t1 = time.perf_counter()
        sandbox.networked = True
        self.cni("ADD", sandbox, "lo", dict(LOOPBACK_CONF))
        sandbox.result = self.cni("ADD", sandbox, "eth0", self.bridge_conf())
        t2 = time.perf_counter()
        bundle = self.write_bundle(sandbox)
        t3 = time.perf_counter()
        sandbox.created = True
        self.create(bundle, sandbox_id)
        t4 = time.perf_counter()
        self._runc("start", sandbox_id)
        t5 = time.perf_counter()
        return [t1 - t0, t2 - t1, t4 - t3, t5 - t4, t3 - t2]

    def stop_remove(self, sandbox_id: str) -> list[float]:
        sandbox = self.live[sandbox_id]
        t0 = time.perf_counter()
        self._runc("kill", sandbox_id, "KILL")
        self.wait_stopped(sandbox_id)
        t1 = time.perf_counter()
        self._runc("delete", sandbox_id)
        t2 = time.perf_counter()
        sandbox.created = False
        self.cni("DEL", sandbox, "eth0", self.bridge_conf(sandbox.result))
        self.cni("DEL", sandbox, "lo", dict(LOOPBACK_CONF))
        t3 = time.perf_counter()
        sandbox.networked = False
        must("umount", str(sandbox.netns))
        sandbox.netns.unlink()
        t4 = time.perf_counter()
        del self.live[sandbox_id]
        shutil.rmtree(self.bundles / sandbox_id, ignore_errors=True)
        return [t1 - t0, t2 - t1, t3 - t2, t4 - t3, 0.0]

    def cleanup(self) -> None:
        """Whatever an error or an interruption left: containers, networks, namespaces."""
        for sandbox in list(self.live.values()):
            if sandbox.created:
                run_quiet(self.runc, "--root", str(self.root), "delete", "--force", sandbox.id)
            if sandbox.networked:
                with contextlib.suppress(BenchError, ValueError, OSError):
                    self.cni("DEL", sandbox, "eth0", self.bridge_conf(sandbox.result or None))
                with contextlib.suppress(BenchError, ValueError, OSError):
                    self.cni("DEL", sandbox, "lo", dict(LOOPBACK_CONF))
            if os.path.ismount(sandbox.netns):
                run_quiet("umount", str(sandbox.netns))
            sandbox.netns.unlink(missing_ok=True)
            del self.live[sandbox.id]
        runc_leftovers(self.runc, self.root)
        remove_cgroup(cgroups.pod_parent(self.pod))


async def infra_template(tmp: Path) -> dict[str, Any]:
    """The bare infra's config.json: the built-in infra image, copied once into a
    rootfs that every bare run shares (read-only), the spec from our own
    generator with an infra's security context (as ``sandbox_create`` asks)."""
    layout = tmp / "infra-layout"
    build_infra_image(layout)
    rootfs, image = await bare_image(layout, tmp / "bare-images")
    config = api_pb2.ContainerConfig(
        metadata=api_pb2.ContainerMetadata(name="POD"),
        linux=api_pb2.LinuxContainerConfig(
            security_context=api_pb2.LinuxContainerSecurityContext(
                readonly_rootfs=True,
                no_new_privs=True,
                namespace_options=api_pb2.NamespaceOption(
                    network=api_pb2.POD, pid=api_pb2.CONTAINER, ipc=api_pb2.CONTAINER
                ),
            )
        ),
    )
    spec, _notes = generate_spec(
        config, image, rootfs, sandbox=SandboxContext(namespaces={"network": "/placeholder"})
    )
    return spec


# --- Ours: a server over gRPC -----------------------------------------------------------


class Server(BenchServer):
    """Our server, making and removing pod sandboxes."""

    def __init__(self, base: Path, conf_dir: Path, trace: str) -> None:
        self.sandboxes: set[str] = set()  # made and not yet removed
        self.ever: set[str] = set()  # every sandbox made (their cgroups, at the end)
        super().__init__(base, conf_dir, trace)

    def run(self, name: str, uid: str) -> str:
        config = api_pb2.PodSandboxConfig(
            metadata=api_pb2.PodSandboxMetadata(name=name, namespace=NAMESPACE, uid=uid),
            hostname=name,
        )
        request = api_pb2.RunPodSandboxRequest(config=config)
        sandbox_id = str(self.runtime.RunPodSandbox(request, timeout=RPC_TIMEOUT).pod_sandbox_id)
        self.sandboxes.add(sandbox_id)
        self.ever.add(sandbox_id)
        return sandbox_id

    def stop_remove(self, sandbox_id: str) -> None:
        self.runtime.StopPodSandbox(
            api_pb2.StopPodSandboxRequest(pod_sandbox_id=sandbox_id), timeout=RPC_TIMEOUT
        )
        self.runtime.RemovePodSandbox(
            api_pb2.RemovePodSandboxRequest(pod_sandbox_id=sandbox_id), timeout=RPC_TIMEOUT
        )
        self.sandboxes.discard(sandbox_id)

    def node_times(self, chart: str, since: int) -> dict[str, float]:
        """Seconds per node of the chart's spans since ``since`` (unix ns): from one
        event to the next, as ``trace show`` times a step."""
        return node_times(self.recent([chart], since))

    def clear(self) -> None:
        """Remove the pods still there."""
        # Those of a RunPodSandbox cut off by a second Ctrl-C are listed too.
        with contextlib.suppress(grpc.RpcError):
            listed = self.runtime.ListPodSandbox(api_pb2.ListPodSandboxRequest(), timeout=10)
            self.sandboxes.update(item.id for item in listed.items)
            self.ever.update(item.id for item in listed.items)
        for sandbox_id in list(self.sandboxes):
            with contextlib.suppress(grpc.RpcError):
                self.stop_remove(sandbox_id)


# --- The benchmark -----------------------------------------------------------------------


@dataclass
class Results:
    bare_run: Phases = field(default_factory=lambda: Phases(RUN_PHASES))
    bare_teardown: Phases = field(default_factory=lambda: Phases(TEARDOWN_PHASES))
    our_run: Phases = field(default_factory=lambda: Phases(RUN_PHASES))
    our_teardown: Phases = field(default_factory=lambda: Phases(TEARDOWN_PHASES))
    traced: bool = True  # False: our phases are all "the rest"
    steps: dict[tuple[str, str], list[float]] = field(default_factory=dict)  # (chart, node)


def bare_cycle(bare: Bare, i: int) -> tuple[list[float], list[float]]:
    sandbox_id = f"bare-{os.getpid()}-{i}"
    return bare.run(sandbox_id), bare.stop_remove(sandbox_id)


def our_cycle(server: Server, i: int, results: Results) -> tuple[list[float], list[float]]:
    """RunPodSandbox, then Stop + Remove: seconds by phase of each (RUN_PHASES,
    TEARDOWN_PHASES); the steps of the three traces go into ``results.steps``."""
    since = time.time_ns()
    t0 = time.perf_counter()
    sandbox_id = server.run(f"pod-{i}", f"bench-{os.getpid()}-{i}")
    t1 = time.perf_counter()
    middle = time.time_ns()
    t2 = time.perf_counter()
    server.stop_remove(sandbox_id)
    t3 = time.perf_counter()
    run_times: dict[str, float] = {}
    teardown_times: dict[str, float] = {}
    if results.traced:
        run_times = server.node_times("RunPodSandbox", since)
        stop_times = server.node_times("StopPodSandbox", middle)
        remove_times = server.node_times("RemovePodSandbox", middle)
        for chart, times in (
            ("RunPodSandbox", run_times),
            ("StopPodSandbox", stop_times),
            ("RemovePodSandbox", remove_times),
        ):
            if i:  # not the warm-up
                for node, seconds in times.items():
                    results.steps.setdefault((chart, node), []).append(seconds)
        for times in (stop_times, remove_times):
            for node, seconds in times.items():
                teardown_times[node] = teardown_times.get(node, 0.0) + seconds
    return (
        split(run_times, RUN_NODES, RUN_PHASES, t1 - t0),
        split(teardown_times, TEARDOWN_NODES, TEARDOWN_PHASES, t3 - t2),
    )


def measure(bare: Bare, server: Server, runs: int, interrupt: Interrupt, traced: bool) -> Results:
    results = Results(traced=traced)
    for i in range(runs + 1):  # the first is the warm-up
        interrupt.check()
        start = time.perf_counter()
        bare_times, our_times = alternate(
            i, partial(bare_cycle, bare, i), partial(our_cycle, server, i, results)
        )
        if i == 0:
            took = time.perf_counter() - start
            print(f"warm-up (ours builds the built-in infra image): {took:.1f} s")
            continue
        results.bare_run.add(bare_times[0])
        results.bare_teardown.add(bare_times[1])
        results.our_run.add(our_times[0])
        results.our_teardown.add(our_times[1])
    return results


def report(results: Results, runs: int) -> None:
    sections = (
        (
            "RunPodSandbox",
            "bare: netns, CNI ADD, runc",
            "ours: RunPodSandbox",
            results.bare_run,
            results.our_run,
        ),
        (
            "StopPodSandbox + RemovePodSandbox",
            "bare: runc, CNI DEL, netns",
            "ours: Stop + RemovePodSandbox",
            results.bare_teardown,
            results.our_teardown,
        ),
    )
    for title, bare_label, our_label, bare, ours in sections:
        compare(title, TABLE, runs, (bare_label, our_label), bare, ours, BUDGET)
    print(
        "\nbare's phases: netns = touch + unshare; CNI ADD = loopback + bridge; infra create ="
        " runc create;\n  the rest = writing config.json. infra stop = runc kill + runc state"
        " polls; infra delete =\n  runc delete; CNI DEL = bridge + loopback; netns = umount +"
        " unlink."
    )
    if results.traced:
        print(
            "ours' phases, from its trace: netns = prepare_network_namespace; CNI ADD = cni_add;"
            "\n  infra create = sandbox_create (rootfs view, spec, shim, runc create); infra start"
            " =\n  sandbox_start; infra stop = sandbox_stop; infra delete = sandbox_remove; CNI DEL"
            " =\n  cni_del; netns = remove_network_namespace(_file); the rest = the calls' time on"
            " the\n  client's clock minus those (gRPC, records, the sandbox's files, other steps)."
        )
    else:
        print("ours' phases: none (--trace off): the whole call is under 'the rest'.")


def report_steps(results: Results) -> None:
    """Every step of our three charts, median ms, slowest first within each chart
    (a step lasts from its event to the next one of the span)."""
    if not results.steps:
        print("\nno steps: the server's tracing is off")
        return
    print("\n== Our steps, from the server's traces: median (ms), slowest first ==")
    for chart in ("RunPodSandbox", "StopPodSandbox", "RemovePodSandbox"):
        rows = [
            (statistics.median(v), node) for (c, node), v in results.steps.items() if c == chart
        ]
        print(f"{chart}: {sum(m for m, _ in rows) * 1000:.1f} ms in its steps")
        for median, node in sorted(rows, reverse=True):
            if median >= 0.0001:
                print(f"  {node:<40} {median * 1000:8.2f}")


def leftovers(tmp: Path, bridge: str, runc: str, server: Server, bare: Bare) -> list[str]:
    """What is still there after the runs, though every pod was removed."""
    found = host_leftovers(tmp, bridge, runc, (bare.root, server.state / "runc"))
    pods = [i for i in sorted(server.ever) if cgroup_dirs(cgroups.pod_parent(i))]
    if pods:
        where = sorted(
            {d.parent.parent.name for i in pods for d in cgroup_dirs(cgroups.pod_parent(i))}
        )
        found.append(
            f"the pod-level cgroup of {len(pods)} of our {len(server.ever)} removed sandboxes"
            f" (in {', '.join(where)}; e.g. {cgroups.pod_parent(pods[0])}): removed now"
        )
    return found


def plugins_version() -> str:
    proc = run_quiet("dpkg-query", "-W", "-f=${Version}", "containernetworking-plugins")
    return f"CNI plugins {proc.stdout.strip()}" if proc.returncode == 0 else "CNI plugins"


def run(args: argparse.Namespace, runc: str, tmp: Path, interrupt: Interrupt) -> None:
    start = time.perf_counter()
    conf_dir, network = write_conflist(tmp, args.subnet, args.bridge)
    template = asyncio.run(infra_template(tmp))
    bare = Bare(runc, tmp, template, network, f"bench-bare-{os.getpid()}")
    (tmp / "srv").mkdir()
    server: Server | None = None
    try:
        server = Server(tmp / "srv", conf_dir, args.trace)
        print(f"server and bare infra image ready in {time.perf_counter() - start:.1f} s; in {tmp}")
        try:
            results = measure(bare, server, args.runs, interrupt, args.trace == "on")
        except grpc.RpcError as e:
            raise server.failure(e) from None
        report(results, args.runs)
        if args.steps:
            report_steps(results)
        left = leftovers(tmp, args.bridge, runc, server, bare)
        print_leftovers(left, "mounts, veths, runc containers, cgroups")
        server.print_log_end()
    finally:
        ignore_signals()
        if server is not None:
            server.stop()
        bare.cleanup()
        if server is not None:
            server.reap(runc)
        unmount_under(tmp)
        if server is not None:
            for sandbox_id in server.ever:
                remove_cgroup(cgroups.pod_parent(sandbox_id))
        run_quiet("ip", "link", "del", args.bridge)


def unavailable(runc: str | None, runc_name: str) -> str:
    """Why the benchmark cannot run here, or ""."""
    if os.geteuid() != 0:
        return "pod_sandbox.py needs root (network namespaces, CNI, runc); run it with sudo"
    if runc is None:
        return f"{runc_name!r} not found (apt-get install runc)"
    for tool, package in (("unshare", "util-linux"), ("umount", "mount"), ("ip", "iproute2")):
        if shutil.which(tool) is None:
            return f"{tool} not found (apt-get install {package})"
    return missing_plugins()


def main() -> None:
    parser = new_parser(__doc__)
    add_runc_args(parser)
    add_server_args(parser, "tcri-bench0", "10.234.0.0/16")
    args = parser.parse_args()
    if args.smoke:
        args.runs = 1
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    runc = shutil.which(args.runc)
    exit_if(unavailable(runc, args.runc) or bridge_taken(args.bridge))
    assert runc is not None
    print(machine(runc, plugins_version()))
    interrupt = Interrupt()
    interrupt.handle_signals()
    removed = "pods, containers, namespaces and the bridge"
    with tempfile.TemporaryDirectory(prefix="tcri-bench-", dir=args.dir) as d, exits(removed):
        run(args, runc, Path(d), interrupt)


if __name__ == "__main__":
    main()
