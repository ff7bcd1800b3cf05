"""Pod sandboxes against the live server: real network namespaces, real CNI
plugins on a bridge of the test's own, the infra container under runc; every
RPC's trace checked against its chart."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from teaching_cri.api import api_pb2
from teaching_cri.client import Client
from teaching_cri.manager.cni import default_conflist
from teaching_cri.manager.network import DEFAULT_CNI_BIN_DIRS
from teaching_cri.runtime import cgroups
from teaching_cri.trace.charts import ChartSet
from teaching_cri.trace.conformance import assert_conforms

from conftest import IS_ROOT, Server, start_server


def _unavailable() -> str:
    if not IS_ROOT:
        return "pods with network namespaces and CNI need root"
    if shutil.which("runc") is None:
        return "runc is not installed (apt-get install runc)"
    missing = [
        t
        for t in ("bridge", "host-local", "loopback")
        if not any((d / t).is_file() for d in DEFAULT_CNI_BIN_DIRS)
    ]
    if missing:
        hint = "apt-get install containernetworking-plugins"
        return f"CNI plugins missing: {', '.join(missing)} ({hint})"
    return ""


pytestmark = pytest.mark.skipif(bool(_unavailable()), reason=_unavailable())

SUBNET = "10.233.{}.0/24"


@pytest.fixture
def pods(short_tmp: Path) -> Iterator[tuple[Server, Client, str, Path]]:
    """A server whose CNI config is a bridge of this test's own."""
    bridge = f"tcri-p{os.getpid() % 10000}"
    conf = short_tmp / "net.d"
    conf.mkdir()
    doc = default_conflist(SUBNET.format(os.getpid() % 200), bridge, str(short_tmp / "ipam"))
    (conf / "10-test.conflist").write_text(json.dumps(doc))
    srv = start_server(short_tmp / "srv", "--cni-conf-dir", str(conf))
    try:
        yield srv, srv.client(), bridge, conf
    finally:
        client = srv.client()
        for item in client.runtime.ListPodSandbox(api_pb2.ListPodSandboxRequest()).items:
            client.runtime.StopPodSandbox(api_pb2.StopPodSandboxRequest(pod_sandbox_id=item.id))
            client.runtime.RemovePodSandbox(api_pb2.RemovePodSandboxRequest(pod_sandbox_id=item.id))
        srv.stop()
        subprocess.run(["ip", "link", "del", bridge], capture_output=True)


def pod_config(name: str, **kw: object) -> api_pb2.PodSandboxConfig:
    return api_pb2.PodSandboxConfig(
        metadata=api_pb2.PodSandboxMetadata(name=name, namespace="default", uid=f"uid-{name}"),
        hostname=name,
        **kw,  # type: ignore[arg-type]
    )


def run(client: Client, config: api_pb2.PodSandboxConfig) -> str:
    return client.runtime.RunPodSandbox(api_pb2.RunPodSandboxRequest(config=config)).pod_sandbox_id


def status(client: Client, sandbox_id: str) -> api_pb2.PodSandboxStatusResponse:
    return client.runtime.PodSandboxStatus(
        api_pb2.PodSandboxStatusRequest(pod_sandbox_id=sandbox_id, verbose=True)
    )


def veths(bridge: str) -> list[str]:
    out = subprocess.run(
        ["ip", "-o", "link", "show", "master", bridge], capture_output=True, text=True
    ).stdout
    return [line.split(":")[1].strip().split("@")[0] for line in out.splitlines()]


def leftovers(srv: Server, sandbox_id: str) -> list[str]:
    """Everything a sandbox may leave behind, that exists."""
    found = []
    netns = srv.base / "state" / "netns" / sandbox_id
    if netns.exists() or os.path.ismount(netns):
        found.append(f"netns {netns}")
    for d in (
        srv.base / "root" / "sandboxes" / sandbox_id,
        srv.base / "state" / "sandboxes" / sandbox_id,
    ):
        if d.exists():
            found.append(f"state dir {d}")
    for d in cgroups.directories(cgroups.pod_parent(sandbox_id)):
        if d.exists():
            found.append(f"cgroup {d}")
    mounts = Path("/proc/self/mountinfo").read_text()
    if sandbox_id in mounts:
        found.append("a mount naming the sandbox")
    if (srv.base / "state" / "containers" / sandbox_id).exists():
        found.append("the infra container's state")
    view = srv.base / "root" / "images" / "snapshots" / "active" / sandbox_id
    if view.exists():
        found.append(f"the infra's rootfs {view}")
    return found


