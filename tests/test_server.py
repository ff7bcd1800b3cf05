"""The live server, over gRPC on its unix socket, as crictl and the kubelet see it."""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from teaching_cri.api import api_pb2, trace_pb2
from teaching_cri.client import Client, connect
from teaching_cri.runtime.spec import recursive_read_only_supported
from teaching_cri.trace.charts import ChartSet
from teaching_cri.trace.conformance import assert_conforms
from teaching_cri.trace.render import VISITED, render_svg, render_text

from conftest import Server, serve_command, start_server

SVG = "{http://www.w3.org/2000/svg}"


def test_version_answers_teaching_cri_v1(client: Client) -> None:
    resp = client.runtime.Version(api_pb2.VersionRequest(version="v1"))
    assert resp.runtime_name == "teaching-cri"
    assert resp.runtime_api_version == "v1"
    assert resp.version == "0.1.0"
    import teaching_cri

    assert resp.runtime_version == teaching_cri.__version__


def test_reflection_lists_the_cri_services(client: Client) -> None:
    stub = reflection_pb2_grpc.ServerReflectionStub(client.channel)
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    [answer] = list(stub.ServerReflectionInfo(iter([request])))
    names = {s.name for s in answer.list_services_response.service}
    assert {
        "runtime.v1.RuntimeService",
        "runtime.v1.ImageService",
        "teachingcri.trace.v1.TraceService",
        "grpc.health.v1.Health",
    } <= names


def test_health_is_serving(client: Client) -> None:
    stub = health_pb2_grpc.HealthStub(client.channel)
    for service in ("", "runtime.v1.RuntimeService", "runtime.v1.ImageService"):
        resp = stub.Check(health_pb2.HealthCheckRequest(service=service))
        assert resp.status == health_pb2.HealthCheckResponse.SERVING


def test_socket_mode_is_0660(server: Server) -> None:
    mode = server.socket.stat().st_mode
    assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o660


def test_every_other_rpc_is_unimplemented_and_named(client: Client) -> None:
    with pytest.raises(grpc.RpcError) as err:
        list(client.runtime.StreamPodSandboxes(api_pb2.StreamPodSandboxesRequest()))
    assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert "StreamPodSandboxes" in err.value.details()
    with pytest.raises(grpc.RpcError) as err:
        list(client.image.StreamImages(api_pb2.StreamImagesRequest()))
    assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert "ImageService/StreamImages" in err.value.details()
    with pytest.raises(grpc.RpcError) as err:  # a server-streaming RPC too
        list(client.runtime.StreamContainers(api_pb2.StreamContainersRequest()))
    assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert "StreamContainers" in err.value.details()


def test_status_conditions_and_verbose_info(client: Client) -> None:
    resp = client.runtime.Status(api_pb2.StatusRequest())
    conditions = {c.type: c for c in resp.status.conditions}
    assert set(conditions) == {"RuntimeReady", "NetworkReady"}
    assert resp.info == {}, "info only when verbose"
    for cond in conditions.values():
        assert cond.status or (cond.reason and cond.message)
    has_cni = any(Path("/etc/cni/net.d").glob("*.conf*"))
    if not has_cni:
        assert not conditions["NetworkReady"].status
        assert conditions["NetworkReady"].reason == "NetworkPluginNotReady"
    verbose = client.runtime.Status(api_pb2.StatusRequest(verbose=True))
    info = {k: json.loads(v) for k, v in verbose.info.items()}  # every value is JSON
    assert {"runtime", "config", "backend", "network", "trace"} <= set(info)
    assert info["backend"]["name"] in ("runc", "unprivileged")
    if info["backend"]["available"]:
        tier = info["backend"]["details"]["tier"]
        assert tier == ("runc" if os.geteuid() == 0 else "rootless-runc")
        assert info["containers"]["backend"] == ("runc" if tier == "runc" else "rootless-runc")
        if tier == "rootless-runc":  # honest about what it does not do
            assert any("not enforced" in c for c in info["backend"]["not_isolated"])
    assert info["trace"]["emitted"] > 0
    assert [h.name for h in verbose.runtime_handlers] == [""]
    # The kubelet admits a pod asking recursiveReadOnly: Enabled only if the handler says so.
    makes_rro = info["backend"]["available"] and recursive_read_only_supported()
    assert verbose.runtime_handlers[0].features.recursive_read_only_mounts == makes_rro


