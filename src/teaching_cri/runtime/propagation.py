"""Mount propagation: can a host path carry mounts into a container, and back?

A CRI ``Mount`` asks for one of three propagations (the kernel's
``Documentation/filesystems/sharedsubtree.rst``):

* ``PROPAGATION_PRIVATE`` (rprivate): the container's bind is cut off; later
  mounts on either side stay on that side.
* ``PROPAGATION_HOST_TO_CONTAINER`` (rslave): what the host mounts under the
  path later appears in the container, not the other way round.
* ``PROPAGATION_BIDIRECTIONAL`` (rshared): both ways; a container that mounts
  there (it must be privileged to mount at all) changes the host.

The bind runc makes inherits its propagation from the mount the host path is
on, so a slave or shared bind is only possible from a mount that has a peer
group (``shared:N`` in ``/proc/self/mountinfo``) or a master (``master:N``).
A host path on a private mount (on this machine ``/`` itself is private) can
never propagate: containerd refuses such a container before runc is run
(``ensureShared`` / ``ensureSharedOrSlave`` in its CRI plugin), and so does
this module, naming the path and the mount point so the node's admin knows
what to make shared (``mount --bind D D; mount --make-rshared D``).

runc also needs the container's root mount (``linux.rootfsPropagation``) to be
shared, or the bind would become a slave of the container's own ``/`` and
nothing it mounts would reach the host: containerd sets it to ``rshared`` when
any mount is bidirectional and to ``rslave`` when one is host-to-container.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from ..api import api_pb2
from ..errors import FailedPrecondition

MOUNTINFO = Path("/proc/self/mountinfo")

OPTION_OF = {
    api_pb2.PROPAGATION_PRIVATE: "rprivate",
    api_pb2.PROPAGATION_HOST_TO_CONTAINER: "rslave",
    api_pb2.PROPAGATION_BIDIRECTIONAL: "rshared",
}

_ESCAPE = re.compile(r"\\([0-7]{3})")


def _unescape(field: str) -> str:
    """mountinfo writes space, tab, newline and backslash as octal (``\\040``)."""
    return _ESCAPE.sub(lambda m: chr(int(m[1], 8)), field)


@dataclass(frozen=True)
class MountInfo:
    """One line of ``/proc/<pid>/mountinfo`` (proc(5)): the parts that matter here."""

    mount_id: int
    parent_id: int
    root: str
    mount_point: str
    optional: tuple[str, ...]  # e.g. ("shared:1",), ("master:3",), ()
    fs_type: str
    source: str

    @classmethod
    def parse(cls, line: str) -> MountInfo:
        fields = line.split()
        try:
            dash = fields.index("-", 6)
            return cls(
                mount_id=int(fields[0]),
                parent_id=int(fields[1]),
                root=_unescape(fields[3]),
                mount_point=_unescape(fields[4]),
                optional=tuple(fields[6:dash]),
                fs_type=fields[dash + 1],
                source=_unescape(fields[dash + 2]) if len(fields) > dash + 2 else "",
            )
        except (ValueError, IndexError):
            raise ValueError(f"not a mountinfo line: {line!r}") from None

    @property
    def shared(self) -> bool:
        return any(o.startswith("shared:") for o in self.optional)

    @property
    def slave(self) -> bool:
        return any(o.startswith("master:") for o in self.optional)

    @property
    def propagation(self) -> str:
        """As ``findmnt -o PROPAGATION`` says it."""
        kinds = [k for k, on in (("shared", self.shared), ("slave", self.slave)) if on]
        return ",".join(kinds) or "private"


def read_mountinfo(path: Path = MOUNTINFO) -> list[MountInfo]:
    return [MountInfo.parse(line) for line in path.read_text().splitlines() if line.strip()]


def _contains(mount_point: str, path: str) -> bool:
    """Whether ``path`` is at or under ``mount_point``, by whole path components
    (``/mnt`` does not contain ``/mntx``)."""
    return mount_point == "/" or path == mount_point or path.startswith(mount_point + "/")


def mount_of(path: str, mounts: Iterable[MountInfo] | None = None) -> MountInfo:
    """The mount a path lives on: the longest mount point containing it. Of mounts
    stacked on one mount point the last listed is the one on top, the one seen."""
    real = os.path.realpath(path)
    best: MountInfo | None = None
    for m in read_mountinfo() if mounts is None else mounts:
        if _contains(m.mount_point, real) and (
            best is None or len(m.mount_point) >= len(best.mount_point)
        ):
            best = m
    if best is None:
        raise FailedPrecondition(f"mount propagation: no mount contains {path!r}")
    return best


def ensure_shared(path: str, mounts: Iterable[MountInfo] | None = None) -> None:
    """Bidirectional needs the host path on a mount with a peer group."""
    m = mount_of(path, mounts)
    if not m.shared:
        raise FailedPrecondition(
            f"bidirectional mount propagation: path {path!r} is mounted on "
            f"{m.mount_point!r} but it is not a shared mount ({m.propagation}); "
            f"make it shared on the host: mount --make-rshared {m.mount_point}"
        )


def ensure_shared_or_slave(path: str, mounts: Iterable[MountInfo] | None = None) -> None:
    """Host-to-container needs the host path on a mount that receives mounts:
    shared, or itself a slave."""
    m = mount_of(path, mounts)
    if not (m.shared or m.slave):
        raise FailedPrecondition(
            f"host-to-container mount propagation: path {path!r} is mounted on "
            f"{m.mount_point!r} but it is not a shared or slave mount ({m.propagation}); "
            f"make it shared on the host: mount --make-rshared {m.mount_point}"
        )


def check_host_path(mount: api_pb2.Mount, mounts: Iterable[MountInfo] | None = None) -> None:
    """Refuse, before anything is created, a propagation the host path cannot give.
    A host path that does not exist is not a propagation question: runc refuses
    to bind it (no such file) whatever its propagation."""
    if not os.path.exists(mount.host_path):
        return
    if mount.propagation == api_pb2.PROPAGATION_BIDIRECTIONAL:
        ensure_shared(mount.host_path, mounts)
    elif mount.propagation == api_pb2.PROPAGATION_HOST_TO_CONTAINER:
        ensure_shared_or_slave(mount.host_path, mounts)


def rootfs_propagation(config: api_pb2.ContainerConfig) -> str:
    """``linux.rootfsPropagation``: ``rshared`` if any mount is bidirectional,
    ``rslave`` if any is host-to-container, else '' (left to runc, whose default
    makes the container's mounts slaves of the host's anyway)."""
    asked = {m.propagation for m in config.mounts}
    if api_pb2.PROPAGATION_BIDIRECTIONAL in asked:
        return "rshared"
    if api_pb2.PROPAGATION_HOST_TO_CONTAINER in asked:
        return "rslave"
    return ""
