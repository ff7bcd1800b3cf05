"""Network plugin status: is there a usable CNI configuration?

This is the part of iSulad's CNI plugin manager that ``Status`` asks
(``m_pluginManager->Status``): a conf dir holding a config whose plugins all
exist as binaries. Running the plugins for a pod is ``cni.py``'s.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

DEFAULT_CNI_CONF_DIR = Path("/etc/cni/net.d")
DEFAULT_CNI_BIN_DIRS = (Path("/opt/cni/bin"), Path("/usr/lib/cni"))


@dataclass(frozen=True)
class NetworkStatus:
    ready: bool
    message: str
    config_file: str = ""
    network_name: str = ""


def _plugin_types(doc: object) -> list[str] | None:
    if not isinstance(doc, dict):
        return None
    if "plugins" in doc:
        plugins = doc["plugins"]
        if not isinstance(plugins, list) or not plugins:
            return None
        types = [p.get("type") for p in plugins if isinstance(p, dict)]
    else:
        types = [doc.get("type")]
    return [t for t in types if isinstance(t, str) and t] or None


def cni_status(
    conf_dir: Path = DEFAULT_CNI_CONF_DIR, bin_dirs: tuple[Path, ...] = DEFAULT_CNI_BIN_DIRS
) -> NetworkStatus:
    """The first usable config in lexical order, as the kubelet and CRI runtimes pick it."""
    if not conf_dir.is_dir():
        return NetworkStatus(False, f"no CNI configuration directory {conf_dir}")
    problems = []
    for path in sorted(
        p for p in conf_dir.iterdir() if p.suffix in (".conf", ".conflist", ".json")
    ):
        try:
            doc = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            problems.append(f"{path.name}: {exc}")
            continue
        types = _plugin_types(doc)
        if types is None:
            problems.append(f"{path.name}: no plugins")
            continue
        missing = [t for t in types if not any((d / t).is_file() for d in bin_dirs)]
        if missing:
            problems.append(f"{path.name}: plugin binaries not found: {', '.join(missing)}")
            continue
        return NetworkStatus(True, f"CNI config {path.name}", str(path), str(doc.get("name", "")))
    detail = "; ".join(problems) if problems else "no network config found"
    return NetworkStatus(False, f"cni config uninitialized in {conf_dir}: {detail}")