def test_two_pods_get_distinct_ips_and_leave_nothing_behind(
    pods: tuple[Server, Client, str, Path], charts: ChartSet
) -> None:
    srv, client, bridge, _conf = pods
    since = time.time_ns()
    a = run(client, pod_config("a", labels={"app": "web", "tier": "front"}))
    b = run(client, pod_config("b", labels={"app": "web"}))
    sa, sb = status(client, a), status(client, b)
    for st in (sa, sb):
        assert st.status.state == api_pb2.SANDBOX_READY
        assert st.status.network.ip.startswith(SUBNET.format(os.getpid() % 200)[:-5])
    assert sa.status.network.ip != sb.status.network.ip
    assert sa.status.metadata.name == "a" and sa.status.labels == {"app": "web", "tier": "front"}
    info = json.loads(sa.info["info"])
    assert info["network"] == "cni" and info["netns"]
    assert len(veths(bridge)) == 2
    hosts = (srv.base / "state" / "sandboxes" / a / "hosts").read_text()
    assert f"{sa.status.network.ip}\ta" in hosts

    def listed(**f: object) -> set[str]:
        flt = api_pb2.PodSandboxFilter(**f)  # type: ignore[arg-type]
        items = client.runtime.ListPodSandbox(api_pb2.ListPodSandboxRequest(filter=flt)).items
        return {i.id for i in items}

    assert listed() == {a, b}
    assert listed(id=a[:10]) == {a}
    assert listed(label_selector={"app": "web"}) == {a, b}
    assert listed(label_selector={"app": "web", "tier": "front"}) == {a}
    ready = api_pb2.PodSandboxStateValue(state=api_pb2.SANDBOX_READY)
    assert listed(state=ready, label_selector={"tier": "front"}) == {a}

    client.runtime.StopPodSandbox(api_pb2.StopPodSandboxRequest(pod_sandbox_id=a))
    assert status(client, a).status.state == api_pb2.SANDBOX_NOTREADY
    assert len(veths(bridge)) == 1, "a's veth is gone"
    client.runtime.StopPodSandbox(api_pb2.StopPodSandboxRequest(pod_sandbox_id=a))  # again
    notready = api_pb2.PodSandboxStateValue(state=api_pb2.SANDBOX_NOTREADY)
    assert listed(state=notready) == {a}

    for sandbox_id in (a, b):
        client.runtime.StopPodSandbox(api_pb2.StopPodSandboxRequest(pod_sandbox_id=sandbox_id))
        client.runtime.RemovePodSandbox(api_pb2.RemovePodSandboxRequest(pod_sandbox_id=sandbox_id))
        assert leftovers(srv, sandbox_id) == []
    assert veths(bridge) == []
    assert listed() == set()
    assert_conforms(client.recent(since_unix_nano=since), charts)


def test_one_pod_serves_http_that_the_other_fetches_by_ip(
    pods: tuple[Server, Client, str, Path], tmp_path: Path
) -> None:
    """Traffic between the pods' namespaces over the bridge (the pods' own
    containers come with CreateContainer; here busybox runs in each netns)."""
    srv, client, _bridge, _conf = pods
    busybox = shutil.which("busybox")
    if busybox is None:
        pytest.skip("busybox (busybox-static) is needed for httpd and wget")
    server_id, client_id = run(client, pod_config("server")), run(client, pod_config("client"))
    server_ip = status(client, server_id).status.network.ip
    www = tmp_path / "www"
    www.mkdir()
    (www / "index.html").write_text("hello from the server pod\n")
    netns = srv.base / "state" / "netns"
    httpd = subprocess.Popen(
        [
            "nsenter",
            f"--net={netns / server_id}",
            busybox,
            "httpd",
            "-f",
            "-p",
            "8080",
            "-h",
            str(www),
        ]
    )
    try:
        fetched = ""
        for _ in range(50):
            got = subprocess.run(
                [
                    "nsenter",
                    f"--net={netns / client_id}",
                    busybox,
                    "wget",
                    "-q",
                    "-O",
                    "-",
                    f"http://{server_ip}:8080/",
                ],
                capture_output=True,
                text=True,
                timeout=10,
            )
            fetched = got.stdout
            if got.returncode == 0:
                break
            time.sleep(0.1)
        assert fetched == "hello from the server pod\n"
    finally:
        httpd.kill()
        httpd.wait()


