"""The pre-forked shim server: a shim per container at the cost of a fork.

A shim started with ``python -c`` spends most of its first 100 ms importing
modules, more than our whole budget for our share of a container's create
(runc's cycle + 40 ms, ``benchmarks/containers.py``). So the backend starts this process once, with
the shim's modules already imported, and asks it for each shim: it forks,
the child becomes a session leader and forks again, and the grandchild,
parented by init like any detached shim, runs :func:`.shim.run`. Android's
zygote starts apps the same way, for the same reason.

The request is one SOCK_SEQPACKET message: the container's state dir, with
the write end of a pipe attached (SCM_RIGHTS) on which the shim reports
its own pid, then the init's (or runc create's error), exactly the lines a
spawned shim prints on its stdout; the server waits for the first only. When the
server goes away (even by SIGKILL) the socket reads EOF and this process
exits; the shims it made are not its children any more and live on.
"""

from __future__ import annotations

import os
import socket
import sys

from . import shim


def serve(sock: socket.socket) -> None:
    while True:
        try:
            message, fds, _flags, _addr = socket.recv_fds(sock, 4096, 1)
        except OSError:
            return
        if not message:
            return  # the server is gone
        if not fds:
            continue
        report_fd = fds[0]
        pid = os.fork()
        if pid == 0:
            sock.close()
            os.setsid()  # its own session: the server's signals do not reach it
            if os.fork() > 0:
                os._exit(0)  # the double fork: the shim is nobody's child but init's
            shim.run(os.fsdecode(message), report_fd)
        os.close(report_fd)
        os.waitpid(pid, 0)


def main(argv: list[str]) -> None:
    serve(socket.socket(fileno=int(argv[0])))


if __name__ == "__main__":
    main(sys.argv[1:])
