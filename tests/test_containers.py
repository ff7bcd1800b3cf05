"""The container RPCs against the live server, as a kubelet calls them: a pod,
a busybox container in it, exec, resources, status, lists, stop, log
rotation, removal; every call's trace checked against its chart. The flows
that need no real container (``any_node``) run twice: with runc as root, and
with the fake backend as any user."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from teaching_cri.api import admin_pb2, api_pb2
from teaching_cri.client import Client
from teaching_cri.manager.cni import default_conflist
from teaching_cri.manager.network import DEFAULT_CNI_BIN_DIRS
from teaching_cri.trace.charts import ChartSet
from teaching_cri.trace.conformance import assert_conforms

from conftest import IS_ROOT, Server, start_server

IMAGE = "teaching-cri.local/busybox:latest"


def _unavailable() -> str:
    if not IS_ROOT:
        return "containers in pods with CNI need root"
    if shutil.which("runc") is None or not Path("/bin/busybox").exists():
        return "runc and busybox-static are needed"
    if not any((d / "bridge").is_file() for d in DEFAULT_CNI_BIN_DIRS):
        return "CNI plugins missing (apt-get install containernetworking-plugins)"
    return ""


needs_root_runc = pytest.mark.skipif(bool(_unavailable()), reason=_unavailable())


@pytest.fixture
def node(short_tmp: Path) -> Iterator[tuple[Server, Client, Path]]:
    """A server with runc as root, and a CNI network."""
    if _unavailable():
        pytest.skip(_unavailable())
    yield from runc_node(short_tmp)


@pytest.fixture(params=["runc", "fake"])
def any_node(
    request: pytest.FixtureRequest, short_tmp: Path
) -> Iterator[tuple[Server, Client, Path]]:
    """The flows that need no real container run twice: with runc as root,
    and with the fake backend (runtime/fake.py) as any user."""
    if request.param == "runc":
        if _unavailable():
            pytest.skip(_unavailable())
        yield from runc_node(short_tmp)
        return
    if not Path("/bin/busybox").exists():
        pytest.skip("the local busybox image needs busybox-static")
    srv = start_server(short_tmp / "srv", "--runtime", "fake")
    yield from serving(srv, short_tmp / "logs")


def serving(srv: Server, logs: Path) -> Iterator[tuple[Server, Client, Path]]:
    """The image built, the server lent out; then every pod removed and the server stopped."""
    client = srv.client()
    try:
        client.admin.BuildLocalImage(admin_pb2.BuildLocalImageRequest(name=IMAGE))
        yield srv, client, logs
    finally:
        try:
            c = srv.client()
            for item in c.runtime.ListPodSandbox(api_pb2.ListPodSandboxRequest()).items:
                c.runtime.StopPodSandbox(api_pb2.StopPodSandboxRequest(pod_sandbox_id=item.id))
                c.runtime.RemovePodSandbox(api_pb2.RemovePodSandboxRequest(pod_sandbox_id=item.id))
        finally:
            srv.stop()


def runc_node(short_tmp: Path) -> Iterator[tuple[Server, Client, Path]]:
    bridge = f"tcri-c{os.getpid() % 10000}"
    conf = short_tmp / "net.d"
    conf.mkdir()
    doc = default_conflist(f"10.235.{os.getpid() % 200}.0/24", bridge, str(short_tmp / "ipam"))
    (conf / "10-test.conflist").write_text(json.dumps(doc))
    srv = start_server(short_tmp / "srv", "--cni-conf-dir", str(conf))
    try:
        yield from serving(srv, short_tmp / "logs")
    finally:
        subprocess.run(["ip", "link", "del", bridge], capture_output=True)


def pod(client: Client, logs: Path, name: str) -> tuple[str, api_pb2.PodSandboxConfig]:
    config = api_pb2.PodSandboxConfig(
        metadata=api_pb2.PodSandboxMetadata(name=name, namespace="default", uid=f"uid-{name}"),
        log_directory=str(logs / name),
        labels={"pod": name},
    )
    response = client.runtime.RunPodSandbox(api_pb2.RunPodSandboxRequest(config=config))
    return response.pod_sandbox_id, config


def container(
    client: Client,
    sandbox: tuple[str, api_pb2.PodSandboxConfig],
    name: str,
    *command: str,
    **labels: str,
) -> str:
    sandbox_id, sandbox_config = sandbox
    config = api_pb2.ContainerConfig(
        metadata=api_pb2.ContainerMetadata(name=name),
        image=api_pb2.ImageSpec(image=IMAGE),
        command=list(command),
        log_path=f"{name}.log",
        labels=labels,
        linux=api_pb2.LinuxContainerConfig(  # what the kubelet sends: a pid namespace of its own
            security_context=api_pb2.LinuxContainerSecurityContext(
                namespace_options=api_pb2.NamespaceOption(pid=api_pb2.CONTAINER)
            )
        ),
    )
    return client.runtime.CreateContainer(
        api_pb2.CreateContainerRequest(
            pod_sandbox_id=sandbox_id, config=config, sandbox_config=sandbox_config
        )
    ).container_id


def state_of(client: Client, container_id: str) -> api_pb2.ContainerStatus:
    return client.runtime.ContainerStatus(
        api_pb2.ContainerStatusRequest(container_id=container_id)
    ).status


TRAPS_TERM = "trap 'echo bye; exit 0' TERM; echo hello; while true; do sleep 0.2; done"


def test_the_writable_layer_is_what_the_container_wrote(
    any_node: tuple[Server, Client, Path],
) -> None:
    """ContainerStats' writable_layer (crictl stats' DISK; the kubelet's
    ephemeral storage): the bytes and inodes the container wrote, on the file
    system ImageFsInfo names for containers; the same in PodSandboxStats'
    containers. With runc, the overlay's upper
    directory only, not the image under it; the fake backend's copy holds
    the image's files too (copy mode, as containerd's native snapshotter)."""
    srv, client, logs = any_node
    rt = client.runtime
    sandbox = pod(client, logs, "disk")
    cid = container(client, sandbox, "writer", "sleep", "1000")
    rt.StartContainer(api_pb2.StartContainerRequest(container_id=cid))
    size = 3 << 20
    fake = (srv.state / "fake").is_dir()  # the fake backend's records are there
    if fake:  # a model runs no program: the file is put there from outside
        rootfs = srv.root / "images" / "snapshots" / "active" / cid / "rootfs"
        (rootfs / "written").write_bytes(os.urandom(size))
    else:
        cmd = ["sh", "-c", f"head -c {size} /dev/urandom > /written"]
        done = rt.ExecSync(api_pb2.ExecSyncRequest(container_id=cid, cmd=cmd, timeout=30))
        assert done.exit_code == 0, done.stderr
    layer = rt.ContainerStats(api_pb2.ContainerStatsRequest(container_id=cid)).stats.writable_layer
    assert layer.used_bytes.value >= size and layer.inodes_used.value >= 2
    if not fake:
        assert layer.used_bytes.value < size + (512 << 10), "the image's files are not counted"
    assert 0 < time.time_ns() - layer.timestamp < 60e9
    filesystems = client.image.ImageFsInfo(api_pb2.ImageFsInfoRequest()).container_filesystems
    assert layer.fs_id.mountpoint == filesystems[0].fs_id.mountpoint
    assert filesystems[0].used_bytes.value >= layer.used_bytes.value
    listed = rt.ListContainerStats(
        api_pb2.ListContainerStatsRequest(filter=api_pb2.ContainerStatsFilter(id=cid))
    ).stats
    assert [s.writable_layer.used_bytes.value for s in listed] == [layer.used_bytes.value]
    in_pod = rt.PodSandboxStats(api_pb2.PodSandboxStatsRequest(pod_sandbox_id=sandbox[0]))
    [mine] = [c for c in in_pod.stats.linux.containers if c.attributes.id == cid]
    assert mine.attributes == listed[0].attributes, "as ListContainerStats gives it"
    assert mine.writable_layer.used_bytes.value == layer.used_bytes.value
    assert mine.writable_layer.fs_id.mountpoint == layer.fs_id.mountpoint


def test_a_kubelet_like_sequence(any_node: tuple[Server, Client, Path], charts: ChartSet) -> None:
    _srv, client, logs = any_node
    rt = client.runtime
    since = time.time_ns()
    sandbox = pod(client, logs, "web")
    cid = container(client, sandbox, "app", "sh", "-c", TRAPS_TERM, tier="front")
    assert state_of(client, cid).state == api_pb2.CONTAINER_CREATED
    rt.StartContainer(api_pb2.StartContainerRequest(container_id=cid))
    st = state_of(client, cid)
    assert st.state == api_pb2.CONTAINER_RUNNING and st.started_at >= st.created_at > 0

    out = rt.ExecSync(api_pb2.ExecSyncRequest(container_id=cid, cmd=["echo", "hello"], timeout=10))
    assert (out.stdout, out.exit_code) == (b"hello\n", 0)

    rt.UpdateContainerResources(
        api_pb2.UpdateContainerResourcesRequest(
            container_id=cid,
            linux=api_pb2.LinuxContainerResources(memory_limit_in_bytes=64 << 20),
        )
    )
    st = state_of(client, cid)
    assert st.resources.linux.memory_limit_in_bytes == 64 << 20
    assert st.labels == {"tier": "front"}, "labels verbatim, ours kept apart"
    assert st.image.image == st.image_ref == st.image_id and st.image_ref.startswith("sha256:")
    assert st.log_path == str(logs / "web" / "app.log")
    stats = rt.ContainerStats(api_pb2.ContainerStatsRequest(container_id=cid)).stats
    assert stats.memory.working_set_bytes.value > 0
    assert stats.cpu.usage_nano_cores.value == 0, "a first sample has nothing to compare with"
    if stats.memory.HasField("available_bytes"):  # a cgroup with the 64 MiB limit
        working_set = stats.memory.working_set_bytes.value
        assert stats.memory.available_bytes.value == (64 << 20) - working_set
    later = rt.ContainerStats(api_pb2.ContainerStatsRequest(container_id=cid)).stats
    assert later.cpu.HasField("usage_nano_cores") and later.cpu.timestamp > stats.cpu.timestamp

    other = container(client, sandbox, "side", "sleep", "1000")

    def listed(**f: object) -> set[str]:
        flt = api_pb2.ContainerFilter(**f)  # type: ignore[arg-type]
        return {
            c.id for c in rt.ListContainers(api_pb2.ListContainersRequest(filter=flt)).containers
        }

    running = api_pb2.ContainerStateValue(state=api_pb2.CONTAINER_RUNNING)
    assert listed() == {cid, other}
    assert listed(id=cid[:8]) == {cid}
    assert listed(state=running) == {cid}
    assert listed(pod_sandbox_id=sandbox[0]) == {cid, other}
    assert listed(label_selector={"tier": "front"}) == {cid}
    assert listed(state=running, label_selector={"tier": "back"}) == set()

    log = logs / "web" / "app.log"
    log.rename(log.with_suffix(".1"))
    rt.ReopenContainerLog(api_pb2.ReopenContainerLogRequest(container_id=cid))
    assert log.exists(), "a fresh file at the same path"

    t = time.monotonic()
    rt.StopContainer(api_pb2.StopContainerRequest(container_id=cid, timeout=2))
    assert time.monotonic() - t < 2, "the trap ends it before the grace period is over"
    st = state_of(client, cid)
    assert (st.state, st.exit_code, st.reason) == (api_pb2.CONTAINER_EXITED, 0, "Completed")
    assert st.finished_at >= st.started_at
    assert b"stdout F bye" in log.read_bytes(), "the log after the reopen has what came after"
    assert b"stdout F hello" in log.with_suffix(".1").read_bytes()
    rt.StopContainer(api_pb2.StopContainerRequest(container_id=cid, timeout=2))  # again: fine

    rt.RemoveContainer(api_pb2.RemoveContainerRequest(container_id=cid))
    rt.RemoveContainer(api_pb2.RemoveContainerRequest(container_id=cid))  # again: fine
    assert listed() == {other}
    rt.StopPodSandbox(api_pb2.StopPodSandboxRequest(pod_sandbox_id=sandbox[0]))
    assert state_of(client, other).state == api_pb2.CONTAINER_EXITED, "the pod's stop stops it"
    rt.RemovePodSandbox(api_pb2.RemovePodSandboxRequest(pod_sandbox_id=sandbox[0]))
    assert listed() == set(), "the pod's removal removes it"
    assert_conforms(client.recent(since_unix_nano=since), charts)


def test_sleep_as_pid_1_is_killed_after_the_grace_period(
    any_node: tuple[Server, Client, Path], charts: ChartSet
) -> None:
    _srv, client, logs = any_node
    since = time.time_ns()
    sandbox = pod(client, logs, "sleepy")
    cid = container(client, sandbox, "sleeper", "sleep", "1000")
    client.runtime.StartContainer(api_pb2.StartContainerRequest(container_id=cid))
    t = time.monotonic()
    client.runtime.StopContainer(api_pb2.StopContainerRequest(container_id=cid, timeout=1))
    assert 1 <= time.monotonic() - t < 5
    st = state_of(client, cid)
    assert (st.exit_code, st.reason) == (128 + signal.SIGKILL, "Error")
    stop = [e.node for e in client.recent(since_unix_nano=since, charts=["StopContainer"])]
    assert "runtime_stop" in stop, "the stop is the runtime's one sequence"
    runtime = [e.node for e in client.recent(since_unix_nano=since, charts=["RuntimeStop"])]
    assert runtime.index("send_stop_signal") < runtime.index("send_sigkill"), runtime
    assert_conforms(client.recent(since_unix_nano=since), charts)


def test_a_failed_runc_create_fails_the_start_as_in_containerd(
    any_node: tuple[Server, Client, Path], charts: ChartSet
) -> None:
    """containerd's CreateContainer runs no runc; a task that fails to be
    created fails StartContainer, and the container is EXITED with exit code
    128, reason StartError and the error as its message. Ours replies to the
    create before the shim's runc create is done: the same to a client."""
    _srv, client, logs = any_node
    since = time.time_ns()
    sandbox = pod(client, logs, "broken")
    cid = container(client, sandbox, "broken", "/no/such/program")
    with pytest.raises(grpc.RpcError) as err:
        client.runtime.StartContainer(api_pb2.StartContainerRequest(container_id=cid))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "/no/such/program" in str(err.value.details())
    st = state_of(client, cid)
    assert st.state == api_pb2.CONTAINER_EXITED
    assert (st.exit_code, st.reason) == (128, "StartError")
    assert "/no/such/program" in st.message
    client.runtime.StopContainer(api_pb2.StopContainerRequest(container_id=cid, timeout=5))
    client.runtime.RemoveContainer(api_pb2.RemoveContainerRequest(container_id=cid))
    listed = client.runtime.ListContainers(api_pb2.ListContainersRequest()).containers
    assert [c.id for c in listed] == []
    assert_conforms(client.recent(since_unix_nano=since), charts)


