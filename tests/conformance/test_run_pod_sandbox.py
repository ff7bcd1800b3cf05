"""RunPodSandbox as real clients call it (conformance items 1, 2 and 10).

critest's pods have no hostname and names like
``create-PodSandbox-for-container-<uuid>`` (pkg/framework/util.go); the
kubelet's may be 253 characters. containerd gives such a pod the node's
hostname. A RunPodSandbox that fails undoes everything it made; the pause
image falls back to the built-in infra only when its registry is unreachable.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import grpc
import pytest

from teaching_cri.api import api_pb2
from teaching_cri.trace.conformance import assert_conforms
from teaching_cri.trace.events import EventKind

from conftest import start_server
from cri_node import (
    Node,
    create_container,
    exec_sync,
    needs_root_node,
    pod_config,
    run_pod,
    start,
)
from test_pod_sandbox import leftovers

pytestmark = needs_root_node


def critest_name(prefix: str, length: int) -> str:
    name = prefix + str(uuid.uuid4())
    return (name + "-" + "x" * length)[:length]


def status_info(node: Node, pod_id: str) -> dict[str, object]:
    response = node.client.runtime.PodSandboxStatus(
        api_pb2.PodSandboxStatusRequest(pod_sandbox_id=pod_id, verbose=True)
    )
    return dict(json.loads(response.info["info"]))


def test_a_pod_without_hostname_and_a_long_name_runs_with_the_nodes_hostname(
    node: Node, charts: object
) -> None:
    for length in (100, 253):
        config = pod_config(critest_name("create-PodSandbox-for-container-", length))
        assert not config.hostname
        pod_id = run_pod(node.client, config)
        listed = node.client.runtime.ListPodSandbox(
            api_pb2.ListPodSandboxRequest(filter=api_pb2.PodSandboxFilter(id=pod_id))
        ).items
        assert [p.metadata.name for p in listed] == [config.metadata.name]
        assert listed[0].state == api_pb2.SANDBOX_READY
        cid = create_container(node.client, pod_id, config, "c", "sleep", "60")
        start(node.client, cid)
        out = exec_sync(node.client, cid, "hostname")
        assert out.exit_code == 0, out.stderr
        assert out.stdout.decode().strip() == os.uname().nodename


@pytest.mark.parametrize(
    "hostname",
    ["h" * 65, "under_score", "-leading-dash", "trailing-dot.", "two..dots", "spa ce", "é" * 33],
)
def test_a_hostname_the_kernel_or_dns_cannot_take_is_invalid_argument(
    node: Node, hostname: str
) -> None:
    with pytest.raises(grpc.RpcError) as refused:
        run_pod(node.client, pod_config("bad-hostname", hostname=hostname))
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "hostname" in str(refused.value.details())
    assert not node.client.runtime.ListPodSandbox(api_pb2.ListPodSandboxRequest()).items
    assert not list((node.server.root / "sandboxes").iterdir())


def test_a_64_byte_hostname_is_taken_as_given(node: Node) -> None:
    hostname = "a" * 30 + "." + "b" * 33
    config = pod_config("exact-hostname", hostname=hostname)
    pod_id = run_pod(node.client, config)
    cid = create_container(node.client, pod_id, config, "c", "sleep", "60")
    start(node.client, cid)
    assert exec_sync(node.client, cid, "hostname").stdout.decode().strip() == hostname


def test_a_run_pod_sandbox_that_fails_at_runc_create_leaves_nothing(
    node: Node, charts: object
) -> None:
    """A sysctl the kernel does not have makes runc fail at create, after the
    netns, CNI, the pod's cgroup, /dev/shm and the record exist."""
    since = 0
    config = pod_config(
        "fails-at-create",
        linux=api_pb2.LinuxPodSandboxConfig(sysctls={"net.ipv4.no_such_sysctl": "1"}),
    )
    with pytest.raises(grpc.RpcError) as failed:
        run_pod(node.client, config)
    assert "no_such_sysctl" in str(failed.value.details())
    events = node.client.recent(charts=["RunPodSandbox"], since_unix_nano=since)
    ids = {e.attributes.get("sandbox_id") for e in events} - {None, ""}
    assert len(ids) == 1, ids
    (pod_id,) = ids
    assert leftovers(node.server, str(pod_id)) == []
    assert not node.client.runtime.ListPodSandbox(api_pb2.ListPodSandboxRequest()).items
    assert_conforms(events, charts)  # type: ignore[arg-type]
    assert any(e.node == "undo_taken_steps" for e in events)
    # And the node still works: the same pod without the bad sysctl runs.
    config.linux.sysctls.clear()
    assert run_pod(node.client, config)


def _host_network() -> api_pb2.LinuxPodSandboxConfig:
    return api_pb2.LinuxPodSandboxConfig(
        security_context=api_pb2.LinuxSandboxSecurityContext(
            namespace_options=api_pb2.NamespaceOption(network=api_pb2.NODE)
        )
    )


