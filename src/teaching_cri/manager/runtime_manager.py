"""The daemon-wide callbacks behind Version, Status and the runtime config RPCs.

iSulad splits these between ``RuntimeVersionerService`` (Version) and
``RuntimeManagerService`` (Status, UpdateRuntimeConfig), both of which call
into the daemon through ``m_cb->container.version`` and the network
``m_pluginManager``. Here they are one small class, owned by the daemon.
"""

from __future__ import annotations

import ipaddress
import json
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import __version__
from ..config import Config
from ..errors import InvalidArgument
from ..fsutil import atomic_write_json
from ..runtime.backend import Backend
from ..runtime.backends import BackendProbe, probe
from ..trace.tracer import clip, step
from .container import ContainerManager
from .network import NetworkStatus, cni_status
from .sandbox import SandboxManager

RUNTIME_NAME = "teaching-cri"
KUBE_API_VERSION = "0.1.0"  # VersionResponse.version: what every CRI runtime sends
RUNTIME_API_VERSION = "v1"
CGROUP_DRIVER = "cgroupfs"


@dataclass(frozen=True)
class DaemonVersion:
    version: str
    runtime_name: str
    api_version: str
    kube_api_version: str


class StateError(RuntimeError):
    """Persisted state that cannot be loaded: the server refuses to start."""


class RuntimeManager:
    def __init__(self, config: Config, cni_conf_dir: Path | None = None) -> None:
        self.config = config
        self.cni_conf_dir = cni_conf_dir or config.cni_conf_dir
        self.started_at = time.time_ns()
        self._config_file = config.root / "runtime-config.json"
        self.pod_cidrs: tuple[str, ...] = self._load_pod_cidrs()
        self.backend: Backend | None = None  # set by the daemon once it is open
        self.sandboxes: SandboxManager | None = None  # likewise
        self.containers: ContainerManager | None = None  # likewise

    def _load_pod_cidrs(self) -> tuple[str, ...]:
        try:
            data = json.loads(self._config_file.read_text())
        except FileNotFoundError:
            return ()
        except (OSError, ValueError) as exc:
            raise StateError(f"{self._config_file}: unreadable runtime config: {exc}") from None
        cidrs = data.get("pod_cidrs") if isinstance(data, dict) else None
        if not isinstance(cidrs, list) or not all(isinstance(c, str) for c in cidrs):
            raise StateError(f"{self._config_file}: pod_cidrs must be a list of strings")
        return tuple(cidrs)

    @step("m_cb_container_version")
    def version(self) -> DaemonVersion:
        return DaemonVersion(__version__, RUNTIME_NAME, RUNTIME_API_VERSION, KUBE_API_VERSION)

    @step("probe_runtime_backend")
    def probe_backend(self) -> BackendProbe:
        return probe(self.config.runtime, self.config.runc)

    @step("m_plugin_manager_status")
    def network_status(self) -> NetworkStatus:
        return cni_status(self.cni_conf_dir)

    @step("get_cgroup_driver")
    def cgroup_driver(self) -> str:
        return CGROUP_DRIVER

    # UpdateRuntimeConfig's steps ------------------------------------------------
    @staticmethod
    @step("validate_pod_cidr")
    def validate_pod_cidr(pod_cidr: str) -> tuple[str, ...]:
        """One CIDR, or two of different families (dual stack), as the kubelet sends."""
        shown = clip(pod_cidr, 80)
        cidrs = tuple(c.strip() for c in pod_cidr.split(","))
        if len(cidrs) > 2:
            raise InvalidArgument(f"pod_cidr {shown!r}: at most two CIDRs (one per IP family)")
        networks = []
        for cidr in cidrs:
            try:
                networks.append(ipaddress.ip_network(cidr, strict=True))
            except ValueError as exc:
                raise InvalidArgument(f"pod_cidr {shown!r}: {clip(str(exc), 120)}") from None
            if "/" not in cidr:
                raise InvalidArgument(f"pod_cidr {shown!r}: {cidr!r} has no prefix length")
        if len(networks) == 2 and networks[0].version == networks[1].version:
            raise InvalidArgument(f"pod_cidr {shown!r}: two CIDRs must be one IPv4, one IPv6")
        return cidrs

    @step("persist_runtime_config")
    def persist(self, cidrs: tuple[str, ...]) -> None:
        """On disk first: if this fails, nothing has changed anywhere."""
        atomic_write_json(self._config_file, {"pod_cidrs": list(cidrs)})

    @step("m_plugin_manager_event")
    def pod_cidr_changed(self, cidrs: tuple[str, ...]) -> None:
        """iSulad's POD_CIDR_CHANGE event to the network plugin manager: the
        pod networks that arrive with the sandboxes read ``pod_cidrs``."""
        self.pod_cidrs = cidrs

    def info(self) -> dict[str, Any]:
        """Facts for Status's verbose info (each top-level value becomes one JSON value)."""
        return {
            "runtime": {
                "name": RUNTIME_NAME,
                "version": __version__,
                "python": platform.python_version(),
                "started_at": self.started_at,
            },
            "config": self.config.as_dict(),
            "network": {"pod_cidrs": list(self.pod_cidrs)},
            "containers": {
                "backend": self.backend.name if self.backend else "none",
                "count": len(self.backend.list_ids()) if self.backend else 0,
            },
        }
