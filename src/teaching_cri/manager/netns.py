"""A pod's network namespace, created before its infra container and pinned.

A namespace lives as long as something holds it: a process in it, an open
descriptor, or a bind mount of its ``/proc/<pid>/ns/net`` file. CRI runtimes
pin it with a bind mount on a file of their own (iSulad and containerd under
``/var/run/netns``-like dirs) so that the namespace exists *before* the
infra container (CNI can run first, iSulad's setup-network-first mode) and
*after* it (the network is torn down after the infra stops). util-linux's
``unshare --net=<file>`` does exactly that: a new namespace, bind-mounted on
``<file>``; ``umount`` and unlink end it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from pathlib import Path

from ..errors import FailedPrecondition


async def _run(*argv: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
    )
    _out, err = await proc.communicate()
    return proc.returncode or 0, err.decode(errors="replace").strip()


async def create(path: Path) -> Path:
    """A new network namespace pinned at ``path`` (which must not exist)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o711)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o444)
    except FileExistsError:
        raise FailedPrecondition(f"network namespace {path} exists already") from None
    os.close(fd)
    code, err = await _run("unshare", f"--net={path}", "true")
    if code != 0:
        path.unlink(missing_ok=True)
        raise FailedPrecondition(f"creating network namespace {path}: {err or f'exit {code}'}")
    return path


def is_pinned(path: Path) -> bool:
    return os.path.ismount(path)


async def remove(path: Path) -> None:
    """Unpin and delete; nothing there is not an error (Remove is idempotent)."""
    if is_pinned(path):
        code, err = await _run("umount", str(path))
        if code != 0 and is_pinned(path):
            raise FailedPrecondition(f"unpinning network namespace {path}: {err}")
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
