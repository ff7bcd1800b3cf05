"""A TCP connection to a port inside a pod's network namespace, with or without root.

A socket belongs to the network namespace of the thread that creates it, and
keeps it for life; so the server needs someone *inside* the pod's namespace
only for the moment of ``connect``, after which the socket is an ordinary one
in its event loop. Who that someone is depends on how the pod was made:

``shared``
    The pod's network namespace is the server's own: the ``processes`` tier
    (no namespaces at all) and pods on the host's network. Connect directly.
``setns``
    As root (the ``runc`` backend): a short-lived thread of the server enters
    the namespace with setns(2) and connects. Root may enter any namespace.
``helper``
    Without root (``rootless-runc``): the pod's network namespace is owned by
    the pod's user namespace, and setns(2) into it is allowed only to a
    process that holds CAP_SYS_ADMIN *there*, that is, one that has joined
    that user namespace first. The kernel lets only a single-threaded process
    join a user namespace, and the server has many threads (gRPC's, the event
    loop's). So a fresh helper process (this file, run as a script by the
    server's Python: ``python -I -S nsconnect.py <netns> <port> <fd>``) asks
    the kernel which user namespace owns the network namespace (the
    NS_GET_USERNS ioctl), joins it, joins the network namespace, connects, and
    hands the connected socket back to the server over a unix socketpair
    (SCM_RIGHTS), then exits. No bytes are relayed: the server then owns a
    socket inside the pod, exactly as in the other two ways.

:func:`connect` returns a connected, non-blocking socket whichever way is
taken, so any transport (the websocket port-forward now, SPDY later) can
wrap it in its own streams. It blocks: call it from a thread
(``asyncio.to_thread``).

This module imports nothing from the package, so the helper starts in a few
milliseconds without loading the server's code.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import socket
import subprocess
import sys
import threading
from typing import Any

SHARED = "shared"
SETNS = "setns"
HELPER = "helper"
WAYS = (SHARED, SETNS, HELPER)

CLONE_NEWNET = 0x40000000
CLONE_NEWUSER = 0x10000000
NS_GET_USERNS = 0xB701  # _IO(0xb7, 0x1): an fd for the user namespace owning a namespace


def same_namespace(a: str, b: str) -> bool:
    """Two namespace files name the same namespace when their inodes are equal."""
    try:
        sa, sb = os.stat(a), os.stat(b)
    except OSError:
        return False
    return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)


def way_into(netns: str) -> str:
    """Which way reaches a port in ``netns`` from this process (see the module)."""
    if same_namespace(netns, "/proc/self/ns/net"):
        return SHARED
    if os.geteuid() == 0:
        return SETNS
    return HELPER


def connect(netns: str, port: int, way: str = "", timeout: float = 10.0) -> socket.socket:
    """A non-blocking TCP socket connected to 127.0.0.1:``port`` inside ``netns``.

    ``way`` is :func:`way_into`'s answer (computed when not given). Raises
    OSError saying what failed (a refused port: ECONNREFUSED)."""
    way = way or way_into(netns)
    if way == SHARED:
        sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    elif way == SETNS:
        sock = _connect_in_a_thread(netns, port, timeout)
    elif way == HELPER:
        sock = _connect_with_a_helper(netns, port, timeout)
    else:
        raise ValueError(f"unknown way {way!r}: one of {', '.join(WAYS)}")
    sock.setblocking(False)
    return sock


def _setns(fd: int, nstype: int, what: str) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, nstype) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{os.strerror(err)} (joining {what})")


def _connect_in_a_thread(netns: str, port: int, timeout: float) -> socket.socket:
    """Root's way: the thread's namespace changes, the server's other threads'
    do not; the thread ends with the connect."""
    result: dict[str, Any] = {}

    def enter_and_connect() -> None:
        try:
            fd = os.open(netns, os.O_RDONLY | os.O_CLOEXEC)
            try:
                _setns(fd, CLONE_NEWNET, netns)
            finally:
                os.close(fd)
            result["socket"] = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        except OSError as exc:
            result["error"] = exc

    thread = threading.Thread(target=enter_and_connect, name=f"portforward-{port}")
    thread.start()
    thread.join()
    if "error" in result:
        raise result["error"]
    sock: socket.socket = result["socket"]
    return sock


def _connect_with_a_helper(netns: str, port: int, timeout: float) -> socket.socket:
    """Without root: a single-threaded helper process connects and passes the
    socket back. Its stderr is kept for the error message."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        argv = [sys.executable, "-I", "-S", __file__, netns, str(port), str(theirs.fileno())]
        helper = subprocess.Popen(
            argv,
            pass_fds=[theirs.fileno()],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        theirs.close()
        try:
            ours.settimeout(timeout + 5)
            message, fds, _flags, _addr = socket.recv_fds(ours, 1024, 1)
        except TimeoutError:
            helper.kill()
            raise OSError(errno.ETIMEDOUT, "the port-forward helper did not answer") from None
        finally:
            try:
                _out, err = helper.communicate(timeout=5)
            except subprocess.TimeoutExpired:
                helper.kill()
                _out, err = helper.communicate()
        if fds:
            return socket.socket(fileno=fds[0])
        if message.startswith(b"E"):
            code, _, text = message[1:].decode(errors="replace").partition(":")
            raise OSError(int(code) if code.isdigit() else errno.EIO, text)
        detail = err.decode(errors="replace").strip().splitlines()[-1:] or ["no answer"]
        raise OSError(errno.EIO, f"the port-forward helper failed: {detail[0]}")
    finally:
        ours.close()
        theirs.close()


def helper_main(argv: list[str]) -> int:
    """The helper's whole life (single-threaded: nothing here starts a thread).

    Opens the network namespace, asks which user namespace owns it, joins that
    one (then holding every capability over the pod's namespaces), then the
    network namespace, connects and sends the socket, or ``E<errno>:<text>``."""
    netns, port, reply_fd = argv[0], int(argv[1]), int(argv[2])
    reply = socket.socket(fileno=reply_fd)
    try:
        fd = os.open(netns, os.O_RDONLY | os.O_CLOEXEC)
        try:
            owner = fcntl.ioctl(fd, NS_GET_USERNS)
            try:
                if not same_namespace(f"/proc/self/fd/{owner}", "/proc/self/ns/user"):
                    _setns(owner, CLONE_NEWUSER, "the pod's user namespace")
            finally:
                os.close(owner)
            _setns(fd, CLONE_NEWNET, "the pod's network namespace")
        finally:
            os.close(fd)
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    except OSError as exc:
        reply.sendall(f"E{exc.errno or errno.EIO}:{exc.strerror or exc}".encode())
        return 1
    socket.send_fds(reply, [b"ok"], [sock.fileno()])
    return 0


if __name__ == "__main__":
    sys.exit(helper_main(sys.argv[1:]))
