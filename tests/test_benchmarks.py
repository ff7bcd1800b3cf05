"""No benchmark rots: each script under ``benchmarks/`` runs in its smoke mode.

``--smoke`` is one short iteration of everything a script does, so a change
that breaks one (an option renamed, a default port taken, a server that no
longer starts) fails here instead of the next time someone measures. Nothing
is asserted about speed: the figures of one short run mean nothing. What is
asserted is what a user relies on: exit status 0, the script's table printed,
and nothing it started left behind (no process that names its work dir, holds
a socket there or runs on a root file system made from it, no mount under it,
the work dir itself removed).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BENCHMARKS = REPO / "benchmarks"
IS_ROOT = os.geteuid() == 0

# A line each script prints in its table (or the last of its tables).
TABLES = {
    "containers": "== ListContainers",
    "grpc_floor": "== One unary gRPC call, no work in the server",
    "image_pull": "== Unpack: apply_layer against tar -x of the same blob ==",
    "pod_sandbox": "by phase, median (ms):",
    "runtime_cycle": "== Exec: true in a running container ==",
    "streaming": "ours: the set-up, RPC to first byte",
    "trace_overhead": "Version RPC, tracing on:",
    "vs_containerd": "== The same CRI calls, containerd and teaching-cri alternating",
}
# These need root (runc, cgroups, network namespaces); the others run as anyone.
ROOT_ONLY = {"containers", "pod_sandbox", "runtime_cycle", "streaming", "vs_containerd"}
# Those that check the host after their runs, and say so in this line.
CHECKS_LEFTOVERS = {"containers", "pod_sandbox", "streaming", "vs_containerd"}
NO_CONTAINERD = "no containerd package could be installed"


def scripts() -> list[str]:
    """Every benchmark: the scripts of ``benchmarks/``, not its helpers (``_*``)."""
    return sorted(p.stem for p in BENCHMARKS.glob("*.py") if not p.name.startswith("_"))


def processes_naming(needle: str) -> list[str]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if needle.encode() in cmdline:
                shown = cmdline.replace(b"\0", b" ").decode(errors="replace")
                found.append(f"{entry.name}: {shown[:200]}")
    return found


def sockets_held_under(top: Path) -> list[str]:
    """Processes holding a unix socket bound under ``top``: how a shim of ours is
    found, since it is forked by the zygote and its command line names no dir."""
    prefix = str(top) + "/"
    bound = {}
    for line in Path("/proc/net/unix").read_text().splitlines()[1:]:
        fields = line.split()
        if len(fields) > 7 and fields[7].startswith(prefix):
            bound[f"socket:[{fields[6]}]"] = fields[7]
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            links = [os.readlink(fd) for fd in (entry / "fd").iterdir()]
        except OSError:
            continue
        found += [f"{entry.name} holds {bound[link]}" for link in links if link in bound]
    return found


def containers_rooted_under(top: Path) -> list[str]:
    """Processes whose root file system is a mount made from under ``top`` (an
    overlay whose layers are there): the containers the runtimes ran."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            lines = (entry / "mountinfo").read_text().splitlines()
        except OSError:
            continue
        root = [line for line in lines if line.split()[4] == "/"]
        if root and str(top) + "/" in root[-1]:
            found.append(f"{entry.name}: {(entry / 'comm').read_text().strip()}")
    return found


def mounts_under(top: Path) -> list[str]:
    prefix = str(top) + "/"
    lines = Path("/proc/self/mountinfo").read_text().splitlines()
    return [f.split()[4] for f in lines if f.split()[4].startswith(prefix)]


