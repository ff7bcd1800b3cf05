"""The daemon-wide callbacks behind Version, Status and the runtime config RPCs.

iSulad splits these between ``RuntimeVersionerService`` (Version) and
``RuntimeManagerService`` (Status, UpdateRuntimeConfig), both of which call
into the daemon through ``m_cb->container.version`` and the network
``m_pluginManager``. Here they are one small class, owned by the daemon.
"""

from __future__ import annotations

import ipaddress
import json
import os
import platform
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import __version__
from ..config import Config
from ..errors import InvalidArgument
from ..runtime.backends import BackendProbe, probe
from ..trace.tracer import step
from .network import DEFAULT_CNI_CONF_DIR, NetworkStatus, cni_status

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


def atomic_write_json(path: Path, data: Any) -> None:
    """Write ``data`` so that a crash leaves either the old file or the new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class RuntimeManager:
    def __init__(self, config: Config, cni_conf_dir: Path = DEFAULT_CNI_CONF_DIR) -> None:
        self.config = config
        self.cni_conf_dir = cni_conf_dir
        self.started_at = time.time_ns()
        self._config_file = config.root / "runtime-config.json"
        self.pod_cidrs: tuple[str, ...] = self._load_pod_cidrs()

    def _load_pod_cidrs(self) -> tuple[str, ...]:
        try:
            data = json.loads(self._config_file.read_text())
        except FileNotFoundError:
            return ()
        except (OSError, ValueError) as exc:
            raise RuntimeError(f"{self._config_file}: unreadable runtime config: {exc}") from exc
        return tuple(str(c) for c in data.get("pod_cidrs", []))

    @step("m_cb_container_version")
    def version(self) -> DaemonVersion:
        return DaemonVersion(__version__, RUNTIME_NAME, RUNTIME_API_VERSION, KUBE_API_VERSION)

    @step("probe_runtime_backend")
    def probe_backend(self) -> BackendProbe:
        return probe(self.config.runtime)

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
        cidrs = tuple(c.strip() for c in pod_cidr.split(","))
        for cidr in cidrs:
            try:
                ipaddress.ip_network(cidr, strict=False)
            except ValueError:
                raise InvalidArgument(
                    f"UpdateRuntimeConfig: pod_cidr {pod_cidr!r}: {cidr!r} is not an IP network"
                ) from None
        return cidrs

    @step("m_plugin_manager_event")
    def pod_cidr_changed(self, cidrs: tuple[str, ...]) -> None:
        """iSulad's POD_CIDR_CHANGE event to the network plugin manager: the
        pod networks that arrive with the sandboxes read ``pod_cidrs``."""
        self.pod_cidrs = cidrs

    @step("persist_runtime_config")
    def persist(self) -> None:
        atomic_write_json(self._config_file, {"pod_cidrs": list(self.pod_cidrs)})

    def info(self) -> dict[str, Any]:
        """Facts for Status's verbose info (each top-level value becomes one JSON value)."""
        return {
            "runtime": {
                "name": RUNTIME_NAME,
                "version": __version__,
                "python": platform.python_version(),
                "started_at": self.started_at,
            },
            "config": self.config.as_dict() | {"cni-conf-dir": str(self.cni_conf_dir)},
            "network": {"pod_cidrs": list(self.pod_cidrs)},
        }