def test_a_just_created_container_stops_and_is_removed_without_a_start(
    any_node: tuple[Server, Client, Path], charts: ChartSet
) -> None:
    """Stop and Remove may come while the shim's runc create still runs: they
    wait for it; the container is EXITED, then gone."""
    _srv, client, logs = any_node
    since = time.time_ns()
    sandbox = pod(client, logs, "unstarted")
    first = container(client, sandbox, "stopped", "sleep", "1000")
    client.runtime.StopContainer(api_pb2.StopContainerRequest(container_id=first, timeout=5))
    assert state_of(client, first).state == api_pb2.CONTAINER_EXITED
    second = container(client, sandbox, "removed", "sleep", "1000")
    for cid in (first, second):
        client.runtime.RemoveContainer(api_pb2.RemoveContainerRequest(container_id=cid))
    assert not client.runtime.ListContainers(api_pb2.ListContainersRequest()).containers
    assert_conforms(client.recent(since_unix_nano=since), charts)


def test_errors_name_what_was_wrong(
    any_node: tuple[Server, Client, Path], charts: ChartSet
) -> None:
    _srv, client, logs = any_node
    rt = client.runtime
    since = time.time_ns()
    sandbox = pod(client, logs, "err")

    def code(call: object, request: object) -> grpc.StatusCode:
        with pytest.raises(grpc.RpcError) as err:
            call(request)  # type: ignore[operator]
        return err.value.code()  # type: ignore[no-any-return]

    assert code(rt.StartContainer, api_pb2.StartContainerRequest(container_id="nope")) == (
        grpc.StatusCode.NOT_FOUND
    )
    assert (
        code(rt.ContainerStatus, api_pb2.ContainerStatusRequest(container_id="0" * 64))
        == grpc.StatusCode.NOT_FOUND
    )
    bad = api_pb2.CreateContainerRequest(
        pod_sandbox_id=sandbox[0],
        config=api_pb2.ContainerConfig(metadata=api_pb2.ContainerMetadata(name="x")),
        sandbox_config=sandbox[1],
    )
    assert code(rt.CreateContainer, bad) == grpc.StatusCode.INVALID_ARGUMENT  # no image
    missing = api_pb2.CreateContainerRequest(
        pod_sandbox_id="f" * 64, config=bad.config, sandbox_config=sandbox[1]
    )
    assert code(rt.CreateContainer, missing) == grpc.StatusCode.NOT_FOUND
    cid = container(client, sandbox, "once", "sleep", "1000")
    with pytest.raises(grpc.RpcError) as err:
        container(client, sandbox, "once", "sleep", "1000")
    assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS and "in use" in err.value.details()
    exec_request = api_pb2.ExecSyncRequest(container_id=cid, cmd=["true"])
    assert code(rt.ExecSync, exec_request) == grpc.StatusCode.FAILED_PRECONDITION  # not started
    rt.StartContainer(api_pb2.StartContainerRequest(container_id=cid))
    assert code(rt.StartContainer, api_pb2.StartContainerRequest(container_id=cid)) == (
        grpc.StatusCode.FAILED_PRECONDITION
    )
    assert code(rt.ExecSync, api_pb2.ExecSyncRequest(container_id=cid)) == (
        grpc.StatusCode.INVALID_ARGUMENT
    )
    timeout = api_pb2.ExecSyncRequest(container_id=cid, cmd=["sleep", "60"], timeout=1)
    assert code(rt.ExecSync, timeout) == grpc.StatusCode.DEADLINE_EXCEEDED
    ps = rt.ExecSync(api_pb2.ExecSyncRequest(container_id=cid, cmd=["ps", "-o", "args"]))
    assert b"sleep 60" not in ps.stdout
    bad_update = api_pb2.UpdateContainerResourcesRequest(
        container_id=cid, linux=api_pb2.LinuxContainerResources(cpuset_cpus="zero")
    )
    assert code(rt.UpdateContainerResources, bad_update) == grpc.StatusCode.INVALID_ARGUMENT
    rt.StopPodSandbox(api_pb2.StopPodSandboxRequest(pod_sandbox_id=sandbox[0]))
    reopen = api_pb2.ReopenContainerLogRequest(container_id=cid)
    assert code(rt.ReopenContainerLog, reopen) == grpc.StatusCode.FAILED_PRECONDITION
    late = api_pb2.CreateContainerRequest(
        pod_sandbox_id=sandbox[0],
        config=api_pb2.ContainerConfig(
            metadata=api_pb2.ContainerMetadata(name="late"), image=api_pb2.ImageSpec(image=IMAGE)
        ),
        sandbox_config=sandbox[1],
    )
    assert code(rt.CreateContainer, late) == grpc.StatusCode.FAILED_PRECONDITION  # not ready
    assert_conforms(client.recent(since_unix_nano=since), charts)