def test_pod_stats_count_the_infra_and_the_pods_traffic(
    pods: tuple[Server, Client, str, Path], charts: ChartSet
) -> None:
    srv, client, _bridge, _conf = pods
    since = time.time_ns()
    a, b = run(client, pod_config("sa", labels={"k": "1"})), run(client, pod_config("sb"))
    ip_b = status(client, b).status.network.ip
    busybox = shutil.which("busybox")
    if busybox:  # some traffic out of a's eth0
        netns = srv.base / "state" / "netns" / a
        subprocess.run(
            ["nsenter", f"--net={netns}", busybox, "ping", "-c", "2", "-W", "1", ip_b],
            capture_output=True,
            timeout=20,
        )
    stats = client.runtime.PodSandboxStats(api_pb2.PodSandboxStatsRequest(pod_sandbox_id=a)).stats
    assert stats.attributes.id == a and stats.attributes.labels == {"k": "1"}
    assert stats.linux.process.process_count.value >= 1, "the infra process"
    assert stats.linux.memory.working_set_bytes.value > 0
    assert stats.linux.cpu.usage_core_nano_seconds.value > 0
    assert stats.linux.network.default_interface.name == "eth0"
    if busybox:
        assert stats.linux.network.default_interface.tx_bytes.value > 0
    listed = client.runtime.ListPodSandboxStats(api_pb2.ListPodSandboxStatsRequest()).stats
    assert {s.attributes.id for s in listed} == {a, b}
    only = client.runtime.ListPodSandboxStats(
        api_pb2.ListPodSandboxStatsRequest(
            filter=api_pb2.PodSandboxStatsFilter(label_selector={"k": "1"})
        )
    ).stats
    assert [s.attributes.id for s in only] == [a]
    with pytest.raises(grpc.RpcError) as err:
        client.runtime.PodSandboxStats(api_pb2.PodSandboxStatsRequest(pod_sandbox_id="0" * 64))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert_conforms(client.recent(since_unix_nano=since), charts)


def test_unknown_ids_stop_and_remove_fine_but_have_no_status(
    pods: tuple[Server, Client, str, Path],
) -> None:
    _srv, client, _bridge, _conf = pods
    client.runtime.StopPodSandbox(api_pb2.StopPodSandboxRequest(pod_sandbox_id="f" * 64))
    client.runtime.RemovePodSandbox(api_pb2.RemovePodSandboxRequest(pod_sandbox_id="f" * 64))
    with pytest.raises(grpc.RpcError) as err:
        status(client, "f" * 64)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


def test_bad_requests_are_refused_and_leave_nothing(
    pods: tuple[Server, Client, str, Path],
) -> None:
    srv, client, _bridge, conf = pods

    def code_of(config: api_pb2.PodSandboxConfig, handler: str = "") -> grpc.StatusCode:
        with pytest.raises(grpc.RpcError) as err:
            client.runtime.RunPodSandbox(
                api_pb2.RunPodSandboxRequest(config=config, runtime_handler=handler)
            )
        return err.value.code()  # type: ignore[no-any-return]

    assert code_of(api_pb2.PodSandboxConfig()) == grpc.StatusCode.INVALID_ARGUMENT
    assert code_of(pod_config("h"), "kata") == grpc.StatusCode.INVALID_ARGUMENT
    run(client, pod_config("twice"))
    assert code_of(pod_config("twice")) == grpc.StatusCode.ALREADY_EXISTS
    # a CNI config that the bridge plugin refuses: its own message, nothing left
    (conf / "10-test.conflist").write_text(
        json.dumps(
            {
                "cniVersion": "1.0.0",
                "name": "broken",
                "plugins": [{"type": "bridge", "ipam": {"type": "host-local", "ranges": "x"}}],
            }
        )
    )
    with pytest.raises(grpc.RpcError) as err:
        run(client, pod_config("nonet"))
    assert "CNI plugin bridge ADD failed" in err.value.details()
    items = client.runtime.ListPodSandbox(api_pb2.ListPodSandboxRequest()).items
    assert [i.metadata.name for i in items] == ["twice"]
    netns_dir = srv.base / "state" / "netns"
    assert len(list(netns_dir.iterdir())) == 1, "only twice's namespace"
    containers = srv.base / "state" / "containers"
    assert len([p for p in containers.iterdir() if p.is_dir()]) == 1, "only twice's infra"
    files = srv.base / "state" / "sandboxes"
    assert len(list(files.iterdir())) == 1, "only twice's hosts, resolv.conf and shm"
    shm_mounts = [
        m for m in Path("/proc/self/mountinfo").read_text().splitlines() if str(files) in m
    ]
    assert len(shm_mounts) == 1, "only twice's /dev/shm is mounted"