def test_runtime_config_sets_cgroupfs_explicitly(client: Client) -> None:
    resp = client.runtime.RuntimeConfig(api_pb2.RuntimeConfigRequest())
    assert resp.HasField("linux")
    assert resp.linux.cgroup_driver == api_pb2.CGROUPFS


def _update(client: Client, cidr: str) -> None:
    client.runtime.UpdateRuntimeConfig(
        api_pb2.UpdateRuntimeConfigRequest(
            runtime_config=api_pb2.RuntimeConfig(
                network_config=api_pb2.NetworkConfig(pod_cidr=cidr)
            )
        )
    )


def _pod_cidrs(client: Client) -> list[str]:
    info = client.runtime.Status(api_pb2.StatusRequest(verbose=True)).info
    return list(json.loads(info["network"])["pod_cidrs"])


def test_pod_cidr_is_kept_across_restarts_and_bad_ones_refused(short_tmp: Path) -> None:
    srv = start_server(short_tmp / "a")
    try:
        client = srv.client()
        _update(client, "10.88.0.0/16,fd00:10:88::/64")
        with pytest.raises(grpc.RpcError) as err:
            _update(client, "10.88.0.0/40")
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "10.88.0.0/40" in err.value.details()
        _update(client, "")  # unset: nothing changes
        assert _pod_cidrs(client) == ["10.88.0.0/16", "fd00:10:88::/64"]
    finally:
        assert srv.stop() == 0
    again = start_server(short_tmp / "a")
    try:
        assert _pod_cidrs(again.client()) == ["10.88.0.0/16", "fd00:10:88::/64"]
    finally:
        again.stop()


def test_messages_up_to_16_mib_are_accepted(client: Client) -> None:
    big = "v" * (8 * 1024 * 1024)  # above gRPC's 4 MiB default, below the kubelet's 16 MiB
    resp = client.runtime.Version(api_pb2.VersionRequest(version=big))
    assert resp.runtime_name == "teaching-cri"
    with pytest.raises(grpc.RpcError) as err:
        client.runtime.Version(api_pb2.VersionRequest(version="v" * (17 * 1024 * 1024)))
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_rpc_traces_conform_to_their_charts(client: Client, charts: ChartSet) -> None:
    since = time.time_ns()
    client.runtime.Version(api_pb2.VersionRequest())
    client.runtime.Status(api_pb2.StatusRequest(verbose=True))
    client.runtime.RuntimeConfig(api_pb2.RuntimeConfigRequest())
    _update(client, "10.1.0.0/24")
    with pytest.raises(grpc.RpcError):
        _update(client, "nonsense")
    events = client.recent(since_unix_nano=since)
    assert {e.chart for e in events} == {
        "Version",
        "Status",
        "RuntimeConfig",
        "UpdateRuntimeConfig",
    }
    assert_conforms(events, charts)
    errors = [e for e in events if e.kind.value == "error"]
    assert [(e.chart, e.node, e.attributes["code"]) for e in errors] == [
        ("UpdateRuntimeConfig", "validate_pod_cidr", "INVALID_ARGUMENT")
    ]


def test_traceparent_from_the_client_becomes_the_trace_id(client: Client) -> None:
    trace_id = os.urandom(16).hex()
    client.runtime.Version(
        api_pb2.VersionRequest(), metadata=(("traceparent", f"00-{trace_id}-{'1' * 16}-01"),)
    )
    events = client.recent(trace_id=trace_id)
    assert [e.node for e in events] == [
        "version",
        "m_cb_container_version",
        "version_response_to_grpc",
        "version_response",
    ]