def _veths(bridge: str) -> int:
    out = subprocess.run(
        ["ip", "-o", "link", "show", "master", bridge], capture_output=True, text=True
    ).stdout
    return len(out.splitlines())


SERVE = (
    "mkdir -p /www && echo hello from pod a > /www/index.html"
    " && exec busybox httpd -f -p 8080 -h /www"
)


@needs_root_runc
def test_a_container_serves_http_to_another_pods_container_across_a_restart(
    short_tmp: Path, charts: ChartSet
) -> None:
    """Issue 5's scenario: two pods on the bridge, HTTP between their
    containers by IP; a server killed and restarted in between changes
    nothing; StopPodSandbox stops the pod's container and takes its veth."""
    bridge = f"tcri-h{os.getpid() % 10000}"
    conf = short_tmp / "net.d"
    conf.mkdir()
    doc = default_conflist(f"10.236.{os.getpid() % 200}.0/24", bridge, str(short_tmp / "ipam"))
    (conf / "10-test.conflist").write_text(json.dumps(doc))
    base = short_tmp / "srv"
    srv = start_server(base, "--cni-conf-dir", str(conf))
    try:
        client = srv.client()
        client.admin.BuildLocalImage(admin_pb2.BuildLocalImageRequest(name=IMAGE))
        a, b = pod(client, short_tmp / "logs", "a"), pod(client, short_tmp / "logs", "b")
        server = container(client, a, "server", "sh", "-c", SERVE)
        fetcher = container(client, b, "fetcher", "sleep", "1000")
        for cid in (server, fetcher):
            client.runtime.StartContainer(api_pb2.StartContainerRequest(container_id=cid))
        ip_a = client.runtime.PodSandboxStatus(
            api_pb2.PodSandboxStatusRequest(pod_sandbox_id=a[0])
        ).status.network.ip
        wget = ["busybox", "wget", "-q", "-O", "-", f"http://{ip_a}:8080/"]

        def fetch(c: Client) -> bytes:
            for _ in range(50):
                out = c.runtime.ExecSync(
                    api_pb2.ExecSyncRequest(container_id=fetcher, cmd=wget, timeout=5)
                )
                if out.exit_code == 0:
                    return out.stdout
                time.sleep(0.1)
            return out.stdout + out.stderr

        assert fetch(client) == b"hello from pod a\n"
        assert _veths(bridge) == 2

        srv.stop(signal.SIGKILL)  # the server dies; the containers do not
        srv = start_server(base, "--cni-conf-dir", str(conf))
        client = srv.client()
        since = time.time_ns()
        assert state_of(client, server).state == api_pb2.CONTAINER_RUNNING
        assert fetch(client) == b"hello from pod a\n"

        client.runtime.StopPodSandbox(api_pb2.StopPodSandboxRequest(pod_sandbox_id=a[0]))
        assert state_of(client, server).state == api_pb2.CONTAINER_EXITED
        assert _veths(bridge) == 1, "pod a's veth is gone"
        for sandbox_id, _config in (a, b):
            client.runtime.StopPodSandbox(api_pb2.StopPodSandboxRequest(pod_sandbox_id=sandbox_id))
            client.runtime.RemovePodSandbox(
                api_pb2.RemovePodSandboxRequest(pod_sandbox_id=sandbox_id)
            )
        assert _veths(bridge) == 0
        assert client.runtime.ListContainers(api_pb2.ListContainersRequest()).containers == []
        assert_conforms(client.recent(since_unix_nano=since), charts)
    finally:
        srv.stop()
        subprocess.run(["ip", "link", "del", bridge], capture_output=True)


