"""ContainerStats, ListContainerStats and ReopenContainerLog (charts:
diagrams/ContainerStats.toml, diagrams/ListContainerStats.toml,
diagrams/ReopenContainerLog.toml; ours, after iSulad's code).

Stats come from the container's cgroup (v1 or v2), or from /proc where there
are no cgroups; ReopenContainerLog asks the shim for a fresh file at the
same path after the kubelet has rotated the old one away.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..api import Context, api_pb2
from ..api.api_pb2 import UInt64Value
from ..manager.container import RUNNING, Container, ContainerManager
from ..runtime.cgroups import CgroupStats
from ..trace.tracer import step
from ._rpc import rpc

if TYPE_CHECKING:
    from .runtime_service import RuntimeService


@rpc("ContainerStats")
async def ContainerStats(
    svc: RuntimeService, request: api_pb2.ContainerStatsRequest, context: Context
) -> api_pb2.ContainerStatsResponse:
    manager = svc.containers()
    container = manager.get(request.container_id)
    stats = await m_cb_container_stats(manager, [container])
    return api_pb2.ContainerStatsResponse(stats=container_stats_to_grpc(stats)[0])


@rpc("ListContainerStats")
async def ListContainerStats(
    svc: RuntimeService, request: api_pb2.ListContainerStatsRequest, context: Context
) -> api_pb2.ListContainerStatsResponse:
    manager = svc.containers()
    wanted = pack_container_stats_filter(manager, request.filter)
    stats = await m_cb_container_stats(manager, wanted)
    return api_pb2.ListContainerStatsResponse(stats=container_stats_to_grpc(stats))


@step("pack_container_stats_filter")
def pack_container_stats_filter(
    manager: ContainerManager, f: api_pb2.ContainerStatsFilter
) -> list[Container]:
    """Running containers matching every filter that is set."""
    return [
        c
        for c in manager.containers.list()
        if c.state == RUNNING
        and c.id.startswith(f.id)
        and c.sandbox_id.startswith(f.pod_sandbox_id)
        and all(c.config.labels.get(k) == v for k, v in f.label_selector.items())
    ]


@step("m_cb_container_stats")
async def m_cb_container_stats(
    manager: ContainerManager, containers: list[Container]
) -> list[tuple[Container, CgroupStats | None]]:
    out: list[tuple[Container, CgroupStats | None]] = []
    for c in containers:
        try:
            out.append((c, await manager.stats(c)))
        except Exception:
            out.append((c, None))
    return out


@step("container_stats_to_grpc")
def container_stats_to_grpc(
    stats: list[tuple[Container, CgroupStats | None]],
) -> list[api_pb2.ContainerStats]:
    out = []
    for c, s in stats:
        config = c.config
        item = api_pb2.ContainerStats(
            attributes=api_pb2.ContainerAttributes(
                id=c.id,
                metadata=config.metadata,
                labels=dict(config.labels),
                annotations=dict(config.annotations),
            )
        )
        if s is not None:
            item.cpu.CopyFrom(
                api_pb2.CpuUsage(
                    timestamp=s.timestamp, usage_core_nano_seconds=UInt64Value(value=s.cpu_usage_ns)
                )
            )
            item.memory.CopyFrom(
                api_pb2.MemoryUsage(
                    timestamp=s.timestamp,
                    working_set_bytes=UInt64Value(value=s.memory_working_set),
                    usage_bytes=UInt64Value(value=s.memory_usage),
                )
            )
        out.append(item)
    return out


@rpc("ReopenContainerLog")
async def ReopenContainerLog(
    svc: RuntimeService, request: api_pb2.ReopenContainerLogRequest, context: Context
) -> api_pb2.ReopenContainerLogResponse:
    await svc.containers().reopen_log(request.container_id)
    return api_pb2.ReopenContainerLogResponse()
