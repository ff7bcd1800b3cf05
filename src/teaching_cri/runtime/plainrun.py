"""A runc for machines that cannot isolate: containers as plain processes.

Where neither root nor user namespaces are available (macOS under a Linux VM
without them, locked-down kernels), nothing can give a process its own view
of the machine. This tier still runs the container's program, from the
image's file system, with the spec's arguments, environment and working
directory, so a learner can follow create → start → exec → attach; and it
says plainly what it is not:

* no namespaces: the process sees the host's processes, network, hostname
  and file system (its working directory is inside the image's root, and
  its program is looked up there first, but ``/`` is the host's);
* no cgroups: limits are recorded, not enforced;
* it runs as the server's user, whatever user the spec names.

It speaks the subset of runc's command line that the shim and
:class:`~.runc.RuncBackend` use (``create``, ``start``, ``kill``, ``delete``,
``state``, ``list``, ``exec -d``, ``update``), with runc's semantics: ``create`` leaves
the process waiting on a fifo that ``start`` opens, so everything above it
works unchanged. Standard library only; the shim runs it like runc.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pty
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Any, NoReturn

NOT_ISOLATED = (
    "no isolation at all: containers are plain processes of the server's user, "
    "seeing the host's processes, network, hostname and files",
    "resource limits and updates are recorded, not enforced: no cgroups",
    "the spec's user is ignored: processes run as the server's user",
)


class Failure(Exception):
    """runc's way: a message in the JSON log and on stderr, exit status 1."""


def _log(path: str, message: str) -> None:
    if path:
        with contextlib.suppress(OSError), open(path, "a", encoding="utf-8") as f:
            stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            f.write(json.dumps({"level": "error", "msg": message, "time": stamp}) + "\n")


def _state_dir(root: str, container_id: str) -> Path:
    return Path(root) / container_id


def _read_state(root: str, container_id: str) -> dict[str, Any]:
    try:
        state: dict[str, Any] = json.loads(
            (_state_dir(root, container_id) / "state.json").read_text()
        )
    except FileNotFoundError:
        raise Failure(f"container {container_id} does not exist") from None
    return state


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    with contextlib.suppress(OSError):  # a zombie has exited, whoever has yet to reap it
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    return True


def _resolve(program: str, rootfs: Path, env: list[str]) -> str:
    """The image's program if the image has it, else the host's, by the spec's PATH."""
    if "/" in program:
        for candidate in (rootfs / program.lstrip("/"), Path(program)):
            if candidate.is_file() and os.access(candidate, os.X_OK):
                return str(candidate)
        raise Failure(f'exec: "{program}": no such file or directory')
    path = next((e[5:] for e in env if e.startswith("PATH=")), "/usr/bin:/bin")
    for d in path.split(":"):
        for base in (rootfs / d.lstrip("/"), Path(d)):
            candidate = base / program
            if candidate.is_file() and os.access(candidate, os.X_OK):
                return str(candidate)
    raise Failure(f'exec: "{program}": executable file not found in $PATH')


def _send_terminal(console_socket: str) -> int:
    """Open a terminal, hand its master to the shim as runc does; return the slave."""
    master, slave = pty.openpty()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(console_socket)
        socket.send_fds(sock, [b"/dev/ptmx"], [master])
    os.close(master)
    return slave


def _spawn(process: dict[str, Any], rootfs: Path, console_socket: str, start_fifo: str = "") -> int:
    """Fork the process; it waits on ``start_fifo`` (create) or runs at once (exec)."""
    argv = list(process.get("args") or [])
    if not argv:
        raise Failure("the process has no args")
    env = list(process.get("env") or [])
    program = _resolve(argv[0], rootfs, env)
    cwd = rootfs / str(process.get("cwd") or "/").lstrip("/")
    slave = _send_terminal(console_socket) if console_socket else -1
    pid = os.fork()
    if pid:
        if slave >= 0:
            os.close(slave)
        return pid
    try:  # the child: never returns
        os.setsid()
        if slave >= 0:
            import fcntl
            import termios

            fcntl.ioctl(slave, termios.TIOCSCTTY, 0)
            size = process.get("consoleSize")
            if size:
                import struct

                packed = struct.pack("HHHH", size["height"], size["width"], 0, 0)
                fcntl.ioctl(slave, termios.TIOCSWINSZ, packed)
            for fd in (0, 1, 2):
                os.dup2(slave, fd)
            os.close(slave)
        os.chdir(cwd if cwd.is_dir() else rootfs)
        if start_fifo:
            with open(start_fifo, "rb") as fifo:  # blocks until ``start`` opens it
                fifo.read(1)
        os.execve(program, argv, dict(e.split("=", 1) for e in env if "=" in e))
    except BaseException as exc:  # a forked child must never return into our caller
        os.write(2, f"plainrun: {exc}\n".encode())
    os._exit(127)


