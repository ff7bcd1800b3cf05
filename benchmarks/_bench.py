"""What the benchmarks that put ours beside runc by itself have in common.

``runtime_cycle.py``, ``pod_sandbox.py`` and ``containers.py`` each time our
code against runc (and the CNI plugins) doing the same work by itself, and each
needs the same pieces around that measurement; they live here once, so that the
three print their figures alike and clean up alike:

* the figures: a high percentile, a table row of median, percentile and minimum
  in ms, "ours − bare" against a target, a table by phase (:class:`Phases`);
* commands that have to work (:func:`must`, :class:`BenchError`) and a bare runc
  on a root of its own (:class:`BareRunc`: ``runc create`` with its stdio on
  /dev/null and a file, ``runc state`` polled until "stopped");
* what a run may leave on the host and how to remove it: mounts under the work
  dir, veths on the bridge, runc containers, live shims, cgroups in every
  mounted hierarchy;
* the split of our calls' time by phase from the server's trace;
* our server as a subprocess (:class:`BenchServer`, for the two that drive it
  over gRPC) with a CNI conf dir holding one conflist of the benchmark's own (a
  private bridge, deleted at the end);
* Ctrl-C and SIGTERM: stop after the step in progress, a second one at once,
  the cleanup either way (:class:`Interrupt`), and the exit status after it;
* the command-line options and the checks before a run.

The scripts are run as ``python benchmarks/<name>.py``, which puts this
directory first on ``sys.path``, so they ``from _bench import ...``. It is not
part of the package: nothing under ``src/`` imports it.
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
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, TypeVar

import grpc

from teaching_cri.client import Client, connect, wait_for_socket
from teaching_cri.image.manager import ImageManager
from teaching_cri.manager.cni import default_conflist
from teaching_cri.manager.network import DEFAULT_CNI_BIN_DIRS
from teaching_cri.manager.sandbox import BUILT_IN_INFRA
from teaching_cri.runtime import cgroups
from teaching_cri.runtime.spec import ImageRunConfig
from teaching_cri.trace.events import TraceEvent

POLL = 0.002  # s between two ``runc state`` while waiting for "stopped"
STOP_WAIT = 10.0  # s a SIGKILLed container may take to be reported stopped
PLUGINS = ("bridge", "host-local", "loopback")  # the CNI plugins the conflist needs
SIGNALS = (signal.SIGINT, signal.SIGTERM)

A = TypeVar("A")
B = TypeVar("B")


# --- Figures ---------------------------------------------------------------------


def percentile(samples: Sequence[float], p: int) -> float:
    """The ``p``-th percentile, ``p`` 90 or 95 (the last of 10 or 20 quantiles);
    a single sample is its own."""
    if len(samples) < 2:
        return samples[0]
    return statistics.quantiles(samples, n=100 // (100 - p), method="inclusive")[-1]


def p95(samples: Sequence[float]) -> float:
    return percentile(samples, 95)


def verdict(met: bool) -> str:
    return "met" if met else "NOT met"


@dataclass(frozen=True)
class Table:
    """Rows of figures in ms: a label ``width`` wide, then the median, the
    ``percentile``-th percentile and the minimum."""

    width: int
    percentile: int = 95

    def head(self, runs: int) -> str:
        high = f"p{self.percentile}"
        return f"{'':<{self.width}} {'median':>8} {high:>8} {'min':>8}   (ms, {runs} runs)"

    def row(self, label: str, samples: Sequence[float]) -> str:
        return (
            f"{label:<{self.width}} {statistics.median(samples) * 1000:8.1f} "
            f"{percentile(samples, self.percentile) * 1000:8.1f} {min(samples) * 1000:8.1f}"
        )


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


def alternate(i: int, bare: Callable[[], A], ours: Callable[[], B]) -> tuple[A, B]:
    """Run ``i`` of a pair: bare first on an even run, ours first on an odd one,
    so that drift in the machine's load hits both alike."""
    if i % 2 == 0:
        bare_result = bare()
        our_result = ours()
    else:
        our_result = ours()
        bare_result = bare()
    return bare_result, our_result


