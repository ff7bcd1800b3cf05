"""The OCI runtime spec (``config.json``) for a container, from its CRI config.

runc knows nothing of Kubernetes: it reads a bundle, a directory with the root
file system and a ``config.json`` in the OCI runtime-spec format
(opencontainers/runtime-spec, config.md and config-linux.md). Turning CRI's
``ContainerConfig`` plus the image's config into that file is most of what a
CRI runtime decides about a container, so each decision is a small function
here, named after what it decides, with containerd's defaults
(``pkg/oci/spec.go`` and the CRI plugin's ``container_create_linux.go``).
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..api import api_pb2
from ..errors import FailedPrecondition, InvalidArgument
from . import seccomp
from .propagation import OPTION_OF, check_host_path, rootfs_propagation

OCI_VERSION = "1.0.2"  # what Debian 12's runc 1.1 understands

# containerd's default capabilities (pkg/oci/spec.go, populateDefaultUnixSpec):
# the Docker set, enough for ordinary programs, nothing that reaches the host.
DEFAULT_CAPABILITIES = (
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
)
# Kernel interfaces a container must not read or change (containerd's defaults).
MASKED_PATHS = (
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
)
READONLY_PATHS = ("/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger")
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
SHM_SIZE = "65536k"


@dataclass(frozen=True)
class ImageRunConfig:
    """The parts of an image config (OCI image-spec config.md, ``config``) a container uses."""

    entrypoint: tuple[str, ...] = ()
    cmd: tuple[str, ...] = ()
    env: tuple[str, ...] = ()
    working_dir: str = ""
    user: str = ""
    stop_signal: str = ""

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> ImageRunConfig:
        return cls(
            entrypoint=tuple(config.get("Entrypoint") or ()),
            cmd=tuple(config.get("Cmd") or ()),
            env=tuple(config.get("Env") or ()),
            working_dir=str(config.get("WorkingDir") or ""),
            user=str(config.get("User") or ""),
            stop_signal=str(config.get("StopSignal") or ""),
        )


@dataclass
class SpecNotes:
    """What the spec generator changed from what was asked, for the container's
    status info (CRI's verbose ContainerStatus), instead of failing."""

    clamped: dict[str, str] = field(default_factory=dict)


def process_args(config: api_pb2.ContainerConfig, image: ImageRunConfig) -> list[str]:
    """CRI's rule (as containerd's WithProcessArgs): ``command`` replaces the image's
    ENTRYPOINT and ``args`` its CMD; with no command, the entrypoint stays and
    the CMD is used only if no args are given either."""
    command, args = list(config.command), list(config.args)
    if not command:
        if not args:
            args = list(image.cmd)
        command = list(image.entrypoint)
    if not command and not args:
        raise InvalidArgument("no command: neither the container config nor the image names one")
    return command + args


def process_env(config: api_pb2.ContainerConfig, image: ImageRunConfig) -> list[str]:
    """The image's environment, then the config's; a later value of a name wins.
    PATH defaults to the usual one when neither sets it."""
    merged: dict[str, str] = {"PATH": DEFAULT_PATH}
    for item in image.env:
        key, _, value = item.partition("=")
        merged[key] = value
    for kv in config.envs:
        if not kv.key:
            raise InvalidArgument("envs: an environment variable has an empty name")
        merged[kv.key] = kv.value
    return [f"{k}={v}" for k, v in merged.items()]


def _etc_entries(rootfs: Path, name: str, fields: int) -> list[list[str]]:
    """The colon-separated entries of the image's /etc/passwd or /etc/group."""
    try:
        lines = (rootfs / "etc" / name).read_text(errors="replace").splitlines()
    except OSError:
        return []
    return [line.split(":") for line in lines if line.count(":") >= fields - 1]


def resolve_user(
    config: api_pb2.ContainerConfig, image: ImageRunConfig, rootfs: Path
) -> dict[str, Any]:
    """uid, gid and additional gids: the security context's run_as_user or
    run_as_username (looked up in the image's /etc/passwd), else the image's
    USER; run_as_group overrides the primary group; supplemental groups add."""
    sc = config.linux.security_context
    user: str
    if sc.HasField("run_as_user"):
        user = str(sc.run_as_user.value)
    elif sc.run_as_username:
        user = sc.run_as_username
    else:
        user = image.user.split(":", 1)[0] if image.user else "0"
    image_group = image.user.split(":", 1)[1] if ":" in image.user else ""
    entries = _etc_entries(rootfs, "passwd", 4)
    if user.isdigit():
        uid = int(user)
        found = next((e for e in entries if e[2] == user), None)
        gid = int(found[3]) if found and found[3].isdigit() else 0
    else:
        found = next((e for e in entries if e[0] == user), None)
        if found is None or not found[2].isdigit():
            raise InvalidArgument(f"user {user!r} is not in the image's /etc/passwd")
        uid, gid = int(found[2]), int(found[3]) if found[3].isdigit() else 0
    if image_group and not sc.HasField("run_as_group"):
        if image_group.isdigit():
            gid = int(image_group)
        else:
            grp = next((g for g in _etc_entries(rootfs, "group", 3) if g[0] == image_group), None)
            if grp is None:
                raise InvalidArgument(f"group {image_group!r} is not in the image's /etc/group")
            gid = int(grp[2])
    if sc.HasField("run_as_group"):
        gid = sc.run_as_group.value
    additional = sorted({int(g) for g in sc.supplemental_groups} - {gid})
    result: dict[str, Any] = {"uid": uid, "gid": gid}
    if additional:
        result["additionalGids"] = additional
    return result


def capabilities(config: api_pb2.ContainerConfig) -> list[str]:
    """The default set, plus add_capabilities, minus drop_capabilities ("ALL" works
    in both, as in containerd); privileged containers get every capability."""
    sc = config.linux.security_context
    names = set(DEFAULT_CAPABILITIES)
    if sc.privileged:
        return sorted(_all_capabilities())

    def norm(c: str) -> str:
        c = c.upper()
        return c if c.startswith("CAP_") or c == "ALL" else f"CAP_{c}"

    adds = {norm(c) for c in sc.capabilities.add_capabilities}
    drops = {norm(c) for c in sc.capabilities.drop_capabilities}
    if "ALL" in adds:
        names = set(_all_capabilities())
    names |= adds - {"ALL"}
    if "ALL" in drops:
        names = adds - {"ALL"}
    names -= drops - {"ALL"}
    return sorted(names)


def _all_capabilities() -> list[str]:
    """Every capability the kernel knows and our bounding set still holds."""
    try:
        last = int(Path("/proc/sys/kernel/cap_last_cap").read_text())
    except (OSError, ValueError):
        last = 40
    names = [
        "CHOWN",
        "DAC_OVERRIDE",
        "DAC_READ_SEARCH",
        "FOWNER",
        "FSETID",
        "KILL",
        "SETGID",
        "SETUID",
        "SETPCAP",
        "LINUX_IMMUTABLE",
        "NET_BIND_SERVICE",
        "NET_BROADCAST",
        "NET_ADMIN",
        "NET_RAW",
        "IPC_LOCK",
        "IPC_OWNER",
        "SYS_MODULE",
        "SYS_RAWIO",
        "SYS_CHROOT",
        "SYS_PTRACE",
        "SYS_PACCT",
        "SYS_ADMIN",
        "SYS_BOOT",
        "SYS_NICE",
        "SYS_RESOURCE",
        "SYS_TIME",
        "SYS_TTY_CONFIG",
        "MKNOD",
        "LEASE",
        "AUDIT_WRITE",
        "AUDIT_CONTROL",
        "SETFCAP",
        "MAC_OVERRIDE",
        "MAC_ADMIN",
        "SYSLOG",
        "WAKE_ALARM",
        "BLOCK_SUSPEND",
        "AUDIT_READ",
        "PERFMON",
        "BPF",
        "CHECKPOINT_RESTORE",
    ]
    bounding = _bounding_set()
    return [f"CAP_{n}" for bit, n in enumerate(names[: last + 1]) if bounding >> bit & 1]


def _bounding_set() -> int:
    """The capabilities this server may hand on (containerd's
    WithAllCurrentCapabilities): a privileged container cannot have more, and
    runc fails to start it if asked for a capability outside the set."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("CapBnd:"):
                return int(line.split()[1], 16)
    except (OSError, ValueError):
        pass
    return (1 << 64) - 1


def default_mounts() -> list[dict[str, Any]]:
    """The kernel file systems every container gets (containerd's defaults)."""
    nosuid_noexec_nodev = ["nosuid", "noexec", "nodev"]
    return [
        _mount("/proc", "proc", "proc", nosuid_noexec_nodev),
        _mount("/dev", "tmpfs", "tmpfs", ["nosuid", "strictatime", "mode=755", "size=65536k"]),
        _mount(
            "/dev/pts",
            "devpts",
            "devpts",
            ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"],
        ),
        _mount("/dev/mqueue", "mqueue", "mqueue", nosuid_noexec_nodev),
        _mount("/sys", "sysfs", "sysfs", [*nosuid_noexec_nodev, "ro"]),
        _mount("/sys/fs/cgroup", "cgroup", "cgroup", [*nosuid_noexec_nodev, "relatime", "ro"]),
        _mount("/dev/shm", "tmpfs", "shm", [*nosuid_noexec_nodev, "mode=1777", f"size={SHM_SIZE}"]),
    ]


def _mount(destination: str, kind: str, source: str, options: list[str]) -> dict[str, Any]:
    return {"destination": destination, "type": kind, "source": source, "options": options}


def recursive_read_only_supported(release: str = "") -> bool:
    """Whether a read-only bind can be read-only all the way down: runc's
    ``rro`` option (runc 1.1 and later, as Debian 12's) is mount_setattr(2)
    with AT_RECURSIVE, which Linux has since 5.12."""
    numbers = re.findall(r"\d+", release or os.uname().release)[:2]
    return tuple(int(n) for n in numbers) >= (5, 12)


def config_mounts(config: api_pb2.ContainerConfig) -> list[dict[str, Any]]:
    """CRI mounts as bind mounts: read-only and propagation as asked. A propagation
    the host path's mount cannot give is refused here, before runc would make a
    bind that silently propagates nothing (``propagation.check_host_path``).

    A read-only bind is read-only recursively (``rro``) where the kernel can,
    as Docker's since 25.0: an ``ro`` bind of ``/`` would leave every mount
    under it (the host's /dev/shm, /run) writable. CRI's recursive_read_only
    asks for exactly that, so without the kernel's support it is refused, as
    api.proto requires ("return an error if not supported")."""
    recursive = recursive_read_only_supported()
    mounts = []
    for m in config.mounts:
        if not m.container_path.startswith("/"):
            raise InvalidArgument(f"mount {m.container_path!r}: container_path must be absolute")
        if not m.host_path.startswith("/"):
            raise InvalidArgument(
                f"mount {m.container_path!r}: host_path {m.host_path!r} is not an absolute path"
            )
        check_host_path(m)
        if m.recursive_read_only and not recursive:
            raise FailedPrecondition(
                f"mount {m.container_path!r}: recursive_read_only needs Linux 5.12 or later "
                f"(this is {os.uname().release})"
            )
        options = ["rbind", OPTION_OF.get(m.propagation, "rprivate")]
        options.append(("rro" if recursive else "ro") if m.readonly else "rw")
        mounts.append(_mount(m.container_path, "bind", m.host_path, options))
    return mounts


_CPU_LIST = re.compile(r"^\d+(-\d+)?(,\d+(-\d+)?)*$")
_PAGE_SIZE = re.compile(r"^(\d+)(KB|MB|GB)$")


def validate_resources(r: api_pb2.LinuxContainerResources) -> None:
    """What the kernel would refuse, refused here with the field named
    (INVALID_ARGUMENT), instead of runc's error text after the fact."""
    for name in ("cpu_period", "cpu_shares", "memory_limit_in_bytes", "memory_swap_limit_in_bytes"):
        if getattr(r, name) < 0:
            raise InvalidArgument(f"resources: {name} {getattr(r, name)} is negative")
    if r.cpu_quota < -1 or 0 < r.cpu_quota < 1000:
        raise InvalidArgument(f"resources: cpu_quota {r.cpu_quota} is below 1000 (1 ms)")
    if r.cpu_period and not 1000 <= r.cpu_period <= 1_000_000:
        raise InvalidArgument(f"resources: cpu_period {r.cpu_period} is not in 1000..1000000")
    if r.cpu_shares and r.cpu_shares < 2:
        raise InvalidArgument(f"resources: cpu_shares {r.cpu_shares} is below 2")
    if 0 < r.memory_limit_in_bytes < 4 << 20:
        raise InvalidArgument(
            f"resources: memory_limit_in_bytes {r.memory_limit_in_bytes} is below 4 MiB"
        )
    if r.memory_swap_limit_in_bytes and 0 < r.memory_swap_limit_in_bytes < r.memory_limit_in_bytes:
        raise InvalidArgument("resources: memory_swap_limit_in_bytes is below the memory limit")
    cpus = os.cpu_count() or 1
    for name in ("cpuset_cpus", "cpuset_mems"):
        value = getattr(r, name)
        if not value:
            continue
        if not _CPU_LIST.match(value):
            raise InvalidArgument(f"resources: {name} {value!r} is not a list like 0-2,4")
        highest = max(int(x) for x in re.split(r"[,-]", value))
        if name == "cpuset_cpus" and highest >= cpus:
            raise InvalidArgument(f"resources: cpuset_cpus {value!r}: this machine has {cpus} CPUs")
    for h in r.hugepage_limits:
        m = _PAGE_SIZE.match(h.page_size)
        kib = int(m[1]) * {"KB": 1, "MB": 1024, "GB": 1024 * 1024}[m[2]] if m else 0
        if not kib or not Path(f"/sys/kernel/mm/hugepages/hugepages-{kib}kB").is_dir():
            raise InvalidArgument(
                f"resources: hugepage size {h.page_size!r} is not one this machine has"
            )
    for key in r.unified:
        if "." not in key or "/" in key:
            raise InvalidArgument(f"resources: unified key {key!r} is not a cgroup file name")


def resources(config: api_pb2.ContainerConfig) -> dict[str, Any]:
    """CRI's LinuxContainerResources in runtime-spec form; 0 and "" mean unset."""
    r = config.linux.resources
    validate_resources(r)
    out: dict[str, Any] = {"devices": [{"allow": False, "access": "rwm"}]}
    cpu: dict[str, int | str] = {
        k: v
        for k, v in (("shares", r.cpu_shares), ("quota", r.cpu_quota), ("period", r.cpu_period))
        if v
    }
    if r.cpuset_cpus:
        cpu["cpus"] = r.cpuset_cpus
    if r.cpuset_mems:
        cpu["mems"] = r.cpuset_mems
    if cpu:
        out["cpu"] = cpu
    memory: dict[str, int] = {}
    if r.memory_limit_in_bytes:
        memory["limit"] = r.memory_limit_in_bytes
    if r.memory_swap_limit_in_bytes:
        memory["swap"] = r.memory_swap_limit_in_bytes
    if memory:
        out["memory"] = memory
    if r.hugepage_limits:
        out["hugepageLimits"] = [
            {"pageSize": h.page_size, "limit": h.limit} for h in r.hugepage_limits
        ]
    if r.unified:
        out["unified"] = dict(r.unified)
    return out


CAP_SYS_RESOURCE = 24  # its bit in /proc/self/status's CapEff


def oom_score_adj(config: api_pb2.ContainerConfig, notes: SpecNotes) -> int:
    """The kernel refuses an oom_score_adj below our own without CAP_SYS_RESOURCE
    (root need not have it: a container runtime in a container often has not);
    clamp it, as containerd's restrict_oom_score_adj does, and say so."""
    wanted = int(config.linux.resources.oom_score_adj)
    try:
        ours = int(Path("/proc/self/oom_score_adj").read_text())
    except (OSError, ValueError):
        ours = 0
    if wanted < ours and not _effective_capability(CAP_SYS_RESOURCE):
        notes.clamped["oom_score_adj"] = f"{wanted} raised to {ours}, the server's own"
        return ours
    return wanted


def _effective_capability(bit: int) -> bool:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("CapEff:"):
                return bool(int(line.split()[1], 16) >> bit & 1)
    except (OSError, ValueError):
        pass
    return os.geteuid() == 0


@dataclass(frozen=True)
class SandboxContext:
    """What a container takes from its pod sandbox (the sandbox manager fills it in): the
    namespaces to join (type → ``/proc/<pid>/ns/...`` path), and the files the
    sandbox keeps for all its containers, bound into each at the same place."""

    hostname: str = ""
    namespaces: Mapping[str, str] = field(default_factory=dict)
    hosts: str = ""  # the pod's /etc/hosts
    resolv_conf: str = ""  # the pod's /etc/resolv.conf, from its DNSConfig
    shm: str = ""  # the pod's /dev/shm, shared by its containers (IPC)


def seccomp_profile(
    config: api_pb2.ContainerConfig,
    caps: Sequence[str],
    notes: SpecNotes,
    profile_root: Path | None,
    *,
    enforced: bool = True,
) -> dict[str, Any] | None:
    """The spec's ``linux.seccomp`` (None: unconfined) for the profile the
    security context names (:mod:`.seccomp`; CreateContainer's "seccomp
    profile ?"); ``enforced`` False is a tier that cannot filter, whose
    container's notes say what was not applied rather than pretend."""
    choice = seccomp.choose(config.linux.security_context, profile_root)
    profile = seccomp.linux_seccomp(choice, caps)
    if profile is not None and not enforced:
        notes.clamped["seccomp"] = (
            f"{choice.kind} ({choice.source}) not applied: plain processes have no seccomp filter"
        )
        return None
    return profile


def security_paths(config: api_pb2.ContainerConfig) -> tuple[list[str], list[str]]:
    """maskedPaths and readonlyPaths: the request's lists when it sends them
    (the kubelet does, from the pod's procMount), the defaults when it sends
    none, and none at all for a privileged container, as containerd."""
    sc = config.linux.security_context
    if sc.privileged:
        return [], []
    for name in ("masked_paths", "readonly_paths"):
        for path in getattr(sc, name):
            if not path.startswith("/"):
                raise InvalidArgument(f"security context: {name} {path!r} is not absolute")
    masked = list(sc.masked_paths) or list(MASKED_PATHS)
    readonly = list(sc.readonly_paths) or list(READONLY_PATHS)
    return masked, readonly


def namespaces(
    config: api_pb2.ContainerConfig, join: Mapping[str, str] | None = None
) -> list[dict[str, str]]:
    """The namespaces the container gets: new ones, the sandbox's to join, or
    none (the host's) for NamespaceMode NODE. CRI's zero value is POD; the
    kubelet asks for pid CONTAINER (a namespace of the container's own) unless
    the pod sets shareProcessNamespace."""
    join = join or {}
    options = config.linux.security_context.namespace_options
    modes = {"network": options.network, "pid": options.pid, "ipc": options.ipc}
    out = []
    for ns in ("pid", "ipc", "uts", "mount", "network"):
        mode = modes.get(ns, api_pb2.POD)
        if mode == api_pb2.NODE:
            continue  # the host's
        if ns == "pid" and mode == api_pb2.TARGET and not options.target_id:
            raise InvalidArgument("namespace_options: pid TARGET without a target_id")
        entry = {"type": ns}
        # POD: the sandbox's; TARGET: the target container's, which the caller
        # puts in ``join``; CONTAINER: a new one. uts is always the pod's.
        if ns != "mount" and mode in (api_pb2.POD, api_pb2.TARGET) and ns in join:
            entry["path"] = join[ns]
        out.append(entry)
    if "user" in join:  # the unprivileged tier: the sandbox's user namespace owns the rest
        out.append({"type": "user", "path": join["user"]})
    return out


def devices(config: api_pb2.ContainerConfig) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """CRI Devices: the device node to create in the container, and the cgroup
    rule that lets it be opened with the permissions asked (``rwm`` by default)."""
    nodes: list[dict[str, Any]] = []
    rules: list[dict[str, Any]] = []
    for d in config.devices:
        if not d.host_path or not d.container_path:
            raise InvalidArgument("devices: host_path and container_path are both required")
        try:
            st = os.stat(d.host_path)
        except OSError as exc:
            raise InvalidArgument(f"device {d.host_path!r}: {exc.strerror}") from None
        if stat.S_ISCHR(st.st_mode):
            kind = "c"
        elif stat.S_ISBLK(st.st_mode):
            kind = "b"
        else:
            raise InvalidArgument(f"device {d.host_path!r} is not a character or block device")
        access = d.permissions or "rwm"
        if set(access) - set("rwm"):
            raise InvalidArgument(f"device {d.host_path!r}: permissions {access!r} not in 'rwm'")
        major, minor = os.major(st.st_rdev), os.minor(st.st_rdev)
        nodes.append(
            {
                "path": d.container_path,
                "type": kind,
                "major": major,
                "minor": minor,
                "fileMode": stat.S_IMODE(st.st_mode),
                "uid": 0,
                "gid": 0,
            }
        )
        rules.append(
            {"allow": True, "type": kind, "major": major, "minor": minor, "access": access}
        )
    return nodes, rules


_NOT_HOST_DEVICES = {"pts", "shm", "mqueue", "fd", ".lxc", ".udev", "console"}


def host_devices(root: Path = Path("/dev")) -> list[dict[str, Any]]:
    """The host's device nodes, for a privileged container (not the container's
    own /dev/pts, /dev/shm, /dev/mqueue, which it gets fresh)."""
    nodes = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in _NOT_HOST_DEVICES]
        for name in sorted(filenames):
            path = os.path.join(dirpath, name)
            try:
                st = os.lstat(path)
            except OSError:
                continue
            kind = "c" if stat.S_ISCHR(st.st_mode) else "b" if stat.S_ISBLK(st.st_mode) else ""
            if kind and name not in _NOT_HOST_DEVICES:
                nodes.append(
                    {
                        "path": path,
                        "type": kind,
                        "major": os.major(st.st_rdev),
                        "minor": os.minor(st.st_rdev),
                        "fileMode": stat.S_IMODE(st.st_mode),
                        "uid": st.st_uid,
                        "gid": st.st_gid,
                    }
                )
    return nodes


def sandbox_mounts(
    sandbox: SandboxContext, readonly_rootfs: bool
) -> tuple[list[dict[str, Any]], bool]:
    """Binds of the pod's hosts, resolv.conf and shm; and whether shm replaced ours."""
    mounts = []
    mode = "ro" if readonly_rootfs else "rw"
    for destination, source in (
        ("/etc/hosts", sandbox.hosts),
        ("/etc/resolv.conf", sandbox.resolv_conf),
    ):
        if source:
            mounts.append(_mount(destination, "bind", source, ["rbind", "rprivate", mode]))
    if sandbox.shm:
        mounts.append(_mount("/dev/shm", "bind", sandbox.shm, ["rbind", "rprivate", "rw"]))
    return mounts, bool(sandbox.shm)


def generate_spec(
    config: api_pb2.ContainerConfig,
    image: ImageRunConfig,
    rootfs: Path,
    *,
    sandbox: SandboxContext | None = None,
    hostname: str = "",
    cgroups_path: str = "",
    annotations: Mapping[str, str] | None = None,
    extra_mounts: Sequence[Mapping[str, Any]] = (),
    seccomp_profile_root: Path | None = None,
    seccomp_enforced: bool = True,
) -> tuple[dict[str, Any], SpecNotes]:
    """The whole ``config.json`` (and what had to be adjusted). Relative
    Localhost seccomp profiles are found under ``seccomp_profile_root``;
    ``seccomp_enforced`` False: the backend cannot filter (the notes say so)."""
    notes = SpecNotes()
    sandbox = sandbox or SandboxContext(hostname=hostname)
    if config.working_dir and not config.working_dir.startswith("/"):
        raise InvalidArgument(f"working_dir {config.working_dir!r} is not an absolute path")
    sc = config.linux.security_context
    caps = capabilities(config)
    masked_paths, readonly_paths = security_paths(config)
    seccomp_filter = seccomp_profile(
        config, caps, notes, seccomp_profile_root, enforced=seccomp_enforced
    )
    mounts = default_mounts()
    pod_mounts, shared_shm = sandbox_mounts(sandbox, sc.readonly_rootfs)
    if shared_shm:
        mounts = [m for m in mounts if m["destination"] != "/dev/shm"]
    device_nodes, device_rules = devices(config)
    limits = resources(config)
    limits["devices"] = [*limits["devices"], *device_rules]
    if sc.privileged:  # every host device, as containerd's WithDevices(HostDevices)
        device_nodes = [*host_devices(), *device_nodes]
        limits["devices"] = [{"allow": True, "access": "rwm"}]
    if sc.privileged:  # a privileged container sees the host's /sys read-write
        mounts = [
            {**m, "options": [o for o in m["options"] if o != "ro"]}
            if m["destination"] in ("/sys", "/sys/fs/cgroup")
            else m
            for m in mounts
        ]
    spec: dict[str, Any] = {
        "ociVersion": OCI_VERSION,
        "process": {
            "terminal": bool(config.tty),
            "user": resolve_user(config, image, rootfs),
            "args": process_args(config, image),
            "env": process_env(config, image),
            "cwd": config.working_dir or image.working_dir or "/",
            "capabilities": {
                k: caps for k in ("bounding", "effective", "permitted", "inheritable")
            },
            "noNewPrivileges": bool(sc.no_new_privs),
            "oomScoreAdj": oom_score_adj(config, notes),
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],  # containerd's
        },
        "root": {"path": str(rootfs), "readonly": bool(sc.readonly_rootfs)},
        "hostname": sandbox.hostname or hostname,
        "mounts": [*mounts, *pod_mounts, *extra_mounts, *config_mounts(config)],
        "annotations": dict(annotations or {}) | dict(config.annotations),
        "linux": {
            "resources": limits,
            "namespaces": namespaces(config, sandbox.namespaces),
            "devices": device_nodes,
            "maskedPaths": masked_paths,
            "readonlyPaths": readonly_paths,
        },
    }
    if any(m.readonly for m in config.mounts) and not recursive_read_only_supported():
        notes.clamped["mounts"] = "read-only binds not recursive: Linux before 5.12 has no rro"
    if seccomp_filter is not None:
        spec["linux"]["seccomp"] = seccomp_filter
    if rootfs_propagation(config):
        spec["linux"]["rootfsPropagation"] = rootfs_propagation(config)
    if cgroups_path:
        spec["linux"]["cgroupsPath"] = cgroups_path
    return spec, notes
