"""The shim: one small process per container that outlives the server.

iSulad runs ``isulad-shim``, CRI-O ``conmon`` and containerd
``containerd-shim-runc-v2`` for the same reasons, and this is ours:

* runc only creates and starts a container; someone must **stay** to be the
  parent of its init process (to reap it and learn its exit code), to hold the
  other ends of its stdin, stdout and stderr, and to copy what it writes into
  the log file. If the server did that, restarting the server would kill or
  orphan every container. The shim is that someone, and it is detached from
  the server (its own session, re-parented to init by a double fork), so the
  server may die, even by SIGKILL, and come back.
* It is a **subreaper** (``PR_SET_CHILD_SUBREAPER``): when ``runc create``
  exits, the container's init is re-parented to the shim, not to PID 1, and
  so are the processes ``runc exec -d`` leaves behind.

Its life (the numbers are the steps of ``main`` and ``run``):

1. it is detached: the zygote (:mod:`.zygote`) forks it ahead of need, or
   the server spawns it with the running interpreter; either way it forks,
   the first process exits, so the shim is nobody's child but init's (double
   fork); then it becomes a subreaper and sets its signals (:func:`prepare`),
   which the zygote's spare does before it has a container to serve;
2. it tells the server its own pid (the server's create returns then, as
   iSulad's ``shim_create(fg=false)`` does), runs ``runc create`` with pipes
   (or, for a tty, a console socket over which runc hands it the terminal's
   master end) as the container's stdio, and tells the server the init's pid,
   or runc's error (recorded in ``exit.json`` too, as a StartError), on the
   same pipe; the server's start waits for that line;
3. it serves ``shim.sock`` (:mod:`.frames`): attach, exec, wait, reopen_log,
   resize, close_stdin; and writes every line the container prints in the
   kubelet's CRI log format (:mod:`.crilog`);
4. when it reaps the init it records the exit code (128 + signal when a
   signal killed it), the finish time and whether the OOM killer did it, in
   ``exit.json``, atomically, tells every client, and exits.

Only the standard library, :mod:`.frames`, :mod:`.crilog` and
:mod:`teaching_cri.fsutil` are imported: every container pays for this
process's memory (our budget is 15 MB).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import json
import os
import select
import selectors
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import termios
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..fsutil import atomic_write_json
from . import frames
from .crilog import CRILogEncoder, open_log

PR_SET_CHILD_SUBREAPER = 36
READ_CHUNK = 64 * 1024
MAX_CLIENT_BACKLOG = 8 << 20  # an attach client this far behind is dropped, not waited for
EXEC_BACKLOG = 1 << 20  # an exec's output waits in its pipe while its client is this far behind
MAX_PENDING_STDIN = 1 << 20  # a client's stdin is not read while this much waits for the process
RUNTIME_TIMEOUT = 60.0  # the longest runc create or runc exec may take
DRAIN_SECONDS = 2.0  # after the init exits, how long its output may still arrive

# Files in the container's state dir; the server reads them back after a restart.
CONFIG = "shim.json"
SOCKET = "shim.sock"
SHIM_PID = "shim.pid"
INIT_PID = "init.pid"
EXIT = "exit.json"
RUNC_LOG = "runc.log"


def socket_path(dir_fd: int) -> str:
    """``shim.sock`` addressed through an open descriptor of its directory.

    A unix socket path may be at most 107 bytes and a state dir named after a
    64-hex container id is close to that; ``/proc/self/fd/<n>/shim.sock`` is
    short whatever the directory is called."""
    return f"/proc/self/fd/{dir_fd}/{SOCKET}"


def exit_code_of(status: int) -> tuple[int, int]:
    """(exit code, signal): a shell's convention, 128 + n for a process killed by signal n."""
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        return 128 + sig, sig
    return os.WEXITSTATUS(status), 0


def kill_group(pid: int, signum: int) -> None:
    """runc makes each exec'd process a process-group leader: signal the group,
    so what it started in the background goes too."""
    for kill in (os.killpg, os.kill):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            kill(pid, signum)
            return