def versus(
    title: str,
    table: Table,
    runs: int,
    bare: tuple[str, Sequence[float]],
    ours: tuple[str, Sequence[float]],
) -> float:
    """Print a section's title, its table's head and the rows of bare and ours
    (each a label and its samples); ours' median minus bare's, in seconds."""
    print(f"\n== {title} ==")
    print(table.head(runs))
    print(table.row(*bare))
    print(table.row(*ours))
    return statistics.median(ours[1]) - statistics.median(bare[1])


def target_line(extra: float, budget: float, against: str = "bare") -> str:
    """Ours' extra seconds at the median against the budget, and the verdict."""
    return (
        f"ours − {against}, at the median: {extra * 1000:+.1f} ms "
        f"(target: ≤ +{budget * 1000:.0f} ms): {verdict(extra <= budget)}"
    )


def compare(
    title: str,
    table: Table,
    runs: int,
    labels: tuple[str, str],
    bare: Phases,
    ours: Phases,
    budget: float | None,
    no_target: str = "no target",
) -> None:
    """A section of bare's runs (``labels[0]``) against ours (``labels[1]``): the
    totals, the difference at the median against ``budget`` (or ``no_target``
    said, if None) and the median of each phase."""
    extra = versus(title, table, runs, (labels[0], bare.totals()), (labels[1], ours.totals()))
    if budget is None:
        print(f"ours − bare, at the median: {extra * 1000:+.1f} ms ({no_target})")
    else:
        print(target_line(extra, budget))
    print("by phase, median (ms):")
    print(f"  {'':<14} {'bare':>8} {'ours':>8} {'ours − bare':>12}")
    for i, name in enumerate(bare.names):
        mb, mo = bare.median(i) * 1000, ours.median(i) * 1000
        print(f"  {name:<14} {mb:8.1f} {mo:8.1f} {mo - mb:+12.1f}")


# --- Commands --------------------------------------------------------------------


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


# --- What a run may leave on the host ----------------------------------------------------


def cgroup_dirs(cgroups_path: str) -> list[Path]:
    """Every directory of a cgroup in every cgroup hierarchy mounted here. On v1
    that is more than ``cgroups.directories`` knows: runc also makes the path in
    the named ``systemd`` hierarchy and, on a hybrid host, in the unified one."""
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


def unmount_under(top: Path) -> None:
    """umount every mount point below ``top``, deepest first (lazily if it is busy)."""
    for point in mounts_under(top):
        if run_quiet("umount", point).returncode != 0:
            run_quiet("umount", "-l", point)


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
    """The pids of our shims still running: those ``shim.pid`` names that are
    still a teaching_cri process. A shim is forked by the zygote, so its command
    line is the zygote's and names no state dir (the runtime's own ``shim_alive``
    asks the same question the same way)."""
    found = []
    for pid_file in state.glob("containers/*/shim.pid"):
        with contextlib.suppress(OSError, ValueError):
            pid = int(pid_file.read_text().strip())
            if b"teaching_cri" in Path(f"/proc/{pid}/cmdline").read_bytes():
                found.append(pid)
    return found


def kill_shims(state: Path) -> None:
    """Last resort after an error: SIGKILL the shims that are still ours."""
    for pid in live_shims(state):
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)


def host_leftovers(tmp: Path, bridge: str, runc: str, roots: Sequence[Path]) -> list[str]:
    """Mounts under ``tmp``, veths on ``bridge`` and runc containers under ``roots``."""
    found = [f"mount {m}" for m in mounts_under(tmp)]
    found += [f"veth {v} on {bridge}" for v in veths_on(bridge)]
    for root in roots:
        if root.is_dir():
            ids = run_quiet(runc, "--root", str(root), "list", "-q").stdout.split()
            found += [f"runc container {c} under {root}" for c in ids]
    return found


def print_leftovers(left: Sequence[str], checked: str) -> None:
    """What was left behind (the first ten), or that nothing was of ``checked``."""
    if left:
        print(f"\nleft behind after the runs ({len(left)}): " + "; ".join(left[:10]))
    else:
        print(f"\nleft behind after the runs: nothing ({checked})")


