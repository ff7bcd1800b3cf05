"""The manager's flows under the fake backend (``--runtime fake``): no root, no
runc, no container, a real server on a real socket all the same, every trace
checked against its chart when the server stops (``conftest.Server.stop``).

The same flows run with runc as root in test_containers.py, test_pod_sandbox.py
and test_crash_points.py; here they run as any user, in seconds, and the crash
points that need no real container (all but the pinned namespace's and CNI's)
are killed at too.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest
from test_crash_points import (
    POINTS,
    Action,
    at_each,
    kill_at_the_point_and_retry,
    pod_ids_on_disk,
)

from teaching_cri.api import admin_pb2, api_pb2
from teaching_cri.client import Client
from teaching_cri.errors import FailedPrecondition
from teaching_cri.fsutil import CRASH_AT
from teaching_cri.runtime.fake import PID_MAX_LIMIT, FakeBackend, program_of

from conftest import Server, start_server
from cri_node import BUSYBOX, create_container, pod_config, run_pod, wait_exit
from test_streaming import V4, V5, session, stdout_of
from test_streaming import status_of as exec_status_of

NEED_A_REAL_NODE = {"run_pod_sandbox:netns_pinned", "run_pod_sandbox:network_added"}
FAKE_POINTS = [p for p in POINTS if p[0] not in NEED_A_REAL_NODE]
needs_busybox = pytest.mark.skipif(
    not Path("/bin/busybox").exists(), reason="the local busybox image needs busybox-static"
)


# -- the model of a command, without a server ---------------------------------------------


def test_the_model_reads_a_script_as_sh_would() -> None:
    program = program_of(
        ["sh", "-c", "echo one; false && echo no; false || echo two; exit 3"], init=True
    )
    assert program.steps == (("stdout", "one\n"), ("stdout", "two\n"), ("exit", 3))


def test_a_trap_is_a_handler_and_a_loop_runs_for_ever() -> None:
    infra = program_of(
        ["/bin/sh", "-c", "trap 'exit 0' TERM INT; while :; do sleep 3600 & wait; done"], init=True
    )
    assert infra.traps == {signal.SIGTERM: (("exit", 0),), signal.SIGINT: (("exit", 0),)}
    assert infra.steps[0] == ("sleep", float("inf"))


def test_an_unknown_program_is_a_server_as_init_and_a_failure_as_exec() -> None:
    assert program_of(["nginx"], init=True).steps[0] == ("sleep", float("inf"))
    steps = program_of(["nginx", "-s", "reload"], init=False).steps
    assert steps[-1] == ("exit", 127)
    assert "nginx: not found" in steps[0][1]


# -- flows through a server ------------------------------------------------------------------


@pytest.fixture
def fake(short_tmp: Path) -> Iterator[Server]:
    srv = serve(short_tmp)
    srv.client().admin.BuildLocalImage(admin_pb2.BuildLocalImageRequest(name=BUSYBOX))
    yield srv
    try:  # what a test left (as root, its rootfs mounts) goes before the directory
        remove_every_pod(srv.client())
    finally:
        srv.stop()


def remove_every_pod(client: Client) -> None:
    for pod in client.runtime.ListPodSandbox(api_pb2.ListPodSandboxRequest()).items:
        client.runtime.StopPodSandbox(api_pb2.StopPodSandboxRequest(pod_sandbox_id=pod.id))
        client.runtime.RemovePodSandbox(api_pb2.RemovePodSandboxRequest(pod_sandbox_id=pod.id))


def serve(base: Path, crash_at: str = "") -> Server:
    env = {**os.environ, CRASH_AT: crash_at} if crash_at else None
    return start_server(base / "srv", "--runtime", "fake", env=env)


def status_of(client: Client, container_id: str) -> api_pb2.ContainerStatus:
    return client.runtime.ContainerStatus(
        api_pb2.ContainerStatusRequest(container_id=container_id)
    ).status


@needs_busybox
def test_a_container_is_created_started_stopped_and_removed(fake: Server, short_tmp: Path) -> None:
    client = fake.client()
    pod = pod_config("lifecycle", log_directory=str(short_tmp / "logs"))
    pod_id = run_pod(client, pod)
    script = "trap 'echo bye; exit 0' TERM; echo ready; sleep 1000"
    cid = create_container(client, pod_id, pod, "web", "sh", "-c", script, log_path="web.log")
    assert status_of(client, cid).state == api_pb2.CONTAINER_CREATED
    client.runtime.StartContainer(api_pb2.StartContainerRequest(container_id=cid))
    running = status_of(client, cid)
    assert running.state == api_pb2.CONTAINER_RUNNING and running.started_at > 0
    client.runtime.StopContainer(api_pb2.StopContainerRequest(container_id=cid, timeout=10))
    stopped = status_of(client, cid)
    assert (stopped.state, stopped.exit_code, stopped.reason) == (
        api_pb2.CONTAINER_EXITED,
        0,
        "Completed",
    )
    lines = (short_tmp / "logs" / "web.log").read_text().splitlines()
    assert [line.split(" ", 1)[1] for line in lines] == ["stdout F ready", "stdout F bye"]
    client.runtime.RemoveContainer(api_pb2.RemoveContainerRequest(container_id=cid))
    listed = client.runtime.ListContainers(api_pb2.ListContainersRequest()).containers
    assert list(listed) == []


@needs_busybox
def test_an_init_that_ignores_the_stop_signal_is_killed(fake: Server) -> None:
    """PID 1 gets only the signals it handles: sleep ignores SIGTERM, and the
    stop ends with SIGKILL (137) once the grace period is over."""
    client = fake.client()
    pod = pod_config("stubborn")
    pod_id = run_pod(client, pod)
    cid = create_container(client, pod_id, pod, "sleeper", "sleep", "1000")
    client.runtime.StartContainer(api_pb2.StartContainerRequest(container_id=cid))
    client.runtime.StopContainer(api_pb2.StopContainerRequest(container_id=cid, timeout=1))
    assert (status_of(client, cid).exit_code, status_of(client, cid).reason) == (137, "Error")


@needs_busybox
def test_a_container_that_ends_by_itself_is_exited_with_its_code(fake: Server) -> None:
    client = fake.client()
    pod = pod_config("brief")
    pod_id = run_pod(client, pod)
    cid = create_container(client, pod_id, pod, "once", "sh", "-c", "sleep 0.1; exit 7")
    client.runtime.StartContainer(api_pb2.StartContainerRequest(container_id=cid))
    assert wait_exit(client, cid).exit_code == 7


@needs_busybox
def test_a_program_missing_from_the_image_fails_the_start(fake: Server) -> None:
    """As with runc (whose create the runc backend does not wait for) and as
    containerd: the create succeeds, the start fails with runc's words, the
    container is EXITED (128, StartError), and its remove leaves nothing."""
    client = fake.client()
    pod = pod_config("missing")
    pod_id = run_pod(client, pod)
    cid = create_container(client, pod_id, pod, "nope", "no-such-program")
    with pytest.raises(grpc.RpcError) as err:
        client.runtime.StartContainer(api_pb2.StartContainerRequest(container_id=cid))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "no-such-program" in str(err.value.details())
    status = client.runtime.ContainerStatus(api_pb2.ContainerStatusRequest(container_id=cid))
    assert status.status.state == api_pb2.CONTAINER_EXITED
    assert (status.status.exit_code, status.status.reason) == (128, "StartError")
    assert "no-such-program" in status.status.message
    client.runtime.RemoveContainer(api_pb2.RemoveContainerRequest(container_id=cid))
    assert list(client.runtime.ListContainers(api_pb2.ListContainersRequest()).containers) == []


@needs_busybox
def test_a_pod_runs_stops_and_is_removed(fake: Server) -> None:
    client = fake.client()
    pod_id = run_pod(client, pod_config("pod"))
    status = client.runtime.PodSandboxStatus(
        api_pb2.PodSandboxStatusRequest(pod_sandbox_id=pod_id, verbose=True)
    )
    assert status.status.state == api_pb2.SANDBOX_READY
    assert json.loads(status.info["info"])["network"].startswith("loopback only")
    client.runtime.StopPodSandbox(api_pb2.StopPodSandboxRequest(pod_sandbox_id=pod_id))
    stopped = client.runtime.PodSandboxStatus(
        api_pb2.PodSandboxStatusRequest(pod_sandbox_id=pod_id)
    )
    assert stopped.status.state == api_pb2.SANDBOX_NOTREADY
    client.runtime.RemovePodSandbox(api_pb2.RemovePodSandboxRequest(pod_sandbox_id=pod_id))
    assert list(client.runtime.ListPodSandbox(api_pb2.ListPodSandboxRequest()).items) == []
    assert list((fake.state / "fake").iterdir()) == [], "the infra's record is gone too"


@needs_busybox
def test_exec_sync_gives_output_and_exit_code_and_keeps_its_deadline(fake: Server) -> None:
    client = fake.client()
    pod = pod_config("execs")
    pod_id = run_pod(client, pod)
    cid = create_container(client, pod_id, pod, "box", "sleep", "1000")
    client.runtime.StartContainer(api_pb2.StartContainerRequest(container_id=cid))
    done = client.runtime.ExecSync(
        api_pb2.ExecSyncRequest(container_id=cid, cmd=["sh", "-c", "echo hi; exit 3"], timeout=5)
    )
    assert (done.stdout, done.exit_code) == (b"hi\n", 3)
    with pytest.raises(grpc.RpcError) as err:
        client.runtime.ExecSync(
            api_pb2.ExecSyncRequest(container_id=cid, cmd=["sleep", "10"], timeout=1)
        )
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    client.runtime.StopContainer(api_pb2.StopContainerRequest(container_id=cid, timeout=0))
    with pytest.raises(grpc.RpcError) as err:
        client.runtime.ExecSync(api_pb2.ExecSyncRequest(container_id=cid, cmd=["true"], timeout=1))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "not running" in str(err.value.details())


def in_parallel(calls: list[Callable[[], str]]) -> tuple[list[str], list[grpc.StatusCode]]:
    """The ids of the calls that succeeded, the codes of those that failed."""

    def outcome(call: Callable[[], str]) -> tuple[str, grpc.StatusCode | None]:
        try:
            return call(), None
        except grpc.RpcError as exc:
            return "", exc.code()

    with ThreadPoolExecutor(len(calls)) as pool:
        results = list(pool.map(outcome, calls))
    return [r for r, _ in results if r], [c for _, c in results if c is not None]


@needs_busybox
def test_five_parallel_creates_of_one_name_make_one_container(fake: Server) -> None:
    """The store reserves the name in the turn of its check: four see it taken."""
    client = fake.client()
    pod = pod_config("names")
    pod_id = run_pod(client, pod)
    made, failed = in_parallel(
        [lambda: create_container(client, pod_id, pod, "same", "sleep", "9")] * 5
    )
    assert len(made) == 1 and failed == [grpc.StatusCode.ALREADY_EXISTS] * 4
    listed = client.runtime.ListContainers(api_pb2.ListContainersRequest()).containers
    assert [c.id for c in listed] == made


@needs_busybox
def test_five_parallel_runs_of_one_pod_make_one_pod(fake: Server) -> None:
    client = fake.client()
    made, failed = in_parallel([lambda: run_pod(client, pod_config("twins"))] * 5)
    assert len(made) == 1 and failed == [grpc.StatusCode.ALREADY_EXISTS] * 4
    listed = client.runtime.ListPodSandbox(api_pb2.ListPodSandboxRequest()).items
    assert [p.id for p in listed] == made


# -- the crash points, with the fake backend ------------------------------------------------


def fake_states(srv: Server) -> dict[str, str]:
    """What the fake backend's own records say, read from disk, as
    test_crash_points.py asks ``runc list``."""
    states = {}
    for path in (srv.state / "fake").glob("*.json"):
        record = json.loads(path.read_text())
        states[record["id"]] = (
            "stopped" if record["exit"] else ("running" if record["started_at"] else "created")
        )
    return states


def check_nothing_left(srv: Server) -> None:
    base = str(srv.base)
    found = [line for line in Path("/proc/self/mountinfo").read_text().splitlines() if base in line]
    for d in (
        srv.state / "fake",
        srv.state / "sandboxes",
        srv.root / "sandboxes",
        srv.root / "images" / "snapshots" / "active",
    ):
        found += [str(p) for p in d.iterdir()] if d.exists() else []
    found += [str(p) for p in (srv.root / "containers").glob("*.json")]
    assert found == [], found


@needs_busybox
@at_each(FAKE_POINTS)
def test_a_kill_at_the_point_loses_nothing_and_leaves_nothing(
    short_tmp: Path, point: str, before: Action, call: Action, outcome: str
) -> None:
    """test_crash_points.py's test, with the fake backend, as any user."""
    srv, _ = kill_at_the_point_and_retry(
        lambda crash_at: serve(short_tmp, crash_at), point, before, call, outcome, fake_states
    )
    try:
        assert all(pid > PID_MAX_LIMIT for pid in fake_pids(srv)), "no real process's pid"
        remove_every_pod(srv.client())
        assert pod_ids_on_disk(srv) == []
        check_nothing_left(srv)
    finally:
        srv.stop()


