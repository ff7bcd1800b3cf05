"""A record that cannot be read is never a reason to kill or delete anything
(containerd's load policy, the crash-safety issue's first item).

A truncated file is what a full disk or a power cut leaves. After a restart
the container or pod is still listed, UNKNOWN (a pod NOTREADY), its processes
untouched, the bad file moved aside; RemoveContainer / RemovePodSandbox then
clean up everything they can find.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable
from pathlib import Path

from teaching_cri.api import api_pb2

from cri_node import Node, create_container, needs_root_node, pod_config, run_pod, start
from test_pod_sandbox import leftovers

pytestmark = needs_root_node


def running_pod_and_container(node: Node, name: str) -> tuple[str, str, int]:
    config = pod_config(name)
    pod_id = run_pod(node.client, config)
    cid = create_container(node.client, pod_id, config, "sleeper", "sleep", "1000")
    start(node.client, cid)
    record = node.server.state / "containers" / cid / "container.json"
    return pod_id, cid, int(json.loads(record.read_text())["pid"])


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/status").read_text().find("State:\tZ") < 0


def runc_knows(node: Node, container_id: str) -> bool:
    out = subprocess.run(
        ["runc", "--root", str(node.server.state / "runc"), "list", "-q"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return container_id in out.split()


def status(node: Node, cid: str) -> api_pb2.ContainerStatus:
    return node.client.runtime.ContainerStatus(
        api_pb2.ContainerStatusRequest(container_id=cid)
    ).status


def test_a_truncated_container_record_leaves_the_container_running_and_unknown(
    node: Node,
) -> None:
    _pod_id, cid, pid = running_pod_and_container(node, "truncated-container")
    record = node.server.root / "containers" / f"{cid}.json"
    node.server.stop()
    record.write_bytes(record.read_bytes()[:40])
    node.restart()
    assert alive(pid), "the container's process was not touched"
    st = status(node, cid)
    assert st.state == api_pb2.CONTAINER_UNKNOWN
    assert st.reason == "RecordUnreadable" and str(record) in st.message
    listed = node.client.runtime.ListContainers(api_pb2.ListContainersRequest()).containers
    assert cid in [c.id for c in listed]
    assert list(record.parent.glob(f"{cid}.json.unreadable-*")), "the bad file is kept aside"
    assert "cannot be read" in node.server.output()
    node.restart()  # a second restart changes nothing
    assert alive(pid) and status(node, cid).state == api_pb2.CONTAINER_UNKNOWN
    node.client.runtime.RemoveContainer(api_pb2.RemoveContainerRequest(container_id=cid))
    assert not runc_knows(node, cid)
    assert not (node.server.state / "containers" / cid).exists()
    assert not alive(pid)


def a_pod_with_a_damaged_record(
    node: Node, name: str, record_of: Callable[[str], Path]
) -> tuple[str, str, int, Path]:
    """A pod and a running container, the server stopped, the pod's record
    ``record_of(pod_id)`` cut to "{", the server started again: the pod is
    listed NOTREADY and its container still runs."""
    pod_id, cid, pid = running_pod_and_container(node, name)
    record = record_of(pod_id)
    node.server.stop()
    record.write_text("{")
    node.restart()
    assert alive(pid), "the pod's container was not touched"
    pods = node.client.runtime.ListPodSandbox(api_pb2.ListPodSandboxRequest()).items
    assert [(p.id, p.state) for p in pods] == [(pod_id, api_pb2.SANDBOX_NOTREADY)]
    return pod_id, cid, pid, record


def test_a_truncated_pod_record_keeps_the_pod_and_remove_cleans_it(node: Node) -> None:
    pod_id, cid, pid, record = a_pod_with_a_damaged_record(
        node,
        "truncated-pod",
        lambda pod_id: node.server.root / "sandboxes" / pod_id / "sandbox.json",
    )
    info = json.loads(
        node.client.runtime.PodSandboxStatus(
            api_pb2.PodSandboxStatusRequest(pod_sandbox_id=pod_id, verbose=True)
        ).info["info"]
    )
    assert str(record) in info["record_unreadable"]
    assert runc_knows(node, pod_id), "its infra is still there"
    node.client.runtime.StopPodSandbox(api_pb2.StopPodSandboxRequest(pod_sandbox_id=pod_id))
    node.client.runtime.RemovePodSandbox(api_pb2.RemovePodSandboxRequest(pod_sandbox_id=pod_id))
    assert not alive(pid)
    assert not runc_knows(node, pod_id) and not runc_knows(node, cid)
    left = [x for x in leftovers(node.server, pod_id) if not x.startswith("state dir")]
    assert left == []
    assert not (node.server.state / "sandboxes" / pod_id).exists()


def test_an_unreadable_runtime_record_does_not_stop_the_server(node: Node) -> None:
    _pod_id, cid, pid = running_pod_and_container(node, "bad-runtime-record")
    runtime_record = node.server.state / "containers" / cid / "container.json"
    node.server.stop()
    runtime_record.write_text("not json")
    node.restart()
    assert alive(pid)
    st = status(node, cid)
    assert st.state == api_pb2.CONTAINER_UNKNOWN
    assert str(runtime_record) in st.message
    assert list(runtime_record.parent.glob("container.json.unreadable-*")), "kept aside"
    assert "cannot be read" in node.server.output()
    node.restart()  # a second restart changes nothing
    assert alive(pid) and status(node, cid).state == api_pb2.CONTAINER_UNKNOWN
    node.client.runtime.RemoveContainer(api_pb2.RemoveContainerRequest(container_id=cid))
    assert not runc_knows(node, cid)
    assert not (node.server.state / "containers" / cid).exists()
    assert not alive(pid)


def test_a_runtime_record_damaged_while_the_server_runs_changes_nothing_it_reports(
    node: Node,
) -> None:
    """The server keeps the runtime records it writes (it is their only
    writer): damage on disk while it runs changes no status, no list, no
    stats. The next start finds it and applies the load policy above."""
    pod_id, cid, pid = running_pod_and_container(node, "damaged-while-running")
    runtime_record = node.server.state / "containers" / cid / "container.json"
    infra_record = node.server.state / "containers" / pod_id / "container.json"
    before = status(node, cid)
    infra_text = infra_record.read_bytes()
    for path in (runtime_record, infra_record):
        path.write_bytes(path.read_bytes()[:40])
    after = status(node, cid)
    assert (after.state, after.started_at, after.reason) == (
        api_pb2.CONTAINER_RUNNING,
        before.started_at,
        "",
    )
    pod = node.client.runtime.PodSandboxStatus(
        api_pb2.PodSandboxStatusRequest(pod_sandbox_id=pod_id)
    ).status
    assert pod.state == api_pb2.SANDBOX_READY
    stats = node.client.runtime.ListContainerStats(api_pb2.ListContainerStatsRequest()).stats
    assert cid in [s.attributes.id for s in stats]
    assert "cannot be read" not in node.server.output()

    # The infra's record repaired before the restart: a pod whose infra record
    # cannot be read at the start is the pod manager's case, not this test's.
    infra_record.write_bytes(infra_text)
    node.restart()
    assert alive(pid), "the container's process was not touched"
    st = status(node, cid)
    assert st.state == api_pb2.CONTAINER_UNKNOWN and str(runtime_record) in st.message
    assert list(runtime_record.parent.glob("container.json.unreadable-*")), "kept aside"
    node.client.runtime.RemoveContainer(api_pb2.RemoveContainerRequest(container_id=cid))
    node.client.runtime.StopPodSandbox(api_pb2.StopPodSandboxRequest(pod_sandbox_id=pod_id))
    node.client.runtime.RemovePodSandbox(api_pb2.RemovePodSandboxRequest(pod_sandbox_id=pod_id))
    assert not alive(pid)
    assert not runc_knows(node, pod_id) and not runc_knows(node, cid)
    assert not (node.server.state / "containers" / cid).exists()


def test_an_unreadable_infra_record_leaves_the_pod_notready_and_removable(node: Node) -> None:
    """The infra's runtime record cannot be read at the start: the pod is listed
    NOTREADY (its state unknown), its processes left running; Stop stops them
    and Remove cleans everything, as for any unreadable record."""
    pod_id, cid, pid, infra_record = a_pod_with_a_damaged_record(
        node,
        "bad-infra-record",
        lambda pod_id: node.server.state / "containers" / pod_id / "container.json",
    )
    assert runc_knows(node, pod_id), "its infra was not touched"
    pod = node.client.runtime.PodSandboxStatus(
        api_pb2.PodSandboxStatusRequest(pod_sandbox_id=pod_id)
    ).status
    assert pod.state == api_pb2.SANDBOX_NOTREADY
    assert list(infra_record.parent.glob("container.json.unreadable-*")), "kept aside"
    node.client.runtime.StopPodSandbox(api_pb2.StopPodSandboxRequest(pod_sandbox_id=pod_id))
    assert not alive(pid), "Stop stops the pod's containers"
    node.client.runtime.RemovePodSandbox(api_pb2.RemovePodSandboxRequest(pod_sandbox_id=pod_id))
    assert not runc_knows(node, pod_id) and not runc_knows(node, cid)
    left = [x for x in leftovers(node.server, pod_id) if not x.startswith("state dir")]
    assert left == []
    assert not (node.server.state / "containers" / pod_id).exists()