# --- Bare: runc by itself --------------------------------------------------------


def runc_version(runc: str) -> str:
    proc = run_quiet(runc, "--version")
    return (proc.stdout.splitlines() or ["runc (unknown version)"])[0]


class BareRunc:
    """runc by itself on a root of its own, as a shell script would drive it."""

    def __init__(self, runc: str, root: Path, errors: Path) -> None:
        self.runc = runc
        self.root = root
        self.errors = errors  # runc create's stderr (and the container's)

    def _runc(self, *args: str) -> str:
        """``runc --root <root> <args>``, which has to work; its stdout."""
        return must(self.runc, "--root", str(self.root), *args)

    def create(self, bundle: Path, container_id: str) -> None:
        # Not captured: the container inherits runc's stdio, and a pipe would stay
        # open as long as it runs.
        argv = [self.runc, "--root", str(self.root), "create", "--bundle", str(bundle)]
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

    def status(self, container_id: str) -> str:
        return str(json.loads(self._runc("state", container_id))["status"])

    def wait_stopped(self, container_id: str) -> None:
        """Poll ``runc state`` every ``POLL`` s until it says "stopped"."""
        deadline = time.monotonic() + STOP_WAIT
        while self.status(container_id) != "stopped":
            if time.monotonic() > deadline:
                raise BenchError(f"{container_id} not stopped {STOP_WAIT:.0f} s after SIGKILL")
            time.sleep(POLL)


async def bare_image(layout: Path, images: Path) -> tuple[Path, ImageRunConfig]:
    """The image of the OCI layout ``layout``, imported into a store at ``images``
    and copied once into a rootfs that every bare container shares: the rootfs
    and the image's run config."""
    manager = ImageManager(images, snapshot_mode="copy")
    record = await manager.import_layout(layout, None)
    rootfs = manager.snapshots.mount_view([layer.chain_id for layer in record.layers], "bare")
    return rootfs, ImageRunConfig.from_config(record.config)


# --- Ours: the server's trace ----------------------------------------------------------


def spans(events: Sequence[TraceEvent]) -> list[list[TraceEvent]]:
    """The events grouped by span, each in its order."""
    by_span: dict[str, list[TraceEvent]] = {}
    for event in events:
        by_span.setdefault(event.span_id, []).append(event)
    return [sorted(s, key=lambda e: e.sequence) for s in by_span.values()]


def node_times(events: Sequence[TraceEvent]) -> dict[str, float]:
    """Seconds per node over the spans of ``events``: from one event to the next
    of its span, as ``trace show`` times a step."""
    times: dict[str, float] = {}
    for span in spans(events):
        for a, b in itertools.pairwise(span):
            times[a.node] = times.get(a.node, 0.0) + (b.monotonic_ns - a.monotonic_ns) / 1e9
    return times


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


# --- Ours: a server over gRPC, on a network of the benchmark's own ------------------------


def has_plugins(directory: Path) -> bool:
    return all((directory / p).is_file() for p in PLUGINS)


def plugin_dir() -> Path:
    """Where the server will find the plugins: the first of its dirs that has them all."""
    for d in DEFAULT_CNI_BIN_DIRS:
        if has_plugins(d):
            return d
    raise BenchError("no CNI plugins")  # checked in main before


def missing_plugins() -> str:
    """Why the CNI plugins the conflist needs cannot be found, or ""."""
    if any(has_plugins(d) for d in DEFAULT_CNI_BIN_DIRS):
        return ""
    dirs = " or ".join(str(d) for d in DEFAULT_CNI_BIN_DIRS)
    return (
        f"the CNI plugins {', '.join(PLUGINS)} are not all in {dirs} "
        "(apt-get install containernetworking-plugins)"
    )


def bridge_taken(bridge: str) -> str:
    """Why ``bridge`` cannot be this run's (a link of that name exists), or ""."""
    if run_quiet("ip", "link", "show", bridge).returncode != 0:
        return ""
    return (
        f"a link {bridge} exists already (another run? `ip link del {bridge}`, "
        "or pick another with --bridge)"
    )