def test_exec_and_attach_answer_a_url_from_the_request_cache(
    any_node: tuple[Server, Client, Path], charts: ChartSet
) -> None:
    _srv, client, logs = any_node
    rt = client.runtime
    since = time.time_ns()
    sandbox = pod(client, logs, "streams")
    cid = container(client, sandbox, "sh", "sleep", "1000")

    def code(call: object, request: object) -> grpc.StatusCode:
        with pytest.raises(grpc.RpcError) as err:
            call(request)  # type: ignore[operator]
        return err.value.code()  # type: ignore[no-any-return]

    exec_request = api_pb2.ExecRequest(container_id=cid, cmd=["sh"], stdin=True, stdout=True)
    assert code(rt.Exec, exec_request) == grpc.StatusCode.FAILED_PRECONDITION  # not started
    rt.StartContainer(api_pb2.StartContainerRequest(container_id=cid))
    first = rt.Exec(exec_request).url
    second = rt.Exec(exec_request).url
    assert re.match(r"^http://127\.0\.0\.1:\d+/cri/exec/[A-Za-z0-9_-]+$", first)
    assert first != second
    attach = rt.Attach(api_pb2.AttachRequest(container_id=cid, stdout=True)).url
    assert re.match(r"^http://127\.0\.0\.1:\d+/cri/attach/[A-Za-z0-9_-]+$", attach)
    both = api_pb2.ExecRequest(container_id=cid, cmd=["sh"], tty=True, stdout=True, stderr=True)
    assert code(rt.Exec, both) == grpc.StatusCode.INVALID_ARGUMENT
    none = api_pb2.AttachRequest(container_id=cid)
    assert code(rt.Attach, none) == grpc.StatusCode.INVALID_ARGUMENT
    assert code(rt.Exec, api_pb2.ExecRequest(container_id="nope", cmd=["sh"], stdout=True)) == (
        grpc.StatusCode.NOT_FOUND
    )
    assert_conforms(client.recent(since_unix_nano=since), charts)