def test_sigint_shuts_down_cleanly_too(short_tmp: Path) -> None:
    srv = start_server(short_tmp / "i")
    assert srv.client().runtime.Version(api_pb2.VersionRequest()).runtime_name
    assert srv.stop(signal.SIGINT) == 0
    assert not srv.socket.exists()


def test_a_live_status_trace_drawn_as_svg_and_text(client: Client, charts: ChartSet) -> None:
    since = time.time_ns()
    client.runtime.Status(api_pb2.StatusRequest(verbose=True))
    events = client.recent(charts=["Status"], since_unix_nano=since)
    assert_conforms(events, charts)
    visited = {e.node for e in events}
    svg = ET.fromstring(render_svg(charts["Status"], events))
    highlighted = set()
    for g in svg.iter(f"{SVG}g"):
        title = g.find(f"{SVG}title")
        shape = next((c for c in g if c.tag in (f"{SVG}polygon", f"{SVG}path")), None)
        is_node = g.get("class") == "node" and title is not None and shape is not None
        if is_node and (shape.get("fill") or "").lower() == VISITED.lower():  # type: ignore[union-attr]
            highlighted.add(title.text)  # type: ignore[union-attr]
    assert highlighted == visited
    text = render_text(charts["Status"], events)
    path = text.splitlines()[-1].removeprefix("path: ").split(" → ")
    labels = [
        charts["Status"].nodes[e.node].label + (f" [{e.label}]" if e.label else "") for e in events
    ]
    assert path == labels


def test_sigterm_shuts_down_cleanly(short_tmp: Path) -> None:
    srv = start_server(short_tmp / "b", "--trace-file", str(short_tmp / "b" / "trace.jsonl"))
    client = srv.client()
    client.runtime.Version(api_pb2.VersionRequest())
    follower = client.trace.Follow(trace_pb2.FollowRequest())
    time.sleep(0.5)  # let the subscription reach the server before it stops
    assert srv.stop() == 0
    assert not srv.socket.exists(), "the socket is removed on shutdown"
    assert not srv.socket.with_name("cri.sock.lock").exists()
    assert list(follower) == []
    assert follower.code() == grpc.StatusCode.OK, "the server ended the Follow stream itself"
    lines = (short_tmp / "b" / "trace.jsonl").read_text().splitlines()
    assert any(
        json.loads(x)["chart"] == "Version" and json.loads(x)["kind"] == "end" for x in lines
    ), "traces were flushed to the JSONL file"
    assert "stopped" in srv.output()


def test_a_stale_socket_is_replaced(short_tmp: Path) -> None:
    base = short_tmp / "c"
    base.mkdir()
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(base / "cri.sock"))
    stale.close()  # bound but nobody listens: a server that died
    srv = start_server(base)
    try:
        assert srv.client().runtime.Version(api_pb2.VersionRequest()).runtime_name
    finally:
        srv.stop()


