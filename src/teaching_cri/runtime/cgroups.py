"""Control groups with the cgroupfs driver: where a container's live, what they say.

runc puts each container in the cgroup its spec names (``linux.cgroupsPath``);
with the cgroupfs driver (what ``RuntimeConfig`` reports) that is a plain
path under the cgroup mounts, and we choose it: ``/teaching-cri/<pod>/<id>``.
The pod's level is ours to create and remove (the kubelet's pod-level limits
go there), the container's is runc's.

Two layouts exist. cgroup v1 mounts one hierarchy per controller
(``/sys/fs/cgroup/memory/...``, ``/sys/fs/cgroup/cpuacct/...``); v2 one
unified tree whose directories hold every controller's files. The figures the
kubelet wants (CRI ``ContainerStats``: CPU time, memory working set, pids) sit
in differently named files in each; :func:`read_stats` reads either.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

ROOT = Path("/sys/fs/cgroup")
TOP = "teaching-cri"
V1_CONTROLLERS = ("cpu", "cpuacct", "cpuset", "memory", "pids", "blkio", "devices", "freezer")


@dataclass(frozen=True)
class Hierarchy:
    """Where the cgroup file systems are: one unified tree (v2) at ``root``, or
    one tree per controller (v1, ``v1_mounts``: controller → mount point)."""

    version: int
    root: Path = ROOT
    v1_mounts: Mapping[str, Path] = field(default_factory=dict)

    @staticmethod
    @lru_cache(maxsize=1)
    def detect() -> Hierarchy:
        if (ROOT / "cgroup.controllers").exists():
            return Hierarchy(2)
        return Hierarchy(1, ROOT, _mounted_v1_controllers())

    def directories(self, cgroups_path: str) -> list[Path]:
        """Every directory that is this cgroup: one on v2, one per controller on v1."""
        relative = cgroups_path.lstrip("/")
        if self.version == 2:
            return [self.root / relative]
        return [mount / relative for mount in dict.fromkeys(self.v1_mounts.values())]

    def controller_dir(self, cgroups_path: str, controller: str) -> Path:
        relative = cgroups_path.lstrip("/")
        if self.version == 2:
            return self.root / relative
        return self.v1_mounts.get(controller, self.root / controller) / relative


def _mounted_v1_controllers() -> dict[str, Path]:
    """hierarchy → mount point, from /proc/self/mountinfo: each v1 controller,
    the named ones (``name=systemd``) and, on a hybrid host, the v2 tree
    (``unified``). runc makes a container's path in every one of them, so
    removing a cgroup means removing it from each."""
    mounts: dict[str, Path] = {}
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            left, _, right = line.partition(" - ")
            fields, tail = left.split(), right.split()
            if len(fields) < 5 or len(tail) < 3:
                continue
            if tail[0] == "cgroup2":
                mounts.setdefault("unified", Path(fields[4]))
                continue
            if tail[0] != "cgroup":
                continue
            for option in tail[2].split(","):
                if option in V1_CONTROLLERS or option.startswith("name="):
                    mounts.setdefault(option, Path(fields[4]))
    return mounts


def version() -> int:
    """2 on a unified (v2-only) host, 1 when the controllers have v1 hierarchies."""
    return Hierarchy.detect().version


def pod_parent(pod_id: str) -> str:
    """The pod's cgroup; containers without a pod (the runtime's own tests,
    the demo) share one called ``standalone``."""
    return f"/{TOP}/{pod_id or 'standalone'}"


def container_path(pod_id: str, container_id: str) -> str:
    return f"{pod_parent(pod_id)}/{container_id}"


def directories(cgroups_path: str) -> list[Path]:
    return Hierarchy.detect().directories(cgroups_path)


def ensure_pod(pod_id: str) -> None:
    """Create the pod's level (runc creates the container's below it)."""
    for d in directories(pod_parent(pod_id)):
        d.mkdir(parents=True, exist_ok=True)


def remove(cgroups_path: str) -> None:
    """Remove a cgroup and anything left below it, deepest first. A cgroup
    directory is removed with rmdir (its files are not real files)."""
    for top in directories(cgroups_path):
        if not top.is_dir():
            continue
        for dirpath, _dirnames, _files in sorted(
            os.walk(top), key=lambda entry: entry[0].count("/"), reverse=True
        ):
            with contextlib.suppress(OSError):
                os.rmdir(dirpath)


def exists(cgroups_path: str) -> bool:
    return os.path.isdir(_stat_dirs(cgroups_path)[0])  # its memory directory


def memory_events(cgroups_path: str) -> str:
    """The file whose ``oom_kill`` line counts the OOM killer's victims."""
    h = Hierarchy.detect()
    name = "memory.events" if h.version == 2 else "memory.oom_control"
    return str(h.controller_dir(cgroups_path, "memory") / name)


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    if text == "max":
        return None
    try:
        return int(text)
    except ValueError:
        return None