def test_container_events_stream_to_a_subscriber(
    any_node: tuple[Server, Client, Path], charts: ChartSet
) -> None:
    import threading

    _srv, client, logs = any_node
    rt = client.runtime
    sandbox = pod(client, logs, "events")
    since = time.time_ns()
    stream = rt.GetContainerEvents(api_pb2.GetEventsRequest())
    seen: list[tuple[str, int, int]] = []

    def read() -> None:
        try:
            for event in stream:
                status = event.containers_statuses[0]
                seen.append((event.container_id, event.container_event_type, status.state))
        except grpc.RpcError:
            pass

    reader = threading.Thread(target=read)
    reader.start()
    time.sleep(0.3)
    cid = container(client, sandbox, "evented", "sh", "-c", "sleep 0.3")
    rt.StartContainer(api_pb2.StartContainerRequest(container_id=cid))
    for _ in range(50):
        if any(kind == api_pb2.CONTAINER_STOPPED_EVENT for _c, kind, _s in seen):
            break
        time.sleep(0.1)
    rt.RemoveContainer(api_pb2.RemoveContainerRequest(container_id=cid))
    time.sleep(0.3)
    stream.cancel()
    reader.join(10)
    mine = [(kind, state) for c, kind, state in seen if c == cid]
    assert mine == [
        (api_pb2.CONTAINER_CREATED_EVENT, api_pb2.CONTAINER_CREATED),
        (api_pb2.CONTAINER_STARTED_EVENT, api_pb2.CONTAINER_RUNNING),
        (api_pb2.CONTAINER_STOPPED_EVENT, api_pb2.CONTAINER_EXITED),
        (api_pb2.CONTAINER_DELETED_EVENT, api_pb2.CONTAINER_EXITED),
    ], "it exited by itself: the STOPPED event comes from the shim's exit"
    time.sleep(0.3)
    events = client.recent(since_unix_nano=since, charts=["GetContainerEvents"])
    assert [e.node for e in events][-1] == "end_of_stream"
    assert_conforms(client.recent(since_unix_nano=since), charts)


