"""Golden chart paths: the way each main scenario walks through its charts.

Every RPC and streaming callback is driven against a live server, success and
the error branches a kubelet meets, and the path of its spans (chart nodes and
branch labels, no ids, no times) is compared with a small text file under
``tests/golden/<chart>/<scenario>.txt``. A changed path fails with the two
paths side by side. After a deliberate change, record the new ones with::

    TEACHING_CRI_UPDATE_GOLDEN=1 scripts/test tests/test_golden_paths.py

once as root and once as a normal user: the tier is the user's. Root runs the
runc tier (pods with CNI); a normal user the unprivileged one (rootless runc,
loopback-only pods), whose paths differ in places: the runc tier's path is
``<scenario>.txt``, and where the unprivileged tier's differs it has
``<scenario>.unprivileged.txt`` beside it (recording removes one that no
longer differs).

Paths are compared per span: a span's own events are in the order it emitted
them, and sibling spans are sorted by their text, identical ones written once,
so neither two callbacks running at once nor a callback running once more
(a socket writable twice for the same output) can change a golden.
"""

from __future__ import annotations

import asyncio
import contextlib
import difflib
import json
import os
import random
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from teaching_cri.api import admin_pb2, api_pb2
from teaching_cri.client import Client
from teaching_cri.image.layer import file_entry
from teaching_cri.image.layout import build_image
from teaching_cri.manager.cni import default_conflist
from teaching_cri.runtime.backends import user_namespaces_allowed
from teaching_cri.trace.charts import ChartSet
from teaching_cri.trace.conformance import ENV_UPDATE_GOLDEN, spans
from teaching_cri.trace.events import EventKind, TraceEvent
from teaching_cri.trace.sinks import read_jsonl

import spdy_client as spdy
from conftest import Server, start_server
from cri_node import unavailable
from registry import Registry, RegistryUnavailable, push_busybox, run_registry
from test_streaming import V4, free_port, http_server, session, status_of, stdout_of, ws_url

GOLDEN = Path(__file__).parent / "golden"
IMAGE = "teaching-cri.local/busybox:latest"
PRIMARY_TIER = "runc"
STREAMING_CHARTS = ("Websocket", "WebsocketStream", "SpdyStream", "PortForward")


# --- the path of a scenario, as text ------------------------------------------------


def span_tree_lines(events: Sequence[TraceEvent]) -> list[str]:
    """The spans of ``events``, each as a header line (its chart) and one line per
    event, children indented under their parent.

    Sibling spans are sorted by chart and then by their text, not by time, and a
    sibling identical to another is written once: how many times a callback ran
    (a socket becoming writable once or three times for the same output) and
    which of two concurrent callbacks ran first are timing, not path."""
    grouped = spans(events)
    children: dict[str, list[list[TraceEvent]]] = {}
    roots: list[list[TraceEvent]] = []
    for span_events in grouped.values():
        parent = span_events[0].parent_span_id
        (children.setdefault(parent, []) if parent in grouped else roots).append(span_events)

    def block(span_events: list[TraceEvent]) -> list[str]:
        lines = [span_events[0].chart]
        for e in span_events:
            label = f" [{e.label}]" if e.label else ""
            code = e.attributes.get("code", "") if e.kind is EventKind.ERROR else ""
            lines.append(f"  {e.kind.value} {e.node}{label}" + (f" ({code})" if code else ""))
        for child in siblings(children.get(span_events[0].span_id, [])):
            lines += ["    " + line for line in child]
        return lines

    def siblings(group: list[list[TraceEvent]]) -> list[list[str]]:
        unique = {tuple(block(span_events)) for span_events in group}
        return [list(b) for b in sorted(unique)]

    return [line for b in siblings(roots) for line in b]


def side_by_side(expected: list[str], actual: list[str], width: int = 58) -> str:
    """The two paths in two columns, ``|`` where lines differ, ``<``/``>`` where
    one side has lines the other lacks."""

    def cell(text: str) -> str:
        return text if len(text) <= width else text[: width - 1] + "…"

    rows = [f"{'golden':<{width}}   this run", f"{'-' * width}   {'-' * width}"]
    matcher = difflib.SequenceMatcher(a=expected, b=actual, autojunk=False)
    for op, a1, a2, b1, b2 in matcher.get_opcodes():
        left, right = expected[a1:a2], actual[b1:b2]
        mark = {"equal": " ", "replace": "|", "delete": "<", "insert": ">"}[op]
        for i in range(max(len(left), len(right))):
            lt = left[i] if i < len(left) else ""
            rt = right[i] if i < len(right) else ""
            rows.append(f"{cell(lt):<{width}} {mark} {cell(rt)}")
    return "\n".join(rows)


def golden_file(chart: str, scenario: str, tier: str) -> Path:
    """The tier's own golden if it has one, else the shared (runc tier's) one."""
    own = GOLDEN / chart / f"{scenario}.{tier}.txt"
    return own if tier != PRIMARY_TIER and own.exists() else GOLDEN / chart / f"{scenario}.txt"


