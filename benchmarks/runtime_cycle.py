"""What do our backend and shim add to runc? Prints figures; asserts nothing.

Three comparisons, each against Debian's runc doing the same work by itself, on
a busybox container (``sleep 1000``) from the host's static busybox:

1. **Cycle**: create, start, kill, delete. Bare, ``runc create`` (stdio on
   /dev/null and a file), ``runc start``, ``runc kill <id> KILL``, ``runc
   state`` polled every 2 ms until it says "stopped", ``runc delete``, each a
   synchronous subprocess. Ours, :class:`RuncBackend`'s ``create`` (which writes
   the bundle and spawns a shim, which runs ``runc create`` and stays),
   ``start``, ``stop(id, 0)`` (SIGKILL, then the wait until the shim has
   recorded the exit) and ``delete``. The price of the shim is in create (an
   interpreter to start and the shim's imports, before its ``runc create``) and
   in stop (the exit to be reaped, written and reported; bare runc pays instead
   for a ``runc state`` process per poll); the rest is runc plus our
   bookkeeping. Both give runc a ``cgroupsPath`` of the same form
   (``/teaching-cri/<pod>/<id>``), so runc does the same cgroup work in both.
   The target: our median within the bare median + 40 ms; a table by phase
   says where the difference is.
2. **Exec**: ``true`` in a running container; ``runc exec <id> true`` against
   ``RuncBackend.exec_sync`` (a connection to the shim, which runs ``runc exec
   -d``, reaps the process and reports its exit code). The target: our median
   within runc's + 10 ms.
3. **Shim memory**: the shim's resident set (``VmRSS`` in ``/proc/<pid>/status``)
   while its container runs, once per cycle of ours, and that of the exec
   container's shim after all its execs (a leak would show there). ``Pss``
   (from ``smaps_rollup``) is beside it: the shims share the interpreter's
   pages, so Pss is nearer to what one more shim costs. The target: VmRSS at
   most 15 MB.

Every measurement follows one unmeasured warm-up; bare and ours alternate, cycle
by cycle, so that drift in the machine's load hits both alike. Figures are the
median, 90th percentile and minimum of ``--runs`` runs. MB is 10^6 bytes.
It needs root (runc, cgroups) and exits with status 2 without it.

    sudo python benchmarks/runtime_cycle.py [--runs 20] [--runc runc] [--dir /tmp]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from teaching_cri.api import api_pb2
from teaching_cri.image.hostimages import BusyboxUnavailable, build_busybox_image
from teaching_cri.image.manager import ImageManager
from teaching_cri.runtime import cgroups
from teaching_cri.runtime.backend import CreateRequest
from teaching_cri.runtime.runc import RuncBackend
from teaching_cri.runtime.spec import ImageRunConfig, generate_spec

from _bench import (
    BareRunc,
    Interrupt,
    Interrupted,
    Phases,
    Table,
    add_runc_args,
    kill_shims,
    machine,
    new_parser,
    runc_leftovers,
    target_line,
    verdict,
    versus,
)

MB = 1_000_000
CYCLE_BUDGET = 0.040  # s over the bare runc cycle, at the median
EXEC_BUDGET = 0.010  # s over runc exec, at the median
SHIM_RSS_BUDGET = 15 * MB
COMMAND = ["sleep", "1000"]
TABLE = Table(26, percentile=90)


# --- Bare runc -------------------------------------------------------------------


class Bare(BareRunc):
    """runc by itself, as a shell script would drive it."""

    def start(self, container_id: str) -> None:
        self._runc("start", container_id)

    def kill(self, container_id: str) -> None:
        self._runc("kill", container_id, "KILL")

    def delete(self, container_id: str, force: bool = False) -> None:
        self._runc("delete", *(["--force"] if force else []), container_id)

    def exec_true(self, container_id: str) -> None:
        self._runc("exec", container_id, "true")

    def cycle(self, bundle: Path, container_id: str) -> list[float]:
        """create, start, kill + wait for "stopped", delete: seconds for each."""
        times = [time.perf_counter()]
        self.create(bundle, container_id)
        times.append(time.perf_counter())
        self.start(container_id)
        times.append(time.perf_counter())
        self.kill(container_id)
        self.wait_stopped(container_id)
        times.append(time.perf_counter())
        self.delete(container_id)
        times.append(time.perf_counter())
        return [b - a for a, b in itertools.pairwise(times)]


# --- Ours --------------------------------------------------------------------------


def shim_pid(backend: RuncBackend, container_id: str) -> int:
    return int((backend.dir(container_id) / "shim.pid").read_text().strip())


def proc_kib(path: str, key: str) -> int | None:
    """A ``Key:  1234 kB`` line of a /proc file, in KiB."""
    try:
        with open(path, encoding="ascii") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


@dataclass(frozen=True)
class Memory:
    rss: int  # bytes
    pss: int | None


def memory(pid: int) -> Memory | None:
    rss = proc_kib(f"/proc/{pid}/status", "VmRSS")
    if rss is None:
        return None
    pss = proc_kib(f"/proc/{pid}/smaps_rollup", "Pss")
    return Memory(rss * 1024, None if pss is None else pss * 1024)


async def our_cycle(
    backend: RuncBackend, request: CreateRequest, shims: list[Memory]
) -> list[float]:
    """create, start, stop(0), delete: seconds for each. The shim's memory is read
    between start and stop, outside the clock."""
    t0 = time.perf_counter()
    await backend.create(request)
    t1 = time.perf_counter()
    await backend.start(request.id)
    t2 = time.perf_counter()
    m = memory(shim_pid(backend, request.id))
    if m is not None:
        shims.append(m)
    t3 = time.perf_counter()
    status = await backend.stop(request.id, 0)
    t4 = time.perf_counter()
    await backend.delete(request.id)
    t5 = time.perf_counter()
    if status.signal != signal.SIGKILL:
        print(f"warning: {request.id} exited with {status}, not by SIGKILL")
    return [t1 - t0, t2 - t1, t4 - t3, t5 - t4]


async def our_leftovers(backend: RuncBackend) -> None:
    """Stop and delete whatever backend container is left (after an error)."""
    for container_id in backend.list_ids():
        with contextlib.suppress(Exception):
            await backend.stop(container_id, 0)
        with contextlib.suppress(Exception):
            await backend.delete(container_id)
    await backend.close()


# --- The benchmark -------------------------------------------------------------------


@dataclass
class Setup:
    """The image, the snapshots and the specs; one bundle per rootfs."""

    tmp: Path
    manager: ImageManager
    chain: list[str]
    image: ImageRunConfig
    pod: str  # the cgroup level of ours; bare gets ``<pod>-bare``

    def spec(self, key: str, cgroups_path: str = "") -> dict[str, Any]:
        rootfs = self.manager.snapshots.mount_view(self.chain, key)
        spec, _notes = generate_spec(api_pb2.ContainerConfig(command=COMMAND), self.image, rootfs)
        if cgroups_path:
            spec["linux"] = {**spec.get("linux", {}), "cgroupsPath": cgroups_path}
        return spec

    def bundle(self, key: str, container_id: str) -> Path:
        """A bare bundle: ``config.json`` beside nothing; the rootfs is in the spec."""
        path = self.tmp / "bundles" / key
        path.mkdir(parents=True)
        spec = self.spec(key, cgroups.container_path(f"{self.pod}-bare", container_id))
        (path / "config.json").write_text(json.dumps(spec))
        return path

    def set_bare_id(self, bundle: Path, container_id: str) -> None:
        """The bundle's cgroupsPath names the container: rewrite it per cycle."""
        spec = json.loads((bundle / "config.json").read_text())
        spec["linux"]["cgroupsPath"] = cgroups.container_path(f"{self.pod}-bare", container_id)
        (bundle / "config.json").write_text(json.dumps(spec))


