"""Fault injection: the server SIGKILLed at each named crash point (``fsutil.crash_point``),
then restarted; nothing lost, nothing duplicated, nothing left behind.

For each point: a server prepares what the call needs (a pod, a container,
started or not) and stops cleanly; a second one, started with
``TEACHING_CRI_CRASH_AT=<point>``, gets the call and dies in the middle of it;
a third, started plainly, must report what runc itself knows (every runc
container is a listed container or pod, every listed state matches runc's),
must finish the call when it is made again, and, once every pod is removed,
must leave no mount, namespace, cgroup, state dir, record or process.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from teaching_cri.api import admin_pb2, api_pb2
from teaching_cri.fsutil import CRASH_AT
from teaching_cri.runtime import cgroups

from conftest import Server, start_server
from cri_node import (
    BUSYBOX,
    bridges_of,
    cni_conf,
    create_container,
    pod_config,
    run_pod,
    unavailable,
)

pytestmark = pytest.mark.skipif(bool(unavailable()), reason=unavailable())


@dataclass
class Scene:
    """What exists before the call that crashes: the pod, and a container if the call needs one."""

    pod: api_pb2.PodSandboxConfig
    pod_id: str = ""
    container_id: str = ""


def make_pod(srv: Server, scene: Scene) -> None:
    scene.pod_id = run_pod(srv.client(), scene.pod)


def make_container(srv: Server, scene: Scene) -> None:
    make_pod(srv, scene)
    scene.container_id = create_container(
        srv.client(), scene.pod_id, scene.pod, "sleeper", "sleep", "1000"
    )


def make_running(srv: Server, scene: Scene) -> None:
    make_container(srv, scene)
    srv.client().runtime.StartContainer(
        api_pb2.StartContainerRequest(container_id=scene.container_id)
    )


def nothing(srv: Server, scene: Scene) -> None:
    """RunPodSandbox needs nothing made before it."""


def call_run_pod(srv: Server, scene: Scene) -> None:
    scene.pod_id = run_pod(srv.client(), scene.pod)


def call_create(srv: Server, scene: Scene) -> None:
    scene.container_id = create_container(
        srv.client(), scene.pod_id, scene.pod, "sleeper", "sleep", "1000"
    )


def call_start(srv: Server, scene: Scene) -> None:
    srv.client().runtime.StartContainer(
        api_pb2.StartContainerRequest(container_id=scene.container_id)
    )


def call_stop(srv: Server, scene: Scene) -> None:
    srv.client().runtime.StopContainer(
        api_pb2.StopContainerRequest(container_id=scene.container_id, timeout=0)
    )


def call_remove(srv: Server, scene: Scene) -> None:
    srv.client().runtime.RemoveContainer(
        api_pb2.RemoveContainerRequest(container_id=scene.container_id)
    )


def call_stop_pod(srv: Server, scene: Scene) -> None:
    srv.client().runtime.StopPodSandbox(api_pb2.StopPodSandboxRequest(pod_sandbox_id=scene.pod_id))


def call_remove_pod(srv: Server, scene: Scene) -> None:
    srv.client().runtime.RemovePodSandbox(
        api_pb2.RemovePodSandboxRequest(pod_sandbox_id=scene.pod_id)
    )


Action = Callable[[Server, Scene], None]
# point, what exists before, the call, what the retried call must leave
POINTS: list[tuple[str, Action, Action, str]] = [
    ("run_pod_sandbox:checkpoint_written", nothing, call_run_pod, "pod ready"),
    ("run_pod_sandbox:netns_pinned", nothing, call_run_pod, "pod ready"),
    ("run_pod_sandbox:infra_created", nothing, call_run_pod, "pod ready"),
    ("runtime_start:intent_written", nothing, call_run_pod, "pod ready"),
    ("run_pod_sandbox:network_added", nothing, call_run_pod, "pod ready"),
    ("create_container:intent_written", make_pod, call_create, "created"),
    ("create_container:rootfs_mounted", make_pod, call_create, "created"),
    ("create_container:runtime_created", make_pod, call_create, "created"),
    ("runtime_start:intent_written", make_container, call_start, "running"),
    ("runtime_start:runc_started", make_container, call_start, "running"),
    ("start_container:runtime_started", make_container, call_start, "running"),
    ("runtime_stop:sigkill_sent", make_running, call_stop, "exited"),
    ("remove_container:runtime_deleted", make_running, call_remove, "no container"),
    ("stop_pod_sandbox:marked", make_running, call_stop_pod, "pod not ready"),
    ("stop_pod_sandbox:containers_stopped", make_running, call_stop_pod, "pod not ready"),
    ("stop_pod_sandbox:network_cleared", make_running, call_stop_pod, "pod not ready"),
    ("remove_pod_sandbox:marked", make_running, call_remove_pod, "no pod"),
    ("remove_pod_sandbox:infra_removed", make_running, call_remove_pod, "no pod"),
]


@pytest.fixture
def base(short_tmp: Path) -> Iterator[Path]:
    conf = cni_conf(short_tmp, short_tmp)
    yield short_tmp
    for bridge in bridges_of(conf):
        subprocess.run(["ip", "link", "del", bridge], capture_output=True)


def serve(base: Path, crash_at: str = "") -> Server:
    env = {**os.environ, CRASH_AT: crash_at} if crash_at else None
    return start_server(base / "srv", "--cni-conf-dir", str(base / "net.d"), env=env)


def runc_states(srv: Server) -> dict[str, str]:
    out = subprocess.run(
        ["runc", "--root", str(srv.state / "runc"), "list", "--format", "json"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return {c["id"]: c["status"] for c in json.loads(out or "null") or []}


CRI_OF_RUNC = {
    "created": api_pb2.CONTAINER_CREATED,
    "running": api_pb2.CONTAINER_RUNNING,
    "stopped": api_pb2.CONTAINER_EXITED,
}


def check_consistent(
    srv: Server, backend_states: Callable[[Server], dict[str, str]] = runc_states
) -> tuple[list[api_pb2.PodSandbox], list[api_pb2.Container]]:
    """What the server lists is what the backend knows (runc's own list, or the
    fake backend's records): no ghost, no duplicate, same states."""
    client = srv.client()
    pods = list(client.runtime.ListPodSandbox(api_pb2.ListPodSandboxRequest()).items)
    containers = list(client.runtime.ListContainers(api_pb2.ListContainersRequest()).containers)
    names = [c.metadata.name for c in containers] + [p.metadata.name for p in pods]
    assert len(names) == len(set(names)), f"duplicate names: {names}"
    created = {c.id for c in containers if c.state == api_pb2.CONTAINER_CREATED}
    for _ in range(50):  # CreateContainer replies before the shim's runc create is done
        runc = backend_states(srv)
        if created <= set(runc):
            break
        time.sleep(0.1)
    listed = {c.id for c in containers} | {p.id for p in pods}
    assert set(runc) <= listed, f"ghosts the backend runs that nobody lists: {set(runc) - listed}"
    for c in containers:
        if c.id in runc:
            assert c.state == CRI_OF_RUNC[runc[c.id]], (c.id, c.state, runc[c.id])
        else:
            assert c.state in (api_pb2.CONTAINER_EXITED, api_pb2.CONTAINER_UNKNOWN), c
    for p in pods:
        if p.state == api_pb2.SANDBOX_READY:
            assert runc.get(p.id) == "running", (p.id, runc.get(p.id))
    return pods, containers


def check_nothing_left(srv: Server) -> None:
    base = str(srv.base)
    found = [line for line in Path("/proc/self/mountinfo").read_text().splitlines() if base in line]
    for d in (
        srv.state / "netns",
        srv.state / "sandboxes",
        srv.state / "containers",
        srv.root / "sandboxes",
        srv.root / "images" / "snapshots" / "active",
    ):
        found += [str(p) for p in d.iterdir()] if d.exists() else []
    found += [str(p) for p in (srv.root / "containers").glob("*.json")]
    found += [f"runc container {c}" for c in runc_states(srv)]
    found += [f"process {pid}" for pid in processes_in(srv)]
    assert found == [], found


def processes_in(srv: Server) -> list[int]:
    """Processes working in the server's directories or naming them, but for
    the server and its own helpers (a shim or a container has its cwd there)."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == srv.process.pid:
            continue
        try:
            cwd = os.readlink(f"/proc/{entry}/cwd")
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
            ppid = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if ppid != srv.process.pid and (
            cwd.startswith(str(srv.base)) or str(srv.base).encode() in cmdline
        ):
            out.append(int(entry))
    return out


def pod_ids_on_disk(srv: Server) -> list[str]:
    return [p.name for p in (srv.root / "sandboxes").iterdir()]


def kill_at_the_point_and_retry(
    serve: Callable[[str], Server],
    point: str,
    before: Action,
    call: Action,
    outcome: str,
    backend_states: Callable[[Server], dict[str, str]] = runc_states,
) -> tuple[Server, set[str]]:
    """The scene made, the server killed at ``point`` in the middle of
    ``call``, restarted, checked, the call made again and its ``outcome``
    checked; returns the running third server and every pod id seen."""
    scene = Scene(pod_config("crash-" + point.replace(":", "-").replace("_", "-")))
    srv = serve("")
    srv.client().admin.BuildLocalImage(admin_pb2.BuildLocalImageRequest(name=BUSYBOX))
    before(srv, scene)
    srv.stop()

    srv = serve(point)
    with pytest.raises(grpc.RpcError) as err:
        call(srv, scene)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE, err.value
    assert srv.process.wait(20) == -9, "the server killed itself at the point"
    pods_seen = set(pod_ids_on_disk(srv)) | ({scene.pod_id} - {""})
    srv.stop()

    srv = serve("")
    try:
        pods, containers = check_consistent(srv, backend_states)
        if call is call_run_pod:
            assert pods == [], "a run cut short is undone: the client never got the id"
        if call is call_create:
            assert containers == [], "a create cut short is undone"
        if call in (call_stop_pod, call_remove_pod):
            assert [p.state for p in pods] == [api_pb2.SANDBOX_NOTREADY], "teardown had begun"
        if call is not call_start or [c.state for c in containers] == [api_pb2.CONTAINER_CREATED]:
            call(srv, scene)  # made again, as a client that saw no answer does: it finishes
        pods, containers = check_consistent(srv, backend_states)
        states = {
            "pod ready": [p.state for p in pods] == [api_pb2.SANDBOX_READY],
            "created": [c.state for c in containers] == [api_pb2.CONTAINER_CREATED],
            "running": [c.state for c in containers] == [api_pb2.CONTAINER_RUNNING],
            "exited": [c.state for c in containers] == [api_pb2.CONTAINER_EXITED],
            "no container": containers == [],
            "pod not ready": [p.state for p in pods] == [api_pb2.SANDBOX_NOTREADY],
            "no pod": pods == [] and containers == [],
        }
        assert states[outcome], (outcome, pods, containers)
    except BaseException:
        srv.stop()
        raise
    return srv, pods_seen | {p.id for p in pods}


def test_a_kill_right_after_create_replied_leaves_no_ghost_and_no_leak(base: Path) -> None:
    """CreateContainer replies before the shim's runc create is done: a server
    SIGKILLed right then finds, restarted, a container runc knows as created,
    that starts; and once its pod is removed nothing of it is left."""
    scene = Scene(pod_config("crash-after-create-replied"))
    srv = serve(base)
    srv.client().admin.BuildLocalImage(admin_pb2.BuildLocalImageRequest(name=BUSYBOX))
    make_pod(srv, scene)
    call_create(srv, scene)
    srv.stop(signal.SIGKILL)
    srv = serve(base)
    try:
        _pods, containers = check_consistent(srv)
        assert [c.state for c in containers] == [api_pb2.CONTAINER_CREATED]
        call_start(srv, scene)
        _pods, containers = check_consistent(srv)
        assert [c.state for c in containers] == [api_pb2.CONTAINER_RUNNING]
        client = srv.client()
        client.runtime.StopPodSandbox(api_pb2.StopPodSandboxRequest(pod_sandbox_id=scene.pod_id))
        client.runtime.RemovePodSandbox(
            api_pb2.RemovePodSandboxRequest(pod_sandbox_id=scene.pod_id)
        )
        check_nothing_left(srv)
        assert not [d for d in cgroups.directories(cgroups.pod_parent(scene.pod_id)) if d.exists()]
    finally:
        srv.stop()


def at_each(points: list[tuple[str, Action, Action, str]]) -> pytest.MarkDecorator:
    """The test once per crash point, named after the point and the call."""
    return pytest.mark.parametrize(
        ("point", "before", "call", "outcome"),
        points,
        ids=[f"{p}-{c.__name__.removeprefix('call_')}" for p, _, c, _ in points],
    )


@at_each(POINTS)
def test_a_kill_at_the_point_loses_nothing_and_leaves_nothing(
    base: Path, point: str, before: Action, call: Action, outcome: str
) -> None:
    srv, pods_seen = kill_at_the_point_and_retry(
        lambda crash_at: serve(base, crash_at), point, before, call, outcome
    )
    try:
        client = srv.client()
        for pod in client.runtime.ListPodSandbox(api_pb2.ListPodSandboxRequest()).items:
            client.runtime.StopPodSandbox(api_pb2.StopPodSandboxRequest(pod_sandbox_id=pod.id))
            client.runtime.RemovePodSandbox(api_pb2.RemovePodSandboxRequest(pod_sandbox_id=pod.id))
        check_nothing_left(srv)
        for pod_id in pods_seen:
            left = [d for d in cgroups.directories(cgroups.pod_parent(pod_id)) if d.exists()]
            assert left == [], left
    finally:
        srv.stop()
