"""What a container config may ask for (issue 17, item 3): a request no kubelet
would send gets INVALID_ARGUMENT naming the field and the rule, before
anything exists, and nothing it asks for reaches outside the container's
bounds: no file outside the pod's log directory, nothing written on the host
through a read-only mount.

The rules are the kubelet's own (``pkg/apis/core/validation``): names are
DNS-1123 (capitals allowed: critest sends them), at most 253 characters; a
device path in the container is absolute; oomScoreAdj is -1000..1000; a pod's
annotations weigh at most 256 KiB. ``recursive_read_only`` follows api.proto's
Mount comment: readonly and PROPAGATION_PRIVATE, or an error.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from teaching_cri.api import api_pb2

from cri_node import (
    BUSYBOX,
    Node,
    create_container,
    exec_sync,
    logs_of,
    needs_root_node,
    pod_config,
    run_pod,
    start,
)

pytestmark = needs_root_node


def refused(call: object, *args: object, **kw: object) -> grpc.RpcError:
    """The error a call ends with (it must end with one)."""
    with pytest.raises(grpc.RpcError) as info:
        call(*args, **kw)  # type: ignore[operator]
    return info.value


def containers(node: Node) -> list[api_pb2.Container]:
    return list(node.client.runtime.ListContainers(api_pb2.ListContainersRequest()).containers)


def create_with_oom_score_adj(
    node: Node, pod_id: str, pod: api_pb2.PodSandboxConfig, value: int, *command: str
) -> str:
    config = api_pb2.ContainerConfig(
        metadata=api_pb2.ContainerMetadata(name="c"),
        image=api_pb2.ImageSpec(image=BUSYBOX),
        command=list(command),
        linux=api_pb2.LinuxContainerConfig(
            resources=api_pb2.LinuxContainerResources(oom_score_adj=value)
        ),
    )
    return node.client.runtime.CreateContainer(
        api_pb2.CreateContainerRequest(pod_sandbox_id=pod_id, config=config, sandbox_config=pod)
    ).container_id


def files_under(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


@pytest.fixture
def pod(node: Node) -> Iterator[tuple[str, api_pb2.PodSandboxConfig, Path]]:
    """A pod with a log directory, and a directory beside it that must stay empty."""
    logs = node.base / "logs" / "pod"
    logs.mkdir(parents=True)
    (node.base / "outside").mkdir()
    config = pod_config("hostile", log_directory=str(logs))
    yield run_pod(node.client, config), config, logs
    assert files_under(node.base / "outside") == [], "something was written outside the log dir"


# -- names ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    ["x" * 1_000_000, "a/b", "..", "a\x00b", "a\nb", "app\n"],
    ids=["1MB", "slash", "dotdot", "nul", "newline", "trailing-newline"],
)
def test_a_container_name_the_kubelet_would_never_send_is_refused(
    node: Node, pod: tuple[str, api_pb2.PodSandboxConfig, Path], name: str
) -> None:
    pod_id, config, logs = pod
    error = refused(create_container, node.client, pod_id, config, name, "true")
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "metadata.name" in (error.details() or "")
    assert "letters, digits, '-' and '.'" in (error.details() or ""), "the rule is stated"
    assert len(error.details() or "") < 500, "the name is clipped in the message"
    assert containers(node) == [] and files_under(logs) == []


def test_a_pod_name_ending_in_a_newline_is_refused(node: Node) -> None:
    error = refused(run_pod, node.client, pod_config("web\n"))
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "pod sandbox metadata: name 'web\\n' is not a valid name" in (error.details() or "")
    assert list(node.client.runtime.ListPodSandbox(api_pb2.ListPodSandboxRequest()).items) == []


def test_names_critest_sends_are_accepted(
    node: Node, pod: tuple[str, api_pb2.PodSandboxConfig, Path]
) -> None:
    pod_id, config, _ = pod
    name = "container-with-RunAsUserName-test-0f6c1c3e-4a8b-4be5-9a60-2d7b5c9e1f00"
    assert create_container(node.client, pod_id, config, name, "true")


# -- the log path -----------------------------------------------------------------------


def test_a_log_path_through_a_symlink_in_the_log_directory_is_refused(
    node: Node, pod: tuple[str, api_pb2.PodSandboxConfig, Path]
) -> None:
    pod_id, config, logs = pod
    outside = node.base / "outside"
    (logs / "dir-link").symlink_to(outside)
    (logs / "file-link.log").symlink_to(outside / "written.log")
    for log_path in ("dir-link/c.log", "dir-link/deeper/c.log", "file-link.log"):
        error = refused(
            create_container, node.client, pod_id, config, "c", "true", log_path=log_path
        )
        assert error.code() is grpc.StatusCode.INVALID_ARGUMENT, log_path
        assert "is a symlink" in (error.details() or ""), error.details()
    assert containers(node) == []


def test_a_nul_in_the_log_path_is_invalid_argument(
    node: Node, pod: tuple[str, api_pb2.PodSandboxConfig, Path]
) -> None:
    pod_id, config, logs = pod
    error = refused(
        create_container, node.client, pod_id, config, "c", "true", log_path="c\x00.log"
    )
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "NUL" in (error.details() or "")
    assert containers(node) == [] and files_under(logs) == []


def test_a_symlink_planted_before_a_log_reopen_is_not_followed(
    node: Node, pod: tuple[str, api_pb2.PodSandboxConfig, Path]
) -> None:
    """The shim opens the log with O_NOFOLLOW: a symlink put at the log's name
    after CreateContainer (the kubelet renamed the file to rotate it) makes
    ReopenContainerLog fail, and the container keeps writing to its old file."""
    pod_id, config, logs = pod
    cid = create_container(
        node.client,
        pod_id,
        config,
        "talker",
        "sh",
        "-c",
        "while true; do echo tick; sleep 0.1; done",
        log_path="talker.log",
    )
    start(node.client, cid)
    rotated = logs / "talker.log.1"
    (logs / "talker.log").rename(rotated)
    (logs / "talker.log").symlink_to(node.base / "outside" / "stolen.log")
    error = refused(
        node.client.runtime.ReopenContainerLog,
        api_pb2.ReopenContainerLogRequest(container_id=cid),
    )
    assert error.code() is not grpc.StatusCode.INTERNAL, error.details()
    size = rotated.stat().st_size
    time.sleep(0.5)
    assert rotated.stat().st_size > size, "the container still logs to the file it had"
    assert "tick" in logs_of(rotated)


# -- mounts ----------------------------------------------------------------------------------


def test_a_relative_host_path_is_refused(
    node: Node, pod: tuple[str, api_pb2.PodSandboxConfig, Path]
) -> None:
    pod_id, config, _ = pod
    for host_path in (".", "state", "../x"):
        mount = api_pb2.Mount(container_path="/mnt", host_path=host_path)
        error = refused(create_container, node.client, pod_id, config, "c", "true", mounts=[mount])
        assert error.code() is grpc.StatusCode.INVALID_ARGUMENT, host_path
        assert "is not an absolute path" in (error.details() or "")
    assert containers(node) == []


@pytest.fixture
def host_tree(node: Node) -> Iterator[Path]:
    """A host directory with a tmpfs mounted inside it, as / has /dev/shm."""
    top = node.base / "host-tree"
    (top / "sub").mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(top / "sub")], check=True)
    try:
        yield top
    finally:
        subprocess.run(["umount", "-l", str(top / "sub")], check=False)


@pytest.mark.parametrize("recursive_field", [False, True], ids=["readonly", "recursive_read_only"])
def test_a_read_only_bind_is_read_only_all_the_way_down(
    node: Node,
    pod: tuple[str, api_pb2.PodSandboxConfig, Path],
    host_tree: Path,
    recursive_field: bool,
) -> None:
    pod_id, config, _ = pod
    mount = api_pb2.Mount(
        container_path="/host",
        host_path=str(host_tree),
        readonly=True,
        recursive_read_only=recursive_field,
    )
    cid = create_container(node.client, pod_id, config, "reader", "sleep", "3600", mounts=[mount])
    start(node.client, cid)
    for target in ("/host/top-file", "/host/sub/sub-file"):
        reply = exec_sync(node.client, cid, "sh", "-c", f"echo x > {target}")
        assert reply.exit_code != 0, f"{target} was writable"
        assert b"Read-only file system" in reply.stderr, reply.stderr
    assert files_under(host_tree) == ["sub"], "nothing written on the host"


@pytest.mark.parametrize(
    ("readonly", "propagation", "needs"),
    [
        (False, api_pb2.PROPAGATION_PRIVATE, "needs readonly"),
        (True, api_pb2.PROPAGATION_HOST_TO_CONTAINER, "needs propagation PROPAGATION_PRIVATE"),
    ],
)
def test_recursive_read_only_needs_readonly_and_private_propagation(
    node: Node,
    pod: tuple[str, api_pb2.PodSandboxConfig, Path],
    host_tree: Path,
    readonly: bool,
    propagation: api_pb2.MountPropagation,
    needs: str,
) -> None:
    pod_id, config, _ = pod
    mount = api_pb2.Mount(
        container_path="/host",
        host_path=str(host_tree),
        readonly=readonly,
        propagation=propagation,
        recursive_read_only=True,
    )
    error = refused(create_container, node.client, pod_id, config, "c", "true", mounts=[mount])
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert needs in (error.details() or "")
    assert containers(node) == []


# -- devices, resources ------------------------------------------------------------------------


@pytest.mark.parametrize("container_path", ["x", "../x", "/dev/../etc/passwd"])
def test_a_device_path_must_be_absolute_without_dotdot(
    node: Node, pod: tuple[str, api_pb2.PodSandboxConfig, Path], container_path: str
) -> None:
    pod_id, config, _ = pod
    device = api_pb2.Device(container_path=container_path, host_path="/dev/null")
    error = refused(create_container, node.client, pod_id, config, "c", "true", devices=[device])
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "devices[0].container_path" in (error.details() or "")
    assert containers(node) == []


@pytest.mark.parametrize("value", [1001, -1001, 2**40])
def test_oom_score_adj_outside_the_kernels_range_is_refused(
    node: Node, pod: tuple[str, api_pb2.PodSandboxConfig, Path], value: int
) -> None:
    pod_id, config, _ = pod
    error = refused(create_with_oom_score_adj, node, pod_id, config, value, "true")
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "-1000..1000" in (error.details() or "")
    assert containers(node) == []


def test_a_negative_oom_score_adj_the_server_may_not_set_is_clamped_and_noted(
    node: Node, pod: tuple[str, api_pb2.PodSandboxConfig, Path]
) -> None:
    """Without CAP_SYS_RESOURCE (root in a container often lacks it) the kernel
    refuses a value below the server's own: the container runs with the
    server's and its verbose status says so; with it, the value is as asked."""
    pod_id, config, _ = pod
    cid = create_with_oom_score_adj(node, pod_id, config, -500, "sleep", "3600")
    start(node.client, cid)
    seen = int(exec_sync(node.client, cid, "cat", "/proc/1/oom_score_adj").stdout)
    info = json.loads(
        node.client.runtime.ContainerStatus(
            api_pb2.ContainerStatusRequest(container_id=cid, verbose=True)
        ).info["info"]
    )
    ours = int(Path("/proc/self/oom_score_adj").read_text())
    capable = int(_cap_eff(), 16) >> 24 & 1
    if capable:
        assert seen == -500 and "oom_score_adj" not in info["notes"]
    else:
        assert seen == ours
        assert info["notes"]["oom_score_adj"] == f"-500 raised to {ours}, the server's own"


def _cap_eff() -> str:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("CapEff:"):
            return line.split()[1]
    return "0"


# -- labels and annotations -----------------------------------------------------------------------


def test_megabytes_of_annotations_are_refused_and_listing_still_works(
    node: Node, pod: tuple[str, api_pb2.PodSandboxConfig, Path]
) -> None:
    pod_id, config, _ = pod
    for i in range(3):
        error = refused(
            create_container,
            node.client,
            pod_id,
            config,
            f"fat{i}",
            "true",
            annotations={f"a{i}": "x" * (1 << 20)},
        )
        assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert "at most 262144" in (error.details() or "")
    error = refused(
        create_container,
        node.client,
        pod_id,
        config,
        "labelled",
        "true",
        labels={"l": "y" * (200 << 10)},
        annotations={"a": "x" * (100 << 10)},
    )
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT, "labels and annotations together"
    cid = create_container(
        node.client, pod_id, config, "fits", "true", annotations={"a": "x" * (200 << 10)}
    )
    assert [c.id for c in containers(node)] == [cid]