def fake_pids(srv: Server) -> list[int]:
    return [int(json.loads(p.read_text())["pid"]) for p in (srv.state / "fake").glob("*.json")]


@needs_busybox
def test_exec_and_attach_stream_over_the_websocket(fake: Server, short_tmp: Path) -> None:
    """The streaming server takes a fake process as it takes a shim's: output,
    stdin, the exit code in the status frame."""
    client = fake.client()
    pod = pod_config("streams")
    pod_id = run_pod(client, pod)
    cid = create_container(client, pod_id, pod, "cat", "cat", stdin=True, stdin_once=True)
    client.runtime.StartContainer(api_pb2.StartContainerRequest(container_id=cid))
    url = client.runtime.Exec(
        api_pb2.ExecRequest(container_id=cid, cmd=["sh", "-c", "echo hi; exit 3"], stdout=True)
    ).url
    messages = asyncio.run(session(url, V4))
    assert stdout_of(messages) == b"hi\n"
    assert exec_status_of(messages)["details"] == {
        "causes": [{"reason": "ExitCode", "message": "3"}]
    }
    url = client.runtime.Attach(
        api_pb2.AttachRequest(container_id=cid, stdin=True, stdout=True, stderr=True)
    ).url
    messages = asyncio.run(session(url, V5, [b"\x00hello\n", bytes([255, 0])]))
    assert stdout_of(messages) == b"hello\n"
    assert wait_exit(client, cid).exit_code == 0, "stdin closed: cat ended"


