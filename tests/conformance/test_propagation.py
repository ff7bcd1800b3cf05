"""Mount propagation, as critest checks it (cri-tools ``pkg/validate``,
"runtime should support mount propagation"): a privileged container with a
host path bound ``rshared`` sees what the host mounts there later, and the host
sees what the container mounts; ``rslave`` carries mounts one way only. A host
path whose mount has no peer group cannot propagate: containerd refuses it with
FAILED_PRECONDITION, naming the path and the mount point, and so must we.

The shared host path is made the way a node's admin makes one on a machine
whose ``/`` is private: ``mount --bind D D; mount --make-rshared D``. Every
mount a test makes is undone, on the host and through propagation.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from teaching_cri.api import api_pb2
from teaching_cri.errors import FailedPrecondition
from teaching_cri.runtime.propagation import (
    MountInfo,
    check_host_path,
    mount_of,
    rootfs_propagation,
)
from teaching_cri.runtime.spec import ImageRunConfig, generate_spec

from cri_node import (
    Node,
    create_container,
    exec_sync,
    needs_root_node,
    pod_config,
    run_pod,
    start,
)

PRIVILEGED = api_pb2.LinuxContainerSecurityContext(privileged=True)


def _sh(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True, timeout=30)


def _umount_all(path: Path) -> None:
    """Every mount at or under ``path``, deepest first; lazily, so a container
    still holding one does not keep the host's."""
    subprocess.run(["umount", "-R", "-l", str(path)], capture_output=True, timeout=30)


@pytest.fixture
def shared_dir(node: Node) -> Iterator[Path]:
    """A host directory on a shared mount of its own."""
    d = node.base / "shared"
    d.mkdir()
    _sh("mount", "--bind", str(d), str(d))
    try:
        _sh("mount", "--make-rshared", str(d))
        assert mount_of(str(d)).shared
        yield d
    finally:
        _umount_all(d)


def _privileged_pod(node: Node, name: str) -> tuple[str, api_pb2.PodSandboxConfig]:
    config = pod_config(
        name,
        linux=api_pb2.LinuxPodSandboxConfig(
            security_context=api_pb2.LinuxSandboxSecurityContext(privileged=True)
        ),
    )
    return run_pod(node.client, config), config


def _container_with(
    node: Node, host_path: Path, propagation: api_pb2.MountPropagation, name: str
) -> str:
    pod_id, pod = _privileged_pod(node, name)
    mount = api_pb2.Mount(container_path="/vol", host_path=str(host_path), propagation=propagation)
    cid = create_container(
        node.client, pod_id, pod, "c", "sleep", "3600", security=PRIVILEGED, mounts=[mount]
    )
    start(node.client, cid)
    return cid


def _in(node: Node, cid: str, script: str) -> str:
    res = exec_sync(node.client, cid, "sh", "-c", script)
    assert res.exit_code == 0, res.stderr.decode()
    return str(res.stdout.decode())


def _host_mounts_into(shared: Path) -> Path:
    """A tmpfs mounted on the host under the shared path, with a flag file in it."""
    target = shared / "from-host"
    target.mkdir()
    _sh("mount", "-t", "tmpfs", "tmpfs", str(target))
    (target / "flag").write_text("made on the host\n")
    return target


@needs_root_node
def test_bidirectional_carries_mounts_both_ways(node: Node, shared_dir: Path) -> None:
    cid = _container_with(node, shared_dir, api_pb2.PROPAGATION_BIDIRECTIONAL, "prop-rshared")
    _host_mounts_into(shared_dir)
    assert _in(node, cid, "cat /vol/from-host/flag") == "made on the host\n"
    assert " /vol/from-host " in _in(node, cid, "cat /proc/self/mountinfo")

    _in(
        node,
        cid,
        "mkdir /vol/from-ctr && mount -t tmpfs tmpfs /vol/from-ctr"
        " && echo made in the container > /vol/from-ctr/flag",
    )
    assert (shared_dir / "from-ctr").is_mount(), "the container's mount reached the host"
    assert (shared_dir / "from-ctr" / "flag").read_text() == "made in the container\n"