def test_review_cases_state_timing_target_and_transactional_update(
    node: tuple[Server, Client, Path], charts: ChartSet
) -> None:
    _srv, client, logs = node
    rt = client.runtime
    since = time.time_ns()
    sandbox = pod(client, logs, "review")
    # a container that exits at once: EXITED in the list without a status call
    quick = container(client, sandbox, "quick", "true")
    rt.StartContainer(api_pb2.StartContainerRequest(container_id=quick))
    exited = api_pb2.ContainerStateValue(state=api_pb2.CONTAINER_EXITED)
    for _ in range(50):
        listed = rt.ListContainers(
            api_pb2.ListContainersRequest(filter=api_pb2.ContainerFilter(state=exited))
        ).containers
        if [c.id for c in listed] == [quick]:
            break
        time.sleep(0.1)
    else:
        pytest.fail("the list never showed the exited container as EXITED")
    st = state_of(client, quick)
    assert st.finished_at >= st.started_at > 0

    # pid TARGET: the debug container sees the target's processes
    target = container(client, sandbox, "target", "sleep", "4242")
    rt.StartContainer(api_pb2.StartContainerRequest(container_id=target))
    debug_config = api_pb2.ContainerConfig(
        metadata=api_pb2.ContainerMetadata(name="debug"),
        image=api_pb2.ImageSpec(image=IMAGE),
        command=["sleep", "1000"],
        linux=api_pb2.LinuxContainerConfig(
            security_context=api_pb2.LinuxContainerSecurityContext(
                namespace_options=api_pb2.NamespaceOption(pid=api_pb2.TARGET, target_id=target)
            )
        ),
    )
    debug = rt.CreateContainer(
        api_pb2.CreateContainerRequest(
            pod_sandbox_id=sandbox[0], config=debug_config, sandbox_config=sandbox[1]
        )
    ).container_id
    rt.StartContainer(api_pb2.StartContainerRequest(container_id=debug))
    ps = rt.ExecSync(api_pb2.ExecSyncRequest(container_id=debug, cmd=["ps", "-o", "args"]))
    assert b"sleep 4242" in ps.stdout

    # an update the kernel refuses leaves the limits as they were (memory node 7
    # does not exist: runc fails, and what the cgroup had is written back)
    before = state_of(client, target).resources.linux
    with pytest.raises(grpc.RpcError) as err:
        rt.UpdateContainerResources(
            api_pb2.UpdateContainerResourcesRequest(
                container_id=target,
                linux=api_pb2.LinuxContainerResources(
                    cpu_shares=512, memory_limit_in_bytes=64 << 20, cpuset_mems="7"
                ),
            )
        )
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert state_of(client, target).resources.linux == before
    events = client.recent(since_unix_nano=since, charts=["UpdateContainerResources"])
    assert "restore_previous_resources" in [e.node for e in events]
    assert_conforms(client.recent(since_unix_nano=since), charts)