def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_an_unreachable_pause_image_registry_falls_back_once_and_says_so(
    short_tmp: Path, charts: object
) -> None:
    pause = f"127.0.0.1:{_closed_port()}/pause:3.10"
    srv = start_server(short_tmp / "srv", "--pause-image", pause)
    try:
        client = srv.client()
        first = run_pod(client, pod_config("offline-1", linux=_host_network()))
        second = run_pod(client, pod_config("offline-2", linux=_host_network()))
        for pod_id in (first, second):
            info = json.loads(
                client.runtime.PodSandboxStatus(
                    api_pb2.PodSandboxStatusRequest(pod_sandbox_id=pod_id, verbose=True)
                ).info["info"]
            )
            assert "built-in infra" in info["infra_fallback"]
            assert pause in info["infra_fallback"]
        events = client.recent(charts=["RunPodSandbox"])
        assert_conforms(events, charts)  # type: ignore[arg-type]
        branches = [e.label for e in events if e.node == "registry_unreachable"]
        assert branches == ["Y", "Y"]
        fallbacks = [e for e in events if e.node == "use_built_in_infra"]
        assert len(fallbacks) == 2
        assert "remembered" not in fallbacks[0].attributes, "the first pod tries the registry"
        assert "remembered" in fallbacks[1].attributes, "the second does not try again"
        assert "built-in infra" in srv.output()  # the warning in the log
        for pod_id in (first, second):
            client.runtime.StopPodSandbox(api_pb2.StopPodSandboxRequest(pod_sandbox_id=pod_id))
            client.runtime.RemovePodSandbox(api_pb2.RemovePodSandboxRequest(pod_sandbox_id=pod_id))
    finally:
        srv.stop()


def test_a_pause_image_the_registry_does_not_have_fails_the_pod(
    short_tmp: Path, charts: object
) -> None:
    from registry import RegistryUnavailable, run_registry

    try:
        with run_registry(short_tmp / "registry") as reg:
            pause = f"{reg.host}/pause:does-not-exist"
            srv = start_server(short_tmp / "srv", "--pause-image", pause)
            try:
                client = srv.client()
                for _ in range(2):  # the second answer is the remembered failure
                    with pytest.raises(grpc.RpcError) as failed:
                        run_pod(client, pod_config("no-pause", linux=_host_network()))
                    assert failed.value.code() == grpc.StatusCode.NOT_FOUND
                    assert pause in str(failed.value.details())
                assert not client.runtime.ListPodSandbox(api_pb2.ListPodSandboxRequest()).items
                images = client.image.ListImages(api_pb2.ListImagesRequest()).images
                assert not any("teaching-cri.local/pause" in t for i in images for t in i.repo_tags)
                events = client.recent(charts=["RunPodSandbox"])
                assert_conforms(events, charts)  # type: ignore[arg-type]
                branches = [
                    e
                    for e in events
                    if e.node == "registry_unreachable" and e.kind is EventKind.BRANCH
                ]
                assert [e.label for e in branches] == ["N"] * 2
            finally:
                srv.stop()
    except RegistryUnavailable as exc:
        pytest.skip(str(exc))


def test_parallel_run_pod_sandbox_calls_for_one_name_make_one_pod(node: Node) -> None:
    """The name check and the record are apart by awaits; five callers at once
    must still get one pod and four ALREADY_EXISTS, as one after the other do."""
    from concurrent.futures import ThreadPoolExecutor

    config = pod_config("same-name-at-once")

    def attempt(_: int) -> str:
        try:
            return run_pod(node.client, config)
        except grpc.RpcError as exc:
            return exc.code().name

    with ThreadPoolExecutor(5) as pool:
        results = list(pool.map(attempt, range(5)))
    made = [r for r in results if r != "ALREADY_EXISTS"]
    assert len(made) == 1, results
    listed = node.client.runtime.ListPodSandbox(api_pb2.ListPodSandboxRequest()).items
    assert [p.id for p in listed] == made


def test_parallel_create_container_calls_for_one_name_make_one_container(node: Node) -> None:
    """The name is reserved in the same turn of the event loop as its check;
    five CreateContainer calls at once for one name: one container, four
    ALREADY_EXISTS, and no record or rootfs left of the four."""
    from concurrent.futures import ThreadPoolExecutor

    config = pod_config("same-container-name")
    pod_id = run_pod(node.client, config)

    def attempt(_: int) -> str:
        try:
            return create_container(node.client, pod_id, config, "twin", "sleep", "100")
        except grpc.RpcError as exc:
            return exc.code().name

    with ThreadPoolExecutor(5) as pool:
        results = list(pool.map(attempt, range(5)))
    made = [r for r in results if r != "ALREADY_EXISTS"]
    assert len(made) == 1 and results.count("ALREADY_EXISTS") == 4, results
    listed = node.client.runtime.ListContainers(api_pb2.ListContainersRequest()).containers
    assert [c.id for c in listed] == made
    records = sorted(p.stem for p in (node.server.root / "containers").glob("*.json"))
    assert records == made
    views = sorted(p.name for p in (node.server.root / "images" / "snapshots" / "active").iterdir())
    assert made[0] in views and len(views) == 2, views  # the container's and the infra's
