"""The pre-forked shim server: a shim per container, forked before it is asked for.

A shim started with ``python -c`` spends most of its first 100 ms importing
modules, more than our whole budget for our share of a container's create
(runc's cycle + 40 ms, ``benchmarks/containers.py``). So the backend starts
this process once, with the shim's modules already imported, and asks it for
each shim. Android's
zygote starts apps the same way, for the same reason.

Forking a shim still costs two forks (the double fork that detaches it) and
the child's first touches of the pages it now shares: most of the 6 ms a
shim took to start, in a CreateContainer that the kubelet waits for. So the
zygote forks one **spare** ahead of need: detached, a subreaper, its signals
set (:func:`.shim.prepare`), waiting on a socket pair for its container. A
request is handed to the spare, which starts at once, and once it has told
the server its pid the zygote forks the next spare, while the shim's ``runc
create`` goes on; a request that comes before that gets a spare forked for it
there and then.

The request is one SOCK_SEQPACKET message: the container's state dir, with
the write end of a pipe attached (SCM_RIGHTS) on which the shim reports
its own pid, then the init's (or runc create's error), exactly the lines a
spawned shim prints on its stdout; the server waits for the first only. When the
server goes away (even by SIGKILL) the socket reads EOF and this process
exits, and so does the spare (its socket reads EOF too); the shims it made are
not its children and live on.
"""

from __future__ import annotations

import contextlib
import os
import select
import socket
import sys
import traceback
from collections.abc import Callable
from typing import NoReturn

from . import shim

MAX_FD = os.sysconf("SC_OPEN_MAX")

SPARE_EXIT_WAIT = 2.0  # how long the zygote, leaving, waits for its spare to go
SPARE_READY_WAIT = 10.0  # how long a new spare may take to say it is ready
REPORT_WAIT = 1.0  # how long the next spare waits for the last one to report


def _in_child(body: Callable[[], object]) -> NoReturn:
    """A forked child's code, which must never return into the zygote's own
    stack (an exception there would have the child serve requests as a second
    zygote): whatever it raises is printed, and the child exits."""
    try:
        body()
    except BaseException:
        traceback.print_exc()
        os._exit(1)
    os._exit(0)


class Spare:
    """A detached shim still without a container, and the zygote's end of its
    socket: the request goes down it; once handed one, the shim closes its end
    when it has told the server its pid (``shim.run``'s ``reported``)."""

    def __init__(self, server: socket.socket) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        pid = os.fork()
        if pid == 0:
            _in_child(lambda: _detach(theirs.fileno()))
        theirs.close()
        os.waitpid(pid, 0)
        self.sock = ours
        self.handed = False
        ours.settimeout(SPARE_READY_WAIT)  # a spare stopped before it is ready is not waited for
        try:
            said = ours.recv(32)  # it is ready when it says who it is
            if not said:
                raise OSError("the spare shim died before it was ready")
            self.pid = int(said)
        except (OSError, ValueError):
            ours.close()
            raise OSError("the spare shim did not say it was ready") from None
        ours.settimeout(None)

    def hand(self, message: bytes, report_fd: int) -> bool:
        """The request, passed on; False if the spare is gone (killed meanwhile)."""
        try:
            socket.send_fds(self.sock, [message], [report_fd])
        except OSError:
            self.sock.close()
            return False
        self.handed = True
        return True

    def dismiss(self) -> None:
        """Its socket closed, it reads EOF and exits; waited for, so that a
        server stopping leaves no process behind once its zygote is gone. (A
        spare handed its container is a shim: it lives on.)"""
        self.sock.close()
        if self.handed:
            return
        with contextlib.suppress(OSError):
            pidfd = os.pidfd_open(self.pid)
            try:
                select.select([pidfd], [], [], SPARE_EXIT_WAIT)
            finally:
                os.close(pidfd)


def _detach(keep: int) -> None:
    """The forked child: nothing of the zygote's but its stdio and the spare's
    socket (not the server's socket, not another shim's report pipe), its own
    session (the server's signals do not reach it), and the double fork (the
    shim is nobody's child but init's); the grandchild waits as the spare."""
    os.closerange(3, keep)
    os.closerange(keep + 1, MAX_FD)
    os.setsid()
    if os.fork() == 0:
        _in_child(lambda: _wait_for_a_container(socket.socket(fileno=keep)))


def _wait_for_a_container(sock: socket.socket) -> None:
    """The spare's life before its container: prepared, then one request, then
    :func:`.shim.run`, which closes ``sock`` once it has reported its pid. EOF
    (the zygote gone) ends it."""
    wake_r = shim.prepare()
    try:
        sock.send(str(os.getpid()).encode())
        message, fds, _flags, _addr = socket.recv_fds(sock, 4096, 1)
    except OSError:
        return
    if not message or not fds:
        return
    try:
        shim.run(os.fsdecode(message), fds[0], wake_r, reported=sock.close)
    except BaseException as exc:
        shim.report(fds[0], {"error": f"the shim failed: {exc!r}"})
        raise


def next_spare(server: socket.socket) -> Spare:
    """A new spare; one killed while it was being made is made again. An
    OSError after three tries (no more processes?) is the caller's."""
    for _attempt in range(2):
        with contextlib.suppress(OSError):
            return Spare(server)
    return Spare(server)


def serve(sock: socket.socket) -> None:
    """Requests, each handed to the spare. The next spare is forked once the
    last has told the server its pid (or when a request comes first): a fork
    and the shim's own start would compete for a CPU while a CreateContainer
    waits. A request no spare can be made for is answered with the error, and
    the zygote leaves (the server's launcher starts another at its next create)."""
    spare: Spare | None = next_spare(sock)
    last: Spare | None = None  # handed its container, its report still to come
    try:
        while True:
            if spare is None and last is not None:
                ready, _, _ = select.select([sock, last.sock], [], [], REPORT_WAIT)
                if sock not in ready:
                    last.dismiss()
                    last, spare = None, next_spare(sock)
                    continue
            try:
                message, fds, _flags, _addr = socket.recv_fds(sock, 4096, 1)
            except OSError:
                return
            if not message:
                return  # the server is gone
            if not fds:
                continue
            report_fd = fds[0]
            try:
                if spare is None:  # a request before the last one's report
                    spare = next_spare(sock)
                while not spare.hand(message, report_fd):
                    spare = next_spare(sock)  # the one we had died: its successor takes it
            except OSError as exc:
                shim.report(report_fd, {"error": f"the shim server cannot fork a shim: {exc}"})
                return
            finally:
                os.close(report_fd)
            if last is not None:
                last.dismiss()
            last, spare = spare, None
    finally:
        for left in (last, spare):
            if left is not None:
                left.dismiss()


def main(argv: list[str]) -> None:
    serve(socket.socket(fileno=int(argv[0])))


if __name__ == "__main__":
    main(sys.argv[1:])