async def measure(
    setup: Setup, bare: Bare, backend: RuncBackend, runs: int, interrupt: Interrupt
) -> None:
    logs = setup.tmp / "logs"
    ours_spec = setup.spec("ours-cycle")
    bare_bundle = setup.bundle("bare-cycle", "bare-0")

    def ours_request(container_id: str, spec: dict[str, Any]) -> CreateRequest:
        return CreateRequest(
            container_id, spec, log_path=str(logs / f"{container_id}.log"), pod_id=setup.pod
        )

    # 1. the cycle
    bare_phases = Phases(("create", "start", "kill → stopped", "delete"))
    our_phases = Phases(("create", "start", "stop(0)", "delete"))
    shims: list[Memory] = []
    for i in range(runs + 1):  # the first is the warm-up
        interrupt.check()
        bare_id, ours_id = f"bare-{i}", f"ours-{i}"
        setup.set_bare_id(bare_bundle, bare_id)
        request = ours_request(ours_id, ours_spec)
        if i % 2 == 0:
            bare_times = bare.cycle(bare_bundle, bare_id)
            our_times = await our_cycle(backend, request, shims)
        else:
            our_times = await our_cycle(backend, request, shims)
            bare_times = bare.cycle(bare_bundle, bare_id)
        if i:
            bare_phases.add(bare_times)
            our_phases.add(our_times)
        else:
            shims.clear()

    # 2. exec, in one running container of each
    bare_exec = setup.bundle("bare-exec", "bare-exec")
    bare.create(bare_exec, "bare-exec")
    bare.start("bare-exec")
    await backend.create(ours_request("ours-exec", setup.spec("ours-exec")))
    await backend.start("ours-exec")
    bare_execs: list[float] = []
    our_execs: list[float] = []
    failed: list[str] = []

    def run_bare() -> None:
        start = time.perf_counter()
        bare.exec_true("bare-exec")
        bare_execs.append(time.perf_counter() - start)

    async def run_ours() -> None:
        start = time.perf_counter()
        result = await backend.exec_sync("ours-exec", ["true"], timeout=10)
        our_execs.append(time.perf_counter() - start)
        if result.exit_code != 0:
            failed.append(f"exit {result.exit_code}: {result.stderr.decode(errors='replace')}")

    for i in range(runs + 1):
        interrupt.check()
        if i % 2 == 0:
            run_bare()
            await run_ours()
        else:
            await run_ours()
            run_bare()
        if i == 0:
            bare_execs.clear()
            our_execs.clear()
    exec_shim = memory(shim_pid(backend, "ours-exec"))

    report(bare_phases, our_phases, bare_execs, our_execs, shims, exec_shim, runs)
    if failed:
        print(f"warning: {len(failed)} of our execs of true failed, e.g. {failed[0]}")