@needs_root_runc
def test_a_runtime_container_without_a_record_is_removed_at_restart(short_tmp: Path) -> None:
    """What a server killed between the runtime's create and our record leaves:
    the next server removes it, and the pod can go."""
    import asyncio

    from teaching_cri.runtime.backend import CreateRequest
    from teaching_cri.runtime.runc import RuncBackend

    conf = short_tmp / "net.d"
    conf.mkdir()
    base = short_tmp / "srv"
    srv = start_server(base, "--cni-conf-dir", str(conf))
    client = srv.client()
    host = api_pb2.LinuxPodSandboxConfig(
        security_context=api_pb2.LinuxSandboxSecurityContext(
            namespace_options=api_pb2.NamespaceOption(network=api_pb2.NODE)
        )
    )
    config = api_pb2.PodSandboxConfig(
        metadata=api_pb2.PodSandboxMetadata(name="half", namespace="d", uid="u"), linux=host
    )
    sandbox_id = client.runtime.RunPodSandbox(
        api_pb2.RunPodSandboxRequest(config=config)
    ).pod_sandbox_id
    srv.stop(signal.SIGKILL)
    spec = json.loads((base / "state" / "containers" / sandbox_id / "config.json").read_text())

    async def half_create() -> None:
        backend = RuncBackend(base / "state")
        await backend.create(CreateRequest("f" * 64, spec, pod_id=sandbox_id))
        await backend.close()

    asyncio.run(half_create())
    srv = start_server(base, "--cni-conf-dir", str(conf))
    try:
        client = srv.client()
        assert not (base / "state" / "containers" / ("f" * 64)).exists()
        client.runtime.StopPodSandbox(api_pb2.StopPodSandboxRequest(pod_sandbox_id=sandbox_id))
        client.runtime.RemovePodSandbox(api_pb2.RemovePodSandboxRequest(pod_sandbox_id=sandbox_id))
        assert client.runtime.ListPodSandbox(api_pb2.ListPodSandboxRequest()).items == []
    finally:
        srv.stop()