def test_status_says_the_fake_runs_nothing(short_tmp: Path) -> None:
    """Ready, and honest about it: Status's verbose info names the backend
    and what it does not isolate (everything)."""
    srv = serve(short_tmp)
    try:
        status = srv.client().runtime.Status(api_pb2.StatusRequest(verbose=True))
    finally:
        srv.stop()
    ready = {c.type: c.status for c in status.status.conditions}
    assert ready["RuntimeReady"] is True
    backend = json.loads(status.info["backend"])
    assert (backend["requested"], backend["name"]) == ("fake", "fake")
    assert "runs no program" in backend["not_isolated"][0]


@needs_busybox
def test_a_record_damaged_while_the_server_runs_changes_nothing_until_a_restart(
    short_tmp: Path,
) -> None:
    """As the runc backend's: the server reports the records it wrote, whatever
    happens to the files meanwhile; a restart reads them again, and a container
    whose record cannot be read is UNKNOWN (RecordUnreadable) and removable."""
    srv = serve(short_tmp)
    try:
        client = srv.client()
        client.admin.BuildLocalImage(admin_pb2.BuildLocalImageRequest(name=BUSYBOX))
        pod = pod_config("damaged")
        pod_id = run_pod(client, pod)
        cid = create_container(client, pod_id, pod, "web", "sleep", "1000")
        client.runtime.StartContainer(api_pb2.StartContainerRequest(container_id=cid))
        before = status_of(client, cid)
        (srv.state / "fake" / f"{cid}.json").write_text("{")
        after = status_of(client, cid)
        assert (after.state, after.started_at) == (api_pb2.CONTAINER_RUNNING, before.started_at)
        srv.stop()
        srv = serve(short_tmp)
        client = srv.client()
        damaged = status_of(client, cid)
        assert (damaged.state, damaged.reason) == (api_pb2.CONTAINER_UNKNOWN, "RecordUnreadable")
        # its stop signal was in the record: a stop asked for still stops it (SIGKILL)
        client.runtime.StopContainer(api_pb2.StopContainerRequest(container_id=cid, timeout=30))
        client.runtime.RemoveContainer(api_pb2.RemoveContainerRequest(container_id=cid))
        assert not (srv.state / "fake" / f"{cid}.json").exists()
        remove_every_pod(client)
    finally:
        srv.stop()


def test_what_every_backend_reads_from_a_record_survives_an_unreadable_one(
    tmp_path: Path,
) -> None:
    """``Backend``'s shared readings, on the fake backend's files: the pod and
    the stop signal of a readable record; of an unreadable one, no pod and
    SIGKILL (the signal asked for was in it: a stop must still stop it); and
    a pod is released only once none of its containers is left."""
    backend = FakeBackend(tmp_path)
    good = {"id": "good", "pod_id": "p1", "stop_signal": "SIGINT"}
    backend.path("good").write_text(json.dumps(good))
    backend.path("bad").write_text("{")
    assert backend.pod_of("good") == "p1"
    assert backend.stop_signal("good") == signal.SIGINT
    assert backend.pod_of("bad") == ""
    assert backend.stop_signal("bad") == signal.SIGKILL
    assert backend.pod_of("missing") == ""
    with pytest.raises(FailedPrecondition, match="still has containers: good"):
        asyncio.run(backend.release_pod("p1"))
    asyncio.run(backend.release_pod("p2"))