def test_a_live_socket_makes_a_second_server_refuse(server: Server) -> None:
    proc = subprocess.run(
        serve_command(
            "--socket",
            str(server.socket),
            "--root",
            str(server.base / "r2"),
            "--state",
            str(server.base / "s2"),
        ),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode != 0
    assert "another server is already listening" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not (server.base / "r2").exists(), "nothing half-created"
    with connect(server.socket) as c:  # and the first server is unharmed
        assert c.runtime.Version(api_pb2.VersionRequest()).runtime_name == "teaching-cri"


def test_a_taken_streaming_address_is_one_line_and_a_failed_start(short_tmp: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = subprocess.run(
            serve_command(
                "--socket",
                str(short_tmp / "cri.sock"),
                "--root",
                str(short_tmp / "root"),
                "--state",
                str(short_tmp / "state"),
                "--stream-address",
                f"127.0.0.1:{port}",
            ),
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert proc.returncode != 0
    [line] = proc.stderr.strip().splitlines()
    assert f"127.0.0.1:{port}" in line and "already in use" in line
    assert "Traceback" not in proc.stderr
    assert not (short_tmp / "cri.sock").exists()
    assert not (short_tmp / "cri.sock.lock").exists()


def test_trace_off_emits_nothing_but_serves(short_tmp: Path) -> None:
    srv = start_server(short_tmp / "d", "--trace", "off")
    try:
        client = srv.client()
        since = time.time_ns()
        assert client.runtime.Version(api_pb2.VersionRequest()).runtime_name == "teaching-cri"
        assert client.recent(since_unix_nano=since) == []
        assert client.trace.Stats(trace_pb2.StatsRequest()).emitted == 0
    finally:
        srv.stop()


def test_servers_started_together_on_one_socket_leave_exactly_one(short_tmp: Path) -> None:
    sock = short_tmp / "one.sock"
    procs = [
        subprocess.Popen(
            serve_command(
                "--socket",
                str(sock),
                "--root",
                str(short_tmp / f"r{i}"),
                "--state",
                str(short_tmp / f"s{i}"),
            ),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(3)
    ]
    try:
        losers = []
        for p in procs:
            try:
                p.wait(timeout=8)
                losers.append(p)
            except subprocess.TimeoutExpired:
                pass
        winners = [p for p in procs if p.poll() is None]
        assert len(winners) == 1, "exactly one server may own the socket"
        for p in losers:
            assert p.returncode != 0
            assert "another server is already listening" in (p.stderr.read() if p.stderr else "")
        with connect(sock) as c:
            assert c.runtime.Version(api_pb2.VersionRequest()).runtime_name == "teaching-cri"
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
                p.wait(20)
    assert not sock.exists()


def test_a_huge_bad_pod_cidr_is_invalid_argument_and_traces_stay_usable(client: Client) -> None:
    with pytest.raises(grpc.RpcError) as err:
        _update(client, "1" * 200_000)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert len(err.value.details()) < 4096
    assert client.recent()  # the ring buffer still fits in a response


@pytest.mark.parametrize(
    ("cidr", "words"),
    [
        ("10.0.0.0/8,10.1.0.0/16", "one IPv4, one IPv6"),
        ("10.0.0.0/8,fd00::/64,10.2.0.0/16", "at most two"),
        ("10.0.0.5/8", "host bits"),
        ("10.0.0.5", "no prefix length"),
    ],
)
def test_pod_cidr_validation(client: Client, cidr: str, words: str) -> None:
    with pytest.raises(grpc.RpcError) as err:
        _update(client, cidr)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert words in err.value.details()
    assert _pod_cidrs(client) == []


def test_a_failed_write_changes_nothing(server: Server) -> None:
    client = server.client()
    _update(client, "10.88.0.0/16")
    server.root.rename(server.base / "root.moved")
    server.root.write_text("not a directory")  # the next write cannot succeed
    with pytest.raises(grpc.RpcError) as err:
        _update(client, "10.99.0.0/16")
    assert err.value.code() == grpc.StatusCode.INTERNAL
    assert _pod_cidrs(client) == ["10.88.0.0/16"], "memory still agrees with the disk"


def test_runtime_not_ready_when_the_backend_cannot_run(short_tmp: Path) -> None:
    env = {**os.environ, "PATH": "/nonexistent"}  # no runc to be found
    srv = start_server(short_tmp / "n", "--runtime", "runc", env=env)
    try:
        resp = srv.client().runtime.Status(api_pb2.StatusRequest())
        ready = next(c for c in resp.status.conditions if c.type == "RuntimeReady")
        assert not ready.status
        assert ready.reason in ("RuntimeBinaryMissing", "RuntimeNeedsRoot")
        assert "runc" in ready.message
    finally:
        srv.stop()


def test_the_plain_process_tier_says_it_isolates_nothing(short_tmp: Path) -> None:
    srv = start_server(short_tmp / "plain", "--runtime", "processes")
    try:
        info = srv.client().runtime.Status(api_pb2.StatusRequest(verbose=True)).info
        backend = json.loads(info["backend"])
        assert backend["available"] and backend["details"]["tier"] == "processes"
        assert any("no isolation" in c for c in backend["not_isolated"])
        assert json.loads(info["containers"])["backend"] == "processes"
    finally:
        srv.stop()
    assert "not isolated: no isolation at all" in srv.output()
