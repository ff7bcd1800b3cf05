"""Which backend runs containers, and whether it can.

``--runtime`` names one of :data:`BACKEND_NAMES`. ``auto`` picks runc when the
server runs as root and Debian's runc is installed, and the unprivileged
backend otherwise, whose best tier here is rootless runc (:mod:`.rootless`).
``fake`` (:mod:`.fake`) runs no program at all: for tests and for learning
the flows, never for isolation; ``auto`` never picks it.
The probe is what Status's RuntimeReady condition and its verbose info
report, including, honestly, what a backend does not isolate.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from ..errors import FailedPrecondition
from . import cgroups
from .backend import Backend
from .fake import NOT_ISOLATED as FAKE_NOT_ISOLATED
from .fake import FakeBackend
from .plainrun import NOT_ISOLATED as PLAIN_NOT_ISOLATED
from .rootless import NOT_ISOLATED
from .runc import RuncBackend

BACKEND_NAMES = ("auto", "runc", "unprivileged", "processes", "fake")


@dataclass(frozen=True)
class BackendProbe:
    requested: str
    name: str
    available: bool
    reason: str = ""  # CamelCase, for RuntimeCondition.reason when not available
    message: str = ""
    details: dict[str, str] = field(default_factory=dict)
    not_isolated: tuple[str, ...] = ()


@lru_cache(maxsize=8)
def _runc_version(path: str) -> str:
    try:
        out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unknown ({exc})"
    return out.stdout.splitlines()[0] if out.stdout else "unknown"


def user_namespaces_allowed() -> bool:
    """Can an unprivileged process create a user namespace here?"""
    try:
        if Path("/proc/sys/user/max_user_namespaces").read_text().strip() == "0":
            return False
    except OSError:
        return False
    clone = Path("/proc/sys/kernel/unprivileged_userns_clone")
    return not clone.exists() or clone.read_text().strip() != "0"


def probe(requested: str, runc: str = "runc") -> BackendProbe:
    """Look at the machine and say what ``requested`` would run on."""
    root = os.geteuid() == 0
    runc_path = shutil.which(runc)
    name = requested
    if requested == "fake":
        return BackendProbe(
            requested,
            "fake",
            True,
            details={"tier": "fake", "cgroup_driver": "none"},
            not_isolated=FAKE_NOT_ISOLATED,
        )
    if requested == "auto":
        name = "runc" if root and runc_path else "unprivileged"
    if name == "runc":
        if not root:
            return BackendProbe(
                requested,
                name,
                False,
                "RuntimeNeedsRoot",
                "the runc backend needs root; use --runtime unprivileged",
            )
        if runc_path is None:
            return BackendProbe(
                requested,
                name,
                False,
                "RuntimeBinaryMissing",
                f"{runc!r} not found on PATH (apt-get install runc)",
            )
        return BackendProbe(
            requested,
            name,
            True,
            details={
                "runc": runc_path,
                "runc_version": _runc_version(runc_path),
                "tier": "runc",
                "cgroup_driver": "cgroupfs",
                "cgroup_version": str(cgroups.version()),
            },
        )
    # Without root: rootless runc, when runc is here and user namespaces are
    # allowed; else (or when asked for) plain processes.
    userns = user_namespaces_allowed()
    details = {"user_namespaces": "allowed" if userns else "not allowed"}
    if name == "processes" or runc_path is None or not userns:
        why = (
            "asked for"
            if name == "processes"
            else (f"{runc!r} is not installed" if runc_path is None else "user namespaces are off")
        )
        return BackendProbe(
            requested,
            name,
            True,
            details=details | {"tier": "processes", "why": why, "cgroup_driver": "none"},
            not_isolated=PLAIN_NOT_ISOLATED,
        )
    return BackendProbe(
        requested,
        "unprivileged",
        True,
        details=details
        | {
            "tier": "rootless-runc",
            "runc": runc_path,
            "runc_version": _runc_version(runc_path),
            "cgroup_driver": "none (rootless)",
        },
        not_isolated=NOT_ISOLATED,
    )


def open_backend(found: BackendProbe, state: Path, runc: str = "runc") -> Backend:
    """The backend a probe found: runc as root, rootless runc, plain processes, or the fake."""
    if not found.available:
        raise FailedPrecondition(found.message)
    if found.name == "fake":
        return FakeBackend(state)
    return RuncBackend(state, runc, tier=found.details.get("tier", ""))