def report(
    bare: Phases,
    ours: Phases,
    bare_execs: list[float],
    our_execs: list[float],
    shims: list[Memory],
    exec_shim: Memory | None,
    runs: int,
) -> None:
    extra = versus(
        "Cycle: create + start + kill + delete",
        TABLE,
        runs,
        ("bare runc", bare.totals()),
        ("RuncBackend + shim", ours.totals()),
    )
    print(target_line(extra, CYCLE_BUDGET))
    print("\nby phase, median (ms):")
    print(f"  {'bare':<16} {'':>8}   {'ours':<16} {'':>8}   {'ours − bare':>11}")
    for i, (b, o) in enumerate(zip(bare.names, ours.names, strict=True)):
        mb, mo = bare.median(i) * 1000, ours.median(i) * 1000
        print(f"  {b:<16} {mb:8.1f}   {o:<16} {mo:8.1f}   {mo - mb:+11.1f}")

    extra = versus(
        "Exec: true in a running container",
        TABLE,
        runs,
        ("runc exec", bare_execs),
        ("RuncBackend.exec_sync", our_execs),
    )
    print(target_line(extra, EXEC_BUDGET, "runc exec"))

    print("\n== Shim memory, its container running ==")
    if not shims:
        print("no figure: the shims' /proc/<pid>/status could not be read")
        return
    rss = [m.rss for m in shims]
    pss = [m.pss for m in shims if m.pss is not None]
    print(
        f"VmRSS, one per cycle:  median {statistics.median(rss) / MB:5.1f} MB, "
        f"max {max(rss) / MB:5.1f} MB, min {min(rss) / MB:5.1f} MB ({len(rss)} shims)"
    )
    if pss:
        print(f"Pss, one per cycle:    median {statistics.median(pss) / MB:5.1f} MB")
    if exec_shim is not None:
        after = f"VmRSS {exec_shim.rss / MB:5.1f} MB"
        if exec_shim.pss is not None:
            after += f", Pss {exec_shim.pss / MB:5.1f} MB"
        print(f"the exec container's shim after {runs + 1} execs: {after}")
    median_rss = statistics.median(rss)
    print(
        f"VmRSS at the median {median_rss / MB:.1f} MB (target: ≤ {SHIM_RSS_BUDGET / MB:.0f} MB): "
        f"{verdict(median_rss <= SHIM_RSS_BUDGET)}"
    )


