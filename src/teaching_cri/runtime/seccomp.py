"""Seccomp: which profile a container gets, and that profile in the OCI form runc applies.

CRI names a profile three ways (``LinuxContainerSecurityContext.seccomp``; the
deprecated ``seccomp_profile_path`` when that is unset): ``RuntimeDefault``,
the runtime's own profile; ``Localhost``, a JSON file on this machine;
``Unconfined``, none. No profile at all is unconfined too (the kubelet sends
RuntimeDefault when a pod asks for it), and a privileged container is never
filtered, whatever it names (containerd's ``GenerateSeccompSpecOpts``).

A profile reaches runc as the spec's ``linux.seccomp`` (runtime-spec
config-linux.md, "Seccomp"), which runc turns into a BPF filter with
libseccomp. Profiles on disk are usually in Docker's format, a superset: an
``archMap`` instead of ``architectures``, and rules that apply only to some
architectures, capabilities or kernels (``includes`` / ``excludes``).
:func:`to_oci` resolves those for this machine and this container's
capabilities, as moby's ``profiles/seccomp`` loader does; a profile already in
the OCI form passes through it unchanged.

The default profile, ``seccomp_default.json`` beside this module, has the rules
of moby's ``profiles/seccomp/default.json`` (github.com/moby/moby, Apache
License 2.0; the same profile containerd compiles into
``contrib/seccomp/seccomp_default.go``), regrouped, with a comment on the
rules that need one: everything ordinary programs use is allowed, the rest
fails with EPERM, and syscalls that need a capability (mount, sethostname,
ptrace, ...) are allowed only when the container has it.

Where a ``Localhost`` profile may live: a relative ``localhost_ref`` is a file
under the server's profile root (option ``seccomp-profile-root``) and may not
climb out of it; an absolute path is taken as given, as containerd does,
because that is what real clients send (the kubelet joins its own
``/var/lib/kubelet/seccomp`` to the pod's ``localhostProfile``; critest writes
its profiles to a temporary directory). The caller of CRI is trusted with
root on the node in any case (it can bind the host's / into a privileged
container), so refusing absolute paths would break clients without protecting
anything.
"""

from __future__ import annotations

import functools
import json
import os
import platform
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from ..api import api_pb2
from ..errors import InvalidArgument

RUNTIME_DEFAULT, LOCALHOST, UNCONFINED = "RuntimeDefault", "Localhost", "Unconfined"
LOCALHOST_PREFIX = "localhost/"
# seccomp_profile_path's words (the kubelet's before CRI had SecurityProfile).
DEPRECATED_DEFAULTS = ("runtime/default", "docker/default")
DEPRECATED_UNCONFINED = "unconfined"

ACTIONS = frozenset(
    {
        "SCMP_ACT_KILL",
        "SCMP_ACT_KILL_PROCESS",
        "SCMP_ACT_KILL_THREAD",
        "SCMP_ACT_TRAP",
        "SCMP_ACT_ERRNO",
        "SCMP_ACT_TRACE",
        "SCMP_ACT_ALLOW",
        "SCMP_ACT_LOG",
        "SCMP_ACT_NOTIFY",
    }
)
OPERATORS = frozenset(
    {
        "SCMP_CMP_NE",
        "SCMP_CMP_LT",
        "SCMP_CMP_LE",
        "SCMP_CMP_EQ",
        "SCMP_CMP_GE",
        "SCMP_CMP_GT",
        "SCMP_CMP_MASKED_EQ",
    }
)
# uname's machine → (Go's GOARCH, which includes/excludes name; libseccomp's name).
_ARCHES = {
    "x86_64": ("amd64", "SCMP_ARCH_X86_64"),
    "aarch64": ("arm64", "SCMP_ARCH_AARCH64"),
    "armv7l": ("arm", "SCMP_ARCH_ARM"),
    "armv6l": ("arm", "SCMP_ARCH_ARM"),
    "i686": ("386", "SCMP_ARCH_X86"),
    "i386": ("386", "SCMP_ARCH_X86"),
    "ppc64le": ("ppc64le", "SCMP_ARCH_PPC64LE"),
    "s390x": ("s390x", "SCMP_ARCH_S390X"),
    "riscv64": ("riscv64", "SCMP_ARCH_RISCV64"),
    "mips64": ("mips64", "SCMP_ARCH_MIPS64"),
    "mips64el": ("mips64le", "SCMP_ARCH_MIPSEL64"),
}