def failure_of(argv: list[str]) -> str:
    """Run a benchmark (``argv[0]`` under ``benchmarks/``) that must fail: exit
    1, no traceback; the first line it wrote on stderr."""
    proc = subprocess.run(
        [sys.executable, str(BENCHMARKS / argv[0]), *argv[1:]],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    return proc.stderr.strip().splitlines()[0]


def assert_nothing_left_under(top: Path) -> None:
    """No process names ``top``, holds a socket there or runs on a root made
    from it; no mount under it; ``top`` itself empty (the script's temporary
    directory removed)."""
    assert processes_naming(str(top)) == []
    assert sockets_held_under(top) == []
    assert containers_rooted_under(top) == []
    assert mounts_under(top) == []
    assert list(top.iterdir()) == [], "the script's temporary directory is removed"


@pytest.fixture
def work_dir() -> Iterator[Path]:
    """The ``--dir`` a script works under: short (unix socket paths are limited)."""
    with tempfile.TemporaryDirectory(prefix="tcri-smoke-") as d:
        yield Path(d)


def test_every_benchmark_has_a_table_to_look_for() -> None:
    assert set(scripts()) == set(TABLES), "a new benchmark needs its line in TABLES"


@pytest.mark.parametrize("name", scripts())
def test_a_benchmark_runs_in_smoke_mode_and_leaves_nothing(name: str, work_dir: Path) -> None:
    if name in ROOT_ONLY and not IS_ROOT:
        pytest.skip(f"benchmarks/{name}.py needs root (runc, cgroups, network namespaces)")
    if name == "vs_containerd" and shutil.which("containerd") is None and not IS_ROOT:
        pytest.skip("containerd is not installed, and installing it needs root")
    proc = subprocess.run(
        [sys.executable, str(BENCHMARKS / f"{name}.py"), "--smoke", "--dir", str(work_dir)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
    )
    if name == "vs_containerd" and proc.returncode == 2 and NO_CONTAINERD in proc.stderr:
        pytest.skip(f"vs_containerd: {proc.stderr.strip()} (no Debian mirror reachable?)")
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr}"
    assert TABLES[name] in proc.stdout, proc.stdout[-3000:]
    if name in CHECKS_LEFTOVERS:
        assert "left behind after the runs: nothing" in proc.stdout, proc.stdout[-2000:]
    assert_nothing_left_under(work_dir)


def test_vs_containerd_says_which_server_did_not_start(work_dir: Path) -> None:
    """Bad input: a runc that cannot run anything. Both runtimes start, the first
    pod fails; the script names the runtime, exits 1 and leaves nothing."""
    if not IS_ROOT:
        pytest.skip("benchmarks/vs_containerd.py needs root")
    if shutil.which("containerd") is None:
        pytest.skip("containerd is not installed (the smoke test installs it)")
    fake = work_dir / "bin" / "runc"
    fake.parent.mkdir()
    real = shutil.which("runc")
    assert real is not None
    # runc --version works (both servers ask it at start); create does not.
    fake.write_text(
        f'#!/bin/sh\nfor a in "$@"; do [ "$a" = create ] && {{ echo no >&2; exit 1; }}; done\n'
        f'exec {real} "$@"\n'
    )
    fake.chmod(0o755)
    runs = work_dir / "runs"
    runs.mkdir()
    first = failure_of(["vs_containerd.py", "--smoke", "--dir", str(runs), "--runc", str(fake)])
    assert first.startswith("failed: containerd: ") or first.startswith("failed: teaching-cri: ")
    assert_nothing_left_under(runs)


def test_grpc_floor_names_a_server_that_did_not_start(work_dir: Path) -> None:
    """Bad input: a ``--dir`` so deep that the run's socket paths are at the limit
    of a unix socket's (107 bytes and a NUL) or past it. The run works in
    ``--dir/tcri-bench-XXXXXXXX/``: its Go server's ``go.sock`` is 107 bytes, which
    grpc-go binds; ``aio.sock``, one longer, no server can. The Go server starts,
    ``_floor.py``'s does not: the script names it, exits 1 and stops the Go one."""
    runs = work_dir / ("d" * (79 - len(str(work_dir)) - 1))  # 79 + 20 + "/go.sock" = 107
    runs.mkdir()
    first = failure_of(["grpc_floor.py", "--smoke", "--dir", str(runs)])
    assert first.startswith('failed: the "grpc.aio (_floor.py)" server did not start: '), first
    assert "/aio.sock" in first
    assert_nothing_left_under(runs)
