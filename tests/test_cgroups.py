"""Reading container stats from both cgroup layouts.

The development and CI machines run cgroup v1, so the v2 reader is checked
here against a tree written in the kernel's v2 file formats
(Documentation/admin-guide/cgroup-v2.rst), and the v1 reader against its
formats (cgroup-v1/memory.rst, cpuacct.rst); the real v1 files are read by
tests/test_runtime_backend.py in running containers.
"""

from __future__ import annotations

from pathlib import Path

from teaching_cri.runtime.cgroups import Hierarchy, read_stats

PATH = "/teaching-cri/pod/ctr"


def write(d: Path, files: dict[str, str]) -> None:
    d.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (d / name).write_text(text)


def test_v2_stats_come_from_one_directory(tmp_path: Path) -> None:
    write(
        tmp_path / PATH.lstrip("/"),
        {
            "cpu.stat": "usage_usec 1500\nuser_usec 1000\nsystem_usec 500\n",
            "memory.current": "10485760\n",
            "memory.stat": "anon 4096\nfile 8192\nactive_file 1024\ninactive_file 2097152\n",
            "memory.max": "33554432\n",
            "memory.events": "low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n",
            "pids.current": "4\n",
        },
    )
    stats = read_stats(PATH, Hierarchy(2, tmp_path))
    assert stats.cpu_usage_ns == 1_500_000
    assert stats.memory_usage == 10485760
    assert stats.memory_working_set == 10485760 - 2097152, "inactive file cache excluded"
    assert stats.memory_limit == 33554432
    assert (stats.pids, stats.oom_kills) == (4, 1)


def test_v2_no_limit_reads_as_none(tmp_path: Path) -> None:
    write(tmp_path / PATH.lstrip("/"), {"memory.max": "max\n", "memory.current": "0\n"})
    assert read_stats(PATH, Hierarchy(2, tmp_path)).memory_limit is None


def test_v1_stats_come_from_each_controllers_tree(tmp_path: Path) -> None:
    mounts = {c: tmp_path / c for c in ("memory", "cpuacct", "pids")}
    write(mounts["cpuacct"] / PATH.lstrip("/"), {"cpuacct.usage": "123456789\n"})
    write(
        mounts["memory"] / PATH.lstrip("/"),
        {
            "memory.usage_in_bytes": "5000000\n",
            "memory.stat": "cache 100\nrss 200\ntotal_inactive_file 1000000\n",
            "memory.limit_in_bytes": "9223372036854771712\n",  # v1's "unlimited"
            "memory.oom_control": "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n",
        },
    )
    write(mounts["pids"] / PATH.lstrip("/"), {"pids.current": "2\n"})
    stats = read_stats(PATH, Hierarchy(1, tmp_path, mounts))
    assert stats.cpu_usage_ns == 123456789
    assert stats.memory_working_set == 4_000_000
    assert stats.memory_limit is None
    assert (stats.pids, stats.oom_kills) == (2, 2)


def test_a_cgroup_that_is_gone_reads_as_zeros_not_an_error(tmp_path: Path) -> None:
    stats = read_stats(PATH, Hierarchy(2, tmp_path))
    assert (stats.cpu_usage_ns, stats.memory_usage, stats.pids) == (0, 0, 0)