def record(chart: str, scenario: str, tier: str, actual: list[str]) -> None:
    text = "\n".join(actual) + "\n"
    shared = GOLDEN / chart / f"{scenario}.txt"
    own = GOLDEN / chart / f"{scenario}.{tier}.txt"
    shared.parent.mkdir(parents=True, exist_ok=True)
    if tier == PRIMARY_TIER:
        shared.write_text(text)
        return
    # Another tier keeps a file of its own only where its path differs.
    if shared.exists() and shared.read_text() == text:
        own.unlink(missing_ok=True)
    else:
        own.write_text(text)


def compare(chart: str, scenario: str, tier: str, events: Sequence[TraceEvent]) -> str:
    """'' if the path is the golden one (or was just recorded), else why not."""
    actual = span_tree_lines(events)
    if not actual:
        return f"{chart}/{scenario}: no trace events at all"
    if os.environ.get(ENV_UPDATE_GOLDEN) == "1":
        record(chart, scenario, tier, actual)
        return ""
    path = golden_file(chart, scenario, tier)
    if not path.exists():
        return (
            f"{chart}/{scenario} ({tier} tier): no golden path {path.relative_to(GOLDEN.parent)}; "
            f"record it with {ENV_UPDATE_GOLDEN}=1\n" + "\n".join(actual)
        )
    expected = path.read_text().splitlines()
    if expected == actual:
        return ""
    return (
        f"{chart}/{scenario} ({tier} tier) took a different path than "
        f"{path.relative_to(GOLDEN.parent)}:\n{side_by_side(expected, actual)}\n"
        f"(if the change is deliberate: {ENV_UPDATE_GOLDEN}=1 scripts/test "
        "tests/test_golden_paths.py)"
    )


# --- a live server per tier -----------------------------------------------------------


def _tier_unavailable(tier: str) -> str:
    if not Path("/bin/busybox").exists():
        return "busybox-static is needed for the local image"
    if tier == "runc":
        return unavailable()
    if shutil.which("runc") is None or not user_namespaces_allowed():
        return "rootless runc needs runc and unprivileged user namespaces"
    return ""


@dataclass
class World:
    """One server of one tier and what the scenarios share."""

    tier: str
    server: Server
    client: Client
    base: Path
    charts: ChartSet
    mismatches: list[str] = field(default_factory=list)
    counter: int = 0

    def call(
        self,
        chart: str,
        scenario: str,
        method: Callable[..., Any],
        request: Any,
        *,
        code: grpc.StatusCode | None = None,
    ) -> Any:
        """Make one RPC under a trace id of its own and compare its path; with
        ``code``, the call must fail with that status."""
        trace_id = f"{random.getrandbits(128):032x}"
        metadata = [("traceparent", f"00-{trace_id}-{random.getrandbits(64):016x}-01")]
        response = None
        try:
            response = method(request, metadata=metadata, timeout=120)
        except grpc.RpcError as exc:
            if code is None or exc.code() != code:
                raise
        else:
            assert code is None, f"{chart}/{scenario}: expected {code.name}, the call succeeded"
        self.check(chart, scenario, self.settled(trace_id=trace_id))
        return response

    def settled(
        self, *, trace_id: str = "", since: int = 0, charts: Sequence[str] = ()
    ) -> list[TraceEvent]:
        """The events asked for once every span among them has ended and no new
        one has appeared for a moment (streaming callbacks finish after the client)."""
        deadline = time.monotonic() + 15
        last: list[TraceEvent] = []
        while True:
            events = self.client.recent(trace_id=trace_id, since_unix_nano=since, charts=charts)
            ended = all(
                es[-1].kind in (EventKind.END, EventKind.ERROR) for es in spans(events).values()
            )
            if events and ended and len(events) == len(last):
                return events
            if time.monotonic() > deadline:
                return events
            last = events
            time.sleep(0.3)

    def check(self, chart: str, scenario: str, events: Sequence[TraceEvent]) -> None:
        problem = compare(chart, scenario, self.tier, events)
        if problem:
            self.mismatches.append(problem)

    def verdict(self) -> None:
        found, self.mismatches = self.mismatches, []
        assert not found, "\n\n".join(found)

    def pod(self, name: str) -> tuple[str, api_pb2.PodSandboxConfig]:
        self.counter += 1
        config = api_pb2.PodSandboxConfig(
            metadata=api_pb2.PodSandboxMetadata(
                name=name, namespace="golden", uid=f"uid-{name}-{self.counter}"
            ),
            hostname=name,
            log_directory=str(self.base / "logs" / f"{name}-{self.counter}"),
        )
        sandbox_id = self.client.runtime.RunPodSandbox(
            api_pb2.RunPodSandboxRequest(config=config)
        ).pod_sandbox_id
        return sandbox_id, config

    def container_config(self, name: str, *command: str, **kw: Any) -> api_pb2.ContainerConfig:
        return api_pb2.ContainerConfig(
            metadata=api_pb2.ContainerMetadata(name=name),
            image=api_pb2.ImageSpec(image=IMAGE),
            command=list(command),
            log_path=f"{name}.log",
            linux=api_pb2.LinuxContainerConfig(
                security_context=api_pb2.LinuxContainerSecurityContext(
                    namespace_options=api_pb2.NamespaceOption(pid=api_pb2.CONTAINER)
                )
            ),
            **kw,
        )

    def running(self, name: str, *command: str, **kw: Any) -> tuple[str, str]:
        """A started container in a pod of its own: (sandbox id, container id)."""
        sandbox_id, pod = self.pod(f"p-{name}")
        cid = self.client.runtime.CreateContainer(
            api_pb2.CreateContainerRequest(
                pod_sandbox_id=sandbox_id,
                config=self.container_config(name, *command, **kw),
                sandbox_config=pod,
            )
        ).container_id
        self.client.runtime.StartContainer(api_pb2.StartContainerRequest(container_id=cid))
        return sandbox_id, cid

    def streamed(self, chart: str, scenario: str, since: int) -> None:
        self.check(chart, scenario, self.settled(since=since, charts=STREAMING_CHARTS))


