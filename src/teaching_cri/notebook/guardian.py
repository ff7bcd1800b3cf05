"""The notebook server's guardian: the process between a kernel and its server.

A kernel can end in ways that run no Python at all: a restart kills its whole
process group with SIGKILL after a few seconds, and an interrupt sends SIGINT to
that group. A server started directly by the kernel would die with it (SIGINT)
or, worse, outlive it with its containers still running under their shims
(which by design outlive the server). So the kernel starts this small process
in a session of its own, and it starts ``teaching-cri serve``:

    kernel ──pipe──▶ guardian ──▶ teaching-cri serve ──▶ shims ──▶ containers

The kernel holds the write end of a pipe to the guardian's stdin. However the
kernel ends (atexit, SIGKILL, a crash), the pipe closes, and the guardian
cleans up: every container and pod is stopped and removed through CRI, as the
kubelet would, then the server gets SIGTERM, then the directories go. If the
server died first, the guardian starts a new one on the same directories just
to clean up: a new server recovers the containers the old one left running.

Run as ``python -m teaching_cri.notebook.guardian BASE [serve options...]``;
it prints one JSON line when the server answers (or fails to), then waits.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc

from ..api import api_pb2
from ..client import connect, wait_for_socket

STARTUP_TIMEOUT = 60.0
STOP_TIMEOUT = 20.0


def serve_command(base: Path, extra: list[str]) -> list[str]:
    return [
        sys.executable,
        "-m",
        "teaching_cri",
        "serve",
        "--socket",
        str(base / "cri.sock"),
        "--root",
        str(base / "root"),
        "--state",
        str(base / "state"),
        "--stream-address",
        "127.0.0.1:0",
        *extra,
    ]


def start_server(base: Path, extra: list[str]) -> subprocess.Popen[bytes]:
    log = (base / "server.log").open("ab")
    proc = subprocess.Popen(
        serve_command(base, extra), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
    )
    log.close()
    (base / "server.pid").write_text(f"{proc.pid}\n")
    return proc


def remove_everything(socket: Path) -> list[str]:
    """Stop and remove every container, then every pod, as the kubelet would
    when a node is drained. Returns what could not be removed, for the log."""
    problems: list[str] = []
    with connect(socket) as cri:
        rt = cri.runtime
        for c in rt.ListContainers(api_pb2.ListContainersRequest()).containers:
            try:
                rt.StopContainer(api_pb2.StopContainerRequest(container_id=c.id, timeout=0))
                rt.RemoveContainer(api_pb2.RemoveContainerRequest(container_id=c.id))
            except grpc.RpcError as exc:
                problems.append(f"container {c.id[:12]}: {exc.details()}")
        for p in rt.ListPodSandbox(api_pb2.ListPodSandboxRequest()).items:
            try:
                rt.StopPodSandbox(api_pb2.StopPodSandboxRequest(pod_sandbox_id=p.id))
                rt.RemovePodSandbox(api_pb2.RemovePodSandboxRequest(pod_sandbox_id=p.id))
            except grpc.RpcError as exc:
                problems.append(f"pod {p.id[:12]}: {exc.details()}")
    return problems


def stop_server(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def mounts_under(base: Path) -> list[str]:
    """Mount points at or below ``base``, deepest first (from /proc/self/mountinfo)."""
    found = []
    prefix = str(base.resolve())
    with open("/proc/self/mountinfo") as f:
        for line in f:
            point = line.split()[4].replace("\\040", " ")
            if point == prefix or point.startswith(prefix + "/"):
                found.append(point)
    return sorted(found, key=len, reverse=True)


def clean_up(base: Path, proc: subprocess.Popen[bytes], extra: list[str], log: list[str]) -> None:
    socket = base / "cri.sock"
    if proc.poll() is not None:
        log.append(f"the server had exited ({proc.returncode}); a new one cleans up after it")
        proc = start_server(base, extra)
        try:
            wait_for_socket(socket, timeout=STARTUP_TIMEOUT)
        except TimeoutError:
            log.append("the clean-up server did not start")
    try:
        log.extend(remove_everything(socket))
    except (grpc.RpcError, ConnectionError) as exc:
        log.append(f"could not list what is left: {exc}")
    stop_server(proc)
    # Removal unmounts what the server mounted; anything still mounted here
    # (a server killed mid-call) must not take the host's files with rmtree.
    for point in mounts_under(base):
        subprocess.run(["umount", "-l", point], check=False, capture_output=True)
        log.append(f"unmounted {point}")
    if mounts_under(base):
        log.append(f"mounts remain under {base}; left in place")
        return
    shutil.rmtree(base, ignore_errors=True)


def main(argv: list[str]) -> int:
    base, extra = Path(argv[0]), argv[1:]
    proc = start_server(base, extra)
    try:
        wait_for_socket(base / "cri.sock", timeout=STARTUP_TIMEOUT)
        print(json.dumps({"ready": True, "pid": proc.pid}), flush=True)
    except TimeoutError:
        stop_server(proc)
        said = (base / "server.log").read_text(errors="replace")[-3000:]
        print(json.dumps({"ready": False, "exit": proc.returncode, "log": said}), flush=True)
        shutil.rmtree(base, ignore_errors=True)
        return 1

    # The server's death is written down at once, so the notebook can say so
    # while the kernel lives; the clean-up still waits for the kernel's end.
    def watch() -> None:
        code = proc.wait()
        (base / "server.exit").write_text(f"{code}\n")

    threading.Thread(target=watch, daemon=True).start()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # an interrupted kernel is not an ended one
    sys.stdin.buffer.read()  # returns when the kernel closes the pipe or dies
    started = time.monotonic()
    log: list[str] = []
    clean_up(base, proc, extra, log)
    note = "; ".join(log) or "nothing left"
    with contextlib.suppress(OSError):  # a kernel that died no longer reads
        print(json.dumps({"cleaned": True, "seconds": time.monotonic() - started, "notes": note}))
    return 0


if __name__ == "__main__":
    os.umask(0o022)
    sys.exit(main(sys.argv[1:]))
