"""CNI, driven directly: the plugins are programs, the protocol is env + stdin + stdout.

A CNI plugin (containernetworking/cni, SPEC.md) is an executable. The runtime
runs it with the verb in ``CNI_COMMAND`` (ADD, CHECK, DEL), the container's
network namespace in ``CNI_NETNS``, the interface to make in ``CNI_IFNAME``,
and the network's JSON config on stdin; the plugin answers a JSON result on
stdout, or a JSON error (``code``, ``msg``, ``details``) and a non-zero exit.
A *conflist* chains plugins: each ADD gets the previous plugin's result as
``prevResult``; DEL runs the chain backwards. iSulad goes through libcni
(``network/cni_operator``); here the exchange is in plain view, so a learner
can see exactly what a bridge plugin is told and what it answers.

The loopback interface is set up by the ``loopback`` plugin as a network of
its own on ``lo`` (as containerd does), before the pod's network.
"""

from __future__ import annotations

import asyncio
import copy
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import FailedPrecondition
from .network import DEFAULT_CNI_BIN_DIRS, DEFAULT_CNI_CONF_DIR, cni_status

DEFAULT_IFNAME = "eth0"
PLUGIN_TIMEOUT = 60.0
LOOPBACK = {"cniVersion": "1.0.0", "name": "cni-loopback", "plugins": [{"type": "loopback"}]}


class CNIError(FailedPrecondition):
    """A plugin failed; the message carries its own error (code, msg, details)."""


@dataclass(frozen=True)
class NetworkConfig:
    """One network: a conflist (a single .conf becomes a list of one)."""

    name: str
    cni_version: str
    plugins: tuple[dict[str, Any], ...]
    path: str = ""

    @classmethod
    def from_document(cls, doc: Mapping[str, Any], path: str = "") -> NetworkConfig:
        if "plugins" in doc:
            plugins = tuple(dict(p) for p in doc["plugins"])
        else:
            plugins = ({k: v for k, v in doc.items() if k not in ("name", "cniVersion")},)
        name, version = doc.get("name"), doc.get("cniVersion")
        if not isinstance(name, str) or not name or not isinstance(version, str):
            raise FailedPrecondition(f"CNI config {path or '?'}: needs a name and a cniVersion")
        if not plugins or not all(isinstance(p.get("type"), str) for p in plugins):
            raise FailedPrecondition(f"CNI config {path or '?'}: every plugin needs a type")
        return cls(name, version, plugins, path)

    def plugin_config(
        self,
        plugin: Mapping[str, Any],
        prev_result: Mapping[str, Any] | None,
        runtime_config: Mapping[str, Any],
    ) -> dict[str, Any]:
        """What one plugin of the chain reads on stdin (SPEC.md, "Deriving execution
        configuration from plugin configuration")."""
        conf = copy.deepcopy(dict(plugin))
        conf["name"] = self.name
        conf["cniVersion"] = self.cni_version
        if prev_result is not None:
            conf["prevResult"] = dict(prev_result)
        capabilities = plugin.get("capabilities")
        asked = capabilities if isinstance(capabilities, dict) else {}
        wanted = {k: v for k, v in runtime_config.items() if asked.get(k) is True}
        if wanted:
            conf["runtimeConfig"] = wanted
        return conf


@dataclass(frozen=True)
class Attachment:
    """A pod's place on a network: which namespace, which interface, who it is."""

    container_id: str
    netns: str
    ifname: str = DEFAULT_IFNAME
    args: Mapping[str, str] = field(default_factory=dict)  # CNI_ARGS, e.g. K8S_POD_NAME
    runtime_config: Mapping[str, Any] = field(default_factory=dict)  # e.g. portMappings


def ips_of(result: Mapping[str, Any]) -> list[str]:
    """The addresses (without prefix length) a result gives, in its order:
    CNI 0.3+ ``ips[].address`` as CIDR."""
    out = []
    for ip in result.get("ips") or []:
        address = str(ip.get("address", ""))
        if address:
            out.append(address.split("/", 1)[0])
    return out