@needs_root_runc
@pytest.mark.parametrize("kill_midway", [False, True], ids=["straight", "server-sigkilled-midway"])
def test_the_done_when_sequence(short_tmp: Path, charts: ChartSet, kill_midway: bool) -> None:
    """Issue 6's scripted kubelet: pull, pod, container, exec, update, status,
    lists, stop with timeout 2 on a SIGTERM trap, log rotation, removal; the
    second run SIGKILLs the server after StartContainer and finishes after a
    restart with the same results."""
    from registry import RegistryUnavailable, push_busybox, run_registry

    bridge = f"tcri-k{os.getpid() % 10000}"
    conf = short_tmp / "net.d"
    conf.mkdir()
    doc = default_conflist(f"10.237.{os.getpid() % 200}.0/24", bridge, str(short_tmp / "ipam"))
    (conf / "10-test.conflist").write_text(json.dumps(doc))
    base, logs = short_tmp / "srv", short_tmp / "logs"
    try:
        registry_cm = run_registry(short_tmp / "registry")
        reg = registry_cm.__enter__()
    except RegistryUnavailable as exc:
        pytest.skip(str(exc))
    srv = start_server(base, "--cni-conf-dir", str(conf))
    try:
        push_busybox(reg, "library/busybox", "1.0")
        image = f"{reg.host}/library/busybox:1.0"
        client = srv.client()
        since = time.time_ns()
        pulled = client.image.PullImage(
            api_pb2.PullImageRequest(image=api_pb2.ImageSpec(image=image))
        ).image_ref
        sandbox = pod(client, logs, "kubelet")
        config = api_pb2.ContainerConfig(
            metadata=api_pb2.ContainerMetadata(name="app"),
            image=api_pb2.ImageSpec(image=image),
            command=["sh", "-c", TRAPS_TERM],
            log_path="app.log",
            labels={"app": "kubelet"},
            linux=api_pb2.LinuxContainerConfig(
                security_context=api_pb2.LinuxContainerSecurityContext(
                    namespace_options=api_pb2.NamespaceOption(pid=api_pb2.CONTAINER)
                )
            ),
        )
        cid = client.runtime.CreateContainer(
            api_pb2.CreateContainerRequest(
                pod_sandbox_id=sandbox[0], config=config, sandbox_config=sandbox[1]
            )
        ).container_id
        client.runtime.StartContainer(api_pb2.StartContainerRequest(container_id=cid))
        if kill_midway:
            assert_conforms(client.recent(since_unix_nano=since), charts)
            srv.stop(signal.SIGKILL)
            srv = start_server(base, "--cni-conf-dir", str(conf))
            client = srv.client()
            since = time.time_ns()
        rt = client.runtime
        out = rt.ExecSync(api_pb2.ExecSyncRequest(container_id=cid, cmd=["echo", "hello"]))
        assert (out.stdout, out.exit_code) == (b"hello\n", 0)
        rt.UpdateContainerResources(
            api_pb2.UpdateContainerResourcesRequest(
                container_id=cid,
                linux=api_pb2.LinuxContainerResources(memory_limit_in_bytes=96 << 20),
            )
        )
        st = state_of(client, cid)
        assert st.state == api_pb2.CONTAINER_RUNNING and st.image_ref == pulled
        assert st.resources.linux.memory_limit_in_bytes == 96 << 20
        for flt in (
            api_pb2.ContainerFilter(id=cid),
            api_pb2.ContainerFilter(
                state=api_pb2.ContainerStateValue(state=api_pb2.CONTAINER_RUNNING)
            ),
            api_pb2.ContainerFilter(pod_sandbox_id=sandbox[0]),
            api_pb2.ContainerFilter(label_selector={"app": "kubelet"}),
        ):
            listed = rt.ListContainers(api_pb2.ListContainersRequest(filter=flt)).containers
            assert [c.id for c in listed] == [cid]
        log = logs / "kubelet" / "app.log"
        log.rename(log.with_suffix(".1"))
        rt.ReopenContainerLog(api_pb2.ReopenContainerLogRequest(container_id=cid))
        rt.StopContainer(api_pb2.StopContainerRequest(container_id=cid, timeout=2))
        st = state_of(client, cid)
        assert (st.state, st.exit_code, st.reason) == (api_pb2.CONTAINER_EXITED, 0, "Completed")
        assert b"stdout F bye" in log.read_bytes()
        rt.RemoveContainer(api_pb2.RemoveContainerRequest(container_id=cid))
        rt.StopPodSandbox(api_pb2.StopPodSandboxRequest(pod_sandbox_id=sandbox[0]))
        rt.RemovePodSandbox(api_pb2.RemovePodSandboxRequest(pod_sandbox_id=sandbox[0]))
        assert rt.ListContainers(api_pb2.ListContainersRequest()).containers == []
        assert_conforms(client.recent(since_unix_nano=since), charts)
    finally:
        srv.stop()
        registry_cm.__exit__(None, None, None)
        subprocess.run(["ip", "link", "del", bridge], capture_output=True)


def test_unknown_containers_take_each_charts_not_found_branch(
    any_node: tuple[Server, Client, Path], charts: ChartSet
) -> None:
    _srv, client, _logs = any_node
    rt = client.runtime
    since = time.time_ns()
    unknown = "e" * 64
    rt.StopContainer(api_pb2.StopContainerRequest(container_id=unknown, timeout=1))
    rt.RemoveContainer(api_pb2.RemoveContainerRequest(container_id=unknown))
    for call, request in (
        (rt.ContainerStats, api_pb2.ContainerStatsRequest(container_id=unknown)),
        (rt.ReopenContainerLog, api_pb2.ReopenContainerLogRequest(container_id=unknown)),
        (rt.ExecSync, api_pb2.ExecSyncRequest(container_id=unknown, cmd=["true"])),
        (
            rt.UpdateContainerResources,
            api_pb2.UpdateContainerResourcesRequest(container_id=unknown),
        ),
        (rt.Attach, api_pb2.AttachRequest(container_id=unknown, stdout=True)),
    ):
        with pytest.raises(grpc.RpcError) as err:
            call(request)  # type: ignore[operator]
        assert err.value.code() == grpc.StatusCode.NOT_FOUND, call
    events = client.recent(since_unix_nano=since)
    taken = {(e.chart, e.label) for e in events if e.node == "get_container_id"}
    assert ("StopContainer", "N") in taken and ("RemoveContainer", "N") in taken
    assert_conforms(events, charts)
