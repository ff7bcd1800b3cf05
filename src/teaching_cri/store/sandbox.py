"""The sandbox store: containerd's ``internal/cri/store/sandbox``.

Each pod's record is ``<root>/sandboxes/<id>/sandbox.json``: the checkpoint
of its config, its state, its IPs and the CNI result that DEL needs."""

from __future__ import annotations

import base64
import shutil
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeAlias, cast

from ..api import api_pb2
from .records import Store

# CRI's own enum (api_pb2.PodSandboxState), named in the record on disk.
State: TypeAlias = api_pb2.PodSandboxState
READY: State = api_pb2.SANDBOX_READY
NOTREADY: State = api_pb2.SANDBOX_NOTREADY
PENDING_RUN = "run"  # the record's intent while RunPodSandbox runs
PENDING_REMOVE = "remove"  # teardown has begun: never READY again


@dataclass
class Sandbox:
    """The record of one pod sandbox, as kept on disk."""

    id: str
    name: str
    config_b64: str  # the PodSandboxConfig as sent: the checkpoint
    created_at: int
    state: State = NOTREADY
    runtime_handler: str = ""
    netns: str = ""  # the pinned namespace's path, "" for host network or unpinned
    network_ready: bool = False
    loopback_only: bool = False
    ips: list[str] = field(default_factory=list)
    cni_result: dict[str, Any] = field(default_factory=dict)
    cni_network: dict[str, Any] = field(default_factory=dict)  # the conflist used at ADD
    infra_image: str = ""
    infra_fallback: str = ""  # why the built-in infra stands in for the pause image
    unreadable: str = ""  # loaded from a record that could not be read: why
    resources: dict[str, int] = field(default_factory=dict)  # UpdatePodSandboxResources
    # Written before the pod's first mount, namespace or process ("run"; a
    # record still saying so at start-up is a RunPodSandbox cut short, undone
    # whole) and when RemovePodSandbox begins ("remove": NOTREADY from then on).
    pending: str = ""

    @property
    def config(self) -> api_pb2.PodSandboxConfig:
        config = api_pb2.PodSandboxConfig()
        config.ParseFromString(base64.b64decode(self.config_b64))
        return config

    @property
    def host_network(self) -> bool:
        options = self.config.linux.security_context.namespace_options
        return options.network == api_pb2.NODE


def unreadable(sandbox_id: str, netns: str, why: str) -> Sandbox:
    """What stands for a pod whose record could not be read: NOTREADY, its
    pinned namespace (if there is one) kept so that RemovePodSandbox finds it."""
    return Sandbox(sandbox_id, f"unreadable-{sandbox_id}", "", 0, netns=netns, unreadable=why)


class SandboxStore(Store[Sandbox]):
    kind = "pod sandbox"

    def path(self, record_id: str) -> Path:
        return self.directory / record_id / "sandbox.json"

    def paths(self) -> Iterator[tuple[str, Path]]:
        for path in self.directory.glob("*/sandbox.json"):
            yield path.parent.name, path

    def document(self, record: Sandbox) -> dict[str, Any]:
        return asdict(record) | {"state": api_pb2.PodSandboxState.Name(record.state)}

    def parse(self, data: dict[str, Any]) -> Sandbox:
        """``ValueError`` for a state CRI has no name for."""
        state = cast(State, api_pb2.PodSandboxState.Value(data.pop("state", "SANDBOX_NOTREADY")))
        return Sandbox(**data, state=state)

    def save(self, record: Sandbox) -> None:
        self.path(record.id).parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        super().save(record)

    def remove_files(self, record_id: str) -> None:
        shutil.rmtree(self.directory / record_id, ignore_errors=True)