def create(args: argparse.Namespace) -> None:
    bundle = Path(args.bundle)
    spec = json.loads((bundle / "config.json").read_text())
    rootfs = Path(spec["root"]["path"])
    if not rootfs.is_absolute():
        rootfs = bundle / rootfs
    d = _state_dir(args.root, args.id)
    try:
        d.mkdir(parents=True)
    except FileExistsError:
        raise Failure(f"container with id {args.id} already exists") from None
    fifo = d / "exec.fifo"
    os.mkfifo(fifo, 0o600)
    pid = _spawn(spec["process"], rootfs, args.console_socket, str(fifo))
    state = {"id": args.id, "pid": pid, "bundle": str(bundle), "status": "created"}
    (d / "state.json").write_text(json.dumps(state))
    Path(args.pid_file).write_text(str(pid))


def start(args: argparse.Namespace) -> None:
    state = _read_state(args.root, args.id)
    fifo = _state_dir(args.root, args.id) / "exec.fifo"
    try:
        fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        raise Failure("cannot start a container that has already been started") from None
    except OSError:  # ENXIO: nobody waits on it any more
        raise Failure("cannot start a container that has stopped") from None
    with contextlib.suppress(OSError):
        os.write(fd, b"0")
    os.close(fd)
    fifo.unlink()
    state["status"] = "running"
    (_state_dir(args.root, args.id) / "state.json").write_text(json.dumps(state))


def kill(args: argparse.Namespace) -> None:
    state = _read_state(args.root, args.id)
    signame = str(args.signal)
    signum = (
        int(signame)
        if signame.isdigit()
        else signal.Signals[signame if signame.startswith("SIG") else f"SIG{signame}"]
    )
    if not _alive(state["pid"]):
        raise Failure("container not running")
    with contextlib.suppress(ProcessLookupError):
        os.killpg(state["pid"], signum)  # its session's group: what it started too


def delete(args: argparse.Namespace) -> None:
    try:
        state = _read_state(args.root, args.id)
    except Failure:
        if args.force:
            return
        raise
    if _alive(state["pid"]) and not args.force:
        raise Failure("cannot delete container that is not stopped")
    if args.force:  # its process group, which may outlive its first process
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(state["pid"], signal.SIGKILL)
    d = _state_dir(args.root, args.id)
    for f in d.iterdir():
        f.unlink()
    d.rmdir()


def state_cmd(args: argparse.Namespace) -> None:
    state = _read_state(args.root, args.id)
    if state["status"] == "running" and not _alive(state["pid"]):
        state["status"] = "stopped"
    print(json.dumps(state))


def exec_cmd(args: argparse.Namespace) -> None:
    state = _read_state(args.root, args.id)
    if not _alive(state["pid"]):
        raise Failure("cannot exec in a stopped container")
    spec = json.loads((Path(state["bundle"]) / "config.json").read_text())
    rootfs = Path(spec["root"]["path"])
    process = json.loads(Path(args.process).read_text())
    pid = _spawn(process, rootfs, args.console_socket)
    Path(args.pid_file).write_text(str(pid))


def list_cmd(args: argparse.Namespace) -> None:
    root = Path(args.root)
    states = [json.loads(f.read_text()) for f in sorted(root.glob("*/state.json"))]
    print(json.dumps(states or None))


def update(args: argparse.Namespace) -> None:
    _read_state(args.root, args.id)
    sys.stdin.read()  # recorded by the backend; nothing here can enforce it


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="plainrun")
    p.add_argument("--root", required=True)
    p.add_argument("--log", default="")
    p.add_argument("--log-format", default="json")
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("create")
    c.add_argument("--bundle", required=True)
    c.add_argument("--pid-file", required=True)
    c.add_argument("--console-socket", default="")
    c.add_argument("id")
    c.set_defaults(run=create)
    for name, fn in (("start", start), ("state", state_cmd)):
        s = sub.add_parser(name)
        s.add_argument("id")
        s.set_defaults(run=fn)
    k = sub.add_parser("kill")
    k.add_argument("id")
    k.add_argument("signal", nargs="?", default="SIGTERM")
    k.set_defaults(run=kill)
    d = sub.add_parser("delete")
    d.add_argument("--force", "-f", action="store_true")
    d.add_argument("id")
    d.set_defaults(run=delete)
    e = sub.add_parser("exec")
    e.add_argument("-d", "--detach", action="store_true")
    e.add_argument("--process", required=True)
    e.add_argument("--pid-file", required=True)
    e.add_argument("--console-socket", default="")
    e.add_argument("id")
    e.set_defaults(run=exec_cmd)
    ls = sub.add_parser("list")
    ls.add_argument("--format", "-f", default="json")
    ls.set_defaults(run=list_cmd)
    u = sub.add_parser("update")
    u.add_argument("--resources", "-r", default="-")
    u.add_argument("id")
    u.set_defaults(run=update)
    return p


def main(argv: list[str]) -> NoReturn:
    args = parser().parse_args(argv)
    try:
        args.run(args)
    except (Failure, OSError, KeyError, ValueError) as exc:
        message = f"{args.command} failed: {exc}"
        _log(args.log, message)
        print(message, file=sys.stderr)
        sys.exit(1)
    sys.exit(0)


if __name__ == "__main__":
    main(sys.argv[1:])