class CNI:
    def __init__(
        self,
        conf_dir: Path = DEFAULT_CNI_CONF_DIR,
        bin_dirs: Sequence[Path] = DEFAULT_CNI_BIN_DIRS,
    ) -> None:
        self.conf_dir = conf_dir
        self.bin_dirs = tuple(bin_dirs)

    def network(self) -> NetworkConfig:
        """The first usable config in the conf dir, as Status's NetworkReady sees it."""
        status = cni_status(self.conf_dir, self.bin_dirs)
        if not status.ready:
            raise FailedPrecondition(f"network not ready: {status.message}")
        return NetworkConfig.from_document(
            json.loads(Path(status.config_file).read_text()), status.config_file
        )

    def _binary(self, plugin_type: str) -> Path:
        if "/" in plugin_type or plugin_type.startswith("."):
            raise CNIError(f"CNI plugin type {plugin_type!r} is not a plugin name")
        for d in self.bin_dirs:
            if (d / plugin_type).is_file():
                return d / plugin_type
        dirs = ", ".join(str(d) for d in self.bin_dirs)
        raise CNIError(f"CNI plugin {plugin_type!r} not found in {dirs}")

    async def exec_plugin(
        self, command: str, conf: Mapping[str, Any], attachment: Attachment
    ) -> dict[str, Any]:
        """One plugin, one verb: env and stdin in, a JSON result (or error) out."""
        plugin_type = str(conf["type"])
        binary = self._binary(plugin_type)
        cni_args = ";".join(["IgnoreUnknown=1", *(f"{k}={v}" for k, v in attachment.args.items())])
        env = {
            "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
            "CNI_COMMAND": command,
            "CNI_CONTAINERID": attachment.container_id,
            "CNI_NETNS": attachment.netns,
            "CNI_IFNAME": attachment.ifname,
            "CNI_ARGS": cni_args,
            "CNI_PATH": os.pathsep.join(str(d) for d in self.bin_dirs),
        }
        proc = await asyncio.create_subprocess_exec(
            str(binary),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=env,
        )
        try:
            out, err = await asyncio.wait_for(
                proc.communicate(json.dumps(conf).encode()), PLUGIN_TIMEOUT
            )
        except (TimeoutError, asyncio.CancelledError):
            proc.kill()
            await proc.wait()
            raise
        if proc.returncode != 0:
            raise CNIError(plugin_failure(plugin_type, command, out, err, proc.returncode))
        if not out.strip():
            return {}
        try:
            result = json.loads(out)
        except ValueError:
            raise CNIError(f"CNI plugin {plugin_type} {command}: output is not JSON") from None
        return result if isinstance(result, dict) else {}

    async def add(self, network: NetworkConfig, attachment: Attachment) -> dict[str, Any]:
        """ADD through the chain; each plugin gets the last one's result."""
        result: dict[str, Any] | None = None
        for plugin in network.plugins:
            conf = network.plugin_config(plugin, result, attachment.runtime_config)
            result = await self.exec_plugin("ADD", conf, attachment)
        return result or {}

    async def check(
        self, network: NetworkConfig, attachment: Attachment, cached: Mapping[str, Any]
    ) -> None:
        """CHECK (CNI 0.4+): each plugin verifies what its ADD did."""
        for plugin in network.plugins:
            conf = network.plugin_config(plugin, cached, attachment.runtime_config)
            await self.exec_plugin("CHECK", conf, attachment)

    async def delete(
        self, network: NetworkConfig, attachment: Attachment, cached: Mapping[str, Any] | None
    ) -> None:
        """DEL backwards through the chain. A plugin must not fail DEL for what is
        already gone, so DEL may be repeated (StopPodSandbox is idempotent)."""
        for plugin in reversed(network.plugins):
            conf = network.plugin_config(plugin, cached, attachment.runtime_config)
            await self.exec_plugin("DEL", conf, attachment)


def plugin_failure(plugin_type: str, command: str, out: bytes, err: bytes, code: int | None) -> str:
    """The plugin's JSON error (SPEC.md "Error"), or its stderr, in one line."""
    try:
        doc = json.loads(out)
    except ValueError:
        doc = None
    if isinstance(doc, dict) and "msg" in doc:
        detail = f": {doc['details']}" if doc.get("details") else ""
        what = f"{doc['msg']}{detail} (code {doc.get('code')})"
        return f"CNI plugin {plugin_type} {command} failed: {what}"
    text = (err or out).decode(errors="replace").strip().splitlines()
    last = text[-1] if text else "no output"
    return f"CNI plugin {plugin_type} {command} failed (exit {code}): {last}"


def default_conflist(
    subnet: str = "10.88.0.0/16", bridge: str = "tcri0", data_dir: str = ""
) -> dict[str, Any]:
    """What ``teaching-cri cni install`` writes: a bridge with host-local
    addresses, the usual first network of a one-machine cluster, then ``portmap``
    for the pods' hostPorts (as containerd's own conflist). No masquerade of
    the pods' traffic: pods talk to each other and to this machine, nothing
    leaves it.

    ``portmap`` asks for the ``portMappings`` capability, so only it is handed
    the sandbox's mappings (``runtimeConfig``); with none it passes the bridge's
    result on untouched. For each mapping its ADD writes iptables NAT rules:
    ``CNI-HOSTPORT-DNAT`` (from PREROUTING and OUTPUT, for local destination
    addresses) jumps, by a rule commented with the pod's id, to a chain of the
    pod's own (``CNI-DN-<hash>``) that DNATs the host port to the pod's address;
    DEL, given the same mappings, removes both.
    ``snat`` (its default, said here) makes the host itself a client too:
    a connection to ``127.0.0.1:<hostPort>`` is DNATed to the pod but still has
    the source 127.0.0.1, which the kernel will not route off the loopback, so
    the plugin sets ``route_localnet`` on the bridge and masquerades such
    connections (``CNI-HOSTPORT-SETMARK``, ``CNI-HOSTPORT-MASQ``) to come from
    the bridge's address, to which the pod can answer."""
    ipam: dict[str, Any] = {
        "type": "host-local",
        "ranges": [[{"subnet": subnet}]],
        "routes": [{"dst": "0.0.0.0/0"}],
    }
    if data_dir:
        ipam["dataDir"] = data_dir
    return {
        "cniVersion": "1.0.0",
        "name": "teaching-cri",
        "plugins": [
            {
                "type": "bridge",
                "bridge": bridge,
                "isGateway": True,
                "ipMasq": False,
                "hairpinMode": True,
                "ipam": ipam,
            },
            {"type": "portmap", "capabilities": {"portMappings": True}, "snat": True},
        ],
    }
