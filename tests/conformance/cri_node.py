"""A node for the conformance tests: a live root server with a CNI network,
and the requests a real client sends.

The tests in this folder are written from the public expectation (cri-tools'
``pkg/validate``, the kubelet's CRI usage, containerd's behaviour), not from
what teaching-cri did before: each builds its requests the way those clients
do, with their defaults left empty where they leave them empty.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from teaching_cri.api import admin_pb2, api_pb2
from teaching_cri.client import Client
from teaching_cri.manager.cni import default_conflist
from teaching_cri.manager.network import DEFAULT_CNI_BIN_DIRS

from conftest import IS_ROOT, Server, start_server

BUSYBOX = "teaching-cri.local/busybox:latest"


def unavailable() -> str:
    """Why a root node cannot run here, or ''."""
    if not IS_ROOT:
        return "the conformance suite runs real pods with CNI: it needs root"
    if shutil.which("runc") is None or not Path("/bin/busybox").exists():
        return "runc and busybox-static are needed"
    if not any((d / "bridge").is_file() for d in DEFAULT_CNI_BIN_DIRS):
        return "CNI plugins missing (apt-get install containernetworking-plugins)"
    return ""


needs_root_node = pytest.mark.skipif(bool(unavailable()), reason=unavailable())


@dataclass
class Node:
    server: Server
    client: Client
    base: Path  # a private directory: logs, host paths for mounts
    conf_dir: Path  # the CNI config directory the server reads

    def restart(self, *extra: str) -> None:
        self.server.stop()
        self.server = start_server(self.base / "srv", "--cni-conf-dir", str(self.conf_dir), *extra)
        self.client = self.server.client()


def cni_conf(directory: Path, base: Path) -> Path:
    """A bridge network on a subnet of this test process's own."""
    bridge = f"tcri-k{os.getpid() % 10000}"
    conf = directory / "net.d"
    conf.mkdir(exist_ok=True)
    doc = default_conflist(f"10.236.{os.getpid() % 200}.0/24", bridge, str(base / "ipam"))
    (conf / "10-test.conflist").write_text(json.dumps(doc))
    return conf


def bridges_of(conf: Path) -> list[str]:
    names = []
    for path in conf.glob("*.conflist"):
        for plugin in json.loads(path.read_text()).get("plugins", []):
            if plugin.get("bridge"):
                names.append(plugin["bridge"])
    return names


@pytest.fixture
def node(short_tmp: Path) -> Iterator[Node]:
    conf = cni_conf(short_tmp, short_tmp)
    srv = start_server(short_tmp / "srv", "--cni-conf-dir", str(conf))
    n = Node(srv, srv.client(), short_tmp, conf)
    n.client.admin.BuildLocalImage(admin_pb2.BuildLocalImageRequest(name=BUSYBOX))
    try:
        yield n
    finally:
        c = n.server.client()
        for item in c.runtime.ListPodSandbox(api_pb2.ListPodSandboxRequest()).items:
            c.runtime.StopPodSandbox(api_pb2.StopPodSandboxRequest(pod_sandbox_id=item.id))
            c.runtime.RemovePodSandbox(api_pb2.RemovePodSandboxRequest(pod_sandbox_id=item.id))
        n.server.stop()
        for bridge in bridges_of(conf):
            subprocess.run(["ip", "link", "del", bridge], capture_output=True)


def pod_config(name: str, **fields: object) -> api_pb2.PodSandboxConfig:
    """What critest's PodSandboxConfig looks like: metadata, and little else
    (no hostname, no log directory unless the test needs one)."""
    return api_pb2.PodSandboxConfig(
        metadata=api_pb2.PodSandboxMetadata(
            name=name, namespace="cri-test-namespace", uid=f"uid-{name}"[:200], attempt=0
        ),
        **fields,  # type: ignore[arg-type]
    )


def run_pod(client: Client, config: api_pb2.PodSandboxConfig) -> str:
    return client.runtime.RunPodSandbox(api_pb2.RunPodSandboxRequest(config=config)).pod_sandbox_id


def create_container(
    client: Client,
    pod_id: str,
    pod: api_pb2.PodSandboxConfig,
    name: str,
    *command: str,
    image: str = BUSYBOX,
    security: api_pb2.LinuxContainerSecurityContext | None = None,
    **fields: object,
) -> str:
    config = api_pb2.ContainerConfig(
        metadata=api_pb2.ContainerMetadata(name=name),
        image=api_pb2.ImageSpec(image=image),
        command=list(command),
        linux=api_pb2.LinuxContainerConfig(
            security_context=security or api_pb2.LinuxContainerSecurityContext()
        ),
        **fields,  # type: ignore[arg-type]
    )
    return client.runtime.CreateContainer(
        api_pb2.CreateContainerRequest(pod_sandbox_id=pod_id, config=config, sandbox_config=pod)
    ).container_id


def start(client: Client, container_id: str) -> None:
    client.runtime.StartContainer(api_pb2.StartContainerRequest(container_id=container_id))


def exec_sync(
    client: Client, container_id: str, *cmd: str, timeout: int = 10
) -> api_pb2.ExecSyncResponse:
    return client.runtime.ExecSync(
        api_pb2.ExecSyncRequest(container_id=container_id, cmd=list(cmd), timeout=timeout)
    )


def wait_exit(client: Client, container_id: str, timeout: float = 10) -> api_pb2.ContainerStatus:
    """The container's status once it has exited."""
    deadline = time.monotonic() + timeout
    while True:
        status = client.runtime.ContainerStatus(
            api_pb2.ContainerStatusRequest(container_id=container_id)
        ).status
        if status.state == api_pb2.CONTAINER_EXITED or time.monotonic() > deadline:
            return status
        time.sleep(0.05)


def logs_of(path: Path) -> str:
    """The messages of a CRI log file (`<time> <stream> <F|P> <message>`)."""
    out = []
    for line in path.read_text().splitlines():
        parts = line.split(" ", 3)
        if len(parts) == 4:
            out.append(parts[3] + ("\n" if parts[2] == "F" else ""))
    return "".join(out)