def write_conflist(tmp: Path, subnet: str, bridge: str) -> tuple[Path, dict[str, Any]]:
    """The server's CNI conf dir, ``tmp/net.d``, holding one conflist of the
    benchmark's own (``default_conflist``: the private ``bridge``, host-local
    addresses from ``subnet``, no masquerade): the dir and the conflist."""
    conf_dir = tmp / "net.d"
    conf_dir.mkdir()
    network = default_conflist(subnet, bridge, str(tmp / "ipam"))
    (conf_dir / "10-bench.conflist").write_text(json.dumps(network))
    return conf_dir, network


class BenchServer:
    """``python -m teaching_cri serve`` on a socket of its own, as a user runs it,
    with the built-in infra as its pause image unless given another. A subclass adds the calls its
    benchmark makes and, in ``clear``, removes what they left."""

    def __init__(
        self,
        base: Path,
        conf_dir: Path,
        trace: str,
        extra: Sequence[str] = (),
        pause_image: str = BUILT_IN_INFRA,
    ) -> None:
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
            pause_image,
            "--trace",
            trace,
            "--log-level",
            "warning",
            # A free port unless asked otherwise: the default 10350 may be
            # another server's, and two benchmarks may run side by side.
            *(() if "--stream-address" in extra else ("--stream-address", "127.0.0.1:0")),
            *extra,
        ]
        with self.log.open("wb") as out:
            # Its own session: a Ctrl-C on the terminal is ours to handle, not its.
            self.process = subprocess.Popen(
                argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        self.client: Client | None = None
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

    def print_log_end(self) -> None:
        """The last warnings and errors the server logged, if any."""
        logged = self.tail(5)
        if logged:
            print(f"\nthe server's log (warnings and errors) ends with:\n{logged}")

    def failure(self, error: grpc.RpcError) -> BenchError:
        """A call that failed, with the end of the server's log."""
        what = f"{error.code().name}: {error.details()}"
        return BenchError(f"{what}\nthe server's log ends with:\n{self.tail()}")

    @property
    def runtime(self) -> Any:
        assert self.client is not None
        return self.client.runtime

    def recent(self, charts: Sequence[str], since: int) -> list[TraceEvent]:
        """The events of ``charts``' spans since ``since`` (unix ns)."""
        assert self.client is not None
        return self.client.recent(charts=list(charts), since_unix_nano=since)

    def clear(self) -> None:
        """Remove what the benchmark made and is still there (the server is up)."""

    def stop(self) -> None:
        """``clear``, then SIGTERM (SIGKILL after 20 s)."""
        if self.client is not None and self.process.poll() is None:
            self.clear()
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

    def reap(self, runc: str) -> None:
        """After ``stop``: force-delete the server's runc containers, SIGKILL its shims."""
        runc_leftovers(runc, self.state / "runc")
        kill_shims(self.state)


# --- Ctrl-C and SIGTERM ----------------------------------------------------------------


class Interrupted(Exception):
    pass


class Interrupt:
    """Ctrl-C or SIGTERM: stop at the next ``check``, after the step in progress,
    so that nothing is left half made; a second one stops at once (it cancels
    ``task``, if given, else raises KeyboardInterrupt), and the cleanup still runs."""

    def __init__(self, task: asyncio.Task[None] | None = None) -> None:
        self.task = task
        self.count = 0

    def __call__(self, signum: int | None = None, frame: FrameType | None = None) -> None:
        self.count += 1
        if self.count > 1:
            if self.task is None:
                raise KeyboardInterrupt
            self.task.cancel()

    def check(self) -> None:
        if self.count:
            raise Interrupted

    def handle_signals(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        """Be SIGINT's and SIGTERM's handler: in ``loop``, or else the process's."""
        for signum in SIGNALS:
            if loop is None:
                signal.signal(signum, self)
            else:
                loop.add_signal_handler(signum, self)


def ignore_signals() -> None:
    """Ignore SIGINT and SIGTERM from now on: the cleanup is not to be cut short."""
    for signum in SIGNALS:
        signal.signal(signum, signal.SIG_IGN)


# --- The command line ------------------------------------------------------------------


def new_parser(doc: str) -> argparse.ArgumentParser:
    """The script's options: its docstring's first line, ``--runs`` and ``--smoke``."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20, help="measured runs of each (default 20)")
    add_smoke_arg(parser)
    return parser


def add_smoke_arg(parser: argparse.ArgumentParser) -> None:
    """``--smoke``: what CI runs (tests/test_benchmarks.py) so that no benchmark
    rots unnoticed. Every part of the script runs once, briefly, and cleans up
    as a full run does; its figures say nothing, so nothing is asserted of them."""
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="one short iteration of everything, for CI (the figures mean nothing)",
    )


def add_runc_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--runc", default="runc", help="the runc binary (default: runc on PATH)")
    parser.add_argument(
        "--dir", type=Path, default=None, help="where to work (default: the system's temp dir)"
    )


def add_server_args(parser: argparse.ArgumentParser, bridge: str, subnet: str) -> None:
    """The server's network (``bridge``, ``subnet`` the defaults), tracing and ``--steps``."""
    parser.add_argument(
        "--bridge", default=bridge, help=f"the CNI bridge to make (default {bridge})"
    )
    parser.add_argument("--subnet", default=subnet, help=f"its addresses (default {subnet})")
    parser.add_argument(
        "--trace", choices=("on", "off"), default="on", help="the server's tracing (default on)"
    )
    parser.add_argument(
        "--steps", action="store_true", help="also print the median of each of our trace's steps"
    )


def machine(runc: str, *also: str) -> str:
    """The versions and the machine the figures are of (``also`` after runc's)."""
    return ", ".join(
        [
            f"Python {platform.python_version()}",
            runc_version(runc),
            *also,
            f"{os.cpu_count()} CPUs",
            f"cgroup v{cgroups.version()}",
            f"Linux {platform.release()}",
        ]
    )


def exit_if(why: str) -> None:
    """If the benchmark cannot run here, say ``why`` and exit with status 2."""
    if why:
        print(why, file=sys.stderr)
        sys.exit(2)


@contextlib.contextmanager
def exits(removed: str) -> Iterator[None]:
    """How a run ends, as the process's exit status: 130 after Ctrl-C or SIGTERM,
    saying that ``removed`` was removed; 1 after a BenchError, saying what failed."""
    try:
        yield
    except (Interrupted, KeyboardInterrupt):
        print(f"interrupted; {removed} removed", file=sys.stderr)
        sys.exit(130)
    except BenchError as e:
        print(f"failed: {e}", file=sys.stderr)
        sys.exit(1)


# --- A process's memory ------------------------------------------------------------------


def rss_bytes(pid: int) -> int | None:
    """The resident set of process ``pid`` (``VmRSS`` in ``/proc/<pid>/status``),
    in bytes; None if it is gone (or is a zombie, which has none)."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def pod_bench_unavailable(script: str, runc: str | None, runc_name: str) -> str:
    """Why a benchmark of containers in a pod cannot run here, or ""."""
    if os.geteuid() != 0:
        return f"{script} needs root (runc, cgroups, network namespaces, CNI); use sudo"
    if runc is None:
        return f"{runc_name!r} not found (apt-get install runc)"
    if not Path("/bin/busybox").is_file():
        return "/bin/busybox not found (apt-get install busybox-static)"
    for tool, package in (("umount", "mount"), ("ip", "iproute2")):
        if shutil.which(tool) is None:
            return f"{tool} not found (apt-get install {package})"
    return missing_plugins()


def tear_down_pod_host(tmp: Path, pod: str, bridge: str) -> None:
    """What a pod benchmark leaves on the host once its server is gone: mounts
    under ``tmp``, the pod's cgroup, the bridge."""
    unmount_under(tmp)
    if pod:
        remove_cgroup(cgroups.pod_parent(pod))
    run_quiet("ip", "link", "del", bridge)
    if run_quiet("ip", "link", "show", bridge).returncode == 0:
        print(f"warning: the bridge {bridge} could not be deleted", file=sys.stderr)
