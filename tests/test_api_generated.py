"""The wire API: checked-in stubs match proto/, and proto/ is CRI v1 as upstream."""

from __future__ import annotations

from pathlib import Path

import pytest

from teaching_cri.api import api_pb2, trace_pb2
from teaching_cri.api.generate import DEFAULT_OUT_DIR, DEFAULT_PROTO_DIR, generate, generated_names

REPO = Path(__file__).resolve().parents[1]


def test_generated_code_does_not_drift(tmp_path: Path) -> None:
    pytest.importorskip("grpc_tools", reason="grpcio-tools is in the test extra")
    proto_dir = REPO / "proto"
    checked_in = REPO / "src" / "teaching_cri" / "api"
    assert proto_dir == DEFAULT_PROTO_DIR or proto_dir.is_dir()
    generate(proto_dir, tmp_path)
    stale = [
        name
        for name in generated_names()
        if (tmp_path / name).read_bytes() != (checked_in / name).read_bytes()
    ]
    assert not stale, (
        f"generated code is stale for {stale}: run `python -m teaching_cri.api.generate`"
        f" (checked-in copy in {checked_in}, default output {DEFAULT_OUT_DIR})"
    )


def test_cri_package_and_services_are_the_upstream_names() -> None:
    # The package is part of every method's path on the wire.
    assert api_pb2.DESCRIPTOR.package == "runtime.v1"
    services = {
        s.full_name: [m.name for m in s.methods]
        for s in api_pb2.DESCRIPTOR.services_by_name.values()
    }
    assert set(services) == {"runtime.v1.RuntimeService", "runtime.v1.ImageService"}
    runtime = services["runtime.v1.RuntimeService"]
    for rpc in (
        "Version",
        "RunPodSandbox",
        "CreateContainer",
        "ExecSync",
        "Exec",
        "Attach",
        "PortForward",
        "Status",
        "RuntimeConfig",
        "GetContainerEvents",
        "UpdatePodSandboxResources",
        "StreamContainers",
        "StreamPodSandboxMetrics",
    ):
        assert rpc in runtime
    assert services["runtime.v1.ImageService"] == [
        "ListImages",
        "StreamImages",
        "ImageStatus",
        "PullImage",
        "RemoveImage",
        "ImageFsInfo",
    ]


def _numbers(message: type) -> dict[str, int]:
    return {f.name: f.number for f in message.DESCRIPTOR.fields}  # type: ignore[attr-defined]


def test_field_numbers_and_enums_match_cri_v1() -> None:
    assert _numbers(api_pb2.LinuxContainerResources) == {
        "cpu_period": 1,
        "cpu_quota": 2,
        "cpu_shares": 3,
        "memory_limit_in_bytes": 4,
        "oom_score_adj": 5,
        "cpuset_cpus": 6,
        "cpuset_mems": 7,
        "hugepage_limits": 8,
        "unified": 9,
        "memory_swap_limit_in_bytes": 10,
    }
    assert _numbers(api_pb2.VersionResponse) == {
        "version": 1,
        "runtime_name": 2,
        "runtime_version": 3,
        "runtime_api_version": 4,
    }
    assert api_pb2.ContainerState.Name(0) == "CONTAINER_CREATED"
    assert api_pb2.ContainerState.Value("CONTAINER_UNKNOWN") == 3
    assert api_pb2.PodSandboxState.Value("SANDBOX_NOTREADY") == 1
    assert api_pb2.CgroupDriver.Value("SYSTEMD") == 0
    assert api_pb2.CgroupDriver.Value("CGROUPFS") == 1


def test_proto_header_names_its_upstream_version() -> None:
    head = (REPO / "proto" / "api.proto").read_text().splitlines()[:20]
    assert any("cri-api" in line for line in head)
    assert any("v0.36" in line or "v1.36" in line for line in head)


def test_trace_service_shape() -> None:
    svc = trace_pb2.DESCRIPTOR.services_by_name["TraceService"]
    assert svc.full_name == "teachingcri.trace.v1.TraceService"
    follow = svc.methods_by_name["Follow"]
    assert follow.server_streaming and not follow.client_streaming