def test_a_host_network_pod_has_no_namespace_and_no_cni(
    pods: tuple[Server, Client, str, Path], charts: ChartSet
) -> None:
    srv, client, bridge, _conf = pods
    since = time.time_ns()
    host = api_pb2.LinuxPodSandboxConfig(
        security_context=api_pb2.LinuxSandboxSecurityContext(
            namespace_options=api_pb2.NamespaceOption(network=api_pb2.NODE)
        )
    )
    sandbox_id = run(client, pod_config("hostnet", linux=host))
    st = status(client, sandbox_id)
    assert st.status.state == api_pb2.SANDBOX_READY
    assert st.status.network.ip == ""
    assert st.status.linux.namespaces.options.network == api_pb2.NODE
    assert veths(bridge) == []
    assert not (srv.base / "state" / "netns" / sandbox_id).exists()
    client.runtime.StopPodSandbox(api_pb2.StopPodSandboxRequest(pod_sandbox_id=sandbox_id))
    client.runtime.RemovePodSandbox(api_pb2.RemovePodSandboxRequest(pod_sandbox_id=sandbox_id))
    assert leftovers(srv, sandbox_id) == []
    assert_conforms(client.recent(since_unix_nano=since), charts)


def test_network_before_the_infra_when_the_pod_asks(
    pods: tuple[Server, Client, str, Path], charts: ChartSet
) -> None:
    _srv, client, _bridge, _conf = pods
    since = time.time_ns()
    sandbox_id = run(
        client, pod_config("first", annotations={"cri.sandbox.network.setup.v2": "true"})
    )
    assert status(client, sandbox_id).status.network.ip
    events = client.recent(since_unix_nano=since, charts=["RunPodSandbox"])
    nodes = [e.node for e in events]
    assert nodes.index("cni_add") < nodes.index("sandbox_create")
    assert_conforms(events, charts)


def test_a_restart_changes_nothing_visible(short_tmp: Path) -> None:
    bridge = f"tcri-r{os.getpid() % 10000}"
    conf = short_tmp / "net.d"
    conf.mkdir()
    subnet = SUBNET.format(200 + os.getpid() % 50)
    (conf / "10.conflist").write_text(
        json.dumps(default_conflist(subnet, bridge, str(short_tmp / "ipam")))
    )
    base = short_tmp / "srv"
    srv = start_server(base, "--cni-conf-dir", str(conf))
    try:
        client = srv.client()
        sandbox_id = run(client, pod_config("stays"))
        before = status(client, sandbox_id).status
        srv.stop()
        srv = start_server(base, "--cni-conf-dir", str(conf))
        client = srv.client()
        after = status(client, sandbox_id).status
        assert after.state == api_pb2.SANDBOX_READY
        assert (after.id, after.network.ip, after.created_at) == (
            before.id,
            before.network.ip,
            before.created_at,
        )
        assert os.path.ismount(base / "state" / "netns" / sandbox_id)
        assert len(veths(bridge)) == 1
        client.runtime.StopPodSandbox(api_pb2.StopPodSandboxRequest(pod_sandbox_id=sandbox_id))
        client.runtime.RemovePodSandbox(api_pb2.RemovePodSandboxRequest(pod_sandbox_id=sandbox_id))
        assert leftovers(srv, sandbox_id) == [] and veths(bridge) == []
    finally:
        srv.stop()
        subprocess.run(["ip", "link", "del", bridge], capture_output=True)


def test_a_pod_resize_is_written_to_the_pods_cgroup(
    pods: tuple[Server, Client, str, Path], charts: ChartSet
) -> None:
    _srv, client, _bridge, _conf = pods
    since = time.time_ns()
    sandbox_id = run(client, pod_config("resized"))
    client.runtime.UpdatePodSandboxResources(
        api_pb2.UpdatePodSandboxResourcesRequest(
            pod_sandbox_id=sandbox_id,
            resources=api_pb2.LinuxContainerResources(
                memory_limit_in_bytes=256 << 20, cpu_quota=50000, cpu_period=100000, cpu_shares=512
            ),
            overhead=api_pb2.LinuxContainerResources(memory_limit_in_bytes=16 << 20),
        )
    )
    memory = cgroups.Hierarchy.detect().controller_dir(cgroups.pod_parent(sandbox_id), "memory")
    limit_file = memory / ("memory.max" if cgroups.version() == 2 else "memory.limit_in_bytes")
    assert int(limit_file.read_text()) == (256 + 16) << 20
    stats = client.runtime.PodSandboxStats(
        api_pb2.PodSandboxStatsRequest(pod_sandbox_id=sandbox_id)
    ).stats
    assert stats.linux.memory.available_bytes.value > 0
    info = json.loads(status(client, sandbox_id).info["info"])
    assert info["resources"]["memory"] == (256 + 16) << 20 and info["resources_enforced"]
    with pytest.raises(grpc.RpcError) as err:
        client.runtime.UpdatePodSandboxResources(
            api_pb2.UpdatePodSandboxResourcesRequest(pod_sandbox_id="0" * 64)
        )
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert_conforms(client.recent(since_unix_nano=since), charts)