def wait_exactly(proc: subprocess.Popen[bytes], timeout: float) -> bool:
    """Wait for ``proc`` to exit, waking the moment it does; False on timeout.

    ``Popen.wait(timeout)`` polls with sleeps that double up to 50 ms, so a
    runc that takes 45 ms is noticed at 63.5 ms: a fifth of a container's
    create, wasted. A pidfd (Linux 5.3+) becomes readable exactly when the
    process exits; without one, a blocking wait has no timeout but no delay."""
    try:
        pidfd = os.pidfd_open(proc.pid)
    except (AttributeError, OSError):
        proc.wait()
        return True
    try:
        ready, _, _ = select.select([pidfd], [], [], timeout)
    finally:
        os.close(pidfd)
    if not ready:
        return False
    proc.wait()
    return True


def set_window_size(fd: int, width: int, height: int) -> None:
    if not (0 < width <= 0xFFFF and 0 < height <= 0xFFFF):
        raise ValueError(f"terminal size {width}x{height} out of range")
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", height, width, 0, 0))


def receive_fd(sock: socket.socket) -> int:
    """The terminal master runc sends over a console socket (SCM_RIGHTS)."""
    _msg, fds, _flags, _addr = socket.recv_fds(sock, 4096, 1)
    if not fds:
        raise OSError(errno.EPROTO, "runc sent no terminal over the console socket")
    return fds[0]


@dataclass
class Client:
    """One connection to ``shim.sock`` and what it asked for."""

    sock: socket.socket
    decoder: frames.FrameDecoder = field(default_factory=frames.FrameDecoder)
    out: bytearray = field(default_factory=bytearray)
    op: str = ""
    stdout: bool = False
    stderr: bool = False
    stdin: bool = False
    process: Process | None = None  # the exec this client started
    closing: bool = False  # close once ``out`` is flushed


@dataclass
class Process:
    """The container's init or one exec'd process, seen from the shim."""

    pid: int
    stdin: int | None  # write end of its stdin pipe, or the terminal master
    outputs: dict[int, str]  # read fd → "stdout" | "stderr"
    tty_master: int | None = None
    status: tuple[int, int] | None = None  # (exit code, signal) once reaped
    finished_at: int = 0
    client: Client | None = None  # for an exec: who gets its output
    pending_stdin: bytearray = field(default_factory=bytearray)
    close_stdin_when_flushed: bool = False  # EOF asked for while input still waits
    paused: bool = False  # output not read while the exec's client catches up
    drain_until: float = 0.0  # reaped: output still open is closed at this time


