"""The requests critest's framework sends by default (pkg/framework/util.go):
pods with a metadata of uuids and attempt 2, an empty Linux config, no
hostname, no log directory; containers of ``top`` with no log path and no
security context. Each must run as it does on containerd."""

from __future__ import annotations

import time

import grpc
import pytest

from teaching_cri.api import api_pb2

from cri_node import Node, create_container, exec_sync, needs_root_node, run_pod, start

pytestmark = needs_root_node


def default_pod(prefix: str) -> api_pb2.PodSandboxConfig:
    import uuid

    return api_pb2.PodSandboxConfig(
        metadata=api_pb2.PodSandboxMetadata(
            name=prefix + str(uuid.uuid4()),
            uid="cri-test-uid" + str(uuid.uuid4()),
            namespace="cri-test-namespace" + str(uuid.uuid4()),
            attempt=2,
        ),
        linux=api_pb2.LinuxPodSandboxConfig(),
    )


def test_a_default_container_runs_execs_stops_and_goes(node: Node) -> None:
    pod = default_pod("create-PodSandbox-for-container-")
    pod_id = run_pod(node.client, pod)
    cid = create_container(node.client, pod_id, pod, "container-for-create-test-" + "0" * 36, "top")
    status = node.client.runtime.ContainerStatus(
        api_pb2.ContainerStatusRequest(container_id=cid)
    ).status
    assert status.state == api_pb2.CONTAINER_CREATED
    assert status.log_path == "", "no log directory, no log path: no log"
    start(node.client, cid)
    out = exec_sync(node.client, cid, "echo", "hello")
    assert (out.exit_code, out.stdout) == (0, b"hello\n")
    rt = node.client.runtime
    begun = time.monotonic()
    rt.StopContainer(api_pb2.StopContainerRequest(container_id=cid, timeout=60))
    assert time.monotonic() - begun < 30, "top ends on SIGTERM; nobody waits the minute"
    status = rt.ContainerStatus(api_pb2.ContainerStatusRequest(container_id=cid)).status
    assert status.state == api_pb2.CONTAINER_EXITED
    listed = rt.ListContainers(
        api_pb2.ListContainersRequest(filter=api_pb2.ContainerFilter(pod_sandbox_id=pod_id))
    ).containers
    assert [c.id for c in listed] == [cid]
    assert listed[0].metadata.name.startswith("container-for-create-test-")
    rt.RemoveContainer(api_pb2.RemoveContainerRequest(container_id=cid))
    with pytest.raises(grpc.RpcError) as gone:
        rt.ContainerStatus(api_pb2.ContainerStatusRequest(container_id=cid))
    assert gone.value.code() == grpc.StatusCode.NOT_FOUND


def test_the_pod_status_echoes_the_metadata_and_reports_an_ip(node: Node) -> None:
    pod = default_pod("PodSandbox-for-test-status-")
    pod_id = run_pod(node.client, pod)
    status = node.client.runtime.PodSandboxStatus(
        api_pb2.PodSandboxStatusRequest(pod_sandbox_id=pod_id)
    ).status
    assert status.metadata == pod.metadata
    assert status.state == api_pb2.SANDBOX_READY
    assert status.network.ip, "a CNI pod has an IP"
    assert status.linux.namespaces.options.network == api_pb2.POD


def test_a_mount_whose_host_path_is_missing_gets_a_directory(node: Node) -> None:
    """containerd makes a missing host path a directory before the bind; a
    relative host path is refused, naming it."""
    pod = default_pod("PodSandbox-for-mounts-")
    pod_id = run_pod(node.client, pod)
    host = node.base / "not" / "yet" / "there"
    mounts = [api_pb2.Mount(container_path="/data", host_path=str(host))]
    cid = create_container(node.client, pod_id, pod, "mounts", "top", mounts=mounts)
    assert host.is_dir()
    (host / "marker").write_text("from the host")
    start(node.client, cid)
    assert exec_sync(node.client, cid, "cat", "/data/marker").stdout == b"from the host"
    relative = [api_pb2.Mount(container_path="/data", host_path="relative/dir")]
    with pytest.raises(grpc.RpcError) as refused:
        create_container(node.client, pod_id, pod, "relative", "top", mounts=relative)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "relative/dir" in str(refused.value.details())