@needs_root_node
def test_host_to_container_carries_mounts_one_way(node: Node, shared_dir: Path) -> None:
    cid = _container_with(node, shared_dir, api_pb2.PROPAGATION_HOST_TO_CONTAINER, "prop-rslave")
    _host_mounts_into(shared_dir)
    assert _in(node, cid, "cat /vol/from-host/flag") == "made on the host\n"

    _in(node, cid, "mkdir /vol/from-ctr && mount -t tmpfs tmpfs /vol/from-ctr")
    assert " /vol/from-ctr " in _in(node, cid, "cat /proc/self/mountinfo")
    assert (shared_dir / "from-ctr").is_dir()
    assert not (shared_dir / "from-ctr").is_mount(), "a slave's mounts stay in the container"


@needs_root_node
def test_private_mount_has_no_propagation(node: Node, shared_dir: Path) -> None:
    """The critest 'rprivate' case: nothing crosses, even from a shared host path."""
    cid = _container_with(node, shared_dir, api_pb2.PROPAGATION_PRIVATE, "prop-private")
    _host_mounts_into(shared_dir)
    assert _in(node, cid, "ls -A /vol/from-host") == ""
    _in(node, cid, "mkdir /vol/from-ctr && mount -t tmpfs tmpfs /vol/from-ctr")
    assert not (shared_dir / "from-ctr").is_mount()


@needs_root_node
@pytest.mark.parametrize(
    ("propagation", "kind"),
    [
        (api_pb2.PROPAGATION_BIDIRECTIONAL, "not a shared mount"),
        (api_pb2.PROPAGATION_HOST_TO_CONTAINER, "not a shared or slave mount"),
    ],
)
def test_a_host_path_on_a_private_mount_is_refused(
    node: Node, propagation: api_pb2.MountPropagation, kind: str
) -> None:
    private = node.base / "private"
    private.mkdir()
    _sh("mount", "--bind", str(private), str(private))
    try:
        _sh("mount", "--make-private", str(private))
        pod_id, pod = _privileged_pod(node, "prop-refused")
        mount = api_pb2.Mount(
            container_path="/vol", host_path=str(private), propagation=propagation
        )
        with pytest.raises(grpc.RpcError) as err:
            create_container(
                node.client, pod_id, pod, "c", "sleep", "1", security=PRIVILEGED, mounts=[mount]
            )
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        message = err.value.details() or ""
        assert f"path {str(private)!r} is mounted on {str(private)!r}" in message
        assert kind in message and "mount --make-rshared" in message
        listed = node.client.runtime.ListContainers(api_pb2.ListContainersRequest()).containers
        assert not listed, "refused before anything was created"
    finally:
        _umount_all(private)


MOUNTINFO = """\
22 27 0:21 / /proc rw,relatime - proc proc rw
27 1 8:1 / / rw,relatime - ext4 /dev/sda1 rw
40 27 8:1 /srv /srv rw,relatime shared:7 - ext4 /dev/sda1 rw
41 40 8:1 /srv/in /srv/in rw,relatime master:7 - ext4 /dev/sda1 rw
42 27 0:50 / /with\\040space rw shared:9 - tmpfs tmpfs rw
43 27 0:51 / /srvx rw - tmpfs tmpfs rw
44 40 0:52 / /srv/stack rw - tmpfs tmpfs rw
45 40 0:53 / /srv/stack rw shared:12 - tmpfs tmpfs rw
"""


def _table() -> list[MountInfo]:
    return [MountInfo.parse(line) for line in MOUNTINFO.splitlines()]


def test_mountinfo_lines_are_read_as_proc5_writes_them() -> None:
    proc, root, srv, inner, spaced, *_ = _table()
    assert (srv.mount_id, srv.parent_id, srv.root, srv.mount_point) == (40, 27, "/srv", "/srv")
    assert srv.optional == ("shared:7",) and srv.propagation == "shared"
    assert inner.slave and not inner.shared and inner.propagation == "slave"
    assert root.propagation == "private" and proc.fs_type == "proc"
    assert spaced.mount_point == "/with space" and spaced.source == "tmpfs"
    with pytest.raises(ValueError, match="not a mountinfo line"):
        MountInfo.parse("1 2 3")