def test_the_infra_gets_the_pods_hostname_dns_sysctls_and_shm(
    pods: tuple[Server, Client, str, Path],
) -> None:
    srv, client, _bridge, _conf = pods
    config = pod_config(
        "detailed",
        dns_config=api_pb2.DNSConfig(
            servers=["10.96.0.10"], searches=["default.svc.cluster.local"], options=["ndots:5"]
        ),
        linux=api_pb2.LinuxPodSandboxConfig(sysctls={"net.ipv4.ip_unprivileged_port_start": "80"}),
    )
    config.hostname = "web-1"
    sandbox_id = run(client, config)
    record = json.loads(
        (srv.base / "state" / "containers" / sandbox_id / "container.json").read_text()
    )
    pid = record["pid"]
    resolv = Path(f"/proc/{pid}/root/etc/resolv.conf").read_text().splitlines()
    assert resolv == [
        "nameserver 10.96.0.10",
        "search default.svc.cluster.local",
        "options ndots:5",
    ]
    hostname = subprocess.run(
        ["nsenter", "-t", str(pid), "-u", "hostname"], capture_output=True, text=True
    ).stdout.strip()
    assert hostname == "web-1"
    hosts = Path(f"/proc/{pid}/root/etc/hosts").read_text()
    assert "web-1" in hosts
    netns = srv.base / "state" / "netns" / sandbox_id
    port_start = subprocess.run(
        ["nsenter", f"--net={netns}", "cat", "/proc/sys/net/ipv4/ip_unprivileged_port_start"],
        capture_output=True,
        text=True,
    ).stdout.strip()
    assert port_start == "80", "the sysctl is set in the pod's network namespace"
    shm = srv.base / "state" / "sandboxes" / sandbox_id / "shm"
    assert os.path.ismount(shm), "the pod's /dev/shm is a tmpfs of its own"
    (shm / "marker").write_text("x")
    assert Path(f"/proc/{pid}/root/dev/shm/marker").exists(), "and the infra sees it"


def test_the_pause_image_is_pulled_when_missing(short_tmp: Path) -> None:
    """The infra image named by --pause-image comes from its registry (here a
    local one holding our infra image) and is used instead of the built-in one."""
    from teaching_cri.image.hostimages import build_infra_image

    from registry import RegistryUnavailable, _push, run_registry

    try:
        with run_registry(short_tmp / "registry") as reg:
            layout = short_tmp / "pause-layout"
            info = build_infra_image(layout, ref_name="3.10")
            _push(reg, layout, "pause", "3.10")
            pause = f"{reg.host}/pause:3.10"
            srv = start_server(short_tmp / "srv", "--pause-image", pause)
            try:
                client = srv.client()
                host = api_pb2.LinuxPodSandboxConfig(  # no CNI needed for this one
                    security_context=api_pb2.LinuxSandboxSecurityContext(
                        namespace_options=api_pb2.NamespaceOption(network=api_pb2.NODE)
                    )
                )
                sandbox_id = run(client, pod_config("pulled", linux=host))
                st = status(client, sandbox_id)
                assert st.status.state == api_pb2.SANDBOX_READY
                assert json.loads(st.info["info"])["infra_image"] == info.config_digest
                images = client.image.ListImages(api_pb2.ListImagesRequest()).images
                assert any(pause in i.repo_tags for i in images)
                assert not any("teaching-cri.local/pause" in t for i in images for t in i.repo_tags)
                client.runtime.StopPodSandbox(
                    api_pb2.StopPodSandboxRequest(pod_sandbox_id=sandbox_id)
                )
                client.runtime.RemovePodSandbox(
                    api_pb2.RemovePodSandboxRequest(pod_sandbox_id=sandbox_id)
                )
            finally:
                srv.stop()
    except RegistryUnavailable as exc:
        pytest.skip(str(exc))