# The stats readers below are on the kubelet's hot path: ListContainerStats reads
# every running container's cgroup every few seconds, so they read the files as
# bytes with one system call each (no text layer, no Path per file) and pick
# the lines they need out of the keyed files. The figures are the same.


def _raw(path: str) -> bytes | None:
    """The whole file, or None if it cannot be read (the cgroup is gone)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        return os.read(fd, 1 << 16)
    except OSError:
        return None
    finally:
        os.close(fd)


def _int(path: str) -> int | None:
    """A file holding one number; "max" (v2's no limit) and anything else: None."""
    data = _raw(path)
    if data is None:
        return None
    try:
        return int(data)
    except ValueError:
        return None


def _keyed(path: str, key: bytes) -> int:
    """The value of ``key`` in a ``key value`` per line file (memory.stat,
    cpu.stat, memory.events, memory.oom_control); 0 when it is not there."""
    data = _raw(path)
    if not data:
        return 0
    start = 0
    needle = key + b" "
    while True:
        at = data.find(needle, start)
        if at < 0:
            return 0
        if at == 0 or data[at - 1] == 0x0A:  # at a line's start, not inside another key
            end = data.find(b"\n", at)
            try:
                return int(data[at + len(needle) : end if end >= 0 else len(data)])
            except ValueError:
                return 0
        start = at + 1


def _dirs_of(h: Hierarchy, cgroups_path: str) -> tuple[str, str, str]:
    """The memory, cpuacct and pids directories of a cgroup (one on v2)."""
    return (
        str(h.controller_dir(cgroups_path, "memory")),
        str(h.controller_dir(cgroups_path, "cpuacct")),
        str(h.controller_dir(cgroups_path, "pids")),
    )


@lru_cache(maxsize=4096)
def _stat_dirs(cgroups_path: str) -> tuple[str, str, str]:
    """:func:`_dirs_of` on this host's hierarchy, kept: a path names the same
    directories for as long as the server runs."""
    return _dirs_of(Hierarchy.detect(), cgroups_path)


@dataclass(frozen=True)
class CgroupStats:
    """What CRI's ContainerStats carries, read at ``timestamp`` (ns)."""

    timestamp: int
    cpu_usage_ns: int
    memory_usage: int
    memory_working_set: int
    memory_limit: int | None
    pids: int
    oom_kills: int


def read_stats(cgroups_path: str, hierarchy: Hierarchy | None = None) -> CgroupStats:
    """CPU, memory and pids of a cgroup, v1 or v2.

    The working set is what the kubelet evicts on: usage minus the inactive
    file cache, which the kernel can drop at will (cAdvisor's definition)."""
    h = hierarchy or Hierarchy.detect()
    now = time.time_ns()
    memory, cpuacct, pids_dir = (
        _stat_dirs(cgroups_path) if hierarchy is None else _dirs_of(h, cgroups_path)
    )
    pids = _int(f"{pids_dir}/pids.current") or 0
    if h.version == 2:
        cpu = _keyed(f"{memory}/cpu.stat", b"usage_usec") * 1000
        usage = _int(f"{memory}/memory.current") or 0
        inactive = _keyed(f"{memory}/memory.stat", b"inactive_file")
        limit = _int(f"{memory}/memory.max")
        ooms = _keyed(f"{memory}/memory.events", b"oom_kill")
    else:
        cpu = _int(f"{cpuacct}/cpuacct.usage") or 0
        usage = _int(f"{memory}/memory.usage_in_bytes") or 0
        inactive = _keyed(f"{memory}/memory.stat", b"total_inactive_file")
        limit = _int(f"{memory}/memory.limit_in_bytes")
        if limit is not None and limit >= 1 << 62:  # v1's "no limit" is a huge page-aligned number
            limit = None
        ooms = _keyed(f"{memory}/memory.oom_control", b"oom_kill")
    return CgroupStats(now, cpu, usage, max(0, usage - inactive), limit, pids, ooms)


def write_limits(
    cgroups_path: str,
    *,
    memory: int = 0,
    cpu_quota: int = 0,
    cpu_period: int = 0,
    cpu_shares: int = 0,
    hierarchy: Hierarchy | None = None,
) -> dict[str, str]:
    """Write limits into a cgroup we own (a pod's level; runc writes its
    containers'); 0 leaves a value alone. Returns file → value written."""
    h = hierarchy or Hierarchy.detect()
    writes: dict[Path, str] = {}
    if h.version == 2:
        d = h.controller_dir(cgroups_path, "memory")
        if memory:
            writes[d / "memory.max"] = str(memory)
        if cpu_quota or cpu_period:
            writes[d / "cpu.max"] = f"{cpu_quota or 'max'} {cpu_period or 100000}"
        if cpu_shares:  # the kernel's conversion, as runc's ConvertCPUSharesToCgroupV2Value
            writes[d / "cpu.weight"] = str(1 + ((cpu_shares - 2) * 9999) // 262142)
    else:
        mem, cpu = h.controller_dir(cgroups_path, "memory"), h.controller_dir(cgroups_path, "cpu")
        if memory:
            writes[mem / "memory.limit_in_bytes"] = str(memory)
        if cpu_period:
            writes[cpu / "cpu.cfs_period_us"] = str(cpu_period)
        if cpu_quota:
            writes[cpu / "cpu.cfs_quota_us"] = str(cpu_quota)
        if cpu_shares:
            writes[cpu / "cpu.shares"] = str(cpu_shares)
    for path, value in writes.items():
        path.write_text(value)
    return {str(p): v for p, v in writes.items()}


def read_resources(cgroups_path: str, hierarchy: Hierarchy | None = None) -> dict[str, Any]:
    """The limits a cgroup has now, as runtime-spec LinuxResources (-1: none):
    what an update that fails half-way is rolled back to."""
    h = hierarchy or Hierarchy.detect()
    memory: dict[str, int] = {}
    cpu: dict[str, Any] = {}
    unlimited = 1 << 62

    def limit(path: Path) -> int | None:
        try:
            text = path.read_text().strip()
        except OSError:
            return None
        if text == "max":
            return -1
        value = int(text)
        return -1 if value >= unlimited else value

    if h.version == 2:
        d = h.controller_dir(cgroups_path, "memory")
        for key, name in (("limit", "memory.max"), ("swap", "memory.swap.max")):
            value = limit(d / name)
            if value is not None:
                memory[key] = value
        with contextlib.suppress(OSError, ValueError):
            quota, period = (d / "cpu.max").read_text().split()
            cpu["quota"] = -1 if quota == "max" else int(quota)
            cpu["period"] = int(period)
        cpuset = d
    else:
        mem, cpu_dir = (
            h.controller_dir(cgroups_path, "memory"),
            h.controller_dir(cgroups_path, "cpu"),
        )
        for key, name in (
            ("limit", "memory.limit_in_bytes"),
            ("swap", "memory.memsw.limit_in_bytes"),
        ):
            value = limit(mem / name)
            if value is not None:
                memory[key] = value
        for key, name in (
            ("quota", "cpu.cfs_quota_us"),
            ("period", "cpu.cfs_period_us"),
            ("shares", "cpu.shares"),
        ):
            value = _read_int(cpu_dir / name)
            if value is not None:
                cpu[key] = value
        cpuset = h.controller_dir(cgroups_path, "cpuset")
    for key, name in (("cpus", "cpuset.cpus"), ("mems", "cpuset.mems")):
        with contextlib.suppress(OSError):
            text = (cpuset / name).read_text().strip()
            if text:
                cpu[key] = text
    out: dict[str, Any] = {}
    if memory:
        out["memory"] = memory
    if cpu:
        out["cpu"] = cpu
    return out
