"""Small file-system helpers shared by the stores, and the crash points that test them."""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import tempfile
import time
from pathlib import Path
from typing import Any


def atomic_write(path: Path, data: bytes, *, durable: bool = True, mode: int = 0o600) -> None:
    """Write ``data`` so that a crash leaves either the old file or the new one
    (a temporary file beside it, renamed over it): the project's one way to
    replace a file.

    ``durable`` also survives the machine losing power (fsync). Runtime state
    (the containers' records under the state dir) does without: it describes
    processes, and after a power loss there are none left to describe; a
    server crash alone never loses what the kernel has been given."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        if mode != 0o600:  # mkstemp's
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, data: Any, *, durable: bool = True, mode: int = 0o600) -> None:
    """``atomic_write`` of ``data`` as indented JSON with sorted keys."""
    text = json.dumps(data, indent=2, sort_keys=True)
    atomic_write(path, text.encode(), durable=durable, mode=mode)


# mount(2) and umount2(2) straight from libc: a mount is one system call, and
# running /bin/mount for it costs a process (milliseconds on every pod and
# container create).
_libc = ctypes.CDLL(None, use_errno=True)
MS_NOSUID, MS_NODEV, MS_NOEXEC = 2, 4, 8
MNT_DETACH = 2


def move_aside(path: Path, why: str) -> Path:
    """Rename a file that cannot be used to ``<name>.<why>-<ns>`` beside it,
    kept for whoever looks into why; the new path (even if the rename failed)."""
    aside = path.with_name(f"{path.name}.{why}-{time.time_ns()}")
    with contextlib.suppress(OSError):
        path.rename(aside)
    return aside


def mount(source: str, target: Path, fstype: str, data: str = "", flags: int = 0) -> None:
    if _libc.mount(source.encode(), os.fsencode(target), fstype.encode(), flags, data.encode()):
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), str(target))


def umount(target: Path, flags: int = 0) -> None:
    if _libc.umount2(os.fsencode(target), flags):
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), str(target))


CRASH_AT = "TEACHING_CRI_CRASH_AT"


def crash_point(name: str) -> None:
    """A named point where the fault-injection tests (``tests/test_crash_points.py``)
    make the server die as a power cut or an OOM kill would: SIGKILL, no
    cleanup, nothing flushed. With ``TEACHING_CRI_CRASH_AT=<name>`` set, here;
    otherwise nothing."""
    if os.environ.get(CRASH_AT) == name:
        os.kill(os.getpid(), signal.SIGKILL)