class ProfileError(ValueError):
    """A profile document that is not a seccomp profile; the message says where."""


@dataclass(frozen=True)
class Choice:
    """The profile a container gets: its kind, and for Localhost the file and
    its parsed document. ``source`` names the request's field and value for
    messages and notes; ``why`` says why when the request was overruled."""

    kind: str
    source: str = ""
    path: Path | None = None
    document: Mapping[str, Any] = field(default_factory=dict)
    why: str = ""


def choose(sc: api_pb2.LinuxContainerSecurityContext, profile_root: Path | None) -> Choice:
    """The profile the security context asks for, its file read and checked:
    anything wrong is INVALID_ARGUMENT naming the field and value, before a
    container exists."""
    if sc.privileged:
        return Choice(UNCONFINED, why="privileged: never filtered")
    if sc.HasField("seccomp"):
        profile = sc.seccomp
        kind = profile.profile_type
        if kind != api_pb2.SecurityProfile.Localhost and profile.localhost_ref:
            raise InvalidArgument(
                f"seccomp.localhost_ref {profile.localhost_ref!r} is set, but "
                f"seccomp.profile_type is not Localhost"
            )
        if kind == api_pb2.SecurityProfile.RuntimeDefault:
            return Choice(RUNTIME_DEFAULT, "seccomp.profile_type RuntimeDefault")
        if kind == api_pb2.SecurityProfile.Unconfined:
            return Choice(UNCONFINED, "seccomp.profile_type Unconfined")
        if kind == api_pb2.SecurityProfile.Localhost:
            return _localhost("seccomp.localhost_ref", profile.localhost_ref, profile_root)
        raise InvalidArgument(
            f"seccomp.profile_type {kind} is not RuntimeDefault (0), Unconfined (1) "
            "or Localhost (2)"
        )
    path = sc.seccomp_profile_path
    if not path:
        return Choice(UNCONFINED, why="no profile asked for")
    where = f"seccomp_profile_path {path!r}"
    if path in DEPRECATED_DEFAULTS:
        return Choice(RUNTIME_DEFAULT, where)
    if path == DEPRECATED_UNCONFINED:
        return Choice(UNCONFINED, where)
    if path.startswith(LOCALHOST_PREFIX):
        return _localhost("seccomp_profile_path", path, profile_root)
    raise InvalidArgument(
        f"{where}: expected runtime/default, docker/default, unconfined or localhost/<path>"
    )


def _localhost(name: str, ref: str, profile_root: Path | None) -> Choice:
    """A Localhost profile's file (see the module's docstring for where it may
    be), read and checked now, so a bad one is refused before anything exists."""
    where = f"{name} {ref!r}"
    if ref.startswith(LOCALHOST_PREFIX):  # containerd trims it from localhost_ref too
        ref = ref[len(LOCALHOST_PREFIX) :]
    if not ref:
        raise InvalidArgument(f"{where}: a Localhost profile needs a path")
    if os.path.isabs(ref):
        path = Path(os.path.normpath(ref))
    elif profile_root is None:
        raise InvalidArgument(f"{where}: a relative path, and no seccomp-profile-root is set")
    else:
        root = Path(os.path.realpath(profile_root))
        path = Path(os.path.realpath(root / ref))
        if not path.is_relative_to(root):
            raise InvalidArgument(f"{where}: lies outside the seccomp profile root {str(root)!r}")
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InvalidArgument(f"{where}: no such profile ({path})") from None
    except IsADirectoryError:
        raise InvalidArgument(f"{where}: {path} is a directory, not a profile") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidArgument(f"{where}: cannot read {path}: {exc}") from None
    try:
        document = json.loads(text)
        check(document)
    except (ValueError, ProfileError) as exc:
        raise InvalidArgument(f"{where}: not a seccomp profile: {exc}") from None
    return Choice(LOCALHOST, where, path, document)