def test_the_mount_of_a_path_is_the_longest_whole_component_prefix_on_top() -> None:
    table = _table()
    assert mount_of("/srv/data/x", table).mount_point == "/srv"
    assert mount_of("/srvx/y", table).mount_point == "/srvx", "not /srv: whole components"
    assert mount_of("/srv/in/deep", table).mount_id == 41
    assert mount_of("/etc", table).mount_point == "/"
    assert mount_of("/srv/stack/f", table).mount_id == 45, "of two stacked, the later"


def test_each_propagation_asks_its_own_of_the_host_path(tmp_path: Path) -> None:
    """With a table whose mount points are this test's real directories: the check
    skips host paths that do not exist (runc refuses those itself)."""
    shared, slave, private = (tmp_path / n for n in ("shared", "slave", "private"))
    for d in (shared, slave, private):
        d.mkdir()
    table = [
        MountInfo(1, 0, "/", "/", (), "ext4", "/dev/sda1"),
        MountInfo(2, 1, "/", str(shared), ("shared:3",), "tmpfs", "tmpfs"),
        MountInfo(3, 1, "/", str(slave), ("master:3",), "tmpfs", "tmpfs"),
        MountInfo(4, 1, "/", str(private), (), "tmpfs", "tmpfs"),
    ]

    def check(path: Path, propagation: api_pb2.MountPropagation) -> None:
        m = api_pb2.Mount(container_path="/v", host_path=str(path), propagation=propagation)
        check_host_path(m, table)

    for path in (shared, slave, private, tmp_path / "missing"):
        check(path, api_pb2.PROPAGATION_PRIVATE)
    check(shared / "sub", api_pb2.PROPAGATION_BIDIRECTIONAL)
    check(slave, api_pb2.PROPAGATION_HOST_TO_CONTAINER)
    check(tmp_path / "missing", api_pb2.PROPAGATION_BIDIRECTIONAL)
    with pytest.raises(FailedPrecondition, match="not a shared mount \\(slave\\)"):
        check(slave, api_pb2.PROPAGATION_BIDIRECTIONAL)
    with pytest.raises(FailedPrecondition, match="not a shared or slave mount \\(private\\)"):
        check(private, api_pb2.PROPAGATION_HOST_TO_CONTAINER)


def test_the_root_mount_propagates_as_the_strongest_mount_asks(tmp_path: Path) -> None:
    def config(*kinds: api_pb2.MountPropagation) -> api_pb2.ContainerConfig:
        return api_pb2.ContainerConfig(
            command=["/bin/true"],
            mounts=[
                api_pb2.Mount(
                    container_path=f"/v{i}", host_path=f"/nonexistent/v{i}", propagation=k
                )
                for i, k in enumerate(kinds)
            ],
        )

    assert rootfs_propagation(config()) == ""
    assert rootfs_propagation(config(api_pb2.PROPAGATION_PRIVATE)) == ""
    slave = config(api_pb2.PROPAGATION_PRIVATE, api_pb2.PROPAGATION_HOST_TO_CONTAINER)
    assert rootfs_propagation(slave) == "rslave"
    both = config(api_pb2.PROPAGATION_HOST_TO_CONTAINER, api_pb2.PROPAGATION_BIDIRECTIONAL)
    assert rootfs_propagation(both) == "rshared"

    image = ImageRunConfig()
    spec, _ = generate_spec(both, image, tmp_path)
    assert spec["linux"]["rootfsPropagation"] == "rshared"
    assert [m["options"][1] for m in spec["mounts"] if m["destination"].startswith("/v")] == [
        "rslave",
        "rshared",
    ]
    spec, _ = generate_spec(config(), image, tmp_path)
    assert "rootfsPropagation" not in spec["linux"]