TIER = "runc" if os.geteuid() == 0 else "unprivileged"


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    tier = TIER
    why = _tier_unavailable(tier)
    if why:
        pytest.skip(f"the {tier} tier cannot run here: {why}")
    base = Path(tempfile.mkdtemp(prefix="tcri-g-"))
    bridge = ""
    if tier == "runc":
        bridge = f"tcri-g{os.getpid() % 10000}"
        conf = base / "net.d"
        conf.mkdir()
        doc = default_conflist(f"10.237.{os.getpid() % 200}.0/24", bridge, str(base / "ipam"))
        (conf / "10-golden.conflist").write_text(json.dumps(doc))
        server = start_server(base / "srv", "--cni-conf-dir", str(conf))
    else:
        server = start_server(base / "srv", "--runtime", "unprivileged")
    client = server.client()
    client.admin.BuildLocalImage(admin_pb2.BuildLocalImageRequest(name=IMAGE), timeout=300)
    w = World(tier, server, client, base, ChartSet.load())
    try:
        yield w
    finally:
        c = server.client()
        for item in c.runtime.ListPodSandbox(api_pb2.ListPodSandboxRequest()).items:
            c.runtime.StopPodSandbox(api_pb2.StopPodSandboxRequest(pod_sandbox_id=item.id))
            c.runtime.RemovePodSandbox(api_pb2.RemovePodSandboxRequest(pod_sandbox_id=item.id))
        server.stop()
        if bridge:
            subprocess.run(["ip", "link", "del", bridge], capture_output=True)
        shutil.rmtree(base, ignore_errors=True)


# --- the scenarios ----------------------------------------------------------------------


def test_runtime_rpcs(world: World) -> None:
    rt = world.client.runtime
    version = world.call("Version", "success", rt.Version, api_pb2.VersionRequest())
    assert version.runtime_name == "teaching-cri"
    status = world.call("Status", "success", rt.Status, api_pb2.StatusRequest(verbose=True))
    assert {c.type for c in status.status.conditions} >= {"RuntimeReady", "NetworkReady"}
    config = world.call(
        "RuntimeConfig", "success", rt.RuntimeConfig, api_pb2.RuntimeConfigRequest()
    )
    assert config.linux.cgroup_driver in (api_pb2.SYSTEMD, api_pb2.CGROUPFS)
    world.call(
        "UpdateRuntimeConfig",
        "success",
        rt.UpdateRuntimeConfig,
        api_pb2.UpdateRuntimeConfigRequest(
            runtime_config=api_pb2.RuntimeConfig(
                network_config=api_pb2.NetworkConfig(pod_cidr="10.244.0.0/24")
            )
        ),
    )
    world.call(
        "UpdateRuntimeConfig",
        "bad_pod_cidr",
        rt.UpdateRuntimeConfig,
        api_pb2.UpdateRuntimeConfigRequest(
            runtime_config=api_pb2.RuntimeConfig(
                network_config=api_pb2.NetworkConfig(pod_cidr="10.244.0.0/40")
            )
        ),
        code=grpc.StatusCode.INVALID_ARGUMENT,
    )
    world.verdict()


def test_image_rpcs(world: World) -> None:
    image, admin = world.client.image, world.client.admin
    built = world.call(
        "BuildLocalImage",
        "success",
        admin.BuildLocalImage,
        admin_pb2.BuildLocalImageRequest(name="teaching-cri.local/golden:1"),
    )
    assert "teaching-cri.local/golden:1" in built.repo_tags
    spec = api_pb2.ImageSpec(image="teaching-cri.local/golden:1")
    found = world.call(
        "ImageStatus", "present", image.ImageStatus, api_pb2.ImageStatusRequest(image=spec)
    )
    assert found.image.id == built.image_ref
    listed = world.call("ListImages", "success", image.ListImages, api_pb2.ListImagesRequest())
    assert built.image_ref in {i.id for i in listed.images}
    fs = world.call("ImageFsInfo", "success", image.ImageFsInfo, api_pb2.ImageFsInfoRequest())
    assert fs.image_filesystems and fs.image_filesystems[0].used_bytes.value > 0
    world.call(
        "PullImage",
        "unreachable_registry",
        image.PullImage,
        api_pb2.PullImageRequest(image=api_pb2.ImageSpec(image="127.0.0.1:9/none:1")),
        code=grpc.StatusCode.UNAVAILABLE,
    )
    world.verdict()