class Shim:
    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config
        self.id: str = config["id"]
        self.state_dir: str = config["state_dir"]
        self.runtime: list[str] = list(config["runtime"])
        self.tty = bool(config.get("tty"))
        self.stdin_once = bool(config.get("stdin_once"))
        self.sel = selectors.DefaultSelector()
        self.clients: dict[int, Client] = {}
        self.init: Process | None = None
        self.execs: dict[int, Process] = {}
        self.encoders: dict[str, CRILogEncoder] = {}
        self.log_fd: int | None = None
        self.exec_count = 0
        self.listener: socket.socket | None = None
        self.deadline: float | None = None  # set when the init has exited
        self.stdin_backlog: set[int] = set()  # pids whose stdin could not take it all

    # -- 2. create the container -------------------------------------------------

    def path(self, name: str) -> str:
        return os.path.join(self.state_dir, name)

    def run_runtime(
        self, args: list[str], stdio: tuple[int, int, int], console: str = ""
    ) -> tuple[int, str]:
        """Run runc (create or exec -d) with ``stdio`` as the process's stdio.

        The call blocks the loop for runc's few tens of milliseconds; the
        container's output waits in its pipe meanwhile, which holds 64 KiB."""
        if console:  # a flag of the subcommand, so after its name
            args = [args[0], "--console-socket", console, *args[1:]]
        argv = [*self.runtime, "--log", self.path(RUNC_LOG), "--log-format", "json", *args]
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path(RUNC_LOG))
        proc = subprocess.Popen(argv, stdin=stdio[0], stdout=stdio[1], stderr=stdio[2])
        if not wait_exactly(proc, RUNTIME_TIMEOUT):  # a hung runc must not freeze the shim
            proc.kill()
            proc.wait()
            return 1, f"{args[0]} did not finish within {RUNTIME_TIMEOUT:.0f} s"
        if proc.returncode == 0:
            return 0, ""
        return proc.returncode, self.runtime_error()

    def runtime_error(self) -> str:
        """runc's last error, from its JSON log (its stderr is the container's)."""
        message = "runtime failed without a message"
        try:
            with open(self.path(RUNC_LOG), encoding="utf-8", errors="replace") as f:
                lines = f.readlines()
        except OSError:
            return message
        for line in lines:
            with contextlib.suppress(ValueError):
                entry = json.loads(line)
                if entry.get("level") in ("error", "fatal"):
                    message = str(entry.get("msg", message))
        return message

    def start_process(self, args: list[str], want_stdin: bool, tty: bool, pid_file: str) -> Process:
        """``runc create`` or ``runc exec -d``: pipes or a terminal, then the pid."""
        parent: list[int] = []
        try:
            if tty:
                console_dir = tempfile.mkdtemp(prefix="tcri-pty-")
                console = os.path.join(console_dir, "pty.sock")
                listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                try:
                    listener.bind(console)
                    listener.listen(1)
                    null = os.open(os.devnull, os.O_RDWR)
                    try:
                        code, message = self.run_runtime(args, (null, null, null), console)
                    finally:
                        os.close(null)
                    if code:
                        raise RuntimeError(message)
                    listener.settimeout(5)
                    conn, _ = listener.accept()
                    with conn:
                        master = receive_fd(conn)
                finally:
                    listener.close()
                    with contextlib.suppress(OSError):
                        os.unlink(console)
                    with contextlib.suppress(OSError):
                        os.rmdir(console_dir)
                parent.append(master)
                pid = self.read_pid(pid_file)
                stdin = master if want_stdin else None
                return Process(pid, stdin, {master: "stdout"}, tty_master=master)
            child: list[int] = []
            stdin_r, stdin_w = os.pipe() if want_stdin else (os.open(os.devnull, os.O_RDONLY), -1)
            child.append(stdin_r)
            if stdin_w >= 0:
                parent.append(stdin_w)
            out_r, out_w = os.pipe()
            err_r, err_w = os.pipe()
            parent += [out_r, err_r]
            child += [out_w, err_w]
            try:
                code, message = self.run_runtime(args, (stdin_r, out_w, err_w))
            finally:
                for fd in child:
                    os.close(fd)
            if code:
                raise RuntimeError(message)
            pid = self.read_pid(pid_file)
            return Process(
                pid, stdin_w if stdin_w >= 0 else None, {out_r: "stdout", err_r: "stderr"}
            )
        except BaseException:
            for fd in parent:
                with contextlib.suppress(OSError):
                    os.close(fd)
            raise

    @staticmethod
    def read_pid(pid_file: str) -> int:
        with open(pid_file, encoding="ascii") as f:
            return int(f.read().strip())

    def create(self) -> Process:
        args = ["create", "--bundle", self.config["bundle"], "--pid-file", self.path(INIT_PID)]
        init = self.start_process(
            [*args, self.id], bool(self.config.get("stdin")), self.tty, self.path(INIT_PID)
        )
        self.watch_process(init)
        return init

    def watch_process(self, process: Process) -> None:
        for fd in process.outputs:
            os.set_blocking(fd, False)
            self.sel.register(fd, selectors.EVENT_READ, ("output", process))
        if process.stdin is not None and process.stdin != process.tty_master:
            os.set_blocking(process.stdin, False)

    # -- 3. serve ----------------------------------------------------------------

    def open_log(self) -> None:
        log_path = self.config.get("log_path") or ""
        if not log_path:
            return
        self.log_fd = open_log(log_path)  # no symlink followed, a regular file only

    def reopen_log(self) -> None:
        """ReopenContainerLog: the kubelet has renamed the file; start a fresh one
        at the same path. Records in flight go to one file or the other, whole."""
        old = self.log_fd
        self.open_log()  # raises, leaving the old one in place, if it cannot
        if old is not None:
            os.close(old)

    def write_log(self, records: list[bytes]) -> None:
        if self.log_fd is not None and records:
            with contextlib.suppress(OSError):  # a full disk must not stop the container
                os.write(self.log_fd, b"".join(records))

    def listen(self) -> None:
        dir_fd = os.open(self.state_dir, os.O_RDONLY | os.O_DIRECTORY)
        try:
            path = socket_path(dir_fd)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.listener.bind(path)
        finally:
            os.close(dir_fd)
        self.listener.listen(socket.SOMAXCONN)  # execs and attaches may come in bursts
        self.listener.setblocking(False)
        self.sel.register(self.listener, selectors.EVENT_READ, ("listen", None))

    def accept(self) -> None:
        assert self.listener is not None
        try:
            sock, _ = self.listener.accept()
        except BlockingIOError:
            return
        sock.setblocking(False)
        client = Client(sock)
        self.clients[sock.fileno()] = client
        self.sel.register(sock, selectors.EVENT_READ, ("client", client))

    def send(self, client: Client, data: bytes) -> None:
        if client.closing or client.sock.fileno() < 0:
            return
        if client.process is None and len(client.out) > MAX_CLIENT_BACKLOG:
            self.drop(client)  # an attach must not hold up the container's log
            return
        if not client.out:  # the common case: straight to the socket, no copy into out
            try:
                sent = client.sock.send(data)
            except BlockingIOError:
                sent = 0
            except OSError:
                self.drop(client)
                return
            data = data[sent:]
        client.out += data
        self.flush(client)
        process = client.process
        if process is not None and len(client.out) > EXEC_BACKLOG and not process.paused:
            process.paused = True  # backpressure: the process blocks on its full pipe
            for fd in process.outputs:
                with contextlib.suppress(KeyError, ValueError):
                    self.sel.unregister(fd)

    def flush(self, client: Client) -> None:
        try:
            while client.out:
                n = client.sock.send(client.out)
                del client.out[:n]
        except BlockingIOError:
            pass
        except OSError:
            self.drop(client)
            return
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if client.out else 0)
        if client.closing and not client.out:
            self.drop(client)
            return
        process = client.process
        if process is not None and process.paused and len(client.out) <= EXEC_BACKLOG // 2:
            process.paused = False
            for fd in process.outputs:
                self.sel.register(fd, selectors.EVENT_READ, ("output", process))
        with contextlib.suppress(KeyError, ValueError):
            self.sel.modify(client.sock, events, ("client", client))

    def finish_client(self, client: Client, kind: int, value: dict[str, Any]) -> None:
        self.send(client, frames.encode_json(kind, value))
        client.closing = True
        self.flush(client)

    def drop(self, client: Client) -> None:
        """A client went away (or fell too far behind). An exec it started is
        killed: an ExecSync that timed out leaves no process behind."""
        fd = client.sock.fileno()
        if fd < 0:
            return
        with contextlib.suppress(KeyError, ValueError):
            self.sel.unregister(client.sock)
        self.clients.pop(fd, None)
        client.sock.close()
        process = client.process
        if process is not None:
            process.client = None
            if process.status is None:
                kill_group(process.pid, signal.SIGKILL)
            if process.paused:  # nobody to pace it now: read and discard
                process.paused = False
                for out_fd in process.outputs:
                    self.sel.register(out_fd, selectors.EVENT_READ, ("output", process))
        elif self.init and client.op == "attach" and client.stdin and self.stdin_once:
            self.close_stdin(self.init)  # stdin_once: the first attach's end is stdin's end

    def on_client(self, client: Client, mask: int) -> None:
        if mask & selectors.EVENT_WRITE:
            self.flush(client)
        if not mask & selectors.EVENT_READ or client.sock.fileno() < 0:
            return
        target = client.process or self.init
        if target is not None and len(target.pending_stdin) > MAX_PENDING_STDIN:
            return  # read it once the process has taken some (the loop polls the backlog)
        try:
            data = client.sock.recv(READ_CHUNK)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self.drop(client)
            return
        try:
            for kind, payload in client.decoder.feed(data):
                self.on_frame(client, kind, payload)
        except Exception as exc:  # one bad request must never end the container's shim
            self.finish_client(client, frames.ERROR, {"message": f"bad request: {exc}"})

    def on_frame(self, client: Client, kind: int, payload: bytes) -> None:
        if not client.op:
            if kind != frames.HELLO:
                raise frames.ProtocolError("the first frame must be HELLO")
            self.on_hello(client, frames.decode_json(payload))
            return
        target = client.process or self.init
        if target is None:
            return
        if kind == frames.STDIN and client.stdin:
            self.write_stdin(target, payload)
        elif kind == frames.STDIN_CLOSE and client.stdin:
            self.close_stdin(target)
        elif kind == frames.RESIZE:
            self.resize(target, frames.decode_json(payload))
        elif kind == frames.SIGNAL and client.process and client.process.status is None:
            # (once reaped, the pid may be another process's)
            kill_group(client.process.pid, int(frames.decode_json(payload)["signal"]))

    def on_hello(self, client: Client, hello: dict[str, Any]) -> None:
        op = str(hello.get("op", ""))
        if op not in frames.OPS:
            raise frames.ProtocolError(f"unknown op {op!r}")
        client.op = op
        init = self.init
        assert init is not None
        if op == "exec":
            self.start_exec(client, hello)
            return
        if self.deadline is not None and op != "wait":
            self.finish_client(client, frames.ERROR, {"message": "the container has exited"})
            return
        if op == "reopen_log":
            try:
                self.reopen_log()
            except OSError as exc:  # the old file stays in use; nothing is lost
                self.finish_client(client, frames.ERROR, {"message": f"reopen log: {exc}"})
                return
            self.finish_client(client, frames.OK, {})
        elif op == "resize":
            self.resize(init, hello)
            self.finish_client(client, frames.OK, {})
        elif op == "close_stdin":
            self.close_stdin(init)
            self.finish_client(client, frames.OK, {})
        elif op == "attach":
            client.stdin = bool(hello.get("stdin")) and init.stdin is not None
            client.stdout = bool(hello.get("stdout"))
            client.stderr = bool(hello.get("stderr")) and not self.tty
            self.send(client, frames.encode_json(frames.OK, {"pid": init.pid, "tty": self.tty}))
        else:  # wait
            self.send(client, frames.encode_json(frames.OK, {"pid": init.pid}))

    def start_exec(self, client: Client, hello: dict[str, Any]) -> None:
        """``runc exec -d``: the process is re-parented to us, so we reap it and
        report its exit code, and kill it when its client goes away."""
        if self.deadline is not None:
            self.finish_client(client, frames.ERROR, {"message": "the container has exited"})
            return
        self.exec_count += 1
        name = f"exec-{os.getpid()}-{self.exec_count}"
        spec_path, pid_path = self.path(f"{name}.json"), self.path(f"{name}.pid")
        tty = bool(hello.get("tty"))
        process_spec = dict(hello["process"])
        process_spec["terminal"] = tty
        if tty and "width" in hello:  # the size the process sees from its first instruction
            process_spec["consoleSize"] = {"width": hello["width"], "height": hello["height"]}
        try:
            with open(spec_path, "w", encoding="utf-8") as f:
                json.dump(process_spec, f)
            args = ["exec", "-d", "--process", spec_path, "--pid-file", pid_path, self.id]
            process = self.start_process(args, bool(hello.get("stdin")), tty, pid_path)
        except (OSError, RuntimeError, ValueError) as exc:
            self.finish_client(client, frames.ERROR, {"message": f"runtime exec: {exc}"})
            return
        finally:
            for p in (spec_path, pid_path):
                with contextlib.suppress(OSError):
                    os.unlink(p)
        process.client = client
        client.process = process
        client.stdin = process.stdin is not None
        self.execs[process.pid] = process
        self.watch_process(process)
        self.send(client, frames.encode_json(frames.OK, {"pid": process.pid, "tty": tty}))
        self.reap()  # it may have finished already

    def write_stdin(self, process: Process, data: bytes) -> None:
        if process.stdin is None:
            return
        process.pending_stdin += data
        self.flush_stdin(process)

    def flush_stdin(self, process: Process) -> None:
        """Write what we can without blocking; the rest waits in ``stdin_backlog``
        and is retried each turn of the loop (a process that does not read its
        stdin must not stop the shim from logging its output)."""
        fd = process.stdin
        try:
            while fd is not None and process.pending_stdin:
                n = os.write(fd, process.pending_stdin)
                del process.pending_stdin[:n]
        except BlockingIOError:
            pass
        except OSError:  # the reader is gone: stdin is over
            process.pending_stdin.clear()
        if process.pending_stdin and fd is not None:
            self.stdin_backlog.add(process.pid)
        else:
            self.stdin_backlog.discard(process.pid)
            if process.close_stdin_when_flushed:
                process.close_stdin_when_flushed = False
                self.close_stdin(process)

    def close_stdin(self, process: Process) -> None:
        """EOF on the process's stdin (for a tty, the terminal's EOF character)."""
        fd = process.stdin
        if fd is None:
            return
        if process.tty_master is not None:
            self.write_stdin(process, b"\x04")
            return
        if process.pending_stdin:  # what the process has not read yet still reaches it
            process.close_stdin_when_flushed = True
            return
        with contextlib.suppress(OSError):
            os.close(fd)
        process.stdin = None

    @staticmethod
    def resize(process: Process, size: dict[str, Any]) -> None:
        if process.tty_master is not None:
            set_window_size(process.tty_master, int(size["width"]), int(size["height"]))

    def on_output(self, process: Process, fd: int) -> None:
        """What the pipe holds now, up to 16 reads: a process writing 4 KiB at a
        time becomes one frame of what piled up, not a frame per write."""
        chunks: list[bytes] = []
        eof = False
        for _ in range(16):
            try:
                chunk = os.read(fd, READ_CHUNK)
            except BlockingIOError:
                break
            except OSError:  # EIO: the terminal's other side is closed
                chunk = b""
            if not chunk:
                eof = True
                break
            chunks.append(chunk)
        if chunks:
            self.on_data(process, fd, b"".join(chunks))
        if eof:
            self.close_output(process, fd)

    def on_data(self, process: Process, fd: int, data: bytes) -> None:
        stream = process.outputs[fd]
        kind = frames.STDOUT if stream == "stdout" else frames.STDERR
        if process is self.init:
            encoder = self.encoders.setdefault(stream, CRILogEncoder(stream))
            self.write_log(encoder.feed(data))
            frame = frames.encode_stream(kind, data)
            for client in list(self.clients.values()):
                wants = client.stdout if kind == frames.STDOUT else client.stderr
                if client.op == "attach" and wants:
                    self.send(client, frame)
        elif process.client is not None:
            self.send(process.client, frames.encode_stream(kind, data))

    def close_output(self, process: Process, fd: int) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self.sel.unregister(fd)
        del process.outputs[fd]
        if fd == process.tty_master:
            process.stdin = None
            process.tty_master = None
        os.close(fd)
        self.maybe_finish_exec(process)

    # -- 4. reap -----------------------------------------------------------------

    def reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            now = time.time_ns()
            if self.init is not None and pid == self.init.pid:
                self.init.status, self.init.finished_at = exit_code_of(status), now
                self.on_init_exit()
            elif pid in self.execs:
                process = self.execs[pid]
                process.status, process.finished_at = exit_code_of(status), now
                process.drain_until = time.monotonic() + DRAIN_SECONDS
                self.maybe_finish_exec(process)
            # anything else: an orphan re-parented to us; reaping it is all we owe it

    def maybe_finish_exec(self, process: Process) -> None:
        """An exec is over when it is reaped and its output is drained."""
        if process is self.init or process.status is None or process.outputs:
            return
        self.execs.pop(process.pid, None)
        self.stdin_backlog.discard(process.pid)
        if process.stdin is not None:
            with contextlib.suppress(OSError):
                os.close(process.stdin)
            process.stdin = None
        if process.client is not None:
            code, sig = process.status
            self.finish_client(
                process.client,
                frames.EXIT,
                {"exit_code": code, "signal": sig, "finished_at": process.finished_at},
            )

    def on_init_exit(self) -> None:
        """The container is over: its pid namespace is gone, so are its execs.
        Give the output still in the pipes a moment, then record and tell."""
        self.deadline = time.monotonic() + DRAIN_SECONDS
        for pid in list(self.execs):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def oom_killed(self) -> bool:
        """Did the kernel's OOM killer act in the container's memory cgroup?"""
        path = self.config.get("memory_events") or ""
        if not path:
            return False
        try:
            with open(path, encoding="ascii") as f:
                for line in f:
                    key, _, value = line.partition(" ")
                    if key == "oom_kill" and int(value) > 0:
                        return True
        except (OSError, ValueError):
            pass
        return False

    def record_exit(self) -> None:
        init = self.init
        assert init is not None and init.status is not None
        for stream, encoder in self.encoders.items():
            del stream
            self.write_log(encoder.close())
        code, sig = init.status
        result = {
            "pid": init.pid,
            "exit_code": code,
            "signal": sig,
            "finished_at": init.finished_at,
            "oom_killed": self.oom_killed(),
        }
        with contextlib.suppress(OSError):  # the state dir removed under us: tell clients anyway
            atomic_write_json(Path(self.path(EXIT)), result, mode=0o644)
        for client in list(self.clients.values()):
            if client.process is None:
                self.finish_client(client, frames.EXIT, result)
            elif client.process.status is None:
                self.finish_client(client, frames.EXIT, {"exit_code": 137, "signal": 9})

    def record_create_failure(self, message: str) -> None:
        """``runc create`` failed: the container will never run. Recorded as
        containerd records a task that failed to start (exit code 128, reason
        StartError, runc's words as the message), so that whoever looks next
        (StartContainer, ContainerStatus, a restarted server) learns why."""
        result = {
            "exit_code": 128,
            "finished_at": time.time_ns(),
            "reason": "StartError",
            "message": f"runtime create failed: {message}",
        }
        with contextlib.suppress(OSError):
            atomic_write_json(Path(self.path(EXIT)), result, mode=0o644)

    def expire_exec_drains(self, timeout: float | None) -> float | None:
        """An exec reaped but whose output a background child still holds open
        is over after DRAIN_SECONDS (containerd's exec waits the same way)."""
        now = time.monotonic()
        for process in list(self.execs.values()):
            if process.status is None or not process.outputs:
                continue
            if now >= process.drain_until:
                for fd in list(process.outputs):
                    self.close_output(process, fd)
            else:
                left = process.drain_until - now
                timeout = left if timeout is None else min(timeout, left)
        return timeout

    def drained(self) -> bool:
        init = self.init
        return init is not None and not init.outputs and not self.execs

    def flush_clients(self, seconds: float) -> None:
        """Last words: give clients a moment to read their EXIT frames."""
        end = time.monotonic() + seconds
        while any(c.out for c in self.clients.values()) and time.monotonic() < end:
            for key, mask in self.sel.select(0.05):
                kind, obj = key.data
                if kind == "client" and mask & selectors.EVENT_WRITE:
                    self.flush(obj)

    # -- the loop ------------------------------------------------------------------

    def serve(self, wakeup: int) -> None:
        self.sel.register(wakeup, selectors.EVENT_READ, ("signal", None))
        while True:
            timeout = 0.05 if self.stdin_backlog else None
            timeout = self.expire_exec_drains(timeout)
            for pid in list(self.stdin_backlog):
                process = self.init if self.init and self.init.pid == pid else self.execs.get(pid)
                if process is None:
                    self.stdin_backlog.discard(pid)
                else:
                    self.flush_stdin(process)
            if self.deadline is not None:
                if self.drained() or time.monotonic() >= self.deadline:
                    break
                timeout = min(timeout or DRAIN_SECONDS, max(0.0, self.deadline - time.monotonic()))
            for key, mask in self.sel.select(timeout):
                try:
                    self.dispatch(key, mask, wakeup)
                except Exception:  # the shim outlives any one event's failure
                    if isinstance(key.data[1], Client):
                        self.drop(key.data[1])
        self.record_exit()
        self.flush_clients(1.0)

    def dispatch(self, key: selectors.SelectorKey, mask: int, wakeup: int) -> None:
        kind, obj = key.data
        if kind == "signal":
            with contextlib.suppress(BlockingIOError):
                os.read(wakeup, 512)
            self.reap()
        elif kind == "output":
            self.on_output(obj, key.fd)
        elif kind == "client":
            self.on_client(obj, mask)
        elif kind == "listen":
            self.accept()


