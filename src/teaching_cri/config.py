"""Server configuration: defaults, a TOML file (``--config``), then flags.

Every option has one name, used both as a flag (``--stream-address``) and as a
key of the TOML file (``stream-address = "127.0.0.1:10350"``); a flag given on
the command line wins over the file. Everything is validated before anything
is created on disk, so a bad option leaves nothing half-made behind.
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .image.registry import RegistryConfig
from .runtime.backends import BACKEND_NAMES

LOG_LEVELS = ("debug", "info", "warning", "error")
DEFAULT_STREAM_ADDRESS = "127.0.0.1:10350"  # iSulad's websocket server port
SOCKET_NAME = "teaching-cri.sock"
# sockaddr_un.sun_path is 108 bytes, including the terminating NUL.
MAX_SOCKET_PATH = 107
# The kubelet's CRI client uses 16 MiB in both directions (cri-client maxMsgSize);
# here, not in daemon.py, so that a client need not import the server.
MAX_MESSAGE_BYTES = 16 * 1024 * 1024


class ConfigError(ValueError):
    """A bad option: the message names it and says what is wrong."""


def is_root() -> bool:
    return os.geteuid() == 0


def default_state_dir() -> Path:
    """Runtime state (sockets, shim files): tmpfs that a reboot clears."""
    if is_root():
        return Path("/run/teaching-cri")
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg and Path(xdg).is_dir() and os.access(xdg, os.W_OK):
        return Path(xdg) / "teaching-cri"
    return Path(f"/tmp/teaching-cri-{os.geteuid()}")


def default_root_dir() -> Path:
    """Persistent state (images, container records)."""
    if is_root():
        return Path("/var/lib/teaching-cri")
    data = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(data) / "teaching-cri"


def default_socket() -> Path:
    return default_state_dir() / SOCKET_NAME


# The kubelet's default infra image (--pod-infra-container-image), which it also names.
DEFAULT_PAUSE_IMAGE = "registry.k8s.io/pause:3.10"


@dataclass(frozen=True)
class Config:
    socket: Path
    root: Path
    state: Path
    stream_address: str
    # runtime/backends.py's BACKEND_NAMES; "fake" runs no program (tests, learning the flows)
    runtime: str
    log_level: str
    trace_file: Path | None
    trace: bool = True
    runc: str = "runc"  # the OCI runtime binary: a path, or a name looked up on PATH (crun works)
    pause_image: str = DEFAULT_PAUSE_IMAGE
    stream_tls_cert: Path | None = None  # both or neither: the streaming server speaks TLS
    stream_max_sessions: int = 128  # iSulad's MAX_SESSION_NUM
    stream_tls_key: Path | None = None
    cni_conf_dir: Path = Path("/etc/cni/net.d")
    # Relative Localhost seccomp profiles are files under it (runtime/seccomp.py);
    # None: <root>/seccomp.
    seccomp_profile_root: Path | None = None
    registry: RegistryConfig = field(default_factory=RegistryConfig)
    # The default socket's directory is ours to create; a socket path the user
    # names must be in a directory that already exists.
    socket_is_default: bool = False

    @property
    def profile_root(self) -> Path:
        """Where relative Localhost seccomp profiles are: the option, else <root>/seccomp."""
        return self.seccomp_profile_root or self.root / "seccomp"

    @property
    def stream_host_port(self) -> tuple[str, int]:
        host, port = _split_host_port(self.stream_address)
        return host, port

    def as_dict(self) -> dict[str, Any]:
        return {
            "socket": str(self.socket),
            "root": str(self.root),
            "state": str(self.state),
            "stream-address": self.stream_address,
            "runtime": self.runtime,
            "runc": self.runc,
            "pause-image": self.pause_image,
            "stream-tls-cert": str(self.stream_tls_cert or ""),
            "stream-max-sessions": str(self.stream_max_sessions),
            "stream-tls-key": str(self.stream_tls_key or ""),
            "cni-conf-dir": str(self.cni_conf_dir),
            "seccomp-profile-root": str(self.profile_root),
            "log-level": self.log_level,
            "trace-file": str(self.trace_file) if self.trace_file else "",
            "trace": "on" if self.trace else "off",
            "registry": {
                "mirrors": {k: list(v) for k, v in self.registry.mirrors.items()},
                "insecure": list(self.registry.insecure),
            },
        }


TABLES = ("registry",)
KEYS = (
    "socket",
    "root",
    "state",
    "stream-address",
    "runtime",
    "runc",
    "pause-image",
    "stream-tls-cert",
    "stream-tls-key",
    "stream-max-sessions",
    "cni-conf-dir",
    "seccomp-profile-root",
    "log-level",
    "trace-file",
    "trace",
)
# Options the config file takes that have no flag (none today): cli.py builds
# its flags' values from KEYS.
FILE_ONLY_KEYS: tuple[str, ...] = ()


def read_config_file(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file {path}: no such file") from None
    except OSError as exc:
        raise ConfigError(f"config file {path}: cannot read it: {exc.strerror}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path}: not valid TOML: {exc}") from None
    unknown = sorted(set(data) - set(KEYS) - set(FILE_ONLY_KEYS) - set(TABLES))
    if unknown:
        known = ", ".join((*KEYS, *FILE_ONLY_KEYS, *TABLES))
        raise ConfigError(
            f"config file {path}: unknown option(s) {', '.join(unknown)}; known: {known}"
        )
    for key, value in data.items():
        if key not in TABLES and not isinstance(value, str):
            raise ConfigError(f"config file {path}: {key} must be a string")
    return data


def parse_registry(table: object, where: str) -> RegistryConfig:
    """``[registry]``: ``insecure = ["host:port", ...]`` and, per registry host,
    ``[registry.mirrors."registry.k8s.io"] endpoints = ["http://127.0.0.1:5000"]``."""
    if not isinstance(table, dict):
        raise ConfigError(f"{where}: [registry] must be a table")
    extra = set(table) - {"mirrors", "insecure"}
    if extra:
        raise ConfigError(f"{where}: unknown key(s) in [registry]: {', '.join(sorted(extra))}")
    insecure = table.get("insecure", [])
    if not isinstance(insecure, list) or not all(isinstance(h, str) for h in insecure):
        raise ConfigError(f"{where}: registry.insecure must be a list of host[:port] strings")
    mirrors: dict[str, tuple[str, ...]] = {}
    for host, mirror in dict(table.get("mirrors", {})).items():
        endpoints = mirror.get("endpoints") if isinstance(mirror, dict) else None
        if not isinstance(endpoints, list) or not all(isinstance(e, str) for e in endpoints):
            raise ConfigError(f"{where}: registry.mirrors.{host!r}.endpoints must be a list")
        for endpoint in endpoints:
            if not re.fullmatch(r"https?://[^/\s]+/?", endpoint):
                raise ConfigError(
                    f"{where}: mirror endpoint {endpoint!r} for {host!r}: expected "
                    "http(s)://host[:port]"
                )
        mirrors[host] = tuple(e.rstrip("/") for e in endpoints)
    return RegistryConfig(mirrors=mirrors, insecure=tuple(insecure))


def _split_host_port(value: str) -> tuple[str, int]:
    m = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:(\d+)|([^:\[\]]+):(\d+)", value)
    if not m:
        raise ConfigError(f"stream-address {value!r}: expected HOST:PORT (or [IPv6]:PORT)")
    host = m.group(1) or m.group(3)
    port = int(m.group(2) or m.group(4))
    if not 0 <= port <= 65535:  # 0: any free port (tests, several servers on one machine)
        raise ConfigError(f"stream-address {value!r}: port must be 0-65535")
    if host != "localhost":
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise ConfigError(
                f"stream-address {value!r}: host must be an IP address or localhost"
            ) from None
    return host, port


def _check_creatable(path: Path, what: str) -> None:
    """``path`` exists as a writable directory, or can be made under one."""
    probe = path
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if not probe.is_dir():
        raise ConfigError(f"{what} {path}: {probe} is not a directory")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ConfigError(f"{what} {path}: {probe} is not writable")


def resolve(values: Mapping[str, str | None], config_file: Path | None = None) -> Config:
    """Merge defaults, the config file and flags (``values``; None = not given)."""
    merged: dict[str, str] = {}
    registry = RegistryConfig()
    if config_file is not None:
        data = read_config_file(config_file)
        if "registry" in data:
            registry = parse_registry(data.pop("registry"), f"config file {config_file}")
        merged.update(data)
    merged.update({k: v for k, v in values.items() if v is not None})
    # An empty value means "the default", for every option but trace-file.
    merged = {k: v for k, v in merged.items() if v != "" or k == "trace-file"}

    socket_is_default = "socket" not in merged
    socket = Path(merged.get("socket") or default_socket()).absolute()
    root = Path(merged.get("root") or default_root_dir()).absolute()
    state = Path(merged.get("state") or default_state_dir()).absolute()
    stream = merged.get("stream-address", DEFAULT_STREAM_ADDRESS)
    runtime = merged.get("runtime", "auto")
    runc = merged.get("runc", "runc")
    pause_image = merged.get("pause-image", DEFAULT_PAUSE_IMAGE)
    max_sessions_text = merged.get("stream-max-sessions", "128")
    if not max_sessions_text.isdigit() or not 1 <= int(max_sessions_text) <= 100_000:
        raise ConfigError(f"stream-max-sessions {max_sessions_text!r}: a number, 1 or more")
    tls = [merged.get(k) for k in ("stream-tls-cert", "stream-tls-key")]
    if any(tls) and not all(tls):
        raise ConfigError("stream-tls-cert and stream-tls-key go together: give both or neither")
    tls_cert, tls_key = (Path(t).absolute() if t else None for t in tls)
    for name, path in (("stream-tls-cert", tls_cert), ("stream-tls-key", tls_key)):
        if path is not None and not os.access(path, os.R_OK):
            raise ConfigError(f"{name} {path}: not a readable file")
    cni_conf_dir = Path(merged.get("cni-conf-dir", "/etc/cni/net.d")).absolute()
    profile_root_text = merged.get("seccomp-profile-root")
    profile_root = Path(profile_root_text).absolute() if profile_root_text else None
    if profile_root is not None and profile_root.exists() and not profile_root.is_dir():
        raise ConfigError(f"seccomp-profile-root {profile_root}: not a directory")
    level = merged.get("log-level", "info").lower()
    trace_path = merged.get("trace-file")
    # Off unless asked for: serialising every event costs about as much CPU as
    # the rest of tracing together (benchmarks/trace_overhead.py prints both).
    trace_file = Path(trace_path).absolute() if trace_path else None
    trace = merged.get("trace", "on")
    if trace not in ("on", "off"):
        raise ConfigError(f"trace {trace!r}: must be on or off")

    _split_host_port(stream)
    if runtime not in BACKEND_NAMES:
        known = ", ".join(BACKEND_NAMES)
        raise ConfigError(f"runtime {runtime!r}: unknown backend; known: {known}")
    if level not in LOG_LEVELS:
        raise ConfigError(f"log-level {level!r}: must be one of {', '.join(LOG_LEVELS)}")
    if len(os.fsencode(socket)) > MAX_SOCKET_PATH:
        raise ConfigError(
            f"socket {socket}: path is {len(os.fsencode(socket))} bytes, "
            f"a unix socket path has at most {MAX_SOCKET_PATH}"
        )
    if socket_is_default:
        _check_creatable(socket.parent, "socket")
    elif not socket.parent.is_dir():
        raise ConfigError(f"socket {socket}: directory {socket.parent} does not exist")
    elif not os.access(socket.parent, os.W_OK | os.X_OK):
        raise ConfigError(f"socket {socket}: directory {socket.parent} is not writable")
    if socket.exists() and socket.is_dir():
        raise ConfigError(f"socket {socket}: is a directory")
    _check_creatable(root, "root")
    _check_creatable(state, "state")
    if trace_file is not None:
        if trace_file.is_dir():
            raise ConfigError(f"trace-file {trace_file}: is a directory")
        if trace_file.exists() and not os.access(trace_file, os.W_OK):
            raise ConfigError(f"trace-file {trace_file}: is not writable")
        _check_creatable(trace_file.parent, "trace-file")
    return Config(
        socket=socket,
        root=root,
        state=state,
        stream_address=stream,
        runtime=runtime,
        runc=runc,
        pause_image=pause_image,
        stream_tls_cert=tls_cert,
        stream_max_sessions=int(max_sessions_text),
        stream_tls_key=tls_key,
        cni_conf_dir=cni_conf_dir,
        seccomp_profile_root=profile_root,
        log_level=level,
        trace_file=trace_file,
        trace=trace == "on",
        registry=registry,
        socket_is_default=socket_is_default,
    )