def test_import_image(world: World, tmp_path_factory: pytest.TempPathFactory) -> None:
    base = tmp_path_factory.mktemp("golden-import")
    layout = base / "layout"
    info = build_image(
        layout,
        [[file_entry("hello.txt", b"hello from an archive\n")]],
        config={"Cmd": ["/bin/cat", "/hello.txt"]},
        ref_name="v1",
    )
    archive = base / "image.tar"
    subprocess.run(["tar", "-C", str(layout), "-cf", str(archive), "."], check=True)
    os.chmod(base, 0o755)
    admin = world.client.admin
    resp = world.call(
        "ImportImage",
        "oci_archive",
        admin.ImportImage,
        admin_pb2.ImportImageRequest(path=str(archive), name="example.com/golden:v1"),
    )
    assert resp.image_ref == info.config_digest
    # The imported image has one name only: removing it leaves the busybox the
    # other scenarios run (one image answers to all its names).
    spec = api_pb2.ImageSpec(image="example.com/golden:v1")
    image = world.client.image
    world.call("RemoveImage", "success", image.RemoveImage, api_pb2.RemoveImageRequest(image=spec))
    gone = world.call(
        "ImageStatus", "absent", image.ImageStatus, api_pb2.ImageStatusRequest(image=spec)
    )
    assert not gone.HasField("image"), "an image that is not there has no status, and no error"
    world.call("RemoveImage", "absent", image.RemoveImage, api_pb2.RemoveImageRequest(image=spec))
    world.call(
        "ImportImage",
        "missing_file",
        admin.ImportImage,
        admin_pb2.ImportImageRequest(path=str(base / "nothing.tar")),
        code=grpc.StatusCode.NOT_FOUND,
    )
    world.verdict()


@pytest.fixture(scope="module")
def registry() -> Iterator[Registry]:
    base = Path(tempfile.mkdtemp(prefix="tcri-greg-"))
    try:
        with run_registry(base) as reg:
            yield reg
    except RegistryUnavailable as exc:
        pytest.skip(str(exc))
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_pull_image(world: World, registry: Registry) -> None:
    info = push_busybox(registry, "golden/busybox", "1.0")
    name = f"{registry.host}/golden/busybox:1.0"
    image = world.client.image
    pulled = world.call(
        "PullImage",
        "success",
        image.PullImage,
        api_pb2.PullImageRequest(image=api_pb2.ImageSpec(image=name)),
    )
    assert pulled.image_ref == info.config_digest
    world.call(
        "PullImage",
        "manifest_unknown",
        image.PullImage,
        api_pb2.PullImageRequest(image=api_pb2.ImageSpec(image=f"{registry.host}/golden/no:1")),
        code=grpc.StatusCode.NOT_FOUND,
    )
    world.verdict()


def test_pod_lifecycle(world: World) -> None:
    rt = world.client.runtime
    config = api_pb2.PodSandboxConfig(
        metadata=api_pb2.PodSandboxMetadata(name="life", namespace="golden", uid="uid-life"),
        hostname="life",
        log_directory=str(world.base / "logs" / "life"),
    )
    run = world.call(
        "RunPodSandbox", "success", rt.RunPodSandbox, api_pb2.RunPodSandboxRequest(config=config)
    )
    sid = run.pod_sandbox_id
    status = world.call(
        "PodSandboxStatus",
        "ready",
        rt.PodSandboxStatus,
        api_pb2.PodSandboxStatusRequest(pod_sandbox_id=sid, verbose=True),
    )
    assert status.status.state == api_pb2.SANDBOX_READY
    listed = world.call(
        "ListPodSandbox", "success", rt.ListPodSandbox, api_pb2.ListPodSandboxRequest()
    )
    assert sid in {p.id for p in listed.items}
    stats = world.call(
        "PodSandboxStats",
        "success",
        rt.PodSandboxStats,
        api_pb2.PodSandboxStatsRequest(pod_sandbox_id=sid),
    )
    assert stats.stats.attributes.id == sid
    all_stats = world.call(
        "ListPodSandboxStats",
        "success",
        rt.ListPodSandboxStats,
        api_pb2.ListPodSandboxStatsRequest(),
    )
    assert sid in {s.attributes.id for s in all_stats.stats}
    world.call(
        "UpdatePodSandboxResources",
        "success",
        rt.UpdatePodSandboxResources,
        api_pb2.UpdatePodSandboxResourcesRequest(
            pod_sandbox_id=sid,
            resources=api_pb2.LinuxContainerResources(
                cpu_shares=512, memory_limit_in_bytes=1 << 28
            ),
        ),
    )
    world.call(
        "StopPodSandbox",
        "success",
        rt.StopPodSandbox,
        api_pb2.StopPodSandboxRequest(pod_sandbox_id=sid),
    )
    world.call(
        "RemovePodSandbox",
        "success",
        rt.RemovePodSandbox,
        api_pb2.RemovePodSandboxRequest(pod_sandbox_id=sid),
    )
    # What the kubelet meets when it retries: a pod already gone.
    world.call(
        "PodSandboxStatus",
        "not_found",
        rt.PodSandboxStatus,
        api_pb2.PodSandboxStatusRequest(pod_sandbox_id=sid),
        code=grpc.StatusCode.NOT_FOUND,
    )
    world.call(
        "StopPodSandbox",
        "gone",
        rt.StopPodSandbox,
        api_pb2.StopPodSandboxRequest(pod_sandbox_id=sid),
    )
    world.call(
        "RemovePodSandbox",
        "gone",
        rt.RemovePodSandbox,
        api_pb2.RemovePodSandboxRequest(pod_sandbox_id=sid),
    )
    world.call(
        "RunPodSandbox",
        "no_metadata",
        rt.RunPodSandbox,
        api_pb2.RunPodSandboxRequest(config=api_pb2.PodSandboxConfig()),
        code=grpc.StatusCode.INVALID_ARGUMENT,
    )
    world.verdict()