def report(fd: int, line: dict[str, Any]) -> None:
    """One JSON line to the server. A server gone meanwhile (killed, restarted)
    reads the same facts from the state dir: ``init.pid``, ``exit.json``."""
    with contextlib.suppress(OSError):
        os.write(fd, (json.dumps(line) + "\n").encode())


def detach() -> None:
    """The double fork: the process the server spawned exits at once, so the
    shim is re-parented to init (or the nearest subreaper) and no signal sent
    to the server's process group reaches it (it is in its own session)."""
    if os.fork() > 0:
        os._exit(0)


def main(argv: list[str]) -> None:
    """Spawned by the server (``shim_client.spawn_shim``): detach, then run."""
    detach()
    run(argv[0], report_fd=1)


def prepare() -> int:
    """1. What makes a detached process a shim before it has a container: a
    subreaper, deaf to the terminal's signals, woken by SIGCHLD (through the
    pipe whose read end is returned). The zygote's spare does it while it waits."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    for sig in (signal.SIGHUP, signal.SIGINT, signal.SIGPIPE, signal.SIGTTOU, signal.SIGTTIN):
        signal.signal(sig, signal.SIG_IGN)
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    signal.signal(signal.SIGCHLD, lambda _s, _f: None)
    signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
    return wake_r


def run(
    state_dir: str,
    report_fd: int,
    wake_r: int | None = None,
    reported: Callable[[], None] | None = None,
) -> None:
    """The shim proper, already detached (and :func:`prepare`-d if ``wake_r``
    is given): say it is there, create the container, say how that went (a
    JSON line each on ``report_fd``), serve until the init exits. Never returns.
    ``reported`` is called once the server knows the shim's pid (the zygote
    waits for that to fork its next spare)."""
    if wake_r is None:
        wake_r = prepare()
    try:
        with open(os.path.join(state_dir, CONFIG), "rb") as f:
            config = json.load(f)
        config["state_dir"] = state_dir
        shim = Shim(config)
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
        pid_fd = os.open(os.path.join(state_dir, SHIM_PID), flags, 0o644)
        try:
            os.write(pid_fd, str(os.getpid()).encode())
        finally:
            os.close(pid_fd)
        shim.open_log()
        shim.listen()
    except (OSError, ValueError, KeyError, TypeError) as exc:
        report(report_fd, {"error": str(exc)})
        os._exit(1)
    report(report_fd, {"shim_pid": os.getpid()})  # the server's create returns here
    if reported is not None:
        reported()
    try:
        shim.init = shim.create()
    except (OSError, RuntimeError, ValueError, KeyError) as exc:
        shim.record_create_failure(str(exc))
        report(report_fd, {"error": str(exc)})
        os._exit(1)
    report(report_fd, {"pid": shim.init.pid})
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    os.close(null)
    if report_fd > 2:
        os.close(report_fd)
    shim.serve(wake_r)
    os._exit(0)


if __name__ == "__main__":
    main(sys.argv[1:])
