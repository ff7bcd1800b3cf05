"""The unprivileged tier's spec: what ``runc spec --rootless`` changes, applied to ours.

runc runs without root inside a user namespace in which the only mapped id
is the invoking user's, as root (uid 0 inside is the user outside). That is
real isolation of processes (pid, mount, uts, ipc and network namespaces,
a pivot_root into the image), but not everything a root runtime does:

* no cgroups, so resource limits and updates are recorded, not enforced, and
  stats come from /proc of the container's processes;
* one uid: a container asking to run as another user runs as uid 0 inside
  (the user outside), and the change is stated in the container's notes;
* /sys is the host's, bound read-only, because a user namespace may not
  mount a fresh sysfs for a network namespace it does not own.
"""

from __future__ import annotations

import contextlib
import copy
import os
import stat
from typing import Any

NOT_ISOLATED = (
    "resource limits and updates are recorded, not enforced: no cgroups without root",
    "a single uid is mapped: containers run as uid 0 inside, your user outside",
    "/sys is the host's, read-only",
)


def make_rootless(
    spec: dict[str, Any], uid: int, gid: int, notes: dict[str, str]
) -> dict[str, Any]:
    out = copy.deepcopy(spec)
    linux = out.setdefault("linux", {})
    joined = [ns for ns in linux.get("namespaces", []) if ns["type"] == "user" and ns.get("path")]
    if not joined:  # a pod's container joins its infra's (runc checks the same mappings)
        namespaces = [ns for ns in linux.get("namespaces", []) if ns["type"] != "user"]
        linux["namespaces"] = [*namespaces, {"type": "user"}]
    linux["uidMappings"] = [{"containerID": 0, "hostID": uid, "size": 1}]
    linux["gidMappings"] = [{"containerID": 0, "hostID": gid, "size": 1}]
    linux.pop("cgroupsPath", None)
    if linux.pop("resources", None):
        notes["resources"] = "recorded, not enforced (rootless: no cgroups)"
    user = out["process"].get("user", {})
    if user.get("uid", 0) or user.get("gid", 0) or user.get("additionalGids"):
        notes["user"] = (
            f"runs as uid 0 inside (asked uid {user.get('uid', 0)} gid {user.get('gid', 0)}): "
            "rootless maps one uid"
        )
    out["process"]["user"] = {"uid": 0, "gid": 0}
    mounts = []
    for m in out.get("mounts", []):
        if m.get("type") == "cgroup":
            continue
        if m.get("type") == "sysfs":
            m = {
                "destination": m["destination"],
                "type": "none",
                "source": "/sys",
                "options": ["rbind", "nosuid", "noexec", "nodev", "ro"],
            }
        elif m.get("type") == "devpts":
            m = {**m, "options": [o for o in m.get("options", []) if not o.startswith("gid=")]}
        mounts.append(m)
    out["mounts"] = mounts + device_binds(linux.pop("devices", []), notes)
    return out


def device_binds(devices: list[dict[str, Any]], notes: dict[str, str]) -> list[dict[str, Any]]:
    """A user namespace may not mknod; bind the host's node instead (runc 1.1
    fails to do it itself for a node on the container's /dev tmpfs)."""
    if not devices:
        return []
    by_number: dict[tuple[str, int], str] = {}
    with os.scandir("/dev") as entries:
        for entry in entries:
            with contextlib.suppress(OSError):
                st = entry.stat(follow_symlinks=False)
                kind = "c" if stat.S_ISCHR(st.st_mode) else "b" if stat.S_ISBLK(st.st_mode) else ""
                if kind:
                    by_number.setdefault((kind, st.st_rdev), entry.path)
    binds = []
    skipped = []
    for d in devices:
        if d["path"] in RUNC_DEFAULT_DEVICES:
            continue  # runc binds these itself
        source = by_number.get((d["type"], os.makedev(d["major"], d["minor"])))
        if source is None or not os.access(source, os.R_OK):
            skipped.append(d["path"])
            continue
        binds.append(
            {
                "destination": d["path"],
                "type": "bind",
                "source": source,
                "options": ["bind", "rprivate", "nosuid", "noexec"],
            }
        )
    if skipped:
        notes["devices"] = f"left out, not on the host or not yours to open: {', '.join(skipped)}"
    return binds


# What runc gives every container (libcontainer/specconv AllowedDevices).
RUNC_DEFAULT_DEVICES = frozenset(
    {
        "/dev/null",
        "/dev/zero",
        "/dev/full",
        "/dev/random",
        "/dev/urandom",
        "/dev/tty",
        "/dev/console",
        "/dev/ptmx",
    }
)