def test_container_lifecycle(world: World) -> None:
    rt = world.client.runtime
    sid, pod = world.pod("box")
    config = world.container_config("box", "sleep", "1000")
    created = world.call(
        "CreateContainer",
        "success",
        rt.CreateContainer,
        api_pb2.CreateContainerRequest(pod_sandbox_id=sid, config=config, sandbox_config=pod),
    )
    cid = created.container_id
    world.call(
        "ExecSync",
        "not_running",
        rt.ExecSync,
        api_pb2.ExecSyncRequest(container_id=cid, cmd=["true"], timeout=10),
        code=grpc.StatusCode.FAILED_PRECONDITION,
    )
    world.call(
        "StartContainer",
        "success",
        rt.StartContainer,
        api_pb2.StartContainerRequest(container_id=cid),
    )
    status = world.call(
        "ContainerStatus",
        "running",
        rt.ContainerStatus,
        api_pb2.ContainerStatusRequest(container_id=cid, verbose=True),
    )
    assert status.status.state == api_pb2.CONTAINER_RUNNING
    listed = world.call(
        "ListContainers", "success", rt.ListContainers, api_pb2.ListContainersRequest()
    )
    assert cid in {c.id for c in listed.containers}
    stats = world.call(
        "ContainerStats",
        "success",
        rt.ContainerStats,
        api_pb2.ContainerStatsRequest(container_id=cid),
    )
    assert stats.stats.attributes.id == cid
    world.call(
        "ListContainerStats", "success", rt.ListContainerStats, api_pb2.ListContainerStatsRequest()
    )
    world.call(
        "UpdateContainerResources",
        "success",
        rt.UpdateContainerResources,
        api_pb2.UpdateContainerResourcesRequest(
            container_id=cid, linux=api_pb2.LinuxContainerResources(cpu_shares=256)
        ),
    )
    world.call(
        "ReopenContainerLog",
        "success",
        rt.ReopenContainerLog,
        api_pb2.ReopenContainerLogRequest(container_id=cid),
    )
    out = world.call(
        "ExecSync",
        "success",
        rt.ExecSync,
        api_pb2.ExecSyncRequest(container_id=cid, cmd=["echo", "-n", "hi"], timeout=10),
    )
    assert (out.exit_code, out.stdout) == (0, b"hi")
    out = world.call(
        "ExecSync",
        "exit_code",
        rt.ExecSync,
        api_pb2.ExecSyncRequest(container_id=cid, cmd=["sh", "-c", "exit 3"], timeout=10),
    )
    assert out.exit_code == 3
    for chart, request in (
        ("Exec", api_pb2.ExecRequest(container_id=cid, cmd=["true"], stdout=True)),
        ("Attach", api_pb2.AttachRequest(container_id=cid, stdout=True)),
    ):
        url = world.call(chart, "url", getattr(rt, chart), request).url
        assert url.startswith("http://127.0.0.1:")
    url = world.call(
        "PortForward",
        "url",
        rt.PortForward,
        api_pb2.PortForwardRequest(pod_sandbox_id=sid, port=[80]),
    ).url
    assert "/cri/portforward/" in url
    world.call(
        "StopContainer",
        "success",
        rt.StopContainer,
        api_pb2.StopContainerRequest(container_id=cid, timeout=1),
    )
    world.call(
        "ReopenContainerLog",
        "not_running",
        rt.ReopenContainerLog,
        api_pb2.ReopenContainerLogRequest(container_id=cid),
        code=grpc.StatusCode.FAILED_PRECONDITION,
    )
    exited_only = world.call(
        "ListContainers",
        "filter_exited",
        rt.ListContainers,
        api_pb2.ListContainersRequest(
            filter=api_pb2.ContainerFilter(
                state=api_pb2.ContainerStateValue(state=api_pb2.CONTAINER_EXITED)
            )
        ),
    )
    assert cid in {c.id for c in exited_only.containers}
    exited = world.call(
        "ContainerStatus",
        "exited",
        rt.ContainerStatus,
        api_pb2.ContainerStatusRequest(container_id=cid),
    )
    assert exited.status.state == api_pb2.CONTAINER_EXITED
    world.call(
        "Exec",
        "not_running",
        rt.Exec,
        api_pb2.ExecRequest(container_id=cid, cmd=["true"], stdout=True),
        code=grpc.StatusCode.FAILED_PRECONDITION,
    )
    world.call(
        "RemoveContainer",
        "success",
        rt.RemoveContainer,
        api_pb2.RemoveContainerRequest(container_id=cid),
    )
    # The same calls once the container is gone.
    world.call(
        "ContainerStatus",
        "not_found",
        rt.ContainerStatus,
        api_pb2.ContainerStatusRequest(container_id=cid),
        code=grpc.StatusCode.NOT_FOUND,
    )
    world.call(
        "StartContainer",
        "not_found",
        rt.StartContainer,
        api_pb2.StartContainerRequest(container_id=cid),
        code=grpc.StatusCode.NOT_FOUND,
    )
    world.call(
        "RemoveContainer",
        "gone",
        rt.RemoveContainer,
        api_pb2.RemoveContainerRequest(container_id=cid),
    )
    world.call(
        "PortForward",
        "no_such_pod",
        rt.PortForward,
        api_pb2.PortForwardRequest(pod_sandbox_id="0" * 64, port=[80]),
        code=grpc.StatusCode.NOT_FOUND,
    )
    missing = world.container_config("nope", "true")
    missing.image.image = "teaching-cri.local/not-there:1"
    world.call(
        "CreateContainer",
        "image_not_found",
        rt.CreateContainer,
        api_pb2.CreateContainerRequest(pod_sandbox_id=sid, config=missing, sandbox_config=pod),
        code=grpc.StatusCode.NOT_FOUND,
    )
    world.verdict()