async def run(args: argparse.Namespace, runc: str, tmp: Path) -> None:
    layout = tmp / "layout"
    start = time.perf_counter()
    build_busybox_image(layout, ref_name=None)
    manager = ImageManager(tmp / "images", snapshot_mode="copy")
    record = await manager.import_layout(layout, None)
    pod = f"bench-{os.getpid()}"
    setup = Setup(
        tmp,
        manager,
        [x.chain_id for x in record.layers],
        ImageRunConfig.from_config(record.config),
        pod,
    )
    print(f"busybox image ready in {time.perf_counter() - start:.1f} s; working in {tmp}")
    bare = Bare(runc, tmp / "bare-runc", tmp / "bare-create.err")
    backend = RuncBackend(tmp / "state", runc)
    task = asyncio.current_task()
    assert task is not None
    interrupt = Interrupt(task)
    interrupt.handle_signals(asyncio.get_running_loop())
    try:
        await measure(setup, bare, backend, args.runs, interrupt)
    finally:
        await our_leftovers(backend)
        runc_leftovers(runc, bare.root)
        for level in (pod, f"{pod}-bare"):
            cgroups.remove(cgroups.pod_parent(level))


def main() -> None:
    parser = new_parser(__doc__)
    add_runc_args(parser)
    args = parser.parse_args()
    if args.smoke:
        args.runs = 1
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    if os.geteuid() != 0:
        print("runtime_cycle.py needs root (runc and cgroups); run it with sudo", file=sys.stderr)
        sys.exit(2)
    runc = shutil.which(args.runc)
    if runc is None:
        print(f"{args.runc!r} not found (apt-get install runc)", file=sys.stderr)
        sys.exit(2)
    print(machine(runc))
    with tempfile.TemporaryDirectory(prefix="tcri-bench-", dir=args.dir) as d:
        tmp = Path(d)
        try:
            asyncio.run(run(args, runc, tmp))
        except BusyboxUnavailable as e:
            print(f"no busybox image: {e}", file=sys.stderr)
            sys.exit(2)
        except (Interrupted, KeyboardInterrupt, asyncio.CancelledError):
            print("interrupted; containers removed", file=sys.stderr)
            sys.exit(130)
        finally:  # after an interruption the async cleanup may not have run
            runc_leftovers(runc, tmp / "bare-runc")
            runc_leftovers(runc, tmp / "state" / "runc")
            kill_shims(tmp / "state")


if __name__ == "__main__":
    main()