@functools.cache
def default_profile() -> Mapping[str, Any]:
    """The RuntimeDefault profile, in Docker's form (read once)."""
    text = resources.files(__package__).joinpath("seccomp_default.json").read_text("utf-8")
    document: dict[str, Any] = json.loads(text)
    return document


def linux_seccomp(choice: Choice, capabilities: Iterable[str]) -> dict[str, Any] | None:
    """The spec's ``linux.seccomp`` for a choice (None: unconfined), resolved
    against the container's capabilities (its bounding set, as moby's loader)."""
    if choice.kind == UNCONFINED:
        return None
    document = default_profile() if choice.kind == RUNTIME_DEFAULT else choice.document
    try:
        return to_oci(document, capabilities)
    except ProfileError as exc:
        raise InvalidArgument(f"{choice.source}: not a seccomp profile: {exc}") from None


def check(document: object) -> None:
    """The checks that do not depend on the machine or the container: a
    ProfileError saying where the document goes wrong."""
    to_oci(document, (), arch=("", ""), kernel=(0, 0))


def _strings(value: object, where: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ProfileError(f"{where} must be a list of strings")
    return list(value)


def _kernel(text: object, where: str) -> tuple[int, int]:
    parts = str(text).split(".")
    if len(parts) < 2 or not all(p.isdigit() for p in parts[:2]):
        raise ProfileError(f"{where} {text!r} is not a kernel version like 4.8")
    return int(parts[0]), int(parts[1])


def _errno(value: object, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 4096:
        raise ProfileError(f"{where} {value!r} is not an errno")
    return value


def host_arch() -> tuple[str, str]:
    """(GOARCH, libseccomp architecture) of this machine; ('', '') if unknown."""
    return _ARCHES.get(platform.machine(), ("", ""))


def host_kernel() -> tuple[int, int]:
    release = os.uname().release
    try:
        return _kernel(release.split("-", 1)[0], "kernel")
    except ProfileError:
        return (0, 0)


def to_oci(
    document: object,
    capabilities: Iterable[str],
    *,
    arch: tuple[str, str] | None = None,
    kernel: tuple[int, int] | None = None,
) -> dict[str, Any]:
    """A profile in Docker's or the OCI form as the OCI ``linux.seccomp``:
    the architectures for this machine from ``archMap``, and only the rules
    whose ``includes`` hold and ``excludes`` do not (by GOARCH name,
    capability, minimum kernel), as moby's ``setupSeccomp``."""
    if not isinstance(document, dict):
        raise ProfileError("the profile must be a JSON object")
    goarch, native = arch or host_arch()
    version = kernel or host_kernel()
    caps = set(capabilities)
    action = document.get("defaultAction")
    if action not in ACTIONS:
        raise ProfileError(f"defaultAction {action!r} is not one of {', '.join(sorted(ACTIONS))}")
    out: dict[str, Any] = {"defaultAction": action}
    if "defaultErrnoRet" in document:
        out["defaultErrnoRet"] = _errno(document["defaultErrnoRet"], "defaultErrnoRet")
    architectures = _strings(document.get("architectures"), "architectures")
    arch_map = document.get("archMap") or []
    if architectures and arch_map:
        raise ProfileError("architectures and archMap may not both be given")
    if not isinstance(arch_map, list):
        raise ProfileError("archMap must be a list")
    for i, entry in enumerate(arch_map):
        if not isinstance(entry, dict) or not isinstance(entry.get("architecture"), str):
            raise ProfileError(f"archMap[{i}] must name an architecture")
        subs = _strings(entry.get("subArchitectures"), f"archMap[{i}].subArchitectures")
        if entry["architecture"] == native:
            architectures += [entry["architecture"], *subs]
    if architectures:
        out["architectures"] = architectures
    for key, value in document.items():
        if key in ("flags", "listenerPath", "listenerMetadata"):
            out[key] = value
    syscalls = document.get("syscalls") or []
    if not isinstance(syscalls, list):
        raise ProfileError("syscalls must be a list")
    out["syscalls"] = [
        rule
        for i, call in enumerate(syscalls)
        if (rule := _rule(call, f"syscalls[{i}]", goarch, caps, version)) is not None
    ]
    return out


def _conditions(
    conditions: object, where: str, kernel: tuple[int, int]
) -> tuple[list[str], list[str], tuple[int, int] | None]:
    """An includes or excludes: (arches, capabilities, minimum kernel)."""
    if conditions is None:
        return [], [], None
    if not isinstance(conditions, dict):
        raise ProfileError(f"{where} must be an object")
    arches = _strings(conditions.get("arches"), f"{where}.arches")
    caps = _strings(conditions.get("caps"), f"{where}.caps")
    minimum = conditions.get("minKernel")
    return arches, caps, _kernel(minimum, f"{where}.minKernel") if minimum else None


def _included(
    conditions: object, where: str, goarch: str, caps: set[str], kernel: tuple[int, int]
) -> bool:
    """includes: every condition given holds (all its capabilities present)."""
    arches, wanted, minimum = _conditions(conditions, where, kernel)
    return (
        (not arches or goarch in arches)
        and all(c in caps for c in wanted)
        and (minimum is None or kernel >= minimum)
    )


def _excluded(
    conditions: object, where: str, goarch: str, caps: set[str], kernel: tuple[int, int]
) -> bool:
    """excludes: any condition given holds (one of its capabilities is enough)."""
    arches, unwanted, minimum = _conditions(conditions, where, kernel)
    return (
        goarch in arches
        or any(c in caps for c in unwanted)
        or (minimum is not None and kernel >= minimum)
    )


def _rule(
    call: object, where: str, goarch: str, caps: set[str], kernel: tuple[int, int]
) -> dict[str, Any] | None:
    if not isinstance(call, dict):
        raise ProfileError(f"{where} must be an object")
    names = _strings(call.get("names"), f"{where}.names")
    if call.get("name"):
        if names:
            raise ProfileError(f"{where}: use either name or names, not both")
        if not isinstance(call["name"], str):
            raise ProfileError(f"{where}.name must be a string")
        names = [call["name"]]
    if not names:
        raise ProfileError(f"{where} names no syscall")
    action = call.get("action")
    if action not in ACTIONS:
        raise ProfileError(f"{where}.action {action!r} is not one of {', '.join(sorted(ACTIONS))}")
    rule: dict[str, Any] = {"names": names, "action": action}
    if "errnoRet" in call:
        rule["errnoRet"] = _errno(call["errnoRet"], f"{where}.errnoRet")
    args = call.get("args") or []
    if not isinstance(args, list):
        raise ProfileError(f"{where}.args must be a list")
    for j, a in enumerate(args):
        if not isinstance(a, dict) or a.get("op") not in OPERATORS:
            raise ProfileError(
                f"{where}.args[{j}].op must be one of {', '.join(sorted(OPERATORS))}"
            )
        for key in ("index", "value", "valueTwo"):
            if key in a and (isinstance(a[key], bool) or not isinstance(a[key], int)):
                raise ProfileError(f"{where}.args[{j}].{key} must be a number")
    if args:
        rule["args"] = [
            {k: a[k] for k in ("index", "value", "valueTwo", "op") if k in a} for a in args
        ]
    included = _included(call.get("includes"), f"{where}.includes", goarch, caps, kernel)
    excluded = _excluded(call.get("excludes"), f"{where}.excludes", goarch, caps, kernel)
    return rule if included and not excluded else None