def test_error_branches(world: World) -> None:
    """What a kubelet or crictl meets when it asks wrongly or too late: unknown
    ids, malformed requests, a second start, a name taken, a pod not ready."""
    rt, image, admin = world.client.runtime, world.client.image, world.client.admin
    nobody = "0" * 64
    NF, BAD, PRE = (
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    for chart, method, request in (
        ("Attach", rt.Attach, api_pb2.AttachRequest(container_id=nobody, stdout=True)),
        ("Exec", rt.Exec, api_pb2.ExecRequest(container_id=nobody, cmd=["true"], stdout=True)),
        ("ExecSync", rt.ExecSync, api_pb2.ExecSyncRequest(container_id=nobody, cmd=["true"])),
        ("ContainerStats", rt.ContainerStats, api_pb2.ContainerStatsRequest(container_id=nobody)),
        (
            "ReopenContainerLog",
            rt.ReopenContainerLog,
            api_pb2.ReopenContainerLogRequest(container_id=nobody),
        ),
        (
            "UpdateContainerResources",
            rt.UpdateContainerResources,
            api_pb2.UpdateContainerResourcesRequest(
                container_id=nobody, linux=api_pb2.LinuxContainerResources(cpu_shares=2)
            ),
        ),
        (
            "PodSandboxStats",
            rt.PodSandboxStats,
            api_pb2.PodSandboxStatsRequest(pod_sandbox_id=nobody),
        ),
        (
            "UpdatePodSandboxResources",
            rt.UpdatePodSandboxResources,
            api_pb2.UpdatePodSandboxResourcesRequest(pod_sandbox_id=nobody),
        ),
    ):
        world.call(chart, "not_found", method, request, code=NF)

    world.call(
        "ImageStatus",
        "no_image_named",
        image.ImageStatus,
        api_pb2.ImageStatusRequest(image=api_pb2.ImageSpec(image="")),
        code=BAD,
    )
    world.call(
        "PullImage",
        "bad_reference",
        image.PullImage,
        api_pb2.PullImageRequest(image=api_pb2.ImageSpec(image="UPPER/Case:ref")),
        code=BAD,
    )
    world.call(
        "BuildLocalImage",
        "bad_name",
        admin.BuildLocalImage,
        admin_pb2.BuildLocalImageRequest(name="UPPER/Case"),
        code=BAD,
    )

    sid, pod = world.pod("errs")
    _sid, cid = world.running("errs-run", "sleep", "1000")
    world.call(
        "Attach",
        "no_stream_asked",
        rt.Attach,
        api_pb2.AttachRequest(container_id=cid),
        code=BAD,
    )
    world.call(
        "ExecSync",
        "no_command",
        rt.ExecSync,
        api_pb2.ExecSyncRequest(container_id=cid, cmd=[]),
        code=BAD,
    )
    world.call(
        "ExecSync",
        "timed_out",
        rt.ExecSync,
        api_pb2.ExecSyncRequest(container_id=cid, cmd=["sleep", "10"], timeout=1),
        code=grpc.StatusCode.DEADLINE_EXCEEDED,
    )
    world.call(
        "StartContainer",
        "started_already",
        rt.StartContainer,
        api_pb2.StartContainerRequest(container_id=cid),
        code=PRE,
    )
    config = world.container_config("taken", "sleep", "1000")
    create = api_pb2.CreateContainerRequest(pod_sandbox_id=sid, config=config, sandbox_config=pod)
    rt.CreateContainer(create)
    world.call(
        "CreateContainer",
        "name_taken",
        rt.CreateContainer,
        create,
        code=grpc.StatusCode.ALREADY_EXISTS,
    )
    world.call(
        "CreateContainer",
        "no_such_pod",
        rt.CreateContainer,
        api_pb2.CreateContainerRequest(pod_sandbox_id=nobody, config=config, sandbox_config=pod),
        code=NF,
    )
    relative = world.container_config(
        "relmount", "true", mounts=[api_pb2.Mount(container_path="/x", host_path="rel/dir")]
    )
    world.call(
        "CreateContainer",
        "relative_host_path",
        rt.CreateContainer,
        api_pb2.CreateContainerRequest(pod_sandbox_id=sid, config=relative, sandbox_config=pod),
        code=BAD,
    )
    rt.StopPodSandbox(api_pb2.StopPodSandboxRequest(pod_sandbox_id=sid))
    late = world.container_config("late", "true")
    world.call(
        "CreateContainer",
        "pod_not_ready",
        rt.CreateContainer,
        api_pb2.CreateContainerRequest(pod_sandbox_id=sid, config=late, sandbox_config=pod),
        code=PRE,
    )
    world.verdict()


def test_container_events(world: World) -> None:
    """GetContainerEvents is a stream: it begins, delivers, and ends when the
    kubelet goes away."""
    rt = world.client.runtime
    sid, pod = world.pod("events")
    trace_id = f"{random.getrandbits(128):032x}"
    metadata = [("traceparent", f"00-{trace_id}-{random.getrandbits(64):016x}-01")]
    stream = rt.GetContainerEvents(api_pb2.GetEventsRequest(), metadata=metadata)
    time.sleep(0.3)
    cid = rt.CreateContainer(
        api_pb2.CreateContainerRequest(
            pod_sandbox_id=sid,
            config=world.container_config("ev", "sleep", "1"),
            sandbox_config=pod,
        )
    ).container_id
    first = next(stream)
    assert first.container_id == cid
    assert first.container_event_type == api_pb2.CONTAINER_CREATED_EVENT
    time.sleep(0.5)  # the server is back waiting for the next message
    stream.cancel()
    world.check("GetContainerEvents", "one_event_then_cancel", world.settled(trace_id=trace_id))
    world.verdict()


def test_websocket_streams(world: World) -> None:
    rt = world.client.runtime
    _sid, cid = world.running("ws", "sleep", "1000")

    since = time.time_ns()
    url = rt.Exec(
        api_pb2.ExecRequest(container_id=cid, cmd=["echo", "-n", "hello"], stdout=True)
    ).url
    messages = asyncio.run(session(url, V4))
    assert stdout_of(messages) == b"hello"
    assert status_of(messages)["status"] == "Success"
    world.streamed("WebsocketStream", "exec_echo", since)

    since = time.time_ns()
    url = rt.Exec(
        api_pb2.ExecRequest(container_id=cid, cmd=["sh"], tty=True, stdin=True, stdout=True)
    ).url
    resize = b"\x04" + json.dumps({"Width": 132, "Height": 43}).encode()
    messages = asyncio.run(session(url, V4, [resize, b"\x00stty size; exit 3\n"]))
    assert b"43 132" in stdout_of(messages)
    assert status_of(messages)["reason"] == "NonZeroExitCode"
    world.streamed("Websocket", "exec_tty_stdin_resize_exit_3", since)

    since = time.time_ns()
    url = rt.Exec(
        api_pb2.ExecRequest(container_id=cid, cmd=["sh"], tty=True, stdin=True, stdout=True)
    ).url
    messages = asyncio.run(everything_until_closed(url, [b"\x04{not json", b"\x00exit 0\n"]))
    assert status_of(messages)["status"] in ("Success", "Failure"), "the session still ends"
    world.streamed("Websocket", "bad_resize_message", since)

    since = time.time_ns()
    _sid, att = world.running("wsatt", "/bin/sh", stdin=True, stdin_once=True)
    url = rt.Attach(api_pb2.AttachRequest(container_id=att, stdin=True, stdout=True)).url
    messages = asyncio.run(session(url, V4, [b"\x00echo -n attached; exit\n"]))
    assert stdout_of(messages) == b"attached"
    world.streamed("WebsocketStream", "attach_stdin_once", since)

    _sid, doomed = world.running("wsstop", "sleep", "1000")
    since = time.time_ns()
    url = rt.Exec(api_pb2.ExecRequest(container_id=doomed, cmd=["true"], stdout=True)).url
    rt.StopContainer(api_pb2.StopContainerRequest(container_id=doomed, timeout=0))
    messages = asyncio.run(everything_until_closed(url))
    world.streamed("WebsocketStream", "exec_container_stopped_after_url", since)
    # What kubectl shows: a Failure status on the error channel, as for any
    # exec that could not run, not a connection torn down.
    assert status_of(messages)["status"] == "Failure", messages

    since = time.time_ns()
    bad = url.rsplit("/", 1)[0] + "/not-a-token"
    with pytest.raises(InvalidStatus, match=r"HTTP 40[34]"):
        asyncio.run(session(bad, V4))
    world.streamed("Websocket", "unknown_token", since)

    since = time.time_ns()
    url = rt.Exec(api_pb2.ExecRequest(container_id=cid, cmd=["true"], stdout=True)).url
    with httpx.Client(trust_env=False, timeout=10) as http:
        plain = http.get(url)  # no Upgrade: websocket header
    assert 400 <= plain.status_code < 500, "a plain HTTP request is refused"
    world.streamed("Websocket", "plain_http_request", since)
    world.verdict()


async def everything_until_closed(url: str, send: Sequence[bytes] = ()) -> list[bytes | str]:
    """What the server sent before it closed, whichever way it closed (after
    sending ``send``)."""
    got: list[bytes | str] = []
    async with ws_connect(ws_url(url), subprotocols=[V4]) as ws:  # type: ignore[list-item]
        with contextlib.suppress(ConnectionClosed):
            for message in send:
                await ws.send(message)
            async for message in ws:
                got.append(message)
    return got


def test_port_forward_over_websocket(world: World) -> None:
    from test_streaming import forward_and_fetch

    port = free_port()
    sid, _cid = world.running("pf", *http_server(port))
    time.sleep(0.5)
    since = time.time_ns()
    body = forward_and_fetch(world.client, sid, port)
    assert b"forwarded" in body
    world.streamed("PortForward", "websocket_get", since)
    world.verdict()


def test_spdy_streams(world: World) -> None:
    rt = world.client.runtime
    _sid, cid = world.running("spdy", "sleep", "1000")
    since = time.time_ns()
    url = rt.Exec(
        api_pb2.ExecRequest(container_id=cid, cmd=["echo", "-n", "hello"], stdout=True, stderr=True)
    ).url
    out, _err, status = spdy.remote_command(url)
    assert (out, status["status"]) == (b"hello", "Success")
    world.streamed("SpdyStream", "exec_echo", since)

    since = time.time_ns()
    url = rt.Exec(
        api_pb2.ExecRequest(container_id=cid, cmd=["sh", "-c", "exit 3"], stdout=True, stderr=True)
    ).url
    _out, _err, status = spdy.remote_command(url)
    assert status["reason"] == "NonZeroExitCode"
    world.streamed("SpdyStream", "exec_exit_3", since)

    since = time.time_ns()
    _sid, att = world.running("spdyatt", "/bin/sh", stdin=True, stdin_once=True)
    url = rt.Attach(
        api_pb2.AttachRequest(container_id=att, stdin=True, stdout=True, stderr=True)
    ).url
    out, _err, _status = spdy.remote_command(url, stdin=b"echo -n attached\n")
    assert out == b"attached"
    world.streamed("SpdyStream", "attach_stdin_once", since)

    since = time.time_ns()
    url = rt.Exec(api_pb2.ExecRequest(container_id=cid, cmd=["true"], stdout=True)).url
    with pytest.raises(spdy.UpgradeRefused):
        spdy.remote_command(url, protocol="v1.unknown.example")
    world.streamed("SpdyStream", "no_common_protocol", since)
    world.verdict()


def test_websocket_server_start_and_shutdown(world: World) -> None:
    """WebsocketServer's span opens when the server starts and ends when it
    stops: a server of its own, started and stopped, and its trace file read."""
    server = start_server(world.base / "short")
    try:
        assert server.client().runtime.Version(api_pb2.VersionRequest()).runtime_name
    finally:
        try:
            server.stop()
        finally:  # the path is compared even when the trace broke its chart
            assert server.trace_file is not None
            trace = read_jsonl(server.trace_file)
            world.check(
                "WebsocketServer",
                "start_then_sigterm",
                [e for e in trace.events if e.chart == "WebsocketServer"],
            )
            world.verdict()


def test_every_chart_has_a_golden_path(world: World) -> None:
    """Every chart in diagrams/ is walked by at least one golden scenario of
    this tier (as the span of an RPC or callback, or as a child of one)."""
    scenarios = {(p.parent.name, p.name.split(".")[0]) for p in GOLDEN.rglob("*.txt")}
    walked: set[str] = set()
    for chart, scenario in scenarios:
        lines = golden_file(chart, scenario, world.tier).read_text().splitlines()
        walked |= {line.strip() for line in lines if " " not in line.strip()}
    missing = sorted(set(world.charts) - walked)
    assert not missing, f"charts no golden scenario of the {world.tier} tier walks: {missing}"
