"""Pod sandboxes on the unprivileged tiers: no root to pin a network namespace
or run CNI, so a pod's network is its infra's own namespace with loopback
only, and the sandbox says so. As root the same path runs with
``--runtime unprivileged``, and once more with the whole server as nobody."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from test_cli import as_nobody, skip_unless_nobody_can_run_us

from teaching_cri.api import api_pb2
from teaching_cri.client import Client, connect, wait_for_socket
from teaching_cri.runtime.backends import user_namespaces_allowed
from teaching_cri.trace.charts import ChartSet
from teaching_cri.trace.conformance import assert_conforms

from conftest import IS_ROOT, start_server

pytestmark = pytest.mark.skipif(
    shutil.which("runc") is None or not user_namespaces_allowed(),
    reason="rootless runc needs runc and unprivileged user namespaces",
)


def walk_a_pod(client: Client) -> dict[str, object]:
    config = api_pb2.PodSandboxConfig(
        metadata=api_pb2.PodSandboxMetadata(name="lonely", namespace="default", uid="u1"),
        hostname="lonely",
    )
    sandbox_id = client.runtime.RunPodSandbox(
        api_pb2.RunPodSandboxRequest(config=config)
    ).pod_sandbox_id
    st = client.runtime.PodSandboxStatus(
        api_pb2.PodSandboxStatusRequest(pod_sandbox_id=sandbox_id, verbose=True)
    )
    stats = client.runtime.PodSandboxStats(
        api_pb2.PodSandboxStatsRequest(pod_sandbox_id=sandbox_id)
    ).stats
    client.runtime.StopPodSandbox(api_pb2.StopPodSandboxRequest(pod_sandbox_id=sandbox_id))
    stopped = client.runtime.PodSandboxStatus(
        api_pb2.PodSandboxStatusRequest(pod_sandbox_id=sandbox_id)
    ).status.state
    client.runtime.RemovePodSandbox(api_pb2.RemovePodSandboxRequest(pod_sandbox_id=sandbox_id))
    left = client.runtime.ListPodSandbox(api_pb2.ListPodSandboxRequest()).items
    return {
        "state": st.status.state,
        "ip": st.status.network.ip,
        "info": json.loads(st.info["info"]),
        "has_cpu": stats.linux.HasField("cpu"),
        "stopped": stopped,
        "left": len(left),
    }


def check(seen: dict[str, object]) -> None:
    assert seen["state"] == api_pb2.SANDBOX_READY
    assert seen["ip"] == "", "no CNI: no pod IP"
    info = seen["info"]
    assert isinstance(info, dict) and info["network"].startswith("loopback only")
    assert info["netns"] == ""
    assert seen["has_cpu"] is False, "no cgroup: no CPU figures rather than invented ones"
    assert seen["stopped"] == api_pb2.SANDBOX_NOTREADY
    assert seen["left"] == 0


def test_an_unprivileged_pod_has_loopback_only_and_says_so(
    short_tmp: Path, charts: ChartSet
) -> None:
    srv = start_server(short_tmp / "u", "--runtime", "unprivileged")
    try:
        client = srv.client()
        since = time.time_ns()
        check(walk_a_pod(client))
        assert_conforms(client.recent(since_unix_nano=since), charts)
    finally:
        srv.stop()


@pytest.fixture
def nobody_dir() -> Iterator[Path]:
    skip_unless_nobody_can_run_us()
    d = Path(tempfile.mkdtemp(prefix="tcri-pu-"))
    os.chown(d, pwd.getpwnam("nobody").pw_uid, pwd.getpwnam("nobody").pw_gid)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.mark.skipif(not IS_ROOT, reason="switching to user nobody needs root")
def test_a_pod_of_a_server_run_by_nobody(nobody_dir: Path) -> None:
    sock = nobody_dir / "cri.sock"
    cmd = as_nobody(
        [
            sys.executable,
            "-m",
            "teaching_cri",
            "serve",
            "--socket",
            str(sock),
            "--root",
            str(nobody_dir / "root"),
            "--state",
            str(nobody_dir / "state"),
        ]
    )
    env = {"PATH": os.environ["PATH"], "HOME": str(nobody_dir)}
    proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True, cwd="/")
    try:
        wait_for_socket(sock, timeout=30)
        with connect(sock) as client:
            check(walk_a_pod(client))
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err[-2000:]


@pytest.mark.parametrize("runtime", ["unprivileged", "processes"])
def test_a_container_in_an_unprivileged_pod(
    short_tmp: Path, runtime: str, charts: ChartSet
) -> None:
    """The container joins what its pod has: with rootless runc, the infra's user
    namespace and through it the others (the pod's hostname shows); as plain
    processes, nothing, and it still runs, execs, stops and goes."""
    if not Path("/bin/busybox").exists():
        pytest.skip("busybox-static is needed for the local image")
    from teaching_cri.api import admin_pb2

    image = "teaching-cri.local/busybox:latest"
    srv = start_server(short_tmp / runtime, "--runtime", runtime)
    try:
        client = srv.client()
        rt = client.runtime
        since = time.time_ns()
        client.admin.BuildLocalImage(admin_pb2.BuildLocalImageRequest(name=image))
        pod = api_pb2.PodSandboxConfig(
            metadata=api_pb2.PodSandboxMetadata(name="inner", namespace="d", uid="u2"),
            hostname="inner",
            log_directory=str(short_tmp / "logs"),
        )
        sandbox_id = rt.RunPodSandbox(api_pb2.RunPodSandboxRequest(config=pod)).pod_sandbox_id
        config = api_pb2.ContainerConfig(
            metadata=api_pb2.ContainerMetadata(name="c"),
            image=api_pb2.ImageSpec(image=image),
            command=["sleep", "1000"],
            log_path="c.log",
            linux=api_pb2.LinuxContainerConfig(
                security_context=api_pb2.LinuxContainerSecurityContext(
                    namespace_options=api_pb2.NamespaceOption(pid=api_pb2.CONTAINER)
                )
            ),
        )
        cid = rt.CreateContainer(
            api_pb2.CreateContainerRequest(
                pod_sandbox_id=sandbox_id, config=config, sandbox_config=pod
            )
        ).container_id
        rt.StartContainer(api_pb2.StartContainerRequest(container_id=cid))
        out = rt.ExecSync(api_pb2.ExecSyncRequest(container_id=cid, cmd=["hostname"], timeout=10))
        assert out.exit_code == 0
        if runtime == "unprivileged":
            assert out.stdout == b"inner\n", "the pod's uts namespace, joined"
        rt.StopContainer(api_pb2.StopContainerRequest(container_id=cid, timeout=1))
        status = rt.ContainerStatus(api_pb2.ContainerStatusRequest(container_id=cid)).status
        assert status.state == api_pb2.CONTAINER_EXITED
        rt.RemoveContainer(api_pb2.RemoveContainerRequest(container_id=cid))
        rt.StopPodSandbox(api_pb2.StopPodSandboxRequest(pod_sandbox_id=sandbox_id))
        rt.RemovePodSandbox(api_pb2.RemovePodSandboxRequest(pod_sandbox_id=sandbox_id))
        assert_conforms(client.recent(since_unix_nano=since), charts)
    finally:
        srv.stop()


def test_a_host_network_pod_under_rootless_runc_is_refused_saying_why(
    short_tmp: Path, charts: ChartSet
) -> None:
    """runc 1.1 cannot put a container in the infra's user namespace without a
    network namespace of its own; the pod is refused before anything is made,
    naming the way out, and the chart's branch shows it."""
    srv = start_server(short_tmp / "h", "--runtime", "unprivileged")
    try:
        client = srv.client()
        since = time.time_ns()
        config = api_pb2.PodSandboxConfig(
            metadata=api_pb2.PodSandboxMetadata(name="hostnet", namespace="d", uid="u3"),
            linux=api_pb2.LinuxPodSandboxConfig(
                security_context=api_pb2.LinuxSandboxSecurityContext(
                    namespace_options=api_pb2.NamespaceOption(network=api_pb2.NODE)
                )
            ),
        )
        with pytest.raises(grpc.RpcError) as refused:
            client.runtime.RunPodSandbox(api_pb2.RunPodSandboxRequest(config=config))
        assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        details = str(refused.value.details())
        assert "host-network" in details and "rootless-runc" in details
        assert "--runtime processes" in details
        assert not client.runtime.ListPodSandbox(api_pb2.ListPodSandboxRequest()).items
        assert not list((srv.root / "sandboxes").iterdir())
        events = client.recent(since_unix_nano=since, charts=["RunPodSandbox"])
        assert_conforms(events, charts)
        chosen = [e.label for e in events if e.node == "host_network_in_user_namespace"]
        assert chosen[0] == "Y"
    finally:
        srv.stop()
